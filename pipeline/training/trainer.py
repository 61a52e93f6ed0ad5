"""The one `L.Trainer` configuration and fit loop every training stage uses (fine-tune, imitation, LayerSkip).

Steps, not epochs, bound training; validation every `val_every_steps` global steps; the task-grouped
`GlobalTaskBatchSampler` slices each global batch per process itself, so Lightning must not wrap it in a
distributed sampler. Under DDP (`trainer.devices` × `num_nodes` > 1) every process runs this same code: the curves
are kept on every process (their values are synced), printed and written by rank zero only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger

from pipeline import tracking
from pipeline.config import TrainingConfig
from pipeline.distributed import is_rank_zero
from pipeline.tracking import RunRef
from pipeline.training.attention import attention_for_training
from pipeline.training.launch import ddp_strategy
from pipeline.training.precision import resolved_precision


def build_trainer(
    cfg: TrainingConfig,
    *,
    callbacks: list[L.Callback],
    checkpoint_dir: Path | None = None,
    tracking_run: RunRef | None = None,
    progress_bar: bool = True,
    unused_parameters: bool = False,
) -> L.Trainer:
    """A checkpoint every 50 steps goes to `checkpoint_dir` when given (written by rank zero); metrics go to the MLflow
    run `tracking_run` when given (Lightning's own logger, pointed at the run `pipeline.tracking` opened: rank zero
    holds it, the other processes get None). `unused_parameters`: some parameters may get no gradient in a step."""
    logger = (
        MLFlowLogger(tracking_uri=tracking_run.uri, run_id=tracking_run.run_id, log_model=False)
        if tracking_run
        else False
    )
    checkpoints = (
        [ModelCheckpoint(dirpath=checkpoint_dir, save_last=True, save_top_k=0, every_n_train_steps=50)]
        if checkpoint_dir
        else []
    )
    hardware = cfg.trainer
    return L.Trainer(
        max_steps=cfg.max_steps,
        max_epochs=-1,
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        num_nodes=hardware.num_nodes,
        strategy=ddp_strategy(hardware, unused_parameters),
        precision=resolved_precision(hardware),  # type: ignore[arg-type]  # one of Lightning's precision strings
        gradient_clip_val=cfg.optimizer.grad_clip,
        # at least one validation, at the end, when the cadence is longer than the run
        val_check_interval=min(cfg.val_every_steps, cfg.max_steps),
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


class TrainingCurve(L.Callback):
    """Keeps the curves in memory (for DVC plots files and stage metrics; MLflow gets them through its logger):
    the training loss of every step and every validation's `val/*` metrics. Prints the loss every `print_every`
    steps: progress bars vanish when output is not a terminal."""

    def __init__(self, print_every: int = 50) -> None:
        self.train_rows: list[dict[str, float]] = []  # step, train_loss
        self.val_rows: list[dict[str, float]] = []  # step, <metric> for every val/<metric>
        self.print_every = print_every
        self.validated_at: int | None = None  # global step of the last validation, on every rank
        self._clock = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None:
            return
        self.train_rows.append({"step": trainer.global_step, "train_loss": float(loss)})
        if trainer.is_global_zero and trainer.global_step % self.print_every == 0:
            now = time.perf_counter()
            rate = (now - self._clock) / self.print_every
            self._clock = now
            print(
                f"  step {trainer.global_step}/{trainer.max_steps} loss {float(loss):.3f} ({rate:.2f} s/step)",
                flush=True,
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated_at = trainer.global_step
            row: dict[str, float] = {"step": trainer.global_step}
            row.update(
                {k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            )
            self.val_rows.append(row)


@dataclass
class FitRun:
    final_metrics: dict[str, float]  # the validation at the last step, as val_<name>
    curve: list[dict[str, float]]  # every validation's metrics
    train_curve: list[dict[str, float]]  # every step's training loss (of the global batch)
    steps: float
    seconds: float
    processes: int  # devices × num_nodes: 1, or the DDP world size
    precision: str  # what the trainer ran in (`auto` resolved), e.g. bf16-mixed


def fit_module(
    module: L.LightningModule,
    cfg: TrainingConfig,
    datamodule: L.LightningDataModule,
    *,
    callbacks: list[L.Callback] | None = None,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
    tracking_run: RunRef | None = None,
    progress_bar: bool = True,
    unused_parameters: bool = False,
) -> FitRun:
    """Train `module` with the shared trainer (resuming from the checkpoint `resume_from` when given) and collect the
    curves; the final metrics are those of a validation at the last step (run once more if the cadence missed it).
    Under DDP every process returns the same curves and metrics."""
    set_threads(cfg.trainer.num_threads)
    curve = TrainingCurve()
    trainer = build_trainer(
        cfg,
        callbacks=[curve, *(callbacks or [])],
        checkpoint_dir=checkpoint_dir,
        tracking_run=tracking_run,
        progress_bar=progress_bar,
        unused_parameters=unused_parameters,
    )
    precision = str(trainer.precision)  # what build_trainer resolved `auto` to, as Lightning's plugin holds it
    with attention_for_training(module, cfg.trainer.accelerator, precision) as attention:
        if is_rank_zero():
            print(
                f"{type(module).__name__}: precision {precision} (trainer.precision {cfg.trainer.precision})"
                f"{f', {attention} attention' if attention else ''}",
                flush=True,
            )
        # on the stage's run, where one is active: what a run trained in, to compare runs by in the MLflow UI
        tags = {f"precision/{type(module).__name__}": precision}
        tracking.set_tags(tags | ({f"attention/{type(module).__name__}": attention} if attention else {}))
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        seconds = time.perf_counter() - started
        if curve.validated_at != trainer.global_step:  # the same on every rank: a validation is a collective under DDP
            trainer.validate(module, datamodule=datamodule, verbose=False)
    final = curve.val_rows[-1] if curve.val_rows else {}
    return FitRun(
        {f"val_{k}": v for k, v in final.items() if k != "step"},
        curve.val_rows,
        curve.train_rows,
        float(trainer.global_step),
        seconds,
        trainer.world_size,
        precision,
    )


@contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """torch's CPU threads set to `num_threads` for the block (0: left as they are), restored afterwards."""
    if not num_threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def set_threads(num_threads: int) -> None:
    """torch's CPU threads per process (0: leave them). OMP_NUM_THREADS too: Lightning's DDP launcher otherwise sets
    every process to cores / processes threads, overriding the configured number."""
    if num_threads:
        torch.set_num_threads(num_threads)
        os.environ["OMP_NUM_THREADS"] = str(num_threads)
