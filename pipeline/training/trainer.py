"""The one `L.Trainer` configuration every training stage uses (fine-tune, imitation, LayerSkip).

Steps, not epochs, bound training; validation every `val_check_interval` global steps; the task-grouped
`TaskBatchSampler` is rank-aware itself, so Lightning must not wrap it in a distributed sampler.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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


class ValidationCurve(L.Callback):
    """Collects every validation's `val/*` metrics as a row (the curve) and prints the loss every `print_every`
    steps: progress bars vanish when output is not a terminal."""

    def __init__(self, print_every: int = 50) -> None:
        self.rows: list[dict[str, float]] = []
        self.print_every = print_every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero and trainer.global_step % self.print_every == 0:
            loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
            print(f"  step {trainer.global_step}/{trainer.max_steps} loss {loss:.3f}", flush=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            row = {"step": trainer.global_step}
            row.update({k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
            self.rows.append(row)


@dataclass
class FitRun:
    final_metrics: dict[str, float]  # the last validation's metrics as val_<name>
    curve: list[dict[str, float]]  # every validation's metrics
    steps: float
    seconds: float


def fit_module(
    module: L.LightningModule,
    cfg,
    datamodule: L.LightningDataModule,
    *,
    callbacks: list[L.Callback] | None = None,
    checkpoint_dir: Path | None = None,
    mlflow_uri: str | None = None,
    mlflow_run_id: str | None = None,
    progress_bar: bool = True,
) -> FitRun:
    """Train `module` with the shared trainer (validation every `cfg.val_every_steps`) and collect the curve:
    what the imitation and LayerSkip trainings share."""
    curve = ValidationCurve()
    trainer = build_trainer(
        cfg,
        val_check_interval=min(cfg.val_every_steps, cfg.max_steps),
        callbacks=[curve, *(callbacks or [])],
        checkpoint_dir=checkpoint_dir,
        mlflow_uri=mlflow_uri,
        mlflow_run_id=mlflow_run_id,
        progress_bar=progress_bar,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    seconds = time.perf_counter() - started
    final = curve.rows[-1] if curve.rows else {}
    return FitRun({f"val_{k}": v for k, v in final.items() if k != "step"}, curve.rows, float(trainer.global_step), seconds)
