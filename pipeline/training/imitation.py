"""Training the imitation network (paper eqs. 2–4) on a frozen backbone, or on the mixed schedule.

- *frozen*: the backbone never changes (no gradients, not in the optimizer, run under `no_grad`); only
  the imitation network (and a trainable fusion) learn.
- *mixed*: for the first `joint_epochs` epochs the backbone trains too, with its own cross-entropy
  (eq. 1) plus the draft losses flowing into its first `n` layers; then it is frozen and only the
  imitation network trains on.

Validation logs, per check: each loss term, the draft's top-1 agreement with the full model's greedy
token (with and without the imitation network), and — by decoding validation prompts with the
self-speculative decoder — the end-to-end acceptance rate and mean accepted length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn

from pipeline.config import ImitationConfig
from pipeline.data.prepared import SplitData
from pipeline.data.prompts import PromptBuilder
from pipeline.decoding import DecodingStats, SelfSpeculativeDecoder
from pipeline.evaluation.prompts import validation_prompts
from pipeline.models.adapters import BackboneAdapter, adapter_for
from pipeline.models.deep_layer_fusion import fused_layer_count
from pipeline.models.imitation import ImitationNetwork, as_draft_head
from pipeline.tracking import RunRef
from pipeline.training import imitation_losses as losses
from pipeline.training.datamodule import VLMDataModule
from pipeline.training.feature_cache import CachedFeatures
from pipeline.training.global_batch import token_share
from pipeline.training.imitation_cached import CachedFeatureDataModule, CachedImitationModule
from pipeline.training.optimizer import adamw_cosine
from pipeline.training.trainer import fit_module


@dataclass
class DraftPass:
    """One forward pass of backbone + draft over a batch."""

    imitation: torch.Tensor  # imitation network output at layer n
    draft_logits: torch.Tensor
    early_exit_logits: torch.Tensor  # layer n straight to the final norm + LM head (no imitation)
    full_logits: torch.Tensor
    target: torch.Tensor  # fused last-layer states (cosine target)


def draft_pass(
    adapter: BackboneAdapter,
    head: nn.Module,
    fusion: nn.Module,
    batch: dict,
    draft_layers: int,
    fusion_layers: int,
    backbone_grad: bool,
) -> DraftPass:
    mask = batch["attention_mask"]
    with torch.set_grad_enabled(backbone_grad and torch.is_grad_enabled()):
        embeds, encoder = adapter.batch_prefix(batch)
        shallow = adapter.run_layers(embeds, 0, draft_layers, attention_mask=mask, encoder=encoder)
        deep, states = adapter.run_layers(
            shallow, draft_layers, adapter.num_layers, attention_mask=mask, collect_hidden=True, encoder=encoder
        )
        full_logits = adapter.logits(deep)
    imitation = head(shallow)
    return DraftPass(
        imitation=imitation,
        draft_logits=adapter.logits(imitation),
        early_exit_logits=adapter.logits(shallow.detach()),
        full_logits=full_logits,
        target=fusion(states[-fusion_layers:]),
    )


class ImitationModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        head: ImitationNetwork,
        fusion: nn.Module,
        cfg: ImitationConfig,
        *,
        draft_layers: int,
        loss_weights: dict[str, float],
        joint_steps: int = 0,
        val_prompts: list[dict] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.fusion = fusion
        self.cfg = cfg
        self.draft_layers = draft_layers
        self.loss_weights = loss_weights
        self.joint_steps = joint_steps
        self.val_prompts = val_prompts or []
        self.adapter = adapter_for(model)
        self._set_backbone_trainable(joint_steps > 0)
        if self.loss_weights.get("cs", 0) <= 0:
            # without the cosine term the fusion's output reaches no loss: left trainable, DDP would wait for its
            # gradients forever ("Expected to have finished reduction"); frozen, it is simply not trained (as before)
            fusion.requires_grad_(False)

    @property
    def unused_parameters(self) -> bool:
        """Whether some trainable parameters may get no gradient in a step: the mixed schedule's backbone, once
        frozen mid-run, stays registered with DDP."""
        return self.joint_steps > 0

    def _set_backbone_trainable(self, trainable: bool) -> None:
        self.model.requires_grad_(trainable)
        vision = self.adapter.vision_encoder
        if vision is not None:  # frozen in every schedule, as in fine-tuning (and LLaVA-1.5)
            vision.requires_grad_(False)
        self.model.train(trainable)
        self.backbone_trainable = trainable

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.backbone_trainable and self.global_step >= self.joint_steps:
            self._set_backbone_trainable(False)  # mixed schedule: from here on only the draft learns

    def _losses(self, batch: dict, out: DraftPass) -> dict[str, torch.Tensor]:
        labels = batch["labels"]
        terms = {"ce": losses.cross_entropy(out.draft_logits, labels)}
        if self.loss_weights.get("cs", 0) > 0:
            terms["cs"] = losses.cosine(out.imitation, out.target, labels)
        if self.loss_weights.get("kd", 0) > 0:
            terms["kd"] = losses.distillation(out.draft_logits, out.full_logits.detach(), labels, self.cfg.temperature)
        return terms

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = draft_pass(
            self.adapter,
            self.head,
            self.fusion,
            batch,
            self.draft_layers,
            self.cfg.fusion_layers,
            self.backbone_trainable,
        )
        terms = self._losses(batch, out)
        # `sum` starts from the int 0, which typeshed keeps in its result type; `terms` always holds "ce"
        loss = cast(torch.Tensor, sum(self.loss_weights[k] * v for k, v in terms.items()))
        if self.backbone_trainable:
            terms["backbone_ce"] = losses.cross_entropy(out.full_logits, batch["labels"])
            loss = loss + terms["backbone_ce"]
        # every term is a mean over the same scored tokens: one factor makes each the global batch's (synced values)
        share = token_share(self, batch["labels"])
        size = batch["input_ids"].shape[0]
        self.log("train/loss", loss * share, on_step=True, prog_bar=True, batch_size=size, sync_dist=True)
        for name, value in terms.items():
            self.log(f"train/{name}", value * share, on_step=True, batch_size=size, sync_dist=True)
        return loss * share

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = draft_pass(self.adapter, self.head, self.fusion, batch, self.draft_layers, self.cfg.fusion_layers, False)
        size = batch["input_ids"].shape[0]
        for name, value in self._losses(batch, out).items():
            self.log(f"val/{name}", value, batch_size=size, sync_dist=True)
        labels = batch["labels"]
        self.log(
            "val/agreement",
            losses.agreement(out.draft_logits, out.full_logits, labels),
            batch_size=size,
            sync_dist=True,
        )
        self.log(
            "val/agreement_early_exit",
            losses.agreement(out.early_exit_logits, out.full_logits, labels),
            batch_size=size,
            sync_dist=True,
        )

    def on_validation_epoch_end(self) -> None:
        if not self.val_prompts or self.trainer.sanity_checking:
            return
        stats = decode_acceptance(self.model, self.head, self.draft_layers, self.val_prompts)
        self.log("val/acceptance_rate", stats.acceptance_rate, rank_zero_only=True)
        self.log("val/mean_accepted_length", stats.mean_accepted_length, rank_zero_only=True)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = self.cfg.optimizer
        draft = [p for p in [*self.head.parameters(), *self.fusion.parameters()] if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": draft, "lr": optimizer.lr, "weight_decay": optimizer.weight_decay}]
        backbone = [p for p in self.model.parameters() if p.requires_grad]
        if backbone:  # the mixed schedule's joint phase: the backbone at its own rate, without weight decay
            groups.append({"params": backbone, "lr": self.cfg.mixed.backbone_lr, "weight_decay": 0.0})
        return adamw_cosine(groups, optimizer, self.cfg.max_steps)


@torch.no_grad()
def decode_acceptance(
    model: nn.Module, head: ImitationNetwork | None, draft_layers: int, prompts: list[dict], draft_len: int = 5
) -> DecodingStats:
    """Self-speculative decoding of `prompts` (dicts with input_ids, pixel_values, max_new_tokens): summed stats."""
    was_training = {m: m.training for m in (model, head) if m is not None}
    model.eval()
    if head is not None:
        head.eval()
    decoder = SelfSpeculativeDecoder(model, draft_layers, None if head is None else as_draft_head(head), draft_len)
    total = None
    for p in prompts:
        stats = decoder.generate(p["input_ids"], p["max_new_tokens"], pixel_values=p["pixel_values"]).stats
        total = stats if total is None else total.merge(stats)
    if head is not None:
        head.stop_caching()
    for module, mode in was_training.items():
        module.train(mode)
    if total is None:
        raise ValueError("no prompts to decode")
    return total


@dataclass
class ImitationResult:
    metrics: dict[str, float]
    curve: list[dict[str, float]]


class ValidationReporter(L.Callback):
    """Hands every validation's metrics to `report(step, metrics)`: how a Ray Tune trial reports to its
    scheduler (ASHA) without this module knowing about Ray."""

    def __init__(self, report: Callable[[int, dict[str, float]], None]) -> None:
        self.report = report

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            metrics = {
                k.removeprefix("val/"): float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
            }
            self.report(trainer.global_step, metrics)


def fit_imitation(
    model: nn.Module,
    head: ImitationNetwork,
    fusion: nn.Module,
    builder: PromptBuilder,
    image_processor: Any,
    splits: dict[str, SplitData],
    cfg: ImitationConfig,
    *,
    draft_layers: int,
    loss_weights: dict[str, float],
    mixed: bool = False,
    seed: int = 0,
    tracking_run: RunRef | None = None,
    callbacks: list[L.Callback] | None = None,
    progress_bar: bool = True,
    features: Path | None = None,
) -> ImitationResult:
    """Train `head` (and `fusion`) to draft from layer `draft_layers`; with `mixed`, the backbone trains for
    `cfg.mixed.joint_epochs` epochs first. On the frozen schedule with `features` (the `features` stage's folder,
    holding `train/` and `val/`) the network trains from the cached backbone states instead of running the backbone.
    Returns the final validation metrics and the validation curve."""
    L.seed_everything(seed, workers=True, verbose=False)
    steps_per_epoch = max(1, -(-len(splits["train"].images) // cfg.batch_size))
    joint_steps = round(cfg.mixed.joint_epochs * steps_per_epoch) if mixed else 0
    prompts = validation_prompts(splits["val"], builder, image_processor, cfg.val_decode_prompts)
    module: L.LightningModule
    if features is not None and not mixed:
        train = CachedFeatures(features / "train", draft_layers)
        adapter = adapter_for(model)
        module = CachedImitationModule(
            model,
            head,
            fusion,
            cfg,
            loss_weights=loss_weights,
            fused_states=fused_layer_count(cfg.fusion_layers, adapter.num_layers, draft_layers),
            acceptance=(lambda: decode_acceptance(model, head, draft_layers, prompts)) if prompts else None,
        )
        data: L.LightningDataModule = CachedFeatureDataModule(
            train, CachedFeatures(features / "val", draft_layers), cfg, seed
        )
        steps_per_epoch = max(1, len(train) // cfg.batch_size)
    else:
        module = ImitationModule(
            model,
            head,
            fusion,
            cfg,
            draft_layers=draft_layers,
            loss_weights=loss_weights,
            joint_steps=joint_steps,
            val_prompts=prompts,
        )
        data = VLMDataModule(splits, builder, image_processor, cfg, seed)
    run = fit_module(
        module,
        cfg,
        data,
        callbacks=callbacks,
        tracking_run=tracking_run,
        progress_bar=progress_bar,
        unused_parameters=getattr(module, "unused_parameters", False),
    )
    model.eval()
    head.eval()
    metrics = {
        **run.final_metrics,
        "steps": run.steps,
        "train_seconds": run.seconds,
        "joint_steps": float(joint_steps),
        "epochs": run.steps / steps_per_epoch,  # passes over the cached examples, or the split's images
        "from_feature_cache": float(features is not None and not mixed),
        "processes": float(run.processes),
    }
    return ImitationResult(metrics, run.curve)
