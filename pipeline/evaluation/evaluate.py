"""Every method on the same test prompts (short captions, long descriptions, VQA), in one process, so every
speed-up is a ratio measured in one run on one machine (the `evaluate` stage's work).

Methods (`evaluation_plan`): the full model (decoded token by token by our engine: the reference),
`model.generate`; the draft alone without / with the imitation network; Draft & Verify (the searched skip set);
LayerSkip (its backbone, early-exit self-speculation); ours with each loss variant; ours with the growing d
schedule; the mixed-schedule model; ours (ce+cs+kd) and its draft alone with each other fusion of
`imitation.fusion_comparison` (the fusion table); ours (ce+cs+kd) at every d of `evaluate.draft_lens`
(speed-up by d, paper Fig. 9); and the separate language-only draft model (Gagrani et al.), decoded by our engine and
by Hugging Face's `assistant_model`.

Quality over the whole test split, decoded in batches; with `evaluate.trainer` naming several processes the split is
shared out (`pipeline.evaluation.sharded`) and rank zero gathers it. Speed at batch 1 on a sample of the split, timed
by rank zero alone, every method interleaved per prompt.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.prepared import load_prepared
from pipeline.distributed import is_rank_zero
from pipeline.errors import ModelLoadError
from pipeline.evaluation import methods
from pipeline.evaluation.caption_metrics import meteor_session
from pipeline.evaluation.comparison import score_methods
from pipeline.evaluation.draft_choice import SWEEP_METRICS, resolve_draft_len
from pipeline.evaluation.method_runner import DecodingResources, batch_runnables, runnables
from pipeline.evaluation.prompts import caption_prompts, first_of_each_task, on_device, vqa_prompts
from pipeline.evaluation.sharded import decode_sharded
from pipeline.evaluation.speed import first_token_only, time_methods
from pipeline.evaluation.verification_cost import GENERATED_TOKENS, verification_costs
from pipeline.models.imitation import load_draft_head
from pipeline.models.loading import load_backbone
from pipeline.report import series
from pipeline.training.language_draft import load_language_draft
from pipeline.training.launch import planned_processes


@dataclass(frozen=True)
class EvaluationInputs:
    """Where the trained models are (paths relative to the repository root)."""

    finetuned: Path
    imitation: Path  # one folder per imitation network
    layerskip: Path
    mixed_backbone: Path
    draft_verify: Path  # train_baselines' search result
    language_draft: Path | None = None  # train_baselines' language-only draft model (None: not compared)
    sweep: Path = SWEEP_METRICS  # the sweep's metrics: d when decoding.draft_len is auto


@dataclass
class Evaluation:
    plan: methods.EvaluationPlan
    summary: dict[str, Any]  # metrics/evaluate.json: the plan, per-method results (by method key), the settings

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        return self.summary["methods"]

    def acceptance_by_context(self) -> list[dict[str, Any]]:
        """Fig. 5's data (acceptance against tokens generated so far), for `dvc plots`."""
        return series.acceptance_by_context(self.plan, self.results)

    def acceptance_by_position(self) -> list[dict[str, Any]]:
        """Acceptance by position inside a draft round, for `dvc plots`."""
        return series.acceptance_by_position(self.plan, self.results)

    def speedup_by_draft_len(self) -> list[dict[str, Any]]:
        """Fig. 9's data, for `dvc plots`."""
        return series.speedup_by_draft_len(self.plan, self.results)

    def lines(self) -> list[str]:
        rows = self.results
        return [
            f"  {row['label']:34s} speed-up {row['speedup']:.2f}×{_passes(row)}  "
            f"identical {row['identical_share']:.0%}  CIDEr {row.get('cider', float('nan')):.3f}  "
            f"accept {row.get('acceptance_rate', float('nan')):.2f}"
            for row in rows.values()
        ]


def _passes(row: dict[str, Any]) -> str:
    """The speed-up's range over the timing passes, when there were several."""
    passes = row.get("speedup_by_repeat", [])
    return f" ({min(passes):.2f}–{max(passes):.2f})" if len(passes) > 1 else ""


def load_heads(folder: Path, model: torch.nn.Module) -> tuple[dict[str, torch.nn.Module], dict[str, int]]:
    """Every saved imitation network in `folder` as a draft head for `model` (its dtype and device), and its draft
    layers n."""
    heads, depth = {}, {}
    for path in sorted(p for p in folder.iterdir() if (p / "config.json").exists()):
        heads[path.name], extra = load_draft_head(path, model)
        depth[path.name] = int(extra["draft_layers"])
    if not heads:
        raise ModelLoadError(f"{folder} holds no imitation networks; run `dvc repro train_imitation`")
    return heads, depth


def run_evaluation(params: Params, inputs: EvaluationInputs) -> Evaluation | None:
    """Every method of the plan on the test prompts; None in the processes other than rank zero."""
    cfg = params.evaluate
    torch.manual_seed(params.seed)
    placement = {"dtype": params.model.dtype, "device": params.model.device}
    backbone = load_backbone(inputs.finetuned, **placement)
    test = load_prepared(params.data.out_dir)["test"]
    builder = backbone.prompt_builder(params.data.prompts)
    prompts = caption_prompts(test, builder, backbone.image_processor, cfg.captions, cfg.descriptions)
    prompts += vqa_prompts(test, builder, backbone.image_processor, cfg.vqa)
    hidden = backbone.adapter.embed_weight
    prompts = on_device(prompts, hidden.device, hidden.dtype)
    speed = cfg.speed
    sample = first_of_each_task(
        prompts, {"caption": speed.captions, "description": speed.descriptions, "vqa": speed.vqa}
    )
    heads, depth = load_heads(inputs.imitation, backbone.model)
    found = json.loads(inputs.draft_verify.read_text())
    models = {
        methods.FINETUNED: backbone.model,
        methods.LAYERSKIP: load_backbone(inputs.layerskip, **placement).model,
    }
    if methods.MIXED in heads and inputs.mixed_backbone.exists():
        models[methods.MIXED] = load_backbone(inputs.mixed_backbone, **placement).model
    else:
        depth.pop(methods.MIXED, None)
    main = methods.main_head_name(h for h in depth if h != methods.MIXED)
    d = resolve_draft_len(params.decoding.draft_len, depth[main], inputs.sweep)
    draft_models = {}
    if inputs.language_draft is not None:
        language = load_language_draft(inputs.language_draft, backbone.model)
        if language is not None:
            draft_models[methods.LANGUAGE_DRAFT] = language
    plan = methods.evaluation_plan(
        params, depth, found, draft_len=d, language_draft=bool(draft_models), hf_assisted=cfg.hf_assisted
    )
    tokenizer = backbone.tokenizer
    resources = DecodingResources.of(models, heads, tokenizer, params.decoding, draft_models)
    print(
        f"evaluate: {len(plan.methods)} methods × {len(prompts)} test prompts in batches of {cfg.batch_size}, "
        f"timed at batch 1 on {len(sample)} of them × {speed.repeats} repeat(s), n = {plan.draft_layers}"
    )
    runs = decode_sharded(
        batch_runnables(plan.methods, resources),
        prompts,
        cfg.batch_size,
        cfg.trainer,
        device=hidden.device,
        progress=is_rank_zero(),
    )
    if runs is None:  # another process of a shared-out run: rank zero times and scores
        return None
    timed = runnables(plan.methods, resources)
    # the prefill, timed in the same passes (a first-token-only decode), splits the decode phase off each latency
    sources = {spec.key: source.key for spec in plan.methods if (source := spec.prefill_source) is not None}
    first_names = {source: f"{source} (first token)" for source in sorted(set(sources.values()))}
    first_tokens = {name: first_token_only(timed[source]) for source, name in first_names.items()}
    with torch.no_grad():
        timings = time_methods(
            {**timed, **first_tokens}, sample, repeats=speed.repeats, device=hidden.device, progress=True
        )
    first_timings = {source: timings.pop(name) for source, name in first_names.items()}
    prefill = {key: first_timings[source] for key, source in sources.items()}
    # every d a timed method drafts, plus the verifier's own position
    widest = max([plan.draft_len, *cfg.draft_lens, params.decoding.growing.d_max]) + 1
    verification = verification_costs(backbone.model, sample[0], range(1, widest + 1), plan.draft_layers)
    with meteor_session() if cfg.meteor else contextlib.nullcontext() as meteor:
        results = score_methods(
            runs,
            prompts,
            timings,
            sample,
            tokenizer,
            reference=plan.reference.key,
            identity_references={s.key: s.identity_reference.key for s in plan.methods},
            meteor=meteor or False,
            spice=cfg.spice,
            prefill=prefill,
        )
    rows = {spec.key: {"label": spec.label, **results[spec.key]} for spec in plan.methods}
    summary = {
        "draft_layers": plan.draft_layers,
        "draft_len": plan.draft_len,
        "draft_len_source": "sweep" if params.decoding.draft_len == "auto" else "decoding.draft_len",
        "fusion": params.imitation.fusion,
        "growing": params.decoding.growing.model_dump(),
        "draft_verify": {k: found[k] for k in ("skip_layers", "threshold")},
        "prompts": {t: sum(p["task"] == t for p in prompts) for t in ("caption", "description", "vqa")},
        "timed_prompts": {t: sum(p["task"] == t for p in sample) for t in ("caption", "description", "vqa")},
        "batch_size": cfg.batch_size,
        "threads": torch.get_num_threads(),
        "processes": planned_processes(cfg.trainer),  # > 1: the split was shared out; speed timed by rank zero
        "dtype": params.model.dtype,
        "device": params.model.device,
        "plan": plan.to_dict(),
        "verification_cost": {
            "what": "latency of a verification pass over w positions ÷ one full-model step (batch 1, this process)",
            "prompt": sample[0]["key"],
            "generated_tokens": GENERATED_TOKENS,
            "relative": {str(width): cost for width, cost in verification.items()},
        },
        "methods": rows,
    }
    return Evaluation(plan, summary)


# The metrics a user compares methods by in the MLflow UI's run list and compare view, under the same names in every
# evaluate run: speed-up over the full model, acceptance rate, τ (draft tokens accepted per verification), CIDEr and
# BLEU-4 of the captions, and the share of outputs identical to the backbone's greedy decoding
COMPARED = ("speedup", "acceptance_rate", "tau", "cider", "bleu4", "identical_share")


def log_method_runs(evaluation: Evaluation) -> None:
    """One MLflow run per method, nested under the stage's run and tagged by method (`method` = its key, `method_kind`,
    `backbone`, `head`), with the `COMPARED` metrics side by side, for the UI's run list and compare view."""
    for spec in evaluation.plan.methods:
        row = evaluation.results[spec.key]
        tags = {"method": spec.key, "method_kind": spec.kind, "backbone": spec.backbone, "head": spec.head or "none"}
        with tracking.nested_run(spec.label, {"method": spec.key, **spec.to_dict()}, tags=tags):
            flat = {k: v for k, v in row.items() if isinstance(v, float)}
            if "mean_accepted_length" in row:
                flat["tau"] = row["mean_accepted_length"]
            for task, scores in row.get("tasks", {}).items():
                flat.update({f"{task}_{k}": v for k, v in scores.items() if isinstance(v, float)})
                for kind, group in scores.get("by_question_type", {}).items():
                    flat[f"vqa_accuracy/{kind}"] = group["accuracy"]
            flat.update({f"speedup_{task}": v for task, v in row["speedup_by_task"].items()})
            tracking.log_metrics(flat)
