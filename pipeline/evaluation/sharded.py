"""The test split decoded by several processes (`evaluate.trainer.devices` × `num_nodes` > 1).

Every process decodes its share of the split with every method, in batches (`decode_split`); rank zero gathers the
outputs and decoding counts of all prompts, in prompt order, for the quality metrics — the same numbers one process
computes. Speed is not measured here: rank zero alone times every method on the speed sample afterwards, so per-token
latencies are compared within one process, never across machines or devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.config import TrainerConfig
from pipeline.decoding.stats import DecodingStats
from pipeline.evaluation.prompts import Prompt
from pipeline.evaluation.speed import BatchMethod, SplitRun, decode_split
from pipeline.training.sharding import Shard, map_shards


def merge_shards(shards: Sequence[Shard[dict[str, SplitRun]]], count: int) -> dict[str, SplitRun]:
    """Per method: the outputs and counts of all `count` prompts in prompt order; the throughput of the shares added
    (each share's wall time is its own process's)."""
    done = [s for s in shards if s.result is not None]
    merged = {}
    for name in done[0].result or {}:
        outputs: list[list[int] | None] = [None] * count
        stats: list[DecodingStats | None] = [None] * count
        for shard in done:
            part = (shard.result or {})[name]
            for position, index in enumerate(shard.indices):
                outputs[index], stats[index] = part.outputs[position], part.stats[position]
        missing = [i for i, tokens in enumerate(outputs) if tokens is None]
        if missing:
            raise RuntimeError(f"{name}: prompts {missing[:5]} were decoded by no process")
        parts = [(shard.result or {})[name] for shard in done]
        seconds = sum(p.new_tokens for p in parts) / sum(p.throughput for p in parts)
        merged[name] = SplitRun([o for o in outputs if o is not None], stats, seconds, parts[0].batch_size)
    return merged


def decode_sharded(
    methods: dict[str, BatchMethod],
    prompts: Sequence[Prompt],
    batch_size: int,
    cfg: TrainerConfig,
    *,
    device: torch.device,
    progress: bool = False,
) -> dict[str, SplitRun] | None:
    """Every method over `prompts`, shared out over the processes `cfg` names; None on every rank but zero."""

    def work(share: list[Prompt]) -> dict[str, SplitRun]:
        return decode_split(methods, share, batch_size, device=device, progress=progress)

    shards = map_shards(work, prompts, cfg)
    if shards is None:
        return None
    if all(s.result is None for s in shards):
        raise ValueError("no prompts to evaluate")
    return merge_shards(shards, len(prompts))
