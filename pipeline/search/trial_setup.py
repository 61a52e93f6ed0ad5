"""What every search trial loads before it trains or decodes: the backbone, the prepared data, the prompt builder.

Trials get absolute paths (they run in their own working directories, possibly on other nodes) and the
validated params as a dict. With `reuse_actors` a worker runs many trials, so the loaded pieces are cached
per process: the backbone is read from disk once per worker, not once per trial.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.config import Params
from pipeline.data.prepared import SplitData, load_prepared
from pipeline.data.prompts import PromptBuilder
from pipeline.models.loading import Backbone, load_backbone


@dataclass(frozen=True)
class TrialContext:
    model_dir: str  # absolute
    data_dir: str  # absolute
    params: dict[str, Any]  # Params.model_dump()
    draft_layers: int  # the select_layer stage's n (NAS); the sweep names its own
    threads: int = 1  # torch threads per trial = CPUs per trial

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
