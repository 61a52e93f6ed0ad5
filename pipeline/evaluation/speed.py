"""Decoding speed, measured the way DESIGN.md says: per-token latency of each method on the same
prompts in the same process, after warm-up, median over repeats, with the device synchronised.

A *method* is any callable `prompt -> (new_tokens, stats | None)`; this module neither knows nor cares
whether it is `model.generate` or one of our decoders, so every method is timed by the same code.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from pipeline.decoding.policies import expected_gain
from pipeline.decoding.stats import DecodingStats

# A method decodes one prompt: returns the new token ids (1-D) and its draft/verify counts (None for
# methods that do not report them, like `model.generate`).
Method = Callable[[dict], tuple[torch.Tensor, DecodingStats | None]]
# A batched method decodes several prompts of one task together: each row's new tokens and counts
BatchMethod = Callable[[Sequence[dict]], list[tuple[list[int], DecodingStats | None]]]

_CPU = torch.device("cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class MethodTiming:
    """One method over all prompts: outputs and counts from the first repeat, wall times from every repeat."""

    name: str
    outputs: list[list[int]] = field(default_factory=list)  # new tokens per prompt
    stats: DecodingStats = field(default_factory=DecodingStats)
    has_stats: bool = False
    seconds: list[list[float]] = field(default_factory=list)  # [repeat][prompt]

    def new_tokens(self, indices: Sequence[int] | None = None) -> int:
        indices = range(len(self.outputs)) if indices is None else indices
        return sum(len(self.outputs[i]) for i in indices)

    def latency(self, indices: Sequence[int] | None = None) -> float:
        """Median over repeats of (wall seconds / new tokens) on the chosen prompts: seconds per token."""
        return statistics.median(self.latency_by_repeat(indices))

    def latency_by_repeat(self, indices: Sequence[int] | None = None) -> list[float]:
        """Wall seconds / new tokens on the chosen prompts, one value per timing repeat."""
        indices = list(range(len(self.outputs)) if indices is None else indices)
        tokens = max(1, self.new_tokens(indices))
        return [sum(run[i] for i in indices) / tokens for run in self.seconds]

    def decode_latency(self, prefill: MethodTiming) -> float:
        """Median over repeats of seconds per token after each prompt's first: the wall time beyond `prefill`'s (the
        same prompts decoded to their first token only, in the same passes) over the tokens beyond the first."""
        if len(prefill.seconds) != len(self.seconds) or len(prefill.outputs) != len(self.outputs):
            raise ValueError(f"{prefill.name} was not timed on the same prompts and repeats as {self.name}")
        tokens = max(1, sum(max(0, len(out) - 1) for out in self.outputs))
        return statistics.median(
            (sum(run) - sum(first)) / tokens for run, first in zip(self.seconds, prefill.seconds, strict=True)
        )


def first_token_only(method: Method) -> Method:
    """`method` stopped after each prompt's first new token: what it spends before decoding starts (the prefill and
    the first token's pick), timed beside the full decode to split the prefill off its latency."""
    return lambda prompt: method({**prompt, "max_new_tokens": 1})


def time_methods(
    methods: dict[str, Method],
    prompts: Sequence[dict],
    *,
    repeats: int = 3,
    warmup_prompts: int = 2,
    device: torch.device = _CPU,
    progress: bool = False,
    prime_all: bool = True,
) -> dict[str, MethodTiming]:
    """Time every method on every prompt, `repeats` times.

    Every prompt is decoded by every method before the next prompt (methods are the innermost loop, in
    alternating order), so drift of the machine (thermal, other load) within a pass falls on all methods
    alike instead of on whichever ran last: with methods outermost and one repeat, two fresh-clone runs on
    a shared 2-core CPU gave the last-timed methods 1.50× and 1.17× (mixed schedule), 1.16× and 0.98×
    (LayerSkip).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    if not prompts:
        raise ValueError("no prompts to time")
    timings = {name: MethodTiming(name) for name in methods}
    if prime_all and methods:
        # One untimed pass of the first method over every prompt: CPU kernels and allocator pools are set up
        # per tensor shape, so without it whichever method first meets a prompt length pays for it (measured:
        # ~25 % on the first method of a one-repeat run)
        first = next(iter(methods.values()))
        for prompt in prompts:
            first(prompt)
    for method in methods.values():  # warm-up: first-call allocations, lazy inits, kernel selection
        for prompt in prompts[:warmup_prompts]:
            method(prompt)
    order = list(methods.items())
    bar = tqdm(total=repeats * len(prompts) * len(methods), desc="timing (batch 1)", disable=not progress, unit="dec")
    for repeat in range(repeats):
        rows: dict[str, list[float]] = {name: [] for name in methods}
        for index, prompt in enumerate(prompts):
            # alternate the order, so even drift within one prompt's methods cancels over prompt pairs
            for name, method in order if index % 2 == 0 else order[::-1]:
                synchronize(device)
                start = time.perf_counter()
                tokens, stats = method(prompt)
                synchronize(device)
                rows[name].append(time.perf_counter() - start)
                timing = timings[name]
                if repeat == 0:
                    timing.outputs.append(tokens.view(-1).tolist())
                    if stats is not None:
                        timing.stats = timing.stats.merge(stats)
                        timing.has_stats = True
            bar.update(len(order))
        for name, row in rows.items():
            timings[name].seconds.append(row)
    bar.close()
    return timings


@dataclass
class SplitRun:
    """One method over a whole split, decoded in batches: each prompt's new tokens and counts, and the wall time."""

    outputs: list[list[int]]
    stats: list[DecodingStats | None]
    seconds: float
    batch_size: int

    @property
    def new_tokens(self) -> int:
        return sum(map(len, self.outputs))

    @property
    def throughput(self) -> float:
        """Tokens per second at this batch size."""
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def merged_stats(self) -> DecodingStats | None:
        rows = [s for s in self.stats if s is not None]
        return DecodingStats.total(rows) if rows else None


def decode_split(
    methods: dict[str, BatchMethod],
    prompts: Sequence[dict],
    batch_size: int,
    *,
    device: torch.device = _CPU,
    progress: bool = False,
) -> dict[str, SplitRun]:
    """Every method over every prompt, in batches of `batch_size` prompts of one task (a progress bar with an ETA
    over methods × prompts when `progress`)."""
    from pipeline.evaluation.batching import task_batches

    runs = {}
    bar = tqdm(total=len(methods) * len(prompts), desc="decoding the split", disable=not progress, unit="prompt")
    for name, method in methods.items():
        bar.set_postfix_str(name)
        outputs: list[list[int]] = [[] for _ in prompts]
        stats: list[DecodingStats | None] = [None for _ in prompts]
        synchronize(device)
        start = time.perf_counter()
        for index in task_batches(prompts, batch_size):
            for i, (tokens, row_stats) in zip(index, method([prompts[i] for i in index]), strict=True):
                outputs[i], stats[i] = tokens, row_stats
            bar.update(len(index))
        synchronize(device)
        runs[name] = SplitRun(outputs, stats, time.perf_counter() - start, batch_size)
    bar.close()
    return runs


def identical_share(outputs: Sequence[Sequence[int]], reference: Sequence[Sequence[int]]) -> float:
    """Share of prompts whose output equals the reference token for token."""
    if len(outputs) != len(reference):
        raise ValueError(f"{len(outputs)} outputs against {len(reference)} references")
    return sum(list(a) == list(b) for a, b in zip(outputs, reference, strict=True)) / max(1, len(reference))


def expected_speedup(acceptance: float, cost_ratio: float, draft_len: float) -> float:
    """Leviathan et al. (2023): (1 − α^(γ+1)) / ((1 − α)(γc + 1)) for acceptance α, draft cost c, draft length γ."""
    if not 0.0 <= acceptance <= 1.0:
        raise ValueError(f"acceptance must be in [0, 1], got {acceptance}")
    return expected_gain(acceptance, cost_ratio, draft_len)
