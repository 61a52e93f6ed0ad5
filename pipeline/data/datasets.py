"""Torch datasets, collation and the task-grouped batch sampler."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from pipeline.data.pixels import PixelStore
from pipeline.data.prepared import Example, SplitData
from pipeline.data.prompts import PromptBuilder

IGNORE_INDEX = -100  # positions the cross-entropy skips: image tokens, the prompt, padding


class ExampleDataset(Dataset):
    def __init__(self, examples: Sequence[Example], pixels: PixelStore, builder: PromptBuilder) -> None:
        self.examples = list(examples)
        self.pixels = pixels
        self.builder = builder

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        return {
            "pixel_values": self.pixels[example.image_index],
            "prompt": self.builder.prompt_ids(example.task, example.question),
            "target": (
                list(example.target_ids) if example.target_ids is not None else self.builder.target_ids(example.text)
            ),
            "index": index,
        }


def collate_for_training(
    items: list[dict], pad_id: int, decoder_start_id: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded prompt+target; labels only on the target tokens (paper eq. 1).

    Decoder-only: `input_ids` = prompt + target. Encoder–decoder (`decoder_start_id` given): the prompt is the encoder's
    (`encoder_input_ids`, `encoder_attention_mask`) and `input_ids` = start + target for the decoder. Either way
    `labels` equal `input_ids` on the target's positions and IGNORE_INDEX elsewhere: the loss compares
    `logits[:, :-1]` with `labels[:, 1:]`."""
    if decoder_start_id is not None:
        return _collate_seq2seq(items, pad_id, decoder_start_id)
    sequences = [item["prompt"] + item["target"] for item in items]
    width = max(map(len, sequences))
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (item, sequence) in enumerate(zip(items, sequences, strict=True)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        attention_mask[row, : len(sequence)] = 1
        labels[row, len(item["prompt"]) : len(sequence)] = torch.tensor(item["target"])
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
    }


def _collate_seq2seq(items: list[dict], pad_id: int, decoder_start_id: int) -> dict[str, torch.Tensor]:
    encoder = right_padded([item["prompt"] for item in items], pad_id)
    # The decoder's side is a decoder-only example whose prompt is the start token
    decoder = collate_for_training([{**item, "prompt": [decoder_start_id]} for item in items], pad_id)
    return {**decoder, "encoder_input_ids": encoder[0], "encoder_attention_mask": encoder[1]}


def right_padded(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences right-padded with `pad_id` into [B, longest] ids and their attention mask."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    return ids, mask


def collate_prompts(items: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts for batched generation (new tokens are appended on the right)."""
    width = max(len(item["prompt"]) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        prompt = item["prompt"]
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
    }


def balanced_batches(
    split: SplitData, builder: PromptBuilder, pixels: PixelStore, total: int, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """A fixed, task-balanced set of about `total` examples of `split` (a `SplitData`), collated for scoring."""
    from pipeline.data.prompts import TASKS

    tasks = [task for task in TASKS if split.examples(task)]
    per_task = max(1, total // max(1, len(tasks)))
    examples = [e for task in tasks for e in split.examples(task)[:per_task]]
    dataset = ExampleDataset(examples, pixels, builder)
    pad = builder.tokenizer.pad_token_id
    return [
        collate_for_training(
            [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))], pad, builder.decoder_start_id
        )
        for start in range(0, len(dataset), batch_size)
    ]
