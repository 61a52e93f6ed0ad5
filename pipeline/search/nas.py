"""Imitation-network architecture search (paper Appendix B) as a Ray Tune trainable.

A trial builds the sampled architecture, trains it briefly on the frozen backbone at the chosen `n` with the
same `fit_imitation` the `train_imitation` stage calls (ce+cs+kd, params' λ), and reports at every
validation: the draft's top-1 agreement with the full model on validation tokens, the decoded acceptance
rate, the FLOPs per token (torch's FlopCounterMode) and

    score = accuracy − flops_weight · draft_cost_ratio,

where draft_cost_ratio = FLOPs(n layers + network + LM head) / FLOPs(full model) per token. ASHA stops the
trials whose score trails at a rung.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from pipeline.evaluation.flops import per_token_flops
from pipeline.models.fusion import build_fusion, fused_layer_count
from pipeline.models.imitation import ImitationNetwork, ImitationNetworkConfig
from pipeline.search.trial_setup import TrialContext, load_for_trial
from pipeline.training.imitation import ValidationReporter, fit_imitation
from pipeline.training.imitation_losses import variant_weights

# Keys a NAS search space may name: the architecture fields (hidden_size is the backbone's)
ARCHITECTURE_KEYS = {f.name for f in dataclasses.fields(ImitationNetworkConfig)} - {"hidden_size"}
REPORTED = ["score", "agreement", "acceptance_rate", "mean_accepted_length", "agreement_early_exit",
            "draft_cost_ratio", "flops_imitation", "flops_draft", "parameters", "step"]


def architecture(base: dict[str, Any], sampled: dict[str, Any], hidden_size: int) -> ImitationNetworkConfig:
    return ImitationNetworkConfig(hidden_size=hidden_size, **{**base, **{k: sampled[k] for k in sampled if k in ARCHITECTURE_KEYS}})


def score(accuracy: float, draft_cost_ratio: float, flops_weight: float) -> float:
    return accuracy - flops_weight * draft_cost_ratio


def nas_trial(config: dict[str, Any], context: TrialContext) -> None:
    from ray import tune

    params = context.config
    nas, imitation = params.nas, params.imitation
    loaded = load_for_trial(context)
    backbone, n = loaded.backbone, context.draft_layers
    adapter = backbone.adapter
    arch = architecture(imitation.architecture.model_dump(), config, adapter.hidden_size)
    torch.manual_seed(params.seed)
    head = ImitationNetwork(arch)
    flops = per_token_flops(adapter, n, head)
    fixed = {
        "flops_imitation": flops["imitation"],
        "flops_draft": flops["draft"],
        "draft_cost_ratio": flops["draft_cost_ratio"],
        "parameters": float(sum(p.numel() for p in head.parameters())),
    }

    def report(step: int, metrics: dict[str, float]) -> None:
        accuracy = metrics.get(nas.accuracy, 0.0)
        tune.report({
            **{k: metrics[k] for k in ("agreement", "acceptance_rate", "mean_accepted_length", "agreement_early_exit") if k in metrics},
            **fixed,
            "step": step,
            "score": score(accuracy, fixed["draft_cost_ratio"], nas.flops_weight),
        })

    cfg = imitation.model_copy(update={
        "max_steps": nas.max_steps,
        "val_every_steps": nas.report_every_steps,
        "val_batches": nas.val_batches,
        "val_decode_prompts": nas.val_decode_prompts,
        "warmup_steps": min(imitation.warmup_steps, max(0, nas.max_steps // 4)),
        "accelerator": "auto" if torch.cuda.is_available() else "cpu",
    })
    weights = variant_weights("ce+cs+kd", imitation.weights)
    fusion = build_fusion(imitation.fusion, adapter.hidden_size, fused_layer_count(imitation.fusion_layers, adapter.num_layers, n))
    fit_imitation(
        backbone.model, head, fusion, loaded.builder, backbone.image_processor, loaded.splits, cfg,
        draft_layers=n, loss_weights=weights, seed=params.seed, callbacks=[ValidationReporter(report)], progress_bar=False,
    )
