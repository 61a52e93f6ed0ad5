"""Stage `finetune`: train (tiny preset) or fine-tune (pretrained) the VLM with cross-entropy on
caption, description and answer tokens (paper eq. 1)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from pipeline.config import FinetuneConfig
from pipeline.data.datasets import IGNORE_INDEX
from pipeline.data.examples import SplitData
from pipeline.data.prompts import PromptBuilder
from pipeline.models.adapter import adapter_for
from pipeline.training.datamodule import VLMDataModule
from pipeline.training.trainer import build_trainer


class FinetuneModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, cfg: FinetuneConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(**batch).loss
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.model(**batch)
        predicted = out.logits[:, :-1].argmax(-1)
        labels = batch["labels"][:, 1:]
        scored = labels != IGNORE_INDEX
        accuracy = (predicted[scored] == labels[scored]).float().mean()
        size = batch["input_ids"].shape[0]
        self.log("val/loss", out.loss, sync_dist=True, batch_size=size)
        self.log("val/token_accuracy", accuracy, sync_dist=True, batch_size=size)

    def configure_optimizers(self):
        # No weight decay on norms and biases, the usual transformer recipe.
        decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.cfg.lr,
        )
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            optimizer,
            num_warmup_steps=self.cfg.warmup_steps,
            num_training_steps=self.cfg.max_steps,
            min_lr_rate=self.cfg.min_lr_ratio,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@dataclass
class FinetuneResult:
    metrics: dict[str, float]
    loss_curve: list[dict[str, float]]  # step, train/loss (and val/* where evaluated)


class _LossCurve(L.Callback):
    """Keeps the logged curve in memory for the DVC plots file (MLflow gets it through its logger),
    and prints a line every `print_every` steps: progress bars vanish when output is not a terminal."""

    def __init__(self, print_every: int = 50) -> None:
        self.rows: list[dict[str, float]] = []
        self.print_every = print_every
        self._clock = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None or not trainer.is_global_zero:
            return
        self.rows.append({"step": trainer.global_step, "train_loss": float(loss)})
        if trainer.global_step % self.print_every == 0:
            now = time.perf_counter()
            rate = (now - self._clock) / self.print_every
            self._clock = now
            print(f"step {trainer.global_step}/{trainer.max_steps} loss {float(loss):.3f} ({rate:.2f} s/step)", flush=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking and "val/loss" in trainer.callback_metrics:
            self.rows.append(
                {
                    "step": trainer.global_step,
                    "val_loss": float(trainer.callback_metrics["val/loss"]),
                    "val_token_accuracy": float(trainer.callback_metrics["val/token_accuracy"]),
                }
            )


def run_fingerprint(*parts: object) -> str:
    """Identifies a training configuration: a checkpoint is only resumed by the run that wrote it."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fit_finetune(
    model: torch.nn.Module,
    builder: PromptBuilder,
    image_processor,
    splits: dict[str, SplitData],
    cfg: FinetuneConfig,
    *,
    seed: int,
    checkpoint_dir: Path,
    fingerprint: str,
    mlflow_uri: str | None = None,
    mlflow_run_id: str | None = None,
    callbacks: list[L.Callback] | None = None,
) -> FinetuneResult:
    """Train with Lightning; resume from `checkpoint_dir/last.ckpt` when it was written by this configuration."""
    L.seed_everything(seed, workers=True, verbose=False)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stamp = checkpoint_dir / "fingerprint.txt"
    last = checkpoint_dir / "last.ckpt"
    resume = last if last.exists() and stamp.exists() and stamp.read_text() == fingerprint else None
    if resume is None:
        for stale in checkpoint_dir.glob("*.ckpt"):
            stale.unlink()
        stamp.write_text(fingerprint)

    curve = _LossCurve()
    trainer = build_trainer(
        cfg,
        val_check_interval=cfg.val_every_steps,
        callbacks=[curve, *(callbacks or [])],
        checkpoint_dir=checkpoint_dir,
        mlflow_uri=mlflow_uri,
        mlflow_run_id=mlflow_run_id,
    )
    vision = adapter_for(model).vision_encoder
    if vision is not None:
        vision.requires_grad_(cfg.train_vision_tower)
    module = FinetuneModule(model, cfg)
    data = VLMDataModule(splits, builder, image_processor, cfg, seed)
    started = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    seconds = time.perf_counter() - started
    validation = trainer.validate(module, datamodule=data, verbose=False)[0]
    model.eval()
    train_losses = [r["train_loss"] for r in curve.rows if "train_loss" in r]
    metrics = {
        "steps": float(trainer.global_step),
        "train_seconds": seconds,
        "train_loss_last50": sum(train_losses[-50:]) / max(1, len(train_losses[-50:])),
        "val_loss": float(validation["val/loss"]),
        "val_token_accuracy": float(validation["val/token_accuracy"]),
        "resumed": float(resume is not None),
    }
    return FinetuneResult(metrics, curve.rows)
