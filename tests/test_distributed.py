"""Which process writes: the global rank zero of whatever launched the stage (Lightning, torchrun, srun)."""

from __future__ import annotations

import pytest

from pipeline.distributed import RANK_VARIABLES, is_rank_zero, launched_world_size


@pytest.fixture
def plain(monkeypatch):
    for name in (*RANK_VARIABLES, "WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("environment", "zero"),
    [
        ({}, True),  # a plain run
        ({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"}, True),  # Lightning's launcher, the main process
        ({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}, False),  # Lightning's re-run of the script
        ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "WORLD_SIZE": "4"}, True),  # torchrun, node 0
        ({"RANK": "2", "LOCAL_RANK": "0", "GROUP_RANK": "1", "WORLD_SIZE": "4"}, False),  # torchrun, node 1's first
        ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, False),  # srun
    ],
)
def test_only_the_global_rank_zero_is_rank_zero(plain, environment, zero):
    for name, value in environment.items():
        plain.setenv(name, value)
    assert is_rank_zero() is zero


def test_the_launched_world_comes_from_torchrun_or_srun(plain):
    assert launched_world_size() is None
    plain.setenv("SLURM_NTASKS", "8")
    plain.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: no srun launch
    assert launched_world_size() is None
    plain.setenv("SLURM_JOB_NAME", "train")
    assert launched_world_size() == 8
    plain.setenv("WORLD_SIZE", "4")
    assert launched_world_size() == 4
