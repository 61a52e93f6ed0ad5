"""Choosing the draft depth `n` (paper A.4): confidence of the early exit minus the cost of depth.

For each candidate layer i, the confidence is the mean max-softmax probability of the early-exit
logits `lm_head(final_norm(h_i))` over the scored (target) tokens of the validation batches; the reward
is `confidence(i) − μ · i · c`, with `c` the cost of one layer as a share of a forward pass. The chosen
`n` maximises the reward.

With `layer_choice.trainer` naming several processes the validation batches are shared out
(`pipeline.training.sharding`); rank zero adds every batch's sums in batch order, so the confidences are the same
numbers, to the bit, as one process's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from pipeline.config import LayerChoiceConfig, PromptConfig
from pipeline.data.datasets import IGNORE_INDEX, balanced_batches
from pipeline.data.pixels import PixelStore
from pipeline.data.prepared import SplitData
from pipeline.models.adapters import BackboneAdapter
from pipeline.models.loading import Backbone
from pipeline.training.sharding import map_shards


@dataclass
class LayerChoice:
    layers: list[int]
    confidence: list[float]
    reward: list[float]
    chosen: int

    def to_dict(self) -> dict:
        return {"chosen_n": self.chosen, "layers": self.layers, "confidence": self.confidence, "reward": self.reward}

    def rows(self) -> list[dict[str, int | str]]:
        """One row per candidate layer: the reward curve (6 decimals)."""
        return [
            {"layer": i, "confidence": f"{c:.6f}", "reward": f"{r:.6f}"}
            for i, c, r in zip(self.layers, self.confidence, self.reward, strict=True)
        ]


@torch.no_grad()
def batch_confidence(adapter: BackboneAdapter, batch: dict, max_layer: int) -> tuple[torch.Tensor, int]:
    """Summed top-1 probability of the early exit after layers 1..max_layer over one batch's target tokens
    (float64), and how many target tokens there were."""
    batch = {k: v.to(adapter.embed_weight.device) for k, v in batch.items()}
    scored = batch["labels"][:, 1:] != IGNORE_INDEX  # positions whose next token is a target token
    prefix = adapter.batch_prefix(batch)
    _, states = adapter.run_layers(
        prefix.embeds, 0, max_layer, attention_mask=batch["attention_mask"], collect_hidden=True, encoder=prefix.encoder
    )
    sums = torch.zeros(max_layer, dtype=torch.float64)
    for i, state in enumerate(states):
        probs = adapter.logits(state[:, :-1][scored]).float().softmax(dim=-1)
        sums[i] = probs.amax(dim=-1).double().sum()
    return sums, int(scored.sum())


def mean_confidence(parts: Iterable[tuple[torch.Tensor, int]]) -> list[float]:
    """Per layer, the batches' sums added in order over their total count."""
    total: torch.Tensor | None = None
    count = 0
    for sums, tokens in parts:
        total = sums.clone() if total is None else total + sums
        count += tokens
    if total is None or count == 0:
        raise ValueError("no scored tokens in the validation batches")
    return (total / count).tolist()


def early_exit_confidence(adapter: BackboneAdapter, batches: Iterable[dict], max_layer: int) -> list[float]:
    """Mean top-1 probability of the early exit after layers 1..max_layer, over target tokens."""
    return mean_confidence(batch_confidence(adapter, batch, max_layer) for batch in batches)


def choose_layer(confidence: list[float], mu: float, layer_cost: float) -> LayerChoice:
    """`confidence[k]` belongs to layer k + 1; reward = confidence − μ·i·c; ties go to the shallower layer."""
    layers = list(range(1, len(confidence) + 1))
    reward = [conf - mu * i * layer_cost for i, conf in zip(layers, confidence, strict=True)]
    best = max(range(len(reward)), key=lambda k: (reward[k], -k))
    return LayerChoice(layers, list(confidence), reward, layers[best])


def choose_draft_layers(
    cfg: LayerChoiceConfig, backbone: Backbone, val: SplitData, prompts: PromptConfig
) -> LayerChoice | None:
    """The reward of every candidate layer i ≤ `max_layer_fraction` · L on task-balanced validation batches, and the
    chosen n; the layer cost c defaults to 1/L. The batches are shared out over `cfg.trainer`'s processes; None in
    every process but rank zero."""
    adapter = backbone.adapter
    pixels = PixelStore([r.image_path for r in val.images], backbone.image_processor)
    batches = balanced_batches(val, backbone.prompt_builder(prompts), pixels, cfg.val_examples, cfg.batch_size)
    max_layer = max(1, int(cfg.max_layer_fraction * adapter.num_layers))
    shards = map_shards(lambda share: [batch_confidence(adapter, b, max_layer) for b in share], batches, cfg.trainer)
    if shards is None:
        return None
    parts: list[tuple[torch.Tensor, int] | None] = [None] * len(batches)
    for shard in shards:
        for index, part in zip(shard.indices, shard.result or [], strict=True):
            parts[index] = part
    confidence = mean_confidence(part for part in parts if part is not None)
    return choose_layer(confidence, cfg.mu, layer_cost(cfg, adapter.num_layers))


def layer_cost(cfg: LayerChoiceConfig, num_layers: int) -> float:
    """c: one layer's share of a forward pass (params' `layer_cost`, or 1/L)."""
    return cfg.layer_cost if cfg.layer_cost is not None else 1.0 / num_layers


def resolve_draft_layers(
    chosen: int | Literal["auto"], num_layers: int, layer_choice_file: str | Path, knob: str
) -> int:
    """`chosen` from params (an int, or "auto": the select_layer stage's `chosen_n`), checked against the model."""
    import json

    from pipeline.errors import ConfigError

    path = Path(layer_choice_file)
    if isinstance(chosen, str):  # "auto", the only string the type admits
        if not path.exists():
            raise ConfigError(f"{knob} is auto but {path} is missing: run `dvc repro select_layer`")
        n: int = json.loads(path.read_text())["chosen_n"]
    else:
        n = chosen
    if not 1 <= n < num_layers:
        raise ConfigError(f"{knob} must be in 1..{num_layers - 1}, got {n}")
    return n
