"""What one draft step costs on this machine, relative to one full-model step: the architecture search's price.

FLOPs price a draft as a large model on a GPU pays for it. A small model decoding one token at a time on a CPU pays
per operator as well as per multiply: at the default model (12 layers of width 256, one thread) FLOPs put the draft
at n = 1 with one linear layer at 0.092 of a full step and with one linear layer + attention at 0.122; measured, they
take 0.12-0.13 and 0.16-0.17. `draft_step_costs` measures it: one draft step (embedding, layers 0..n, the head as the
decoder calls it, final norm and LM head, over one new position) against one full-model step (layers 0..L), after a
context of `context` positions held in the caches, interleaved, median of the repeats. The context is synthetic: the
latency of a step does not depend on what the cached states say.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping

import torch
from torch import nn

from pipeline.decoding.cache import crop_to, new_cache
from pipeline.decoding.head_protocol import is_stateful
from pipeline.evaluation.speed import synchronize
from pipeline.models.adapters import BackboneAdapter, EncoderStates


@torch.inference_mode()
def draft_step_costs(
    adapter: BackboneAdapter,
    draft_layers: int,
    heads: Mapping[str, nn.Module | None],
    *,
    context: int = 64,
    repeats: int = 30,
) -> dict[str, float]:
    """{name: median latency of a draft step with `heads[name]` (layers 0..`draft_layers`, the head as the decoder
    calls it, final norm and LM head) ÷ median latency of a full-model step}, one position each at a context of
    `context` positions. Each repeat times, for every head, a full step and then that head's draft step, so a machine
    that slows down part-way slows every ratio's terms alike.

    A head is an imitation network as the decoder takes it (`pipeline.models.imitation.as_draft_head`), or None (the
    early exit); a stateful one (its own attention cache) is timed on a copy holding the context, so the caller's
    head is left as it was."""
    if not 1 <= draft_layers < adapter.num_layers:
        raise ValueError(f"draft_layers must be in 1..{adapter.num_layers - 1}, got {draft_layers}")
    if context < 1 or repeats < 1:
        raise ValueError(f"context and repeats must be at least 1, got {context} and {repeats}")
    weight = adapter.embed_weight
    device, dtype, total = weight.device, weight.dtype, adapter.num_layers
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(1, context, adapter.hidden_size, generator=generator).to(device=device, dtype=dtype)
    encoder = EncoderStates(states.clone()) if adapter.is_encoder_decoder else None
    cache = new_cache(adapter)
    prompt_positions = torch.arange(context, device=device).view(1, -1)
    adapter.run_layers(states, 0, total, cache, prompt_positions, encoder=encoder)
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    position = torch.full((1, 1), context, dtype=torch.long, device=device)

    def step(layers: int, head: nn.Module | None) -> Callable[[], float]:
        stateful = is_stateful(head)
        if stateful:
            head = copy.deepcopy(head)
            head.reset()  # type: ignore[union-attr, operator]  # the StatefulHead protocol, checked above
            head(states, attention_mask=None, position_ids=prompt_positions)  # type: ignore[misc]

        def run() -> float:
            synchronize(device)
            began = time.perf_counter()
            hidden = adapter.run_layers(adapter.embed(token), 0, layers, cache, position, None, encoder=encoder)
            if head is not None:
                hidden = head(hidden, attention_mask=None, position_ids=position) if stateful else head(hidden)
            adapter.logits(hidden[:, -1]).argmax(dim=-1)
            synchronize(device)  # a GPU runs the kernels after the clock would otherwise have been read
            seconds = time.perf_counter() - began
            crop_to(cache, context)
            if stateful:
                head.crop(context)  # type: ignore[union-attr, operator]
            return seconds

        return run

    full = step(total, None)
    drafts = {name: step(draft_layers, head) for name, head in heads.items()}
    for run in [full, *drafts.values()]:  # warm-up
        run()
    full_times: list[float] = []
    draft_times: dict[str, list[float]] = {name: [] for name in drafts}
    for _ in range(repeats):
        for name, run in drafts.items():
            # every draft step right after a full step: a draft step after another finds layers 0..n and the LM head
            # in the CPU's caches, one after the full model's L layers does not, and the order must not price a head
            full_times.append(full())
            draft_times[name].append(run())
    reference = statistics.median(full_times)
    return {name: statistics.median(times) / reference for name, times in draft_times.items()}


def draft_step_cost(
    adapter: BackboneAdapter,
    draft_layers: int,
    head: nn.Module | None = None,
    *,
    context: int = 64,
    repeats: int = 30,
) -> float:
    """`draft_step_costs` of one head."""
    return draft_step_costs(adapter, draft_layers, {"head": head}, context=context, repeats=repeats)["head"]
