"""Prompts that methods decode in evaluation: test captions, descriptions and VQA questions (with their references),
and the validation prompts training decodes to measure acceptance. A prompt is a dict: task, key, references,
input_ids [1, T], pixel_values [1, C, H, W], max_new_tokens (and answer_type for VQA)."""

from __future__ import annotations

from typing import Any

import torch

from pipeline.data.pixels import PixelStore
from pipeline.data.prepared import SplitData
from pipeline.data.prompts import PromptBuilder

MAX_NEW_TOKENS = {"caption": 32, "description": 96, "vqa": 8}

Prompt = dict[str, Any]


def on_device(prompts: list[Prompt], device: torch.device, dtype: torch.dtype) -> list[Prompt]:
    """`prompts` with their token ids on `device` and their pixels on `device` in `dtype` (the backbone's)."""
    return [
        {**p, "input_ids": p["input_ids"].to(device), "pixel_values": p["pixel_values"].to(device, dtype)}
        for p in prompts
    ]


def caption_prompts(
    split: SplitData, builder: PromptBuilder, image_processor: Any, captions: int | None, descriptions: int | None = 0
) -> list[Prompt]:
    """The first `captions` images as caption prompts (with their references) and `descriptions` described
    images as description prompts (with the description as reference); None: every one."""
    described = [i for i, r in enumerate(split.images) if r.image_id in split.descriptions]
    chosen = [("caption", i) for i in range(len(split.images))][:captions]
    chosen += [("description", i) for i in described[:descriptions]]
    pixels = PixelStore([split.images[i].image_path for _, i in chosen], image_processor)
    prompts = []
    for k, (task, i) in enumerate(chosen):
        record = split.images[i]
        references = list(record.captions) if task == "caption" else [split.descriptions[record.image_id]]
        prompts.append(
            {
                "task": task,
                "key": f"{task}:{record.image_id}",
                "references": references,
                "input_ids": torch.tensor([builder.prompt_ids(task)]),
                "pixel_values": pixels[k].unsqueeze(0),
                "max_new_tokens": MAX_NEW_TOKENS[task],
            }
        )
    return prompts


def vqa_prompts(split: SplitData, builder: PromptBuilder, image_processor: Any, count: int | None) -> list[Prompt]:
    """The first `count` questions with answers (None: every one), one prompt each (references: the annotators'
    answers)."""
    by_id = {r.image_id: r for r in split.images}
    records = [q for q in split.vqa if q.answers and q.image_id in by_id][:count]
    pixels = PixelStore([by_id[q.image_id].image_path for q in records], image_processor)
    return [
        {
            "task": "vqa",
            "key": f"vqa:{q.question_id}",
            "references": list(q.answers),
            "answer_type": q.answer_type or "all",
            "question_type": q.question_type,
            "input_ids": torch.tensor([builder.prompt_ids("vqa", q.question)]),
            "pixel_values": pixels[k].unsqueeze(0),
            "max_new_tokens": MAX_NEW_TOKENS["vqa"],
        }
        for k, q in enumerate(records)
    ]


def first_of_each_task(prompts: list[Prompt], counts: dict[str, int]) -> list[Prompt]:
    """The first `counts[task]` prompts of each task, in the prompts' order."""
    taken: dict[str, int] = {}
    chosen = []
    for prompt in prompts:
        if taken.get(prompt["task"], 0) < counts.get(prompt["task"], 0):
            taken[prompt["task"]] = taken.get(prompt["task"], 0) + 1
            chosen.append(prompt)
    return chosen


def validation_prompts(
    split: SplitData, builder: PromptBuilder, image_processor: Any, count: int, dtype: torch.dtype = torch.float32
) -> list[Prompt]:
    """`count` prompts, half captions and half descriptions, for the end-to-end acceptance training logs."""
    if count == 0:
        return []
    described = [i for i, r in enumerate(split.images) if r.image_id in split.descriptions]
    chosen = [("caption", i) for i in range((count + 1) // 2)] + [("description", i) for i in described[: count // 2]]
    pixels = PixelStore([split.images[i].image_path for _, i in chosen], image_processor)
    return [
        {
            "task": task,
            "input_ids": torch.tensor([builder.prompt_ids(task)]),
            "pixel_values": pixels[k].unsqueeze(0).to(dtype),
            "max_new_tokens": MAX_NEW_TOKENS[task],
        }
        for k, (task, _) in enumerate(chosen)
    ]
