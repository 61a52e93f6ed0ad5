"""Prompts decoded in batches: one left-padded batch per chunk of prompts of one task (one token budget)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from pipeline.evaluation.prompts import Prompt


def collate(prompts: Sequence[Prompt], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids [B, T] left padded, attention_mask, pixel_values [B, ...]: what `generate` takes for a batch."""
    width = max(p["input_ids"].shape[1] for p in prompts)
    first = prompts[0]["input_ids"]
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=first.device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=first.device)
    for row, prompt in enumerate(prompts):
        length = prompt["input_ids"].shape[1]
        ids[row, width - length :] = prompt["input_ids"][0]
        mask[row, width - length :] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": torch.cat([p["pixel_values"] for p in prompts]),
    }


def task_batches(prompts: Sequence[Prompt], batch_size: int) -> Iterator[list[int]]:
    """Indices of `prompts` in batches of at most `batch_size`, each of one task (one `max_new_tokens`), in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    for task in dict.fromkeys(p["task"] for p in prompts):
        index = [i for i, p in enumerate(prompts) if p["task"] == task]
        for start in range(0, len(index), batch_size):
            yield index[start : start + batch_size]


def new_token_rows(new: torch.Tensor, eos: frozenset[int] | set[int]) -> list[list[int]]:
    """Each row of `new` [B, N] up to and including its first EOS (what follows is padding)."""
    rows = []
    for row in new.tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
        rows.append(row[:end])
    return rows
