"""The one KV cache that drafting and verification share, and rolling it back.

In self-speculative decoding the layers of one `DynamicCache` hold different numbers of tokens: the
shallow layers run ahead over drafted tokens while the deep layers wait for verification.
`Cache.crop(n)` removes `n` tokens from *every* layer, which is wrong when the layers differ; here each
layer is cut to an absolute length.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from transformers import Cache, DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer


def new_cache(model: PreTrainedModel) -> DynamicCache:
    """A cache with one layer object per decoder layer (sliding-window layers where the config says so)."""
    cache = DynamicCache(config=model.config)
    # Sliding-window layers drop old states on update unless told to keep them until the next crop;
    # rollback needs them (a no-op for full-attention layers).
    cache.activate_past_recording()
    return cache


def crop_to(cache: Cache, length: int, layers: Iterable[int] | None = None) -> None:
    """Cut each of `layers` (default: all) to at most `length` tokens; shorter layers are left alone."""
    indices = range(len(cache.layers)) if layers is None else layers
    for index in indices:
        if index >= len(cache.layers):
            continue
        # The decoders' caches come from `new_cache`: attention layers only (full or sliding window)
        layer = cast(DynamicLayer, cache.layers[index])
        extra = layer.get_seq_length() - length
        if extra > 0:
            layer.crop(-extra)
        elif getattr(layer, "is_sliding", False) and layer.is_initialized:
            layer.crop(0)  # releases states a recording sliding-window layer no longer needs
