"""DVC stage `train_baselines`: the two trained baselines SSD is compared with.

- LayerSkip (Elhoushi et al. 2024): a copy of the fine-tuned backbone trained on with early-exit losses and
  layer dropout (pipeline/training/layerskip.py); it drafts by early exit at the draft layer.
- Draft & Verify (Zhang et al. 2023): the fine-tuned backbone unchanged; the layers its draft skips and the
  confidence-stop threshold come from a greedy search on validation prompts (pipeline/search/skip_layers.py).

Outputs: `models/layerskip/` (HF format), `models/draft_verify.json` (skip_layers, threshold, max_draft_len,
search trace), `metrics/baselines.json` (LayerSkip: validation agreement/acceptance/τ before and after,
full-model test CIDEr vs the fine-tuned model's; D&V: the chosen set, acceptance, τ, objective).
"""

from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.examples import load_prepared
from pipeline.data.prompts import PromptBuilder
from pipeline.evaluation.captioning import caption_cider
from pipeline.evaluation.layer_choice import resolve_draft_layers
from pipeline.io import atomic_write_json
from pipeline.models.loading import load_backbone, save_backbone
from pipeline.search.skip_layers import search_skip_layers
from pipeline.training.imitation import decode_acceptance, validation_prompts
from pipeline.training.layerskip import fit_layerskip
from stages._common import run_stage

FINETUNED = Path("models/finetuned")
LAYERSKIP = Path("models/layerskip")
DRAFT_VERIFY = Path("models/draft_verify.json")
LAYER_CHOICE = Path("metrics/layer_choice.json")
METRICS = Path("metrics/baselines.json")


def main(params: Params) -> None:
    ls_cfg, dv_cfg = params.baselines.layerskip, params.baselines.draft_verify
    splits = load_prepared(params.data.out_dir)
    finetuned = load_backbone(FINETUNED)
    adapter = finetuned.adapter
    n = resolve_draft_layers(ls_cfg.draft_layers, adapter.num_layers, LAYER_CHOICE, "baselines.layerskip.draft_layers")
    builder = PromptBuilder(finetuned.tokenizer, params.data.prompts, adapter.image_token_id, adapter.num_image_tokens)
    results: dict = {"num_layers": adapter.num_layers}
    with tracking.stage_run("train_baselines", params.tracking.experiment, params.model_dump(include={"baselines"})):
        print(f"train_baselines: LayerSkip (draft layer {n}, p_max {ls_cfg.p_max}, early-exit scale {ls_cfg.early_exit_scale})")
        with tracking.nested_run("layerskip", {"draft_layers": n}) as child:
            prompts = validation_prompts(splits["val"], builder, finetuned.image_processor, ls_cfg.val_decode_prompts)
            before = decode_acceptance(finetuned.model, None, n, prompts) if prompts else None
            layerskip = load_backbone(FINETUNED)  # a fresh copy: the fine-tuned model stays as it was for D&V
            result = fit_layerskip(
                layerskip.model, builder, layerskip.image_processor, splits, ls_cfg, draft_layers=n, seed=params.seed,
                mlflow_uri=tracking.tracking_uri(), mlflow_run_id=child.info.run_id if child is not None else None,
            )
            metrics = {"draft_layers": n, **result.metrics}
            if before is not None:
                metrics["finetuned_val_acceptance_rate"] = before.acceptance_rate
                metrics["finetuned_val_mean_accepted_length"] = before.mean_accepted_length
            metrics["full_model_test_cider"] = caption_cider(layerskip, builder, splits["test"], ls_cfg.eval_samples)
            metrics["finetuned_test_cider"] = caption_cider(finetuned, builder, splits["test"], ls_cfg.eval_samples)
            tracking.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float)})
            save_backbone(layerskip, LAYERSKIP)
        results["layerskip"] = metrics

        print(f"train_baselines: Draft & Verify search (floor {dv_cfg.acceptance_floor}, thresholds {dv_cfg.thresholds})")
        with tracking.nested_run("draft_verify", dv_cfg.model_dump()):
            prompts = validation_prompts(splits["val"], builder, finetuned.image_processor, dv_cfg.prompts)
            found = search_skip_layers(
                finetuned.model, prompts, thresholds=dv_cfg.thresholds, acceptance_floor=dv_cfg.acceptance_floor,
                max_skipped=dv_cfg.max_skipped, max_draft_len=dv_cfg.max_draft_len, progress=print,
            )
            for index, row in enumerate(found.trace):
                tracking.log_metrics({k: float(row[k]) for k in ("acceptance_rate", "mean_accepted_length", "objective")}, step=index)
            summary = {k: v for k, v in found.to_dict().items() if k != "trace"}
            tracking.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
            if not found.meets_floor:
                print(f"warning: no skip set reached acceptance {dv_cfg.acceptance_floor}; kept the most accepted one")
            atomic_write_json(DRAFT_VERIFY, found.to_dict())
        results["draft_verify"] = summary
        atomic_write_json(METRICS, results)
    ls, dv = results["layerskip"], results["draft_verify"]
    print(f"LayerSkip n = {n}: acceptance {ls.get('finetuned_val_acceptance_rate', float('nan')):.3f} → "
          f"{ls.get('val_acceptance_rate', float('nan')):.3f}, CIDEr {ls['finetuned_test_cider']:.3f} → {ls['full_model_test_cider']:.3f}; "
          f"D&V skip {dv['skip_layers']} θ {dv['threshold']}: acceptance {dv['acceptance_rate']:.3f}, objective {dv['objective']:.3f}")


if __name__ == "__main__":
    run_stage(main)
