"""DVC stage `train_imitation`: one imitation network per loss variant on the frozen backbone, one ce+cs+kd
network per other fusion of the cosine target (`imitation.fusion_comparison`, the fusion table), plus the
mixed schedule (backbone and draft trained jointly, then the backbone frozen).

Outputs: `models/imitation/<variant>/` and `models/imitation/fusion-<fusion>/` (config + weights, loadable without training code),
`models/mixed_backbone/` (the mixed schedule's backbone), `metrics/imitation.json` (validation
agreement with the full model's greedy tokens and end-to-end acceptance per variant, the early-exit
draft without imitation as the reference, and the full-model CIDEr the mixed schedule costs).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.examples import load_prepared
from pipeline.data.prompts import PromptBuilder
from pipeline.evaluation.captioning import caption_cider
from pipeline.evaluation.flops import per_token_flops
from pipeline.evaluation.layer_choice import resolve_draft_layers
from pipeline.io import atomic_write_json
from pipeline.models.fusion import build_fusion, fused_layer_count
from pipeline.models.imitation import ImitationNetwork, ImitationNetworkConfig, architecture_spec, save_imitation
from pipeline.models.loading import load_backbone, save_backbone
from pipeline.training.imitation import decode_acceptance, fit_imitation, validation_prompts
from pipeline.training.imitation_losses import VARIANTS
from stages._common import run_stage

FINETUNED = Path("models/finetuned")
OUT = Path("models/imitation")
MIXED_BACKBONE = Path("models/mixed_backbone")
LAYER_CHOICE = Path("metrics/layer_choice.json")
BEST_ARCHITECTURE = Path("models/nas/best_architecture.json")  # written by the nas stage when it exists
METRICS = Path("metrics/imitation.json")


def architecture(params: Params, hidden_size: int) -> ImitationNetworkConfig:
    return ImitationNetworkConfig(hidden_size=hidden_size, **architecture_spec(params.imitation.architecture.model_dump(), BEST_ARCHITECTURE))


def weights_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fusion_head_name(kind: str) -> str:
    return f"fusion-{kind}"


def training_plan(cfg) -> list[tuple[str, str, str, bool]]:
    """(name, loss variant, fusion, mixed) of every head: the loss variants, a ce+cs+kd head per extra fusion
    of the fusion table (the main fusion's is the ce+cs+kd variant, unless that variant is not trained), the mixed schedule."""
    plan = [(variant, variant, cfg.fusion, False) for variant in cfg.variants]
    plan += [(fusion_head_name(kind), "ce+cs+kd", kind, False) for kind in cfg.fusion_comparison
             if kind != cfg.fusion or "ce+cs+kd" not in cfg.variants]
    return plan + [("mixed", "ce+cs+kd", cfg.fusion, True)]


def main(params: Params) -> None:
    cfg = params.imitation
    splits = load_prepared(params.data.out_dir)
    backbone = load_backbone(FINETUNED)
    adapter = backbone.adapter
    n = resolve_draft_layers(cfg.draft_layers, adapter.num_layers, LAYER_CHOICE, "imitation.draft_layers")
    arch = architecture(params, adapter.hidden_size)
    builder = PromptBuilder(backbone.tokenizer, params.data.prompts, adapter.image_token_id, adapter.num_image_tokens)
    prompts = validation_prompts(splits["val"], builder, backbone.image_processor, cfg.val_decode_prompts)
    before = weights_fingerprint(backbone.model)
    results: dict[str, dict] = {"draft_layers": n, "num_layers": adapter.num_layers}
    section = params.model_dump(include={"imitation"})
    with tracking.stage_run("train_imitation", params.tracking.experiment, section):
        early = decode_acceptance(backbone.model, None, n, prompts)
        results["no_imitation"] = {"val_acceptance_rate": early.acceptance_rate, "val_mean_accepted_length": early.mean_accepted_length}
        for name, variant, fusion_kind, mixed in training_plan(cfg):
            weights = {k: v * getattr(cfg.weights, k) for k, v in VARIANTS[variant].items()}
            model_source = load_backbone(FINETUNED) if mixed else backbone
            torch.manual_seed(params.seed)
            head = ImitationNetwork(arch)
            fusion = build_fusion(fusion_kind, adapter.hidden_size, fused_layer_count(cfg.fusion_layers, adapter.num_layers, n))
            print(f"train_imitation: {name} (n = {n}, weights {weights}, {fusion_kind} fusion{', mixed schedule' if mixed else ''})")
            with tracking.nested_run(name, {"loss_weights": weights, "fusion": fusion_kind, "mixed": mixed, "draft_layers": n}) as child:
                result = fit_imitation(
                    model_source.model, head, fusion, builder, backbone.image_processor, splits, cfg,
                    draft_layers=n, loss_weights=weights, mixed=mixed, seed=params.seed,
                    mlflow_uri=tracking.tracking_uri(), mlflow_run_id=child.info.run_id if child is not None else None,
                )
                metrics = dict(result.metrics)
                metrics["parameters"] = float(sum(p.numel() for p in head.parameters()))
                metrics.update({f"flops_{k}": v for k, v in per_token_flops(adapter, n, head).items()})
                if mixed:
                    metrics["full_model_test_cider"] = caption_cider(model_source, builder, splits["test"], 200)
                    metrics["finetuned_test_cider"] = caption_cider(backbone, builder, splits["test"], 200)
                    save_backbone(model_source, MIXED_BACKBONE)
                tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
            save_imitation(head, OUT / name, {"draft_layers": n, "variant": variant, "fusion": fusion_kind, "mixed": mixed})
            results[name] = {**metrics, "variant": variant, "fusion": fusion_kind}
        results["frozen_backbone_unchanged"] = weights_fingerprint(backbone.model) == before
        if not results["frozen_backbone_unchanged"]:
            raise RuntimeError("the frozen backbone changed during imitation training: a bug, results discarded")
        atomic_write_json(METRICS, results)
    summary = {k: (round(v.get("val_agreement", float("nan")), 3), round(v.get("val_acceptance_rate", float("nan")), 3))
               for k, v in results.items() if isinstance(v, dict)}
    print(f"n = {n}; (agreement, acceptance) per head: {summary}")


if __name__ == "__main__":
    run_stage(main)
