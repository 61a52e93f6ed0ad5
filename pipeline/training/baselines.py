"""The two trained baselines SSD is compared with (the `train_baselines` stage's work), each as a child MLflow run.

- LayerSkip (Elhoushi et al. 2024): a copy of the fine-tuned backbone trained on with early-exit losses and layer
  dropout (`pipeline.training.layerskip`); it drafts by early exit at the draft layer.
- Draft & Verify (Zhang et al. 2023): the fine-tuned backbone unchanged; the layers its draft skips and the
  confidence-stop threshold come from a greedy search on validation prompts (`pipeline.search.skip_layers`).

The Draft & Verify search and the separate language-only draft (`pipeline.training.language_draft`) need only the
fine-tuned model: on a CPU with two cores or more they run in a worker process on half of them while LayerSkip trains
on the rest (`side_layout`): the search decodes at batch 1, which a second thread barely speeds up.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import tracking
from pipeline.config import Params, TrainerConfig
from pipeline.data.prepared import SplitData, load_prepared
from pipeline.distributed import is_rank_zero
from pipeline.evaluation.greedy_captions import caption_cider
from pipeline.evaluation.prompts import validation_prompts
from pipeline.models.loading import Backbone, load_backbone, save_backbone
from pipeline.search.skip_layers import SkipSearchResult, search_skip_layers
from pipeline.training.imitation import decode_acceptance
from pipeline.training.language_draft import LanguageDraftResult, fit_language_draft
from pipeline.training.launch import available_cpus, planned_processes
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


def search_draft_verify_baseline(
    params: Params, finetuned: Backbone, splits: dict[str, SplitData], tracking_run: tracking.RunRef | None = None
) -> SkipSearchResult:
    """Draft & Verify's skipped layers and threshold, searched on validation prompts; the search trace is logged into
    `tracking_run` (the child run the stage's process opened for it; None: not logged)."""
    cfg = params.baselines.draft_verify
    print(f"train_baselines: Draft & Verify search (floor {cfg.acceptance_floor}, thresholds {cfg.thresholds})")
    with tracking.resumed_run(tracking_run):
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


@dataclass(frozen=True)
class DecodingBaselinesJob:
    """The Draft & Verify search and the language-only draft's training, as a worker process receives them."""

    params: dict[str, Any]  # Params.model_dump()
    finetuned_dir: Path
    threads: int  # torch threads; 0: leave the process's own
    draft_verify_run: tracking.RunRef | None = None  # child runs the stage's process opened (None: not logged)
    language_draft_run: tracking.RunRef | None = None


@dataclass
class DecodingBaselines:
    draft_verify: SkipSearchResult
    language_draft: LanguageDraftResult


def side_layout(trainer: TrainerConfig) -> tuple[int, int] | None:
    """(worker threads, LayerSkip's threads) when the decoding baselines run beside LayerSkip's training: on a CPU, one
    training process, two cores or more; else None (an accelerator or DDP keeps them after the training)."""
    cpus = available_cpus()
    if trainer.accelerator != "cpu" or planned_processes(trainer) > 1 or cpus < 2:
        return None
    return cpus // 2, cpus - cpus // 2


def decoding_baselines_job(params: Params, finetuned_dir: Path, threads: int) -> DecodingBaselinesJob:
    """A job with its two child runs opened under the active stage run (closed by `close_decoding_baselines_runs`)."""
    draft_verify = tracking.open_child_run("draft_verify", params.baselines.draft_verify.model_dump())
    language = tracking.open_child_run(
        "language_draft", params.baselines.language_draft.model_dump(include={"num_layers", "hidden_size", "max_steps"})
    )
    return DecodingBaselinesJob(
        params.model_dump(),
        finetuned_dir,
        threads,
        tracking.run_ref(draft_verify) if draft_verify else None,
        tracking.run_ref(language) if language else None,
    )


def train_decoding_baselines(job: DecodingBaselinesJob) -> DecodingBaselines:
    """A worker process's entry: load the fine-tuned model and the splits, then `decoding_baselines`."""
    if job.threads:
        torch.set_num_threads(job.threads)
    params = Params.model_validate(job.params)
    return decoding_baselines(params, load_backbone(job.finetuned_dir), load_prepared(params.data.out_dir), job)


def decoding_baselines(
    params: Params, finetuned: Backbone, splits: dict[str, SplitData], job: DecodingBaselinesJob
) -> DecodingBaselines:
    """Search Draft & Verify and train the language-only draft on `finetuned`, logging into the job's child runs."""
    found = search_draft_verify_baseline(params, finetuned, splits, job.draft_verify_run)
    language = fit_language_draft(
        finetuned,
        splits,
        params.data.prompts,
        params.baselines.language_draft,
        seed=params.seed,
        tracking_run=job.language_draft_run,
    )
    return DecodingBaselines(found, language)


def close_decoding_baselines_runs(job: DecodingBaselinesJob, result: DecodingBaselines | None) -> None:
    """End the job's child runs: finished with the language draft's metrics, or failed without a result."""
    failed = result is None
    verify, language = job.draft_verify_run, job.language_draft_run
    tracking.close_child_run(verify.run_id if verify else None, failed=failed)
    metrics = {} if result is None else result.language_draft.metrics
    scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    tracking.close_child_run(language.run_id if language else None, scalars, failed=failed)


def summary_line(layerskip: dict[str, Any], draft_verify: dict[str, Any]) -> str:
    ls, dv, nan = layerskip, draft_verify, float("nan")
    return (
        f"LayerSkip n = {ls['draft_layers']}: acceptance {ls.get('finetuned_val_acceptance_rate', nan):.3f} → "
        f"{ls.get('val_acceptance_rate', nan):.3f}, "
        f"CIDEr {ls['finetuned_test_cider']:.3f} → {ls['full_model_test_cider']:.3f}; "
        f"D&V skip {dv['skip_layers']} θ {dv['threshold']}: "
        f"acceptance {dv['acceptance_rate']:.3f}, objective {dv['objective']:.3f}"
    )
