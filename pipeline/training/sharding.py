"""Work shared out over the processes of a stage's trainer, for the stages that decode or score rather than train
(evaluate, select_layer): Lightning's `predict` under the same `TrainerConfig` a training stage uses, so the same
launch (Lightning re-running the stage once per device, torchrun, srun) and the same checks apply.

Process r of w gets the items r, r + w, r + 2w, … (no padding: Lightning's DistributedSampler would repeat items to
even the shares out), runs `work` on its share in one call (so the work can interleave or time its items as it
likes), and rank zero gathers every share's result. With one process `work` runs on every item directly, without
Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.config import TrainerConfig
from pipeline.training.launch import planned_processes
from pipeline.training.trainer import set_threads

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Shard(Generic[Result]):
    rank: int
    indices: list[int]  # positions of its items in the full sequence, ascending
    result: Result | None  # None for an empty share (fewer items than processes)


def share(count: int, rank: int, world_size: int) -> list[int]:
    return list(range(rank, count, world_size))


class _Indices(Dataset[int]):
    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> int:
        return index


class _Shares(L.LightningDataModule):
    """One predict batch per process: its share of the item indices (none for an empty share)."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def predict_dataloader(self) -> DataLoader:
        trainer = self.trainer
        assert trainer is not None  # Lightning asks for the loader from inside predict
        indices = share(self.count, trainer.global_rank, trainer.world_size)
        # a plain sampler + batch size: Lightning re-creates predict loaders around torch's BatchSampler (to track
        # indices), which a hand-made batch sampler would not survive
        return DataLoader(_Indices(self.count), sampler=indices, batch_size=max(1, len(indices)), collate_fn=list)


class _Runner(L.LightningModule):
    """Runs `work` on the predict batch's items. The result stays here instead of being returned: Lightning would walk
    a returned object to move its tensors (and rebuild its dataclasses)."""

    def __init__(self, work: Callable[[list[Any]], Any], items: Sequence[Any]) -> None:
        super().__init__()
        self.work = work
        self.items = items
        self.done: list[tuple[list[int], Any]] = []

    def predict_step(self, batch: list[int], batch_idx: int) -> None:
        self.done.append((batch, self.work([self.items[i] for i in batch])))


def map_shards(
    work: Callable[[list[Item]], Result], items: Sequence[Item], cfg: TrainerConfig
) -> list[Shard[Result]] | None:
    """`work` on every process's share of `items`; on rank zero every share (rank order), None on the others.

    Under DDP the work runs inside Lightning's predict loop (gradients off). Models the work uses are not moved by
    Lightning: on GPUs put them on `torch.cuda.current_device()`, which Lightning sets per process."""
    set_threads(cfg.num_threads)
    if planned_processes(cfg) == 1:
        with torch.no_grad():
            return [Shard(0, list(range(len(items))), work(list(items)))]
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the shares above, not a padded DistributedSampler
        inference_mode=False,  # no_grad, as with one process: inference tensors would outlive the call (caches)
    )
    runner = _Runner(work, items)
    trainer.predict(runner, datamodule=_Shares(len(items)), return_predictions=False)
    local = runner.done[0] if runner.done else (share(len(items), trainer.global_rank, trainer.world_size), None)
    gathered: list[Any] | None = [None] * trainer.world_size if trainer.is_global_zero else None
    torch.distributed.gather_object(local, gathered, dst=0)
    if gathered is None:
        return None
    return [Shard(rank, list(indices), result) for rank, (indices, result) in enumerate(gathered)]
