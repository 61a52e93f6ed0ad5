"""LayerSkip (Elhoushi et al. 2024) as a trained baseline: continue training the fine-tuned backbone so that its
early exits (any layer's state → the shared final norm → the shared LM head) predict the next token, then
draft by early exit (`SelfSpeculativeDecoder(model, n, head=None)`).

What this file trains (L layers, exits numbered by the layer they follow, 1..L; exit L is the model's output):

- **Loss.** `CE_L + s · Σ_{l=1}^{L-1} w_l · CE_l` with `w_l = l / Σ_{j=1}^{L-1} j` and `s = early_exit_scale`:
  the final layer keeps its own cross-entropy at weight 1, the early exits together weigh `s`, and an
  exit's weight grows linearly with its depth (the paper's scale also grows with depth; it normalises all
  L terms together instead). Curriculum over time: none — every exit is in the loss at every step (the
  paper's "no curriculum" setting; its rotational/gradual curricula only save compute).
- **Layer dropout.** At each training step layer l (0-based) is skipped with probability
  `p_l = p_max · l / (L − 1)`: 0 for the first layer, `p_max` for the last, linear between (the paper's
  D(l) grows exponentially; its time scaling S(t) is constant here). A skipped layer leaves the hidden
  state unchanged; the exit after it still counts (it then sees the state of the layer before). The
  draw is per batch, from a generator seeded by (seed, step), so every rank of a distributed run drops
  the same layers. Off in evaluation (`module.eval()`), as dropout is.
- The vision tower stays frozen (and in eval mode); the projector, decoder layers, norm and head train.

Validation logs the final layer's CE, each exit's CE at the draft layer, every exit's top-1 agreement
with the final layer's greedy token (`agreement_layer_<l>`; `agreement` at the draft layer) and, by
decoding validation prompts with early-exit self-speculation, the acceptance rate and mean accepted length.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRSchedulerConfig
from torch import nn

from pipeline.config import LayerSkipConfig
from pipeline.data.prepared import SplitData
from pipeline.data.prompts import PromptBuilder
from pipeline.evaluation.prompts import validation_prompts
from pipeline.models.adapters import BackboneAdapter, adapter_for
from pipeline.tracking import RunRef
from pipeline.training import imitation_losses as losses
from pipeline.training.datamodule import VLMDataModule
from pipeline.training.global_batch import token_share
from pipeline.training.imitation import decode_acceptance
from pipeline.training.optimizer import adamw_cosine, decay_groups
from pipeline.training.trainer import fit_module


def layer_dropout_rates(num_layers: int, p_max: float) -> list[float]:
    """p_l = p_max · l / (L − 1) for layers l = 0..L-1: never the first layer, p_max for the last."""
    if num_layers == 1:
        return [0.0]
    return [p_max * index / (num_layers - 1) for index in range(num_layers)]


def early_exit_weights(num_layers: int, scale: float) -> list[float]:
    """w_l · s for the exits after layers l = 1..L-1 (1-based): proportional to l, summing to `scale`."""
    total = sum(range(1, num_layers))
    return [scale * layer / total for layer in range(1, num_layers)] if total else []


def sample_kept_layers(rates: Sequence[float], generator: torch.Generator | None = None) -> list[bool]:
    """One layer-dropout draw: True where layer l runs, False where it is skipped."""
    draws = torch.rand(len(rates), generator=generator)
    return [bool(u >= p) for u, p in zip(draws.tolist(), rates, strict=True)]


def exit_states(adapter: BackboneAdapter, batch: dict, kept: Sequence[bool] | None = None) -> list[torch.Tensor]:
    """The hidden state after each layer 1..L (the last is the model's), skipping layers where `kept` is False."""
    mask = batch["attention_mask"]
    hidden, encoder = adapter.batch_prefix(batch)
    total = adapter.num_layers
    kept = [True] * total if kept is None else list(kept)
    states: list[torch.Tensor] = []
    index = 0
    while index < total:
        if not kept[index]:
            states.append(hidden)  # a dropped layer: the residual stream passes through unchanged
            index += 1
            continue
        end = index
        while end < total and kept[end]:
            end += 1
        hidden, outputs = adapter.run_layers(
            hidden, index, end, attention_mask=mask, collect_hidden=True, encoder=encoder
        )
        states += outputs
        index = end
    return states


class LayerSkipModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        cfg: LayerSkipConfig,
        *,
        draft_layers: int,
        seed: int = 0,
        val_prompts: list[dict] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.adapter = adapter_for(model)
        if not 1 <= draft_layers < self.adapter.num_layers:
            raise ValueError(f"draft_layers must be in 1..{self.adapter.num_layers - 1}, got {draft_layers}")
        self.draft_layers = draft_layers
        self.seed = seed
        self.val_prompts = val_prompts or []
        self.rates = layer_dropout_rates(self.adapter.num_layers, cfg.p_max)
        self.weights = early_exit_weights(self.adapter.num_layers, cfg.early_exit_scale)
        self.step_seconds: list[float] = []  # wall time of each training step (forward, backward, optimizer)
        self.layers_dropped = 0  # layer skips drawn over all training steps
        model.requires_grad_(True)
        # A loaded model comes in eval mode and Lightning keeps submodules' modes: switch to training here
        # (layer dropout reads `self.training`), except the frozen vision tower (as in fine-tuning and LLaVA-1.5)
        self.train()
        if self.adapter.vision_encoder is not None:
            self.adapter.vision_encoder.requires_grad_(False)
            self.adapter.vision_encoder.eval()

    def kept_layers(self, step: int | None = None) -> list[bool]:
        """The layer-dropout draw of training step `step` (default: the current one); every layer in eval mode."""
        if not self.training or self.cfg.p_max == 0:
            return [True] * self.adapter.num_layers
        step = int(self.global_step) if step is None else step
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return sample_kept_layers(self.rates, generator)

    def compute_losses(
        self, batch: dict, states: list[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor]]:
        """Total loss, named terms, and the logits of every exit (1..L)."""
        labels = batch["labels"]
        logits = [self.adapter.logits(h) for h in states]
        final = losses.cross_entropy(logits[-1], labels)
        total = final
        terms = {"ce_final": final}
        for layer, weight in enumerate(self.weights, start=1):
            if weight > 0 or layer == self.draft_layers:
                ce = losses.cross_entropy(logits[layer - 1], labels)
                total = total + weight * ce
                if layer == self.draft_layers:
                    terms["ce_exit"] = ce
        terms["loss"] = total
        return total, terms, logits

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.adapter.vision_encoder is not None:
            self.adapter.vision_encoder.eval()
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs: STEP_OUTPUT, batch: Any, batch_idx: int) -> None:
        self.step_seconds.append(time.perf_counter() - self._step_started)

    @property
    def unused_parameters(self) -> bool:
        """A dropped layer gets no gradient in its step (the same layers on every process: the draw is seeded by
        the step), so DDP must look for unused parameters."""
        return self.cfg.p_max > 0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        kept = self.kept_layers()
        self.layers_dropped += kept.count(False)
        loss, terms, _ = self.compute_losses(batch, exit_states(self.adapter, batch, kept))
        share = token_share(self, batch["labels"])  # each term a mean over the global batch's scored tokens
        size = batch["input_ids"].shape[0]
        self.log("train/loss", loss * share, on_step=True, prog_bar=True, batch_size=size, sync_dist=True)
        self.log("train/ce_final", terms["ce_final"] * share, on_step=True, batch_size=size, sync_dist=True)
        self.log("train/layers_dropped", float(kept.count(False)), on_step=True, batch_size=size)
        return loss * share

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, terms, logits = self.compute_losses(batch, exit_states(self.adapter, batch))
        size = batch["input_ids"].shape[0]
        for name, value in terms.items():
            self.log(f"val/{name}", value, batch_size=size, sync_dist=True)
        labels = batch["labels"]
        for layer in range(1, self.adapter.num_layers):
            agreement = losses.agreement(logits[layer - 1], logits[-1], labels)
            self.log(f"val/agreement_layer_{layer}", agreement, batch_size=size, sync_dist=True)
            if layer == self.draft_layers:
                self.log("val/agreement", agreement, batch_size=size, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if not self.val_prompts or self.trainer.sanity_checking:
            return
        stats = decode_acceptance(self.model, None, self.draft_layers, self.val_prompts)
        self.log("val/acceptance_rate", stats.acceptance_rate, rank_zero_only=True)
        self.log("val/mean_accepted_length", stats.mean_accepted_length, rank_zero_only=True)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        return adamw_cosine(
            decay_groups(self.model.parameters(), self.cfg.optimizer.weight_decay),
            self.cfg.optimizer,
            self.cfg.max_steps,
        )


@dataclass
class LayerSkipResult:
    metrics: dict[str, float]
    curve: list[dict[str, float]]


def fit_layerskip(
    model: nn.Module,
    builder: PromptBuilder,
    image_processor: Any,
    splits: dict[str, SplitData],
    cfg: LayerSkipConfig,
    *,
    draft_layers: int,
    seed: int = 0,
    tracking_run: RunRef | None = None,
    callbacks: list[L.Callback] | None = None,
) -> LayerSkipResult:
    """Train `model` in place with LayerSkip's early-exit losses and layer dropout; validate the early exit at
    `draft_layers`. Returns the final validation metrics (`val_*`), timings and the validation curve."""
    L.seed_everything(seed, workers=True, verbose=False)
    prompts = validation_prompts(splits["val"], builder, image_processor, cfg.val_decode_prompts)
    module = LayerSkipModule(model, cfg, draft_layers=draft_layers, seed=seed, val_prompts=prompts)
    run = fit_module(
        module,
        cfg,
        VLMDataModule(splits, builder, image_processor, cfg, seed),
        callbacks=callbacks,
        tracking_run=tracking_run,
        unused_parameters=module.unused_parameters,
    )
    model.eval()
    metrics = dict(run.final_metrics)
    timed = sorted(module.step_seconds[1:] or module.step_seconds)  # the first step pays one-off set-up costs
    per_step = timed[len(timed) // 2] if timed else float("nan")
    metrics.update(
        {
            "steps": run.steps,
            "train_seconds": run.seconds,
            "seconds_per_step": per_step,
            "layers_dropped": float(module.layers_dropped),
            "processes": float(run.processes),
        }
    )
    return LayerSkipResult(metrics, run.curve)
