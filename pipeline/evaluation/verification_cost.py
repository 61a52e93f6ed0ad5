"""What a verification pass costs on this machine, relative to one full-model step.

Leviathan et al.'s expected speed-up assumes that checking `d` drafts costs one step of the full model: true where a
step is bound by reading the weights (a large model on a GPU), not where it is bound by the work per position or by
per-operator overhead (a small model on a CPU). `verification_costs` measures the latency of the verification the
engine runs after drafting w - 1 tokens — the round's last draft through layers 0..n (the one position drafting did
not run), then layers n..L, the final norm and the LM head over all w positions, after a prompt and some generated
tokens — against one full-model step (embedding, layers 0..L and the LM head over one position), methods interleaved,
median of the repeats. The report prices each round's verification with it, so what is left between measured and
expected speed-up is the engine's own per-round cost.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pipeline.decoding.cache import crop_to, new_cache
from pipeline.decoding.engine import prefill
from pipeline.decoding.inputs import model_device, prepare_request
from pipeline.decoding.sampling import SamplingConfig
from pipeline.decoding.slots import SlotTable
from pipeline.evaluation.prompts import Prompt
from pipeline.evaluation.speed import synchronize
from pipeline.models.adapters import adapter_for

GENERATED_TOKENS = 16  # the context a pass is timed at: the prompt plus this many generated tokens


@torch.inference_mode()
def verification_costs(
    model: nn.Module,
    prompt: Prompt,
    widths: Sequence[int],
    draft_layers: int,
    *,
    generated: int = GENERATED_TOKENS,
    repeats: int = 20,
) -> dict[int, float]:
    """{w: latency of a verification pass over w positions ÷ latency of one full-model step}, at the context of
    `prompt` plus `generated` tokens (timing does not depend on which tokens: the same one is repeated)."""
    if not widths or min(widths) < 1:
        raise ValueError(f"widths must be positive position counts, got {list(widths)}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    adapter, device = adapter_for(model), model_device(model)
    total = adapter.num_layers
    inputs = {k: v for k, v in prompt.items() if k == "pixel_values"}
    request = prepare_request(adapter, prompt["input_ids"], generated + max(widths), [], SamplingConfig(), None, inputs)
    cache = new_cache(adapter)
    length = request.prompt_length
    slots = SlotTable(request.prompt_mask, 1, length, length + generated + max(widths) + 1, request.device)
    _, logits, encoder = prefill(adapter, request, cache, slots, draft_layers)
    token = logits.argmax(dim=-1).view(1, 1)
    for _ in range(generated):
        position = slots.positions(1)
        adapter.run_layers(adapter.embed(token), 0, total, cache, position, None, encoder=encoder)
        slots.append(1)
    base = slots.length
    tokens = token.expand(1, max(widths))

    def timed(split: int, width: int) -> Callable[[], float]:
        """Layers 0..L over one new position (split = L: a step), or a verification at `split` = n over `width`."""

        def run() -> float:
            positions = slots.positions(width)
            if width > 1:
                # untimed: drafting already ran the first w - 1 positions through layers 0..n
                drafted = adapter.run_layers(
                    adapter.embed(tokens[:, : width - 1]), 0, split, cache, positions[:, :-1], None, encoder=encoder
                )
            synchronize(device)
            began = time.perf_counter()
            last = adapter.run_layers(
                adapter.embed(tokens[:, :1]), 0, split, cache, positions[:, -1:], None, encoder=encoder
            )
            hidden = torch.cat([drafted, last], dim=1) if width > 1 else last
            if split < total:
                hidden = adapter.run_layers(hidden, split, total, cache, positions, None, encoder=encoder)
            adapter.logits(hidden)
            synchronize(device)  # a GPU runs the kernels after the clock would otherwise have been read
            seconds = time.perf_counter() - began
            crop_to(cache, base)
            return seconds

        return run

    step = timed(total, 1)
    passes = {width: timed(draft_layers, width) for width in widths}
    for run in [step, *passes.values()]:  # warm-up
        run()
    step_times: list[float] = []
    pass_times: dict[int, list[float]] = {width: [] for width in widths}
    for _ in range(repeats):
        for width, run in passes.items():
            step_times.append(step())
            pass_times[width].append(run())
    reference = statistics.median(step_times)
    return {width: statistics.median(times) / reference for width, times in pass_times.items()}
