"""The one optimizer and learning-rate schedule every training uses (fine-tune, imitation, LayerSkip)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from pipeline.config import OptimizerConfig


def decay_groups(parameters: Iterable[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: weight decay on matrices, none on norms and biases (the usual
    transformer recipe)."""
    trainable = [p for p in parameters if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


def adamw_cosine(groups: list[dict[str, Any]], cfg: OptimizerConfig, max_steps: int) -> OptimizerLRSchedulerConfig:
    """AdamW over `groups` (a group's own `lr` wins over `cfg.lr`) with linear warm-up and a cosine decay to
    `cfg.min_lr_ratio` of each group's rate at `max_steps`, stepped every optimizer step: what Lightning's
    `configure_optimizers` returns."""
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=max_steps, min_lr_rate=cfg.min_lr_ratio
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
