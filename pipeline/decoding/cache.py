"""The one KV cache that drafting and verification share, and rolling it back.

In self-speculative decoding the layers of one cache hold different numbers of tokens: the shallow layers run
ahead over drafted tokens while the deep layers wait for verification. `Cache.crop(n)` removes `n` tokens from
*every* layer, which is wrong when the layers differ; here each layer is cut to an absolute length. For an
encoder–decoder (`EncoderDecoderCache`) only the self-attention entries are cut: the cross-attention entries are
the encoder's keys and values, the same for every decoder position, computed once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from transformers import Cache, EncoderDecoderCache
from transformers.cache_utils import DynamicLayer

from pipeline.models.adapters import BackboneAdapter


def new_cache(adapter: BackboneAdapter, rollback: bool = True) -> Cache:
    """The backbone's cache; with `rollback`, sliding-window layers keep the states they evict until the next
    `crop_to`, which a rollback needs (decoders that never roll back leave it off: nothing would release them)."""
    cache = adapter.new_cache()
    if rollback:
        self_attention(cache).activate_past_recording()  # a no-op for full-attention layers
    return cache


def self_attention(cache: Cache) -> Cache:
    """The part of `cache` that grows with the decoded sequence (all of it for a decoder-only model)."""
    return cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache


def has_sliding_layers(cache: Cache) -> bool:
    return any(getattr(layer, "is_sliding", False) for layer in self_attention(cache).layers)


def crop_to(cache: Cache, length: int, layers: Iterable[int] | None = None) -> None:
    """Cut each of `layers` (default: all) to at most `length` tokens; shorter layers are left alone. Sliding-window
    layers also release the states their window no longer needs, so their memory stays bounded by the window."""
    layer_caches = self_attention(cache).layers
    indices = range(len(layer_caches)) if layers is None else layers
    for index in indices:
        if index >= len(layer_caches):
            continue
        # The decoders' caches come from `new_cache`: attention layers only (full or sliding window)
        layer = cast(DynamicLayer, layer_caches[index])
        extra = layer.get_seq_length() - length
        if extra > 0:
            layer.crop(-extra)
        elif getattr(layer, "is_sliding", False) and layer.is_initialized:
            layer.crop(0)  # releases states a recording sliding-window layer no longer needs
