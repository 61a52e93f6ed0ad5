"""The training batch order: one stream of global batches that processes slice, that a resume continues, and that
one process sees as before; in Lightning, a run stopped after its checkpoint resumes with the next batch."""

from __future__ import annotations

import pytest

from pipeline.training.samplers import GlobalTaskBatchSampler

TASKS = ["caption"] * 60 + ["vqa"] * 30 + ["description"] * 10
WEIGHTS = {"caption": 0.5, "vqa": 0.3, "description": 0.2}


def sampler(**kwargs) -> GlobalTaskBatchSampler:
    return GlobalTaskBatchSampler(TASKS, WEIGHTS, **{"batch_size": 8, "num_batches": 12, "seed": 3, **kwargs})


def test_processes_slice_one_stream_of_global_batches():
    whole = list(sampler())
    assert len(whole) == 12 and all(len({TASKS[i] for i in batch}) == 1 for batch in whole)
    assert whole == list(sampler())  # deterministic
    for world in (2, 4):
        parts = [list(sampler(rank=r, world_size=world)) for r in range(world)]
        for step, batch in enumerate(whole):
            slices = [part[step] for part in parts]
            assert sorted(i for s in slices for i in s) == sorted(batch)  # the same examples, each once
            assert {len(s) for s in slices} == {len(batch) // world}  # an equal share each
    other_epoch = sampler()
    other_epoch.set_epoch(1)
    assert list(other_epoch) != whole


def test_resume_continues_the_epoch_then_starts_the_next():
    full = sampler()
    epoch0 = list(full)
    full.set_epoch(1)
    epoch1 = list(full)
    resumed = sampler(rank=1, world_size=2)
    resumed.resume_at(0, 5)
    assert list(resumed) == [batch[1::2] for batch in epoch0[5:]]
    assert list(resumed) == [batch[1::2] for batch in epoch0]  # the skip applies to one iteration only
    finished = sampler()
    finished.resume_at(0, 12)  # a checkpoint at the epoch's last batch: the next epoch, from its start
    assert finished.epoch == 1 and list(finished) == epoch1


def test_a_task_with_fewer_examples_than_processes_is_refused():
    with pytest.raises(ValueError, match="fewer examples than the 16 processes"):
        GlobalTaskBatchSampler(TASKS, WEIGHTS, 16, 4, world_size=16)
    with pytest.raises(ValueError, match="rank 2 is not one of 2"):
        GlobalTaskBatchSampler(TASKS, WEIGHTS, 8, 4, rank=2, world_size=2)


def test_batches_are_single_task_and_drawn_by_weight():
    tasks = ["caption"] * 600 + ["vqa"] * 300 + ["description"] * 100
    weights = {"caption": 0.5, "vqa": 0.5, "description": 0.0}
    batches = list(GlobalTaskBatchSampler(tasks, weights, batch_size=8, num_batches=400, seed=1))
    assert len(batches) == 400 and all(len(b) == 8 for b in batches)
    kinds = [{tasks[i] for i in b} for b in batches]
    assert all(len(k) == 1 for k in kinds)  # one task per batch
    share_vqa = sum(k == {"vqa"} for k in kinds) / len(kinds)
    assert 0.4 < share_vqa < 0.6 and not any(k == {"description"} for k in kinds)
