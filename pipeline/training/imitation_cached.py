"""Training an imitation network on a frozen backbone from the feature cache (`pipeline.training.feature_cache`):
the same losses as `pipeline.training.imitation` (eqs. 2–4), computed from the stored layer-n states, deep-layer
states and teacher log-probabilities instead of a backbone pass per step. The backbone is still loaded: its final
norm and LM head turn the imitation network's output into logits, and validation decodes prompts with it.

With the whole vocabulary stored (`features.top_k: 0`) and float32 storage the losses equal the end-to-end ones
(checked by a test); with top-k, the KD term omits the teacher's tail beyond the k best tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torch.utils.data import DataLoader

from pipeline.config import ImitationConfig
from pipeline.models.adapters import adapter_for
from pipeline.models.imitation import ImitationNetwork
from pipeline.training.feature_cache import CachedFeatures, collate_cached, scored_positions
from pipeline.training.global_batch import token_share
from pipeline.training.optimizer import adamw_cosine
from pipeline.training.samplers import GlobalTaskBatchSampler, ResumableLoader, finished_batches


@dataclass
class CachedPass:
    imitation: torch.Tensor  # [S, H]: the imitation network's output at the scored positions
    draft_logits: torch.Tensor  # [S, V]
    targets: torch.Tensor  # [S]: the ground-truth next tokens


def cached_losses(
    adapter: Any,
    head: nn.Module,
    fusion: nn.Module,
    batch: dict[str, torch.Tensor],
    loss_weights: dict[str, float],
    temperature: float,
    fused_states: int,
) -> tuple[dict[str, torch.Tensor], CachedPass]:
    """The loss terms of a collated cache batch (`collate_cached`), over its scored positions."""
    labels = batch["labels"]
    mask = scored_positions(labels)
    # only the scored positions' outputs (about half of them): an attention head still reads every position as a key
    imitation = head(batch["hidden"], select=mask)
    draft_logits = adapter.logits(imitation)
    targets = labels[:, 1:][mask[:, :-1]]
    terms = {"ce": F.cross_entropy(draft_logits, targets)}
    if loss_weights.get("cs", 0) > 0:
        deep = batch["deep"][:, -fused_states:]
        target = fusion(list(deep.unbind(dim=1)))
        terms["cs"] = (1 - F.cosine_similarity(imitation, target, dim=-1)).mean()
    if loss_weights.get("kd", 0) > 0:
        student = F.log_softmax(draft_logits / temperature, dim=-1).gather(1, batch["teacher_ids"])
        teacher = batch["teacher_logp"]
        # KL(teacher ‖ student) over the stored entries (all of them when top_k is the vocabulary), batch mean, × T²
        kl = (teacher.exp() * (teacher - student)).sum() / max(1, targets.shape[0])
        terms["kd"] = kl * temperature**2
    return terms, CachedPass(imitation, draft_logits, targets)


class CachedImitationModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        head: ImitationNetwork,
        fusion: nn.Module,
        cfg: ImitationConfig,
        *,
        loss_weights: dict[str, float],
        fused_states: int,
        acceptance: Any = None,  # () -> DecodingStats | None: end-to-end acceptance at validation
    ) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.fusion = fusion
        self.cfg = cfg
        self.loss_weights = loss_weights
        self.fused_states = fused_states
        self.acceptance = acceptance
        self.adapter = adapter_for(model)
        model.requires_grad_(False)
        model.eval()
        if loss_weights.get("cs", 0) <= 0:
            fusion.requires_grad_(False)  # reaches no loss (see ImitationModule)

    def train(self, mode: bool = True) -> CachedImitationModule:
        super().train(mode)
        self.model.eval()  # frozen: no dropout in the LM head path whatever Lightning toggles
        return self

    def _terms(self, batch: dict) -> tuple[dict[str, torch.Tensor], CachedPass]:
        return cached_losses(
            self.adapter, self.head, self.fusion, batch, self.loss_weights, self.cfg.temperature, self.fused_states
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms, _ = self._terms(batch)
        loss = torch.stack([self.loss_weights[k] * v for k, v in terms.items()]).sum()
        # each term is a mean over this process's scored tokens: one factor makes it the global batch's (as end to end)
        share = token_share(self, batch["labels"])
        size = batch["labels"].shape[0]
        self.log("train/loss", loss * share, on_step=True, prog_bar=True, batch_size=size, sync_dist=True)
        for name, value in terms.items():
            self.log(f"train/{name}", value * share, on_step=True, batch_size=size, sync_dist=True)
        return loss * share

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        terms, out = self._terms(batch)
        size = batch["labels"].shape[0]
        for name, value in terms.items():
            self.log(f"val/{name}", value, batch_size=size, sync_dist=True)
        teacher_top1 = batch["teacher_ids"][:, 0]
        agreement = (out.draft_logits.argmax(-1) == teacher_top1).float().mean()
        self.log("val/agreement", agreement, batch_size=size, sync_dist=True)
        exits = self.adapter.logits(batch["hidden"][scored_positions(batch["labels"])]).argmax(-1)
        self.log("val/agreement_early_exit", (exits == teacher_top1).float().mean(), batch_size=size, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.acceptance is None or self.trainer.sanity_checking:
            return
        stats = self.acceptance()
        if stats is not None:
            self.log("val/acceptance_rate", stats.acceptance_rate, rank_zero_only=True)
            self.log("val/mean_accepted_length", stats.mean_accepted_length, rank_zero_only=True)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = self.cfg.optimizer
        draft = [p for p in [*self.head.parameters(), *self.fusion.parameters()] if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": draft, "lr": optimizer.lr, "weight_decay": optimizer.weight_decay}]
        return adamw_cosine(groups, optimizer, self.cfg.max_steps)


class CachedFeatureDataModule(L.LightningDataModule):
    """The cached training examples in the end-to-end trainer's order: one task per global batch (a caption is not
    padded to a description's length), `cfg.batch_size` examples per optimizer step over all processes, each process
    its slice, resumable (`pipeline.training.samplers`); the cached validation examples, the same in every process."""

    def __init__(self, train: CachedFeatures, val: CachedFeatures, cfg: ImitationConfig, seed: int) -> None:
        super().__init__()
        self.train_set, self.val_set, self.cfg, self.seed = train, val, cfg, seed

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = GlobalTaskBatchSampler(
            self.train_set.tasks,
            self.cfg.task_weights.model_dump(),
            self.cfg.batch_size,
            max(1, len(self.train_set) // self.cfg.batch_size),
            seed=self.seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
        )
        return ResumableLoader(
            self.train_set,
            batch_sampler=sampler,
            collate_fn=collate_cached,
            num_workers=self.cfg.trainer.num_workers,
            batches_done=lambda: finished_batches(self.trainer),
        )

    def val_dataloader(self) -> DataLoader:
        count = min(len(self.val_set), self.cfg.val_batches * self.cfg.batch_size)
        subset = torch.utils.data.Subset(self.val_set, range(count))
        return DataLoader(subset, batch_size=self.cfg.batch_size, collate_fn=collate_cached)
