"""What a stage checks before Lightning starts processes, and the DDP strategy it then asks for.

Every stage that runs under a `TrainerConfig` (the training stages, and select_layer / evaluate, which share their
work out) calls `check_launch` first, so a launch that cannot work fails at once, in one line naming the knob and
the fix, instead of after minutes of loading or as a hang in a collective:

- devices × num_nodes against what this node shows (GPUs, CPU cores) and what a launcher started (torchrun's
  WORLD_SIZE, srun's SLURM_NTASKS);
- several nodes need such a launcher: Lightning starts the processes of one node only;
- spawn-based strategies run the stage's work in processes that return nothing to it (curves, trained modules
  stay in the children): the stage asks for `ddp`, where Lightning re-runs the stage script once per device;
- the global batch must divide among the processes.
"""

from __future__ import annotations

import os

import torch

from pipeline.config import TrainerConfig
from pipeline.distributed import launched_world_size
from pipeline.errors import ConfigError

SPAWNING = ("spawn", "fork", "notebook")  # parts of Lightning strategy names that start processes in-process


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_devices(accelerator: str) -> int:
    """Devices of `accelerator` this process can use: GPUs (after CUDA_VISIBLE_DEVICES), or CPU cores."""
    if accelerator in ("gpu", "cuda"):
        return torch.cuda.device_count()
    if accelerator == "mps":
        return int(torch.backends.mps.is_available())
    if accelerator == "auto":
        return torch.cuda.device_count() or available_cpus()
    return available_cpus()


def devices_per_node(cfg: TrainerConfig) -> int:
    """`devices` resolved as Lightning resolves it: auto is every GPU, or one CPU process."""
    if cfg.devices != "auto":
        return int(cfg.devices)
    if cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available()):
        return max(1, torch.cuda.device_count())
    return 1


def planned_processes(cfg: TrainerConfig) -> int:
    return devices_per_node(cfg) * cfg.num_nodes


def check_launch(cfg: TrainerConfig, knob: str, batch_size: int | None = None) -> int:
    """Raise a `ConfigError` naming `knob` (e.g. `finetune.trainer`) when this launch cannot run as configured;
    return the number of processes (devices × num_nodes)."""
    devices, processes = devices_per_node(cfg), planned_processes(cfg)
    where = f"{knob}: devices × num_nodes = {devices} × {cfg.num_nodes} = {processes} process(es)"
    if processes > 1 and any(part in cfg.strategy for part in SPAWNING):
        raise ConfigError(
            f"{knob}.strategy {cfg.strategy!r} runs the work in spawned processes whose results never reach the "
            f"stage; use strategy: ddp (Lightning re-runs the stage once per device)"
        )
    visible = visible_devices(cfg.accelerator)
    if devices > visible:
        kind = "GPU(s)" if cfg.accelerator in ("gpu", "cuda", "mps") else "CPU core(s)"
        hint = (
            f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})"
            if "CUDA_VISIBLE_DEVICES" in os.environ
            else ""
        )
        raise ConfigError(
            f"{knob}.devices is {devices} but this node shows {visible} {kind}{hint}; "
            f"set {knob}.devices to at most {visible} or run on a node with more"
        )
    launched = launched_world_size()
    if launched is not None and launched != processes:
        raise ConfigError(
            f"{where}, but the launcher started {launched} (WORLD_SIZE or SLURM_NTASKS); start devices × num_nodes "
            f"processes (torchrun --nproc-per-node {devices} --nnodes {cfg.num_nodes}) or change {knob}"
        )
    if cfg.num_nodes > 1 and launched is None:
        raise ConfigError(
            f"{knob}.num_nodes is {cfg.num_nodes}: start the stage on every node with torchrun or srun "
            f"(README, 'Several GPUs and nodes'); a plain run starts the processes of one node only"
        )
    if batch_size is not None and batch_size % processes:
        raise ConfigError(
            f"{where}, and the global batch_size {batch_size} does not divide among them; "
            f"make the batch size a multiple of {processes}"
        )
    return processes


def ddp_strategy(cfg: TrainerConfig, unused_parameters: bool) -> str:
    """The Lightning strategy name to train with. A module some of whose parameters may get no gradient in a step
    (LayerSkip's dropped layers, the mixed schedule's backbone once frozen) needs DDP to look for unused parameters,
    else the second step fails ("Expected to have finished reduction in the prior iteration"); the search costs a
    graph traversal per step, so the others keep plain DDP."""
    distributed = planned_processes(cfg) > 1
    if unused_parameters and distributed and cfg.strategy in ("ddp", "auto"):
        return "ddp_find_unused_parameters_true"
    return cfg.strategy
