"""DVC stage `train_baselines`: the trained baselines SSD is compared with (`pipeline.training.baselines`):
LayerSkip (the backbone trained on with early-exit losses and layer dropout), Draft & Verify (a searched set
of skipped layers and a confidence threshold) and the separate language-only draft model of Gagrani et al.
(`pipeline.training.language_draft`; `models/language_draft/`, with `status.json` saying why when none is trained).

Outputs: `models/layerskip/` (HF format), `models/draft_verify.json` (skip_layers, threshold, max_draft_len,
search trace), `metrics/baselines.json` (LayerSkip: validation agreement/acceptance/τ before and after,
full-model test CIDEr vs the fine-tuned model's; D&V: the chosen set, acceptance, τ, objective). LayerSkip's backbone
is logged as an MLflow model and registered (`<experiment>-layerskip-backbone`); with `baselines.layerskip.trainer`
naming several processes it trains with DDP, and the other processes stop after training. On a CPU with two cores or
more, Draft & Verify's search and the language-only draft run in a worker process beside LayerSkip's training, each on
half of the cores (`pipeline.training.baselines.side_layout`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.prepared import load_prepared
from pipeline.distributed import is_rank_zero
from pipeline.evaluation.layer_choice import resolve_draft_layers
from pipeline.io import atomic_write_json
from pipeline.models.loading import load_backbone, save_backbone
from pipeline.training.baselines import (
    close_decoding_baselines_runs,
    decoding_baselines,
    decoding_baselines_job,
    side_layout,
    summary_line,
    train_decoding_baselines,
    train_layerskip_baseline,
)
from pipeline.training.language_draft import save_language_draft
from pipeline.training.launch import check_launch
from pipeline.training.trainer import torch_threads
from pipeline.training.worker_pool import spawned_pool
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
    layout = side_layout(layerskip_cfg.trainer)
    with tracking.stage_run("train_baselines", params.tracking.experiment, params.model_dump(include={"baselines"})):
        job = decoding_baselines_job(params, FINETUNED, threads=layout[0] if layout else 0) if is_rank_zero() else None
        decoding = None
        try:
            with spawned_pool(1) if layout and job else contextlib.nullcontext() as pool:
                pending = pool.submit(train_decoding_baselines, job) if pool else None
                if layout:
                    print(
                        f"train_baselines: Draft & Verify and the language-only draft in a worker ({layout[0]} "
                        f"thread(s)) beside LayerSkip ({layout[1]} thread(s))"
                    )
                with torch_threads(layout[1] if layout else 0):
                    trained = train_layerskip_baseline(params, finetuned, FINETUNED, splits, n)
                if trained is None or job is None:  # another DDP process: rank zero searches and writes
                    return
                layerskip, layerskip_metrics = trained
                save_backbone(layerskip, LAYERSKIP)
                # in this process: on the model and splits already loaded (no second copy on the device)
                decoding = pending.result() if pending else decoding_baselines(params, finetuned, splits, job)
        finally:
            if job is not None:
                close_decoding_baselines_runs(job, decoding)
        found, language = decoding.draft_verify, decoding.language_draft
        atomic_write_json(DRAFT_VERIFY, found.to_dict())
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
