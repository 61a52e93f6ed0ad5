"""FLOPs per generated token of the draft's parts, counted with torch's `FlopCounterMode`.

`FlopCounterMode` counts 2 × multiply-accumulates of the matmuls it sees; on CPU it sees 0 for
`scaled_dot_product_attention`, so the attention over a context of `context` tokens is added
analytically: 4 · hidden · context per layer and token (scores QKᵀ and the weighted sum of V).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.models.adapters import EncoderStates

if TYPE_CHECKING:
    from pipeline.models.adapters import BackboneAdapter


def counted_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@torch.no_grad()
def per_token_flops(
    adapter: BackboneAdapter, draft_layers: int, head: nn.Module | None = None, context: int = 64
) -> dict[str, float]:
    """FLOPs to produce one token at a context of `context` tokens: per decoder layer, the imitation head,
    the final norm + LM head, the draft (n layers + head + LM head) and the full model (L layers + LM head)."""
    weight = adapter.embed_weight
    hidden = torch.zeros(1, 1, adapter.hidden_size, dtype=weight.dtype, device=weight.device)
    position = torch.zeros(1, 1, dtype=torch.long, device=weight.device)
    attention = 4 * adapter.hidden_size * context
    encoder, cache = None, None
    if adapter.is_encoder_decoder:
        # Cross-attention over an encoder output of `context` positions: its keys and values are computed once per
        # prompt and cached, so one uncounted pass fills the cache and the counted pass sees only the per-token work
        encoder = EncoderStates(torch.zeros(1, context, adapter.hidden_size, dtype=weight.dtype, device=weight.device))
        cache = adapter.new_cache()
        adapter.run_layers(hidden, 0, adapter.num_layers, cache, position_ids=position, encoder=encoder)
        position = position + 1
        attention *= 2  # the cross-attention's scores and weighted sum, uncounted like the self-attention's
    layers = [
        counted_flops(partial(adapter.run_layers, hidden, i, i + 1, cache, position_ids=position, encoder=encoder))
        + attention
        for i in range(adapter.num_layers)
    ]
    head_flops = counted_flops(lambda: head(hidden)) if head is not None else 0
    if getattr(head, "attention", None) is not None:
        head_flops += 4 * adapter.hidden_size * context  # its attention over the context (sdpa: uncounted on CPU)
    lm_head = counted_flops(lambda: adapter.logits(hidden))
    draft = sum(layers[:draft_layers]) + head_flops + lm_head
    full = sum(layers) + lm_head
    return {
        "layer": sum(layers) / len(layers),
        "imitation": float(head_flops),
        "lm_head": float(lm_head),
        "skipped_layers": float(sum(layers[draft_layers:])),
        "draft": float(draft),
        "full": float(full),
        "draft_cost_ratio": draft / full,
    }
