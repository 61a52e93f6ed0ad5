"""Fine-tuning the backbone: train (tiny preset) or fine-tune (pretrained) the VLM with cross-entropy on
caption, description and answer tokens (paper eq. 1)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

from pipeline.config import FinetuneConfig, TrainingConfig
from pipeline.data.datasets import IGNORE_INDEX
from pipeline.data.prepared import SplitData
from pipeline.data.prompts import PromptBuilder
from pipeline.distributed import is_rank_zero
from pipeline.io import atomic_write_text
from pipeline.models.adapters import adapter_for
from pipeline.tracking import RunRef
from pipeline.training.datamodule import VLMDataModule
from pipeline.training.global_batch import token_share
from pipeline.training.optimizer import adamw_cosine, decay_groups
from pipeline.training.trainer import fit_module


class FinetuneModule(L.LightningModule):
    """Cross-entropy on the target tokens of task-mixed batches. `forward_inputs` turns a collated batch into the
    model's inputs (default: the backbone adapter's)."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainingConfig,
        forward_inputs: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.forward_inputs = forward_inputs or adapter_for(model).forward_inputs

    @property
    def unused_parameters(self) -> bool:
        """A trainable vision tower may have layers past the one whose features the model reads (LLaVA-1.5:
        vision_feature_layer -2): they get no gradient, which DDP must be told to expect."""
        return isinstance(self.cfg, FinetuneConfig) and self.cfg.train_vision_tower

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**self.forward_inputs(batch)).loss * token_share(self, batch["labels"])
        size = batch["input_ids"].shape[0]
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=size, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model(**self.forward_inputs(batch))
        labels = batch["labels"][:, 1:]
        predicted = out.logits[:, : labels.shape[1]].argmax(-1)
        scored = labels != IGNORE_INDEX
        accuracy = (predicted[scored] == labels[scored]).float().mean()
        size = batch["input_ids"].shape[0]
        self.log("val/loss", out.loss, sync_dist=True, batch_size=size)
        self.log("val/token_accuracy", accuracy, sync_dist=True, batch_size=size)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        return adamw_cosine(
            decay_groups(self.model.parameters(), self.cfg.optimizer.weight_decay),
            self.cfg.optimizer,
            self.cfg.max_steps,
        )


@dataclass
class FinetuneResult:
    metrics: dict[str, float]
    loss_curve: list[dict[str, float]]  # step, train_loss


def run_fingerprint(*parts: object) -> str:
    """Identifies a training configuration: a checkpoint is only resumed by the run that wrote it."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fit_finetune(
    model: torch.nn.Module,
    builder: PromptBuilder,
    image_processor: Any,
    splits: dict[str, SplitData],
    cfg: FinetuneConfig,
    *,
    seed: int,
    checkpoint_dir: Path,
    fingerprint: str,
    tracking_run: RunRef | None = None,
    callbacks: list[L.Callback] | None = None,
    before_fresh_start: Callable[[], dict[str, float]] | None = None,
) -> FinetuneResult:
    """Train with Lightning; resume from `checkpoint_dir/last.ckpt` when it was written by this configuration.

    Under DDP every process reads the same decision from the files; only rank zero changes them (drops another
    configuration's checkpoints, then stamps the directory: in that order, a process reading meanwhile also sees
    nothing to resume). The checkpoint must be on storage every node reads.

    `before_fresh_start` runs before a training that starts from step 0 (a resumed one skips it: its checkpoint holds
    what it did) and its metrics join the result's: the tiny presets' vision pre-training."""
    L.seed_everything(seed, workers=True, verbose=False)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stamp = checkpoint_dir / "fingerprint.txt"
    last = checkpoint_dir / "last.ckpt"
    resume = last if last.exists() and stamp.exists() and stamp.read_text() == fingerprint else None
    if resume is None and is_rank_zero():
        for stale in checkpoint_dir.glob("*.ckpt"):
            stale.unlink()
        atomic_write_text(stamp, fingerprint)
    if cfg.max_steps == 0:  # a pretrained checkpoint used as it is
        model.eval()
        return FinetuneResult({"steps": 0.0, "train_seconds": 0.0, "resumed": 0.0}, [])
    vision = adapter_for(model).vision_encoder
    pretraining = before_fresh_start() if before_fresh_start is not None and resume is None else {}
    if vision is not None:
        vision.requires_grad_(cfg.train_vision_tower)
    module = FinetuneModule(model, cfg)
    run = fit_module(
        module,
        cfg,
        VLMDataModule(splits, builder, image_processor, cfg, seed),
        callbacks=callbacks,
        checkpoint_dir=checkpoint_dir,
        resume_from=resume,
        tracking_run=tracking_run,
        unused_parameters=module.unused_parameters,
    )
    model.eval()
    train_losses = [r["train_loss"] for r in run.train_curve]
    metrics = {
        "steps": run.steps,
        "train_seconds": run.seconds,
        "train_loss_last50": sum(train_losses[-50:]) / max(1, len(train_losses[-50:])),
        "val_loss": run.final_metrics["val_loss"],
        "val_token_accuracy": run.final_metrics["val_token_accuracy"],
        "resumed": float(resume is not None),
        "processes": float(run.processes),
        **pretraining,
    }
    return FinetuneResult(metrics, run.train_curve)
