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
    ("setting", "heads", "accelerator", "cpus", "expected"),
    [
        ("auto", 6, "cpu", 2, (1, 2)),  # a process per two cores: one on this 2-core machine
        ("auto", 6, "cpu", 8, (4, 2)),
        ("auto", 6, "cpu", 16, (6, 2)),  # never more processes than heads; the spare cores become threads
        ("auto", 6, "cpu", 1, (1, 1)),
        ("auto", 6, "gpu", 16, (1, 16)),  # one model copy per accelerator
        (1, 6, "cpu", 2, (1, 2)),
        (4, 3, "cpu", 8, (3, 2)),
    ],
)
def test_worker_layout(monkeypatch, setting, heads, accelerator, cpus, expected):
    monkeypatch.setattr(imitation_heads, "available_cpus", lambda: cpus)
    assert worker_layout(setting, heads, TrainerConfig(accelerator=accelerator)) == expected


def test_heads_train_one_after_another_under_ddp(monkeypatch):
    # a worker process would make Lightning re-launch the stage from inside it
    monkeypatch.setattr(imitation_heads, "available_cpus", lambda: 16)
    assert worker_layout("auto", 6, TrainerConfig(accelerator="cpu", devices=2, strategy="ddp")) == (1, 16)


def test_parallel_heads_is_validated():
    with pytest.raises(ConfigError, match="parallel_heads must be auto or"):
        parse_params({"imitation": {"parallel_heads": 0}})
    with pytest.raises(ConfigError, match="DDP"):
        parse_params({"imitation": {"parallel_heads": 2, "trainer": {"devices": 4}}})
