"""The one `L.Trainer` configuration every training stage uses (fine-tune, imitation, LayerSkip).

Steps, not epochs, bound training; validation every `val_check_interval` global steps; the task-grouped
`TaskBatchSampler` is rank-aware itself, so Lightning must not wrap it in a distributed sampler.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger


def build_trainer(
    cfg,
    *,
    val_check_interval: int,
    callbacks: list[L.Callback],
    checkpoint_dir: Path | None = None,
    mlflow_uri: str | None = None,
    mlflow_run_id: str | None = None,
    progress_bar: bool = True,
) -> L.Trainer:
    """`cfg` carries max_steps, accelerator, devices, strategy, precision and grad_clip. A checkpoint every 50
    steps goes to `checkpoint_dir` when given; metrics go to the MLflow run `mlflow_run_id` when given."""
    logger = MLFlowLogger(tracking_uri=mlflow_uri, run_id=mlflow_run_id, log_model=False) if mlflow_run_id else False
    checkpoints = (
        [ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0, every_n_train_steps=50)] if checkpoint_dir else []
    )
    return L.Trainer(
        max_steps=cfg.max_steps,
        max_epochs=-1,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        precision=cfg.precision,
        gradient_clip_val=cfg.grad_clip,
        val_check_interval=val_check_interval,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        # Short runs (tests, smoke configs) must still log a loss curve
        log_every_n_steps=max(1, min(10, cfg.max_steps // 5)),
        logger=logger,
        use_distributed_sampler=False,
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        enable_checkpointing=bool(checkpoints),
        callbacks=[*checkpoints, *callbacks],
    )
