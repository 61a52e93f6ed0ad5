"""The training batch order: one stream of global batches, sliced per process, that a resumed run continues.

- **Global batches.** Each batch holds one task (short captions are not padded to a 100-token description, which on
  CPU roughly halves the cost of a step), the task drawn by weight. The stream depends on the seed and the epoch
  only: process r of w takes every w-th example of each batch, starting at r, so one process and w processes train
  on the same examples step for step, and `batch_size` means examples per optimizer step at any process count.
  (Lightning's DistributedSampler is not used: it shards examples, not task-grouped batches.)
- **Resumable.** `ResumableLoader` is a DataLoader Lightning checkpoints (its `state_dict`: the epoch and the batches
  the training loop has finished in it) and restores before the first batch after a resume, so the sampler starts
  the epoch part-way and the run continues the order where the checkpoint was written, instead of restarting the
  epoch (Lightning's "your dataloader is not resumable" warning).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch.utils.data import DataLoader, Sampler


class GlobalTaskBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        task_of_example: Sequence[str],
        weights: dict[str, float],
        batch_size: int,
        num_batches: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.by_task: dict[str, list[int]] = {}
        for index, task in enumerate(task_of_example):
            self.by_task.setdefault(task, []).append(index)
        self.tasks = [t for t in self.by_task if weights.get(t, 0) > 0]
        if not self.tasks:
            raise ValueError(f"no examples for any task with weight > 0 (weights {weights})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of {world_size} processes")
        small = {t: len(self.by_task[t]) for t in self.tasks if len(self.by_task[t]) < world_size}
        if small:
            raise ValueError(f"tasks {small} have fewer examples than the {world_size} processes sharing each batch")
        self.weights = [weights[t] for t in self.tasks]
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._skip = 0  # batches of `epoch` already trained on: the next iteration starts after them (once)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> GlobalTaskBatchSampler:
        """Lightning sets each epoch on `loader.batch_sampler.sampler` (the index sampler inside torch's BatchSampler),
        never on a custom batch sampler itself: this one is its own, so it hears of new epochs (without it, every epoch
        repeated the first one's batches)."""
        return self

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Start the next iteration in `epoch` after its first `batches_done` batches (the next epoch from its
        start when the epoch was finished)."""
        if batches_done >= self.num_batches:
            epoch, batches_done = epoch + 1, 0
        self.epoch, self._skip = epoch, batches_done

    def __len__(self) -> int:
        return self.num_batches

    def global_batches(self, epoch: int) -> Iterator[list[int]]:
        """Every batch of `epoch` over all processes, in order."""
        # the key a single process used when each rank drew its own stream: one-process runs keep their data order
        rng = random.Random(f"{self.seed}-0-{epoch}")
        for _ in range(self.num_batches):
            task = rng.choices(self.tasks, self.weights)[0]
            pool = self.by_task[task]
            yield rng.sample(pool, min(self.batch_size, len(pool)))

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        for index, batch in enumerate(self.global_batches(self.epoch)):
            if index >= skip:
                yield batch[self.rank :: self.world_size]


def finished_batches(trainer: Any) -> int:
    """Batches of the current epoch the training loop has finished (optimizer step taken): asked when a checkpoint
    is written, from inside the step's `on_train_batch_end` or later, when the step is counted."""
    if trainer is None:
        return 0
    # typed as the ready/completed tracker; the training loop's is the one that also counts processed batches
    current: Any = trainer.fit_loop.epoch_loop.batch_progress.current
    return int(current.processed)


class ResumableLoader(DataLoader):
    """A DataLoader over a `GlobalTaskBatchSampler` whose position goes into Lightning's checkpoints.

    `batches_done()` says how many batches of the current epoch the training loop has finished; it is asked when a
    checkpoint is written (the loader itself cannot tell: it has already prefetched the next batch)."""

    def __init__(self, *args: Any, batches_done: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    @property
    def task_sampler(self) -> GlobalTaskBatchSampler:
        sampler = self.batch_sampler
        if not isinstance(sampler, GlobalTaskBatchSampler):
            raise TypeError("ResumableLoader needs a GlobalTaskBatchSampler as its batch_sampler")
        return sampler

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.task_sampler.epoch, "batches_done": self.batches_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.task_sampler.resume_at(int(state["epoch"]), int(state["batches_done"]))
