"""The two trained baselines SSD is compared with (the `train_baselines` stage's work), each as a child MLflow run.

- LayerSkip (Elhoushi et al. 2024): a copy of the fine-tuned backbone trained on with early-exit losses and layer
  dropout (`pipeline.training.layerskip`); it drafts by early exit at the draft layer.
- Draft & Verify (Zhang et al. 2023): the fine-tuned backbone unchanged; the layers its draft skips and the
  confidence-stop threshold come from a greedy search on validation prompts (`pipeline.search.skip_layers`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.prepared import SplitData
from pipeline.distributed import is_rank_zero
from pipeline.evaluation.greedy_captions import caption_cider
from pipeline.evaluation.prompts import validation_prompts
from pipeline.models.loading import Backbone, load_backbone, save_backbone
from pipeline.search.skip_layers import SkipSearchResult, search_skip_layers
from pipeline.training.imitation import decode_acceptance
from pipeline.training.layerskip import fit_layerskip


def train_layerskip_baseline(
    params: Params, finetuned: Backbone, finetuned_dir: Path, splits: dict[str, SplitData], draft_layers: int
) -> tuple[Backbone, dict[str, Any]] | None:
    """LayerSkip's backbone (trained from a fresh copy of `finetuned_dir`, logged as an MLflow model and registered)
    and its metrics: validation agreement, acceptance and τ before and after, and the full model's test CIDEr against
    the fine-tuned model's. Under DDP every process trains; the others return None after training."""
    cfg = params.baselines.layerskip
    builder = finetuned.prompt_builder(params.data.prompts)
    print(
        f"train_baselines: LayerSkip (draft layer {draft_layers}, p_max {cfg.p_max}, "
        f"early-exit scale {cfg.early_exit_scale})"
    )
    with tracking.nested_run("layerskip", {"draft_layers": draft_layers}) as child:
        prompts = validation_prompts(splits["val"], builder, finetuned.image_processor, cfg.val_decode_prompts)
        before = decode_acceptance(finetuned.model, None, draft_layers, prompts) if prompts and is_rank_zero() else None
        layerskip = load_backbone(finetuned_dir)  # a fresh copy: the fine-tuned model stays as it was for D&V
        result = fit_layerskip(
            layerskip.model,
            builder,
            layerskip.image_processor,
            splits,
            cfg,
            draft_layers=draft_layers,
            seed=params.seed,
            tracking_run=tracking.run_ref(child.info.run_id) if child is not None else None,
        )
        if not is_rank_zero():
            return None
        metrics: dict[str, Any] = {"draft_layers": draft_layers, **result.metrics}
        if before is not None:
            metrics["finetuned_val_acceptance_rate"] = before.acceptance_rate
            metrics["finetuned_val_mean_accepted_length"] = before.mean_accepted_length
        metrics["full_model_test_cider"] = caption_cider(layerskip, builder, splits["test"], cfg.eval_samples)
        metrics["finetuned_test_cider"] = caption_cider(finetuned, builder, splits["test"], cfg.eval_samples)
        tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
        if params.tracking.register_models and child is not None:
            metrics["registered_model"] = log_layerskip_model(child.info.run_id, layerskip, params, draft_layers)
    return layerskip, metrics


def log_layerskip_model(run_id: str, layerskip: Backbone, params: Params, draft_layers: int) -> str:
    """LayerSkip's backbone as an MLflow model in its run (its tokenizer and image processor beside it), registered as
    <experiment>-layerskip-backbone; `SelfSpeculativeDecoder(model, draft_layers, None, d)` drafts with it. Its
    registry URI.

    The logged module is a fresh load of the saved backbone: a model that has run carries the forward hooks
    transformers installs to capture hidden states (closures over context variables), which do not pickle."""
    with tempfile.TemporaryDirectory() as tmp:
        save_backbone(layerskip, tmp)
        fresh = load_backbone(tmp)
        logged = tracking.log_torch_model(
            run_id,
            fresh.model,
            name="layerskip_backbone",
            signature=tracking.TensorSpecs(
                inputs={"input_ids": ("int64", (-1, -1))},
                outputs={"logits": ("float32", (-1, -1, int(fresh.model.get_output_embeddings().weight.shape[0])))},
            ),
            metadata={"draft_layers": draft_layers, "p_max": params.baselines.layerskip.p_max},
            registered_name=tracking.registered_model_name(params.tracking.experiment, "layerskip", "backbone"),
            # the tokenizer and image processor: what turns an image and a prompt into the model's inputs
            extra_files=sorted(p for p in Path(tmp).iterdir() if p.suffix != ".safetensors"),
        )
    return (logged.registry_uri or "") if logged else ""


def search_draft_verify_baseline(params: Params, finetuned: Backbone, splits: dict[str, SplitData]) -> SkipSearchResult:
    """Draft & Verify's skipped layers and threshold, searched on validation prompts; the search trace is logged."""
    cfg = params.baselines.draft_verify
    print(f"train_baselines: Draft & Verify search (floor {cfg.acceptance_floor}, thresholds {cfg.thresholds})")
    with tracking.nested_run("draft_verify", cfg.model_dump()):
        prompts = validation_prompts(
            splits["val"], finetuned.prompt_builder(params.data.prompts), finetuned.image_processor, cfg.prompts
        )
        found = search_skip_layers(
            finetuned.model,
            prompts,
            thresholds=cfg.thresholds,
            acceptance_floor=cfg.acceptance_floor,
            max_skipped=cfg.max_skipped,
            max_draft_len=cfg.max_draft_len,
            progress=print,
        )
        for index, row in enumerate(found.trace):
            tracking.log_metrics(
                {k: float(row[k]) for k in ("acceptance_rate", "mean_accepted_length", "objective")}, step=index
            )
        tracking.log_metrics({k: float(v) for k, v in found.summary().items() if isinstance(v, int | float)})
    if not found.meets_floor:
        print(f"warning: no skip set reached acceptance {cfg.acceptance_floor}; kept the most accepted one")
    return found


def summary_line(layerskip: dict[str, Any], draft_verify: dict[str, Any]) -> str:
    ls, dv, nan = layerskip, draft_verify, float("nan")
    return (
        f"LayerSkip n = {ls['draft_layers']}: acceptance {ls.get('finetuned_val_acceptance_rate', nan):.3f} → "
        f"{ls.get('val_acceptance_rate', nan):.3f}, "
        f"CIDEr {ls['finetuned_test_cider']:.3f} → {ls['full_model_test_cider']:.3f}; "
        f"D&V skip {dv['skip_layers']} θ {dv['threshold']}: "
        f"acceptance {dv['acceptance_rate']:.3f}, objective {dv['objective']:.3f}"
    )
