"""DVC stage `train_baselines`: the trained baselines SSD is compared with (`pipeline.training.baselines`):
LayerSkip (the backbone trained on with early-exit losses and layer dropout), Draft & Verify (a searched set
of skipped layers and a confidence threshold) and the separate language-only draft model of Gagrani et al.
(`pipeline.training.language_draft`; `models/language_draft/`, with `status.json` saying why when none is trained).

Outputs: `models/layerskip/` (HF format), `models/draft_verify.json` (skip_layers, threshold, max_draft_len,
search trace), `metrics/baselines.json` (LayerSkip: validation agreement/acceptance/τ before and after,
full-model test CIDEr vs the fine-tuned model's; D&V: the chosen set, acceptance, τ, objective). LayerSkip's backbone
is logged as an MLflow model and registered (`<experiment>-layerskip-backbone`); with `baselines.layerskip.trainer`
naming several processes it trains with DDP, and the other processes stop after training.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.prepared import load_prepared
from pipeline.evaluation.layer_choice import resolve_draft_layers
from pipeline.io import atomic_write_json
from pipeline.models.loading import load_backbone, save_backbone
from pipeline.training.baselines import search_draft_verify_baseline, summary_line, train_layerskip_baseline
from pipeline.training.language_draft import fit_language_draft, save_language_draft
from pipeline.training.launch import check_launch
from stages._common import run_stage

FINETUNED = Path("models/finetuned")
LAYER_CHOICE = Path("metrics/layer_choice.json")
LAYERSKIP = Path("models/layerskip")
DRAFT_VERIFY = Path("models/draft_verify.json")
LANGUAGE_DRAFT = Path("models/language_draft")
METRICS = Path("metrics/baselines.json")


def main(params: Params) -> None:
    layerskip_cfg = params.baselines.layerskip
    check_launch(layerskip_cfg.trainer, "baselines.layerskip.trainer", layerskip_cfg.batch_size)
    splits = load_prepared(params.data.out_dir)
    finetuned = load_backbone(FINETUNED)
    num_layers = finetuned.adapter.num_layers
    n = resolve_draft_layers(layerskip_cfg.draft_layers, num_layers, LAYER_CHOICE, "baselines.layerskip.draft_layers")
    with tracking.stage_run("train_baselines", params.tracking.experiment, params.model_dump(include={"baselines"})):
        trained = train_layerskip_baseline(params, finetuned, FINETUNED, splits, n)
        if trained is None:  # another DDP process: rank zero searches Draft & Verify and writes
            return
        layerskip, layerskip_metrics = trained
        save_backbone(layerskip, LAYERSKIP)
        found = search_draft_verify_baseline(params, finetuned, splits)
        atomic_write_json(DRAFT_VERIFY, found.to_dict())
        shape = params.baselines.language_draft.model_dump(include={"num_layers", "hidden_size", "max_steps"})
        with tracking.nested_run("language_draft", shape) as child:
            language = fit_language_draft(
                finetuned,
                splits,
                params.data.prompts,
                params.baselines.language_draft,
                seed=params.seed,
                tracking_run=tracking.run_ref(child.info.run_id) if child is not None else None,
            )
        save_language_draft(language, LANGUAGE_DRAFT)
        atomic_write_json(
            METRICS,
            {
                "num_layers": num_layers,
                "layerskip": layerskip_metrics,
                "draft_verify": found.summary(),
                "language_draft": language.metrics,
            },
        )
    print(summary_line(layerskip_metrics, found.summary()))
    print(f"language-only draft: {language.metrics}")


if __name__ == "__main__":
    run_stage(main)
