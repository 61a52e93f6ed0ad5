"""LightningDataModule over a prepared data set (synthetic or real, same code).

Training batches come from one stream of global batches that every process slices (`pipeline.training.samplers`):
`cfg.batch_size` examples per optimizer step at any process count, and a resumed run continues the order.
Validation is the same fixed, task-balanced slice in every process, so its (synced) metrics are the same numbers at
any process count.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from pipeline.config import TrainingConfig
from pipeline.data.datasets import ExampleDataset, collate_for_training
from pipeline.data.pixels import PixelStore
from pipeline.data.prepared import Example, SplitData
from pipeline.data.prompts import TASKS, PromptBuilder
from pipeline.training.samplers import GlobalTaskBatchSampler, ResumableLoader, finished_batches


def split_examples(split: SplitData, weights: dict[str, float]) -> list[Example]:
    return [e for task in TASKS if weights.get(task, 0) > 0 for e in split.examples(task)]


class VLMDataModule(L.LightningDataModule):
    def __init__(
        self,
        splits: dict[str, SplitData],
        builder: PromptBuilder,
        image_processor: Any,
        cfg: TrainingConfig,
        seed: int,
    ) -> None:
        super().__init__()
        self.splits = splits
        self.builder = builder
        self.image_processor = image_processor
        self.cfg = cfg
        self.seed = seed
        self.weights = cfg.task_weights.model_dump()
        self.pixels: dict[str, PixelStore] = {}

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val"):
            if split not in self.pixels:
                self.pixels[split] = PixelStore([r.image_path for r in self.splits[split].images], self.image_processor)

    def _collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return collate_for_training(items, self.builder.tokenizer.pad_token_id, self.builder.decoder_start_id)

    def train_dataloader(self) -> DataLoader:
        examples = split_examples(self.splits["train"], self.weights)
        dataset = ExampleDataset(examples, self.pixels["train"], self.builder)
        # An "epoch" is one pass over the images' worth of (global) batches; steps, not epochs, bound training.
        num_batches = max(1, math.ceil(len(self.splits["train"].images) / self.cfg.batch_size))
        trainer = self.trainer
        sampler = GlobalTaskBatchSampler(
            [e.task for e in examples],
            self.weights,
            self.cfg.batch_size,
            num_batches,
            seed=self.seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
        )
        return ResumableLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self._collate,
            num_workers=self.cfg.trainer.num_workers,
            persistent_workers=self.cfg.trainer.num_workers > 0,
            batches_done=self._batches_done,
        )

    def _batches_done(self) -> int:
        return finished_batches(self.trainer)

    def val_dataloader(self) -> DataLoader:
        # A fixed, task-balanced slice of the validation split, so curves are comparable across steps.
        per_task = self.cfg.val_batches * self.cfg.batch_size // max(1, len(TASKS))
        examples = [e for task in TASKS for e in self.splits["val"].examples(task)[:per_task]]
        dataset = ExampleDataset(examples, self.pixels["val"], self.builder)
        return DataLoader(dataset, batch_size=self.cfg.batch_size, collate_fn=self._collate)
