"""The n / λ / d sweep as a Ray Tune trainable.

A trial (n = draft layers, λ = loss weights, d = a fixed draft length or `growing`) gets the imitation
network for its (n, λ) — reused from `train_imitation` when that stage trained exactly this pair with the
same budget, else trained once (under a file lock, so the pair's d-trials share it) — and decodes
validation prompts with the full model (`model.generate`), self-speculative decoding with the network, and
the draft alone. It reports speed-up, acceptance, mean accepted length, CIDEr/BLEU-4 of the SSD output
(lossless: equal to the full model's, which it also reports and checks token for token) and of the draft.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.config import Params
from pipeline.decoding import AutoregressiveDecoder, DraftOnlyDecoder, GrowingDraftLength, SelfSpeculativeDecoder
from pipeline.evaluation.methods import caption_prompts, decoder_method, evaluate_methods
from pipeline.models.fusion import build_fusion, fused_layer_count
from pipeline.models.imitation import ImitationNetwork, ImitationNetworkConfig, as_draft_head, load_imitation, save_imitation
from pipeline.search.trial_setup import TrialContext, load_for_trial
from pipeline.training.imitation import fit_imitation
from pipeline.training.imitation_losses import VARIANTS, variant_weights

SPACE_KEYS = {"draft_layers", "loss", "draft_len"}
REPORTED = ["speedup", "acceptance_rate", "mean_accepted_length", "verify_calls", "tokens_per_second",
            "cider_ssd", "bleu4_ssd", "cider_full", "bleu4_full", "identical_share", "lossless",
            "cider_draft", "bleu4_draft", "speedup_draft", "draft_cost_ratio"]


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


def draft_policy(draft_len: int | str, params: Params):
    if draft_len == "growing":
        return GrowingDraftLength(**params.decoding.growing.model_dump())
    if isinstance(draft_len, int) and not isinstance(draft_len, bool) and draft_len >= 1:
        return draft_len
    raise ValueError(f"draft_len must be a positive integer or 'growing', got {draft_len!r}")


def head_key(n: int, weights: dict[str, float]) -> str:
    return f"n{n}-" + "-".join(f"{k}{weights[k]:g}" for k in ("ce", "cs", "kd"))


@dataclass(frozen=True)
class SweepContext(TrialContext):
    heads_dir: str = ""  # absolute: heads trained by trials, shared by the d-trials of one (n, λ)
    reusable: dict[str, str] = field(default_factory=dict)  # head_key → train_imitation's folder
    architecture: dict[str, Any] = field(default_factory=dict)


def obtain_head(n: int, weights: dict[str, float], context: SweepContext, loaded) -> tuple[ImitationNetwork, str]:
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
        head = ImitationNetwork(ImitationNetworkConfig(hidden_size=hidden, **context.architecture))
        fusion = build_fusion(params.imitation.fusion, hidden, fused_layer_count(params.imitation.fusion_layers, backbone.adapter.num_layers, n))
        cfg = params.imitation.model_copy(update={
            "max_steps": params.sweep.train_steps,
            "val_every_steps": params.sweep.train_steps,
            "val_decode_prompts": 0,  # the trial decodes its own prompts afterwards
            "accelerator": "auto" if torch.cuda.is_available() else "cpu",
        })
        fit_imitation(backbone.model, head, fusion, loaded.builder, backbone.image_processor, loaded.splits, cfg,
                      draft_layers=n, loss_weights=weights, seed=params.seed, progress_bar=False)
        save_imitation(head, folder, {"draft_layers": n, "loss_weights": weights, "steps": params.sweep.train_steps})
        return head, "sweep"


def sweep_trial(config: dict[str, Any], context: SweepContext) -> None:
    from ray import tune

    from pipeline.evaluation.flops import per_token_flops

    params = context.config
    loaded = load_for_trial(context)
    backbone = loaded.backbone
    model, eos = backbone.model, backbone.tokenizer.eos_token_id
    n = int(config["draft_layers"])
    weights = loss_weights(config["loss"], params)
    policy = draft_policy(config["draft_len"], params)
    network, source = obtain_head(n, weights, context, loaded)
    network.eval()
    head = as_draft_head(network)
    prompts = caption_prompts(loaded.splits["val"], loaded.builder, backbone.image_processor, params.sweep.captions, params.sweep.descriptions)
    methods = {
        "full": decoder_method(AutoregressiveDecoder(model), eos),  # same engine: the speed-up is the algorithm's
        "ssd": decoder_method(SelfSpeculativeDecoder(model, n, head, policy), eos),
        "draft": decoder_method(DraftOnlyDecoder(model, n, head), eos),
    }
    with torch.no_grad():
        scores = evaluate_methods(methods, prompts, backbone.tokenizer, reference="full", repeats=params.sweep.repeats)
    ssd, draft, full = scores["ssd"], scores["draft"], scores["full"]
    tune.report({
        "speedup": ssd["speedup"],
        "acceptance_rate": ssd.get("acceptance_rate", 0.0),
        "mean_accepted_length": ssd.get("mean_accepted_length", 0.0),
        "verify_calls": ssd.get("verify_calls", 0.0),
        "tokens_per_second": ssd["tokens_per_second"],
        "tokens_per_second_full": full["tokens_per_second"],
        "cider_ssd": ssd["cider"], "bleu4_ssd": ssd["bleu4"],
        "cider_full": full["cider"], "bleu4_full": full["bleu4"],
        "identical_share": ssd["identical_share"],
        "lossless": float(ssd["identical_share"] == 1.0),
        "cider_draft": draft["cider"], "bleu4_draft": draft["bleu4"],
        "speedup_draft": draft["speedup"],
        "draft_cost_ratio": per_token_flops(backbone.adapter, n, network)["draft_cost_ratio"],
        "head_source": source,
        "loss_label": loss_label(config["loss"]),
        "prompts": len(prompts),
    })


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
        if extra.get("mixed") or extra.get("variant") not in VARIANTS or extra.get("fusion", params.imitation.fusion) != params.imitation.fusion:
            continue  # the sweep's heads use imitation.fusion: the fusion table's other heads are not its (n, λ) head
        if any(arch.get(k) != v for k, v in architecture.items()):
            continue
        weights = loss_weights(extra["variant"], params)
        found[head_key(int(extra["draft_layers"]), weights)] = str(folder.resolve())
    return found


def heads_fingerprint(params: Params, architecture: dict[str, Any], model_fingerprint: str) -> str:
    settings = {"imitation": params.imitation.model_dump(exclude={"architecture", "draft_layers", "variants", "fusion_comparison", "parallel_heads"}),
                "steps": params.sweep.train_steps, "seed": params.seed, "arch": architecture, "model": model_fingerprint}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
