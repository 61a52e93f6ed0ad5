"""What a stage checks before Lightning starts processes: one line naming the knob and the fix for every launch that
cannot work; and the DDP strategy a module with parameters that may get no gradient trains with."""

from __future__ import annotations

import pytest

from pipeline.config import TrainerConfig
from pipeline.errors import ConfigError
from pipeline.training import launch
from pipeline.training.launch import check_launch, ddp_strategy

LAUNCHERS = ("WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_NAME", "CUDA_VISIBLE_DEVICES")


@pytest.fixture
def machine(monkeypatch):
    """A node with 8 CPU cores, no GPU, and no launcher around."""
    for name in LAUNCHERS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launch, "available_cpus", lambda: 8)
    monkeypatch.setattr(launch.torch.cuda, "device_count", lambda: 0)
    return monkeypatch


def failure(cfg: TrainerConfig, batch_size: int | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        check_launch(cfg, "finetune.trainer", batch_size)
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


def test_a_launch_that_fits_returns_its_process_count(machine):
    assert check_launch(TrainerConfig(), "finetune.trainer", 32) == 1
    assert check_launch(TrainerConfig(devices=4, strategy="ddp"), "finetune.trainer", 32) == 4
    machine.setenv("WORLD_SIZE", "8")  # torchrun --nnodes 2 --nproc-per-node 4, on either node
    assert check_launch(TrainerConfig(devices=4, num_nodes=2, strategy="ddp"), "finetune.trainer", 32) == 8


def test_more_devices_than_the_node_shows(machine):
    message = failure(TrainerConfig(devices=16, strategy="ddp"))
    assert "finetune.trainer.devices is 16 but this node shows 8 CPU core(s)" in message and "at most 8" in message
    machine.setenv("CUDA_VISIBLE_DEVICES", "")
    message = failure(TrainerConfig(accelerator="gpu", devices=2, strategy="ddp"))
    assert "shows 0 GPU(s) (CUDA_VISIBLE_DEVICES=)" in message


def test_the_launcher_must_have_started_devices_times_nodes(machine):
    machine.setenv("WORLD_SIZE", "3")
    message = failure(TrainerConfig(devices=2, num_nodes=2, strategy="ddp"))
    assert "2 × 2 = 4 process(es), but the launcher started 3" in message and "torchrun --nproc-per-node 2" in message
    machine.delenv("WORLD_SIZE")
    machine.setenv("SLURM_NTASKS", "2")  # srun with --ntasks 2
    machine.setenv("SLURM_JOB_NAME", "train")
    assert "the launcher started 2" in failure(TrainerConfig(devices=4, strategy="ddp"))
    machine.setenv("SLURM_JOB_NAME", "interactive")  # an interactive allocation, not an srun launch
    assert check_launch(TrainerConfig(devices=4, strategy="ddp"), "finetune.trainer") == 4


def test_several_nodes_need_a_launcher(machine):
    message = failure(TrainerConfig(devices=2, num_nodes=2, strategy="ddp"))
    assert "finetune.trainer.num_nodes is 2: start the stage on every node with torchrun or srun" in message


def test_the_global_batch_must_divide_among_the_processes(machine):
    message = failure(TrainerConfig(devices=3, strategy="ddp"), batch_size=32)
    assert "global batch_size 32 does not divide among them; make the batch size a multiple of 3" in message


def test_spawning_strategies_are_refused(machine):
    message = failure(TrainerConfig(devices=2, strategy="ddp_spawn"))
    assert "'ddp_spawn'" in message and "use strategy: ddp" in message
    assert check_launch(TrainerConfig(devices=1, strategy="ddp_spawn"), "finetune.trainer") == 1


def test_unused_parameters_switch_ddp_to_finding_them(machine):
    ddp = TrainerConfig(devices=2, strategy="ddp")
    assert ddp_strategy(ddp, unused_parameters=True) == "ddp_find_unused_parameters_true"
    assert ddp_strategy(ddp, unused_parameters=False) == "ddp"
    assert ddp_strategy(TrainerConfig(devices=2), unused_parameters=True) == "ddp_find_unused_parameters_true"
    assert ddp_strategy(TrainerConfig(), unused_parameters=True) == "auto"  # one process: no DDP at all
    assert ddp_strategy(TrainerConfig(devices=2, strategy="fsdp"), unused_parameters=True) == "fsdp"


def test_devices_must_be_positive():
    from pipeline.config import parse_params

    with pytest.raises(ConfigError, match=r"finetune.trainer.devices"):
        parse_params({"finetune": {"trainer": {"devices": 0}}})
