"""What every search trial loads before it trains or decodes (the backbone, the prepared data, the prompt builder),
and how it trains an imitation network on them.

Trials get absolute paths (they run in their own working directories, possibly on other nodes) and the
validated params as a dict. With `reuse_actors` a worker runs many trials, so the loaded pieces are cached
per process: the backbone is read from disk once per worker, not once per trial.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Params
from pipeline.data.prepared import SplitData, load_prepared
from pipeline.data.prompts import PromptBuilder
from pipeline.models.deep_layer_fusion import build_fusion, fused_layer_count
from pipeline.models.imitation import ImitationNetwork
from pipeline.models.loading import Backbone, load_backbone
from pipeline.training.imitation import ImitationResult, fit_imitation


@dataclass(frozen=True)
class TrialContext:
    model_dir: str  # absolute
    data_dir: str  # absolute
    params: dict[str, Any]  # Params.model_dump()
    draft_layers: int  # the select_layer stage's n (NAS); the sweep names its own
    threads: int = 1  # torch threads per trial = CPUs per trial
    features_dir: str = ""  # absolute: the features stage's cache the heads train from ("" : none, run the backbone)
    # NAS: draft latency ÷ full-step latency the stage measured for every architecture of the space, by
    # `latency_key` (empty: each trial times its own draft)
    latency_prices: dict[str, float] = field(default_factory=dict)

    @property
    def config(self) -> Params:
        return Params.model_validate(self.params)


@dataclass(frozen=True)
class Loaded:
    backbone: Backbone
    splits: dict[str, SplitData]
    builder: PromptBuilder


@functools.cache
def _load(model_dir: str, data_dir: str, prompts_json: str) -> Loaded:
    from pipeline.config import PromptConfig

    backbone = load_backbone(model_dir)
    backbone.model.eval()
    builder = backbone.prompt_builder(PromptConfig.model_validate(json.loads(prompts_json)))
    return Loaded(backbone, load_prepared(data_dir), builder)


def load_for_trial(context: TrialContext) -> Loaded:
    torch.set_num_threads(max(1, context.threads))
    return _load(context.model_dir, context.data_dir, json.dumps(context.params["data"]["prompts"], sort_keys=True))


def train_trial_head(
    loaded: Loaded,
    params: Params,
    head: ImitationNetwork,
    draft_layers: int,
    loss_weights: dict[str, float],
    updates: dict[str, Any],
    callbacks: list[Any] | None = None,  # Lightning callbacks (Lightning itself stays in training/)
    features_dir: str = "",
) -> ImitationResult:
    """Train `head` at draft depth n on the trial's frozen backbone with params' imitation settings changed by
    `updates`, the cosine target fused as params say, on the accelerator Ray gave the trial (a GPU on a cluster).

    One process per trial whatever `imitation.trainer` says: Ray gave the trial its resources, and DDP there would
    make Lightning re-launch the Ray worker's own command."""
    imitation = params.imitation
    accelerator = "auto" if torch.cuda.is_available() else "cpu"
    single = {"accelerator": accelerator, "devices": 1, "num_nodes": 1, "strategy": "auto"}
    cfg = imitation.model_copy(update={**updates, "trainer": imitation.trainer.model_copy(update=single)})
    adapter = loaded.backbone.adapter
    fusion = build_fusion(
        imitation.fusion,
        adapter.hidden_size,
        fused_layer_count(imitation.fusion_layers, adapter.num_layers, draft_layers),
    )
    return fit_imitation(
        loaded.backbone.model,
        head,
        fusion,
        loaded.builder,
        loaded.backbone.image_processor,
        loaded.splits,
        cfg,
        draft_layers=draft_layers,
        loss_weights=loss_weights,
        seed=params.seed,
        callbacks=callbacks,
        progress_bar=False,
        features=Path(features_dir) if features_dir else None,
    )
