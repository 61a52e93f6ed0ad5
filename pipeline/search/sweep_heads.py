"""The imitation network a sweep trial drafts with, one per (n, λ): train_imitation's when that stage trained exactly
this pair (same budget, architecture, fusion, frozen schedule), else trained once by the first trial that needs it,
under a file lock (trials of one pair, e.g. a re-run after a failure, share it)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ImitationArchitecture, Params
from pipeline.evaluation.methods import DraftLength
from pipeline.models.imitation import ImitationNetwork, load_imitation, save_imitation
from pipeline.search.trial_setup import Loaded, TrialContext, train_trial_head
from pipeline.training.imitation_losses import VARIANTS, variant_weights


def loss_weights(loss: str | dict, params: Params) -> dict[str, float]:
    """A variant name (weighted by imitation.weights) or explicit weights → {ce, cs, kd}."""
    if isinstance(loss, str):
        if loss not in VARIANTS:
            raise ValueError(f"unknown loss variant {loss!r} (one of {sorted(VARIANTS)} or {{ce: .., cs: .., kd: ..}})")
        return variant_weights(loss, params.imitation.weights)
    unknown = set(loss) - {"ce", "cs", "kd"}
    if unknown or not loss:
        raise ValueError(f"loss weights must name ce, cs, kd; got {loss!r}")
    return {k: float(loss.get(k, 0.0)) for k in ("ce", "cs", "kd")}


def loss_label(loss: str | dict) -> str:
    return loss if isinstance(loss, str) else ",".join(f"{k}={v}" for k, v in sorted(loss.items()))


def head_key(n: int, weights: dict[str, float]) -> str:
    return f"n{n}-" + "-".join(f"{k}{weights[k]:g}" for k in ("ce", "cs", "kd"))


@dataclass(frozen=True)
class SweepContext(TrialContext):
    heads_dir: str = ""  # absolute: heads trained by trials, one per (n, λ)
    reusable: dict[str, str] = field(default_factory=dict)  # head_key → train_imitation's folder
    architecture: dict[str, Any] = field(default_factory=dict)  # ImitationArchitecture.model_dump()
    draft_lens: list[DraftLength] = field(default_factory=list)  # every d a trial times (fixed lengths, "growing")


def obtain_head(
    n: int, weights: dict[str, float], context: SweepContext, loaded: Loaded
) -> tuple[ImitationNetwork, str]:
    """The (n, λ) network: train_imitation's, or one trained by the first trial that needs it."""
    from filelock import FileLock

    key = head_key(n, weights)
    if key in context.reusable:
        return load_imitation(context.reusable[key])[0], "train_imitation"
    folder = Path(context.heads_dir) / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").exists():
            return load_imitation(folder)[0], "sweep (shared)"
        params = context.config
        backbone = loaded.backbone
        hidden = backbone.adapter.hidden_size
        torch.manual_seed(params.seed)
        head = ImitationNetwork(hidden, ImitationArchitecture.model_validate(context.architecture))
        # the trial decodes its own prompts afterwards: no validation decoding while training
        updates = {
            "max_steps": params.sweep.train_steps,
            "val_every_steps": params.sweep.train_steps,
            "val_decode_prompts": 0,
        }
        train_trial_head(loaded, params, head, n, weights, updates, features_dir=context.features_dir)
        save_imitation(head, folder, {"draft_layers": n, "loss_weights": weights, "steps": params.sweep.train_steps})
        return head, "sweep"


def reusable_heads(imitation_dir: Path, params: Params, architecture: dict[str, Any]) -> dict[str, str]:
    """train_imitation's frozen-schedule networks usable by the sweep: same budget, same architecture."""
    found: dict[str, str] = {}
    if params.sweep.train_steps != params.imitation.max_steps or not imitation_dir.is_dir():
        return found
    for folder in sorted(imitation_dir.iterdir()):
        config_file = folder / "config.json"
        if not config_file.exists():
            continue
        extra = json.loads(config_file.read_text())
        arch = extra.get("architecture", {})
        if (
            extra.get("mixed")
            or extra.get("variant") not in VARIANTS
            or extra.get("fusion", params.imitation.fusion) != params.imitation.fusion
        ):
            continue  # the sweep's heads use imitation.fusion: the fusion table's other heads are not its (n, λ) head
        if any(arch.get(k) != v for k, v in architecture.items()):
            continue
        weights = loss_weights(extra["variant"], params)
        found[head_key(int(extra["draft_layers"]), weights)] = str(folder.resolve())
    return found


def heads_fingerprint(params: Params, architecture: dict[str, Any], model_fingerprint: str) -> str:
    settings = {
        "imitation": params.imitation.model_dump(
            exclude={"architecture", "draft_layers", "variants", "fusion_comparison", "parallel_heads"}
        ),
        "steps": params.sweep.train_steps,
        "seed": params.seed,
        "arch": architecture,
        "model": model_fingerprint,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
