"""train_imitation's plan: which heads it trains, and in how many processes."""

from __future__ import annotations

import pytest

from pipeline.config import TrainerConfig, parse_params
from pipeline.errors import ConfigError
from pipeline.training import imitation_heads
from pipeline.training.imitation_heads import training_plan, worker_layout


def test_training_plan_adds_one_full_loss_head_per_other_fusion():
    cfg = parse_params({"imitation": {"fusion": "average", "variants": ["ce", "ce+cs+kd"]}}).imitation
    assert training_plan(cfg) == [
        ("ce", "ce", "average", False),
        ("ce+cs+kd", "ce+cs+kd", "average", False),
        ("fusion-concat", "ce+cs+kd", "concat", False),
        ("fusion-attention", "ce+cs+kd", "attention", False),
        ("mixed", "ce+cs+kd", "average", True),
    ]
    # without a ce+cs+kd variant, the main fusion's table row needs its own head
    cfg = parse_params({"imitation": {"variants": ["ce"], "fusion_comparison": ["average", "concat"]}}).imitation
    assert [name for name, *_ in training_plan(cfg)] == ["ce", "fusion-average", "fusion-concat", "mixed"]
    cfg = parse_params({"imitation": {"fusion_comparison": []}}).imitation
    assert [name for name, *_ in training_plan(cfg)] == ["ce", "ce+cs", "ce+cs+kd", "mixed"]


@pytest.mark.parametrize(
    ("setting", "heads", "accelerator", "cpus", "cached", "expected"),
    [
        ("auto", 6, "cpu", 2, True, (2, 1)),  # cached heads: a process per core, two on this 2-core machine
        ("auto", 6, "cpu", 2, False, (1, 2)),  # heads that run the backbone: a process per two cores
        ("auto", 6, "cpu", 8, False, (4, 2)),
        ("auto", 6, "cpu", 16, False, (6, 2)),  # never more processes than heads; the spare cores become threads
        ("auto", 6, "cpu", 16, True, (6, 2)),
        ("auto", 6, "cpu", 1, True, (1, 1)),
        ("auto", 6, "gpu", 16, True, (1, 16)),  # one model copy per accelerator
        (1, 6, "cpu", 2, True, (1, 2)),
        (4, 3, "cpu", 8, False, (3, 2)),
    ],
)
def test_worker_layout(monkeypatch, setting, heads, accelerator, cpus, cached, expected):
    monkeypatch.setattr(imitation_heads, "available_cpus", lambda: cpus)
    assert worker_layout(setting, heads, TrainerConfig(accelerator=accelerator), cached=cached) == expected


def test_heads_train_one_after_another_under_ddp(monkeypatch):
    # a worker process would make Lightning re-launch the stage from inside it
    monkeypatch.setattr(imitation_heads, "available_cpus", lambda: 16)
    assert worker_layout("auto", 6, TrainerConfig(accelerator="cpu", devices=2, strategy="ddp"), cached=True) == (1, 16)


def test_parallel_heads_is_validated():
    with pytest.raises(ConfigError, match="parallel_heads must be auto or"):
        parse_params({"imitation": {"parallel_heads": 0}})
    with pytest.raises(ConfigError, match="DDP"):
        parse_params({"imitation": {"parallel_heads": 2, "trainer": {"devices": 4}}})


def test_the_mixed_schedule_trains_with_its_own_steps_and_precision_and_the_frozen_heads_with_the_blocks():
    cfg = parse_params(
        {"imitation": {"max_steps": 1250, "val_every_steps": 625, "mixed": {"max_steps": 150, "precision": "auto"}}}
    ).imitation
    frozen, *_, mixed = (imitation_heads.PlannedHead(*row) for row in training_plan(cfg))
    assert imitation_heads.head_training_config(cfg, frozen) == cfg
    trained = imitation_heads.head_training_config(cfg, mixed)
    assert (trained.max_steps, trained.val_every_steps, trained.trainer.precision) == (150, 150, "auto")
    assert cfg.trainer.precision == "32-true"  # the frozen heads' own, left as it was
    unbounded = cfg.model_copy(update={"mixed": cfg.mixed.model_copy(update={"max_steps": None})})
    assert imitation_heads.head_training_config(unbounded, mixed).max_steps == 1250
