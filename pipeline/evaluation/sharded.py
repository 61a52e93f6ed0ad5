"""Evaluation methods decoded by several processes (`evaluate.trainer.devices` × `num_nodes` > 1).

Every process decodes its share of the prompts with every method, timed as `time_methods` times (methods
interleaved per prompt, after warm-up); rank zero gathers the outputs and decoding counts of all prompts, in prompt
order, for the quality metrics (the same numbers one process computes), and keeps its own share's timings for the
speed-ups: per-token latencies are compared within one process, never across machines or devices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.config import TrainerConfig
from pipeline.evaluation.prompts import Prompt
from pipeline.evaluation.speed import Method, MethodTiming, time_methods
from pipeline.training.sharding import Shard, map_shards


@dataclass
class ShardedTimings:
    decoded: dict[str, MethodTiming]  # every prompt's outputs and counts, in prompt order (no wall times)
    speed: dict[str, MethodTiming]  # rank zero's share, timed
    speed_prompts: list[Prompt]  # that share's prompts
    processes: int


def merge_shards(shards: Sequence[Shard[dict[str, MethodTiming]]], count: int) -> dict[str, MethodTiming]:
    """Per method: the outputs of all `count` prompts in prompt order and the counts summed over the shares."""
    done = [s for s in shards if s.result is not None]
    names = list(done[0].result or {})
    merged = {}
    for name in names:
        outputs: list[list[int] | None] = [None] * count
        timing = MethodTiming(name)
        for shard in done:
            part = (shard.result or {})[name]
            for index, tokens in zip(shard.indices, part.outputs, strict=True):
                outputs[index] = tokens
            if part.has_stats:
                timing.stats, timing.has_stats = timing.stats.merge(part.stats), True
        missing = [i for i, tokens in enumerate(outputs) if tokens is None]
        if missing:
            raise RuntimeError(f"{name}: prompts {missing[:5]} were decoded by no process")
        timing.outputs = [tokens for tokens in outputs if tokens is not None]
        merged[name] = timing
    return merged


def time_sharded(
    methods: dict[str, Method], prompts: Sequence[Prompt], cfg: TrainerConfig, *, repeats: int, warmup_prompts: int
) -> ShardedTimings | None:
    """Decode and time `prompts` with `methods` over the processes `cfg` names; None on every rank but zero."""

    def work(share: list[Prompt]) -> dict[str, MethodTiming]:
        return time_methods(methods, share, repeats=repeats, warmup_prompts=warmup_prompts)

    shards = map_shards(work, prompts, cfg)
    if shards is None:
        return None
    timed = shards[0]
    if timed.result is None:
        raise ValueError("no prompts to evaluate")
    return ShardedTimings(
        merge_shards(shards, len(prompts)), timed.result, [prompts[i] for i in timed.indices], len(shards)
    )
