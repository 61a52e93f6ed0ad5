"""Which process of a distributed launch this is, read from the launcher's environment (no torch, no Lightning).

A DDP stage runs once per device: Lightning re-runs the stage script per local device (`LOCAL_RANK`, `NODE_RANK`,
`WORLD_SIZE`), torchrun starts every process itself (`RANK`, `LOCAL_RANK`, `GROUP_RANK`, `WORLD_SIZE`) and SLURM's
srun too (`SLURM_PROCID`, `SLURM_NTASKS`). Only the global rank zero writes a stage's outputs and logs its MLflow
run. The check must hold before any process group exists (MLflow runs are opened before training starts), so it
reads the variables rather than `torch.distributed`.
"""

from __future__ import annotations

import os

# Any of these non-zero means another process than the global rank zero. Lightning's own launcher sets no RANK,
# and torchrun sets no NODE_RANK (its local rank 0 on the second node has LOCAL_RANK=0 but GROUP_RANK=1), so no
# single variable suffices.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def _int_env(name: str) -> int:
    try:
        return int(os.environ.get(name, "0") or 0)
    except ValueError:
        return 0


def is_rank_zero() -> bool:
    """True in a plain (single-process) run and in the global rank zero of a distributed launch."""
    return all(_int_env(name) == 0 for name in RANK_VARIABLES)


def launched_world_size() -> int | None:
    """How many processes an external launcher started: torchrun's (or Lightning's own) WORLD_SIZE, or SLURM_NTASKS
    when srun launched this process (the test Lightning's SLURM detection makes: an interactive or `bash` job name
    means no srun launch); None when no launcher set either."""
    if os.environ.get("WORLD_SIZE"):
        return _int_env("WORLD_SIZE")
    if os.environ.get("SLURM_NTASKS") and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        return _int_env("SLURM_NTASKS")
    return None
