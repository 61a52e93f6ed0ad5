"""The n / λ / d sweep as a Ray Tune trainable, and the sweep stage's search and summary.

A trial is one (n = draft layers, λ = loss weights): it gets the imitation network for that pair
(`pipeline.search.sweep_heads`) and decodes validation prompts with the full model (our engine, token by token),
self-speculative decoding with the network at *every* d of the space (a fixed draft length or `growing`), and the
draft alone, all interleaved per prompt. d is not a Tune dimension: its settings differ only in speed, and a
speed-up is a ratio worth comparing only when measured in one process on one machine state (one trial per d,
running beside another trial on a 2-core machine, moved a setting's speed-up by ±0.2× between runs and flipped
which d was fastest). For each d it reports speed-up, acceptance, mean accepted length, CIDEr/BLEU-4 of the SSD
output (lossless: equal to the full model's, which it also reports and checks token for token); once per trial the
draft alone's quality and speed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import tracking
from pipeline.config import Params
from pipeline.errors import ConfigError
from pipeline.evaluation import methods
from pipeline.evaluation.comparison import evaluate_methods
from pipeline.evaluation.layer_choice import resolve_draft_layers
from pipeline.evaluation.method_runner import DecodingResources, batch_runnables, draft_policy, runnables
from pipeline.evaluation.pareto import pareto_front
from pipeline.evaluation.prompts import caption_prompts
from pipeline.models.imitation import (
    as_draft_head,
    searched_architecture,
)
from pipeline.models.loading import load_backbone
from pipeline.search.space import SearchSpace, load_search_space
from pipeline.search.stage_search import run_stage_search
from pipeline.search.sweep_heads import (
    SweepContext,
    head_key,
    heads_fingerprint,
    loss_label,
    loss_weights,
    obtain_head,
    reusable_heads,
)
from pipeline.search.trial_setup import load_for_trial
from pipeline.search.tuning import SearchSpec, inputs_fingerprint, result_rows

SPACE_KEYS = {"draft_layers", "loss", "draft_len"}
PER_DRAFT_LEN = [  # reported for every d of a trial, as "<metric>.d<d>"
    "speedup",
    "acceptance_rate",
    "mean_accepted_length",
    "verify_calls",
    "tokens_per_second",
    "cider_ssd",
    "bleu4_ssd",
    "identical_share",
    "lossless",
]
REPORTED = [
    "speedup",
    "acceptance_rate",
    "mean_accepted_length",
    "verify_calls",
    "tokens_per_second",
    "tokens_per_second_full",
    "cider_ssd",
    "bleu4_ssd",
    "cider_full",
    "bleu4_full",
    "identical_share",
    "lossless",
    "cider_draft",
    "bleu4_draft",
    "speedup_draft",
    "draft_cost_ratio",
]


def draft_len_key(metric: str, draft_len: int | str) -> str:
    return f"{metric}.d{draft_len}"


def sweep_trial(config: dict[str, Any], context: SweepContext) -> None:
    """Decode validation captions and descriptions with the full model, SSD at every d of the sweep and the draft
    alone, interleaved per prompt; report each d's speed, acceptance and caption quality (SSD checked identical to
    the full model) and the draft alone's. Tune's metric `speedup` is the trial's fastest lossless d."""
    from ray import tune

    from pipeline.evaluation.flops import per_token_flops

    params = context.config
    loaded = load_for_trial(context)
    backbone = loaded.backbone
    n = int(config["draft_layers"])
    weights = loss_weights(config["loss"], params)
    network, source = obtain_head(n, weights, context, loaded)
    network.eval()
    prompts = caption_prompts(
        loaded.splits["val"], loaded.builder, backbone.image_processor, params.sweep.captions, params.sweep.descriptions
    )
    # The reference is our own engine's full model: the speed-up is the algorithm's, not call overhead
    full, draft = methods.autoregressive(), methods.draft_only("trial", n)
    ours = {d: methods.ssd("trial", n, d) for d in context.draft_lens}
    tokenizer = backbone.tokenizer
    resources = DecodingResources.of(
        {methods.FINETUNED: backbone.model}, {"trial": as_draft_head(network)}, tokenizer, params.decoding
    )
    specs = [full, *ours.values(), draft]
    with torch.no_grad():
        # quality in batches (the evaluate stage's batch size), speed at batch 1, on the same validation prompts
        scores = evaluate_methods(
            runnables(specs, resources),
            batch_runnables(specs, resources),
            prompts,
            prompts,
            tokenizer,
            reference=full.key,
            batch_size=params.evaluate.batch_size,
            repeats=params.sweep.repeats,
        )
    drafted, reference = scores[draft.key], scores[full.key]
    report: dict[str, Any] = {
        "tokens_per_second_full": reference["tokens_per_second"],
        "cider_full": reference["cider"],
        "bleu4_full": reference["bleu4"],
        "cider_draft": drafted["cider"],
        "bleu4_draft": drafted["bleu4"],
        "speedup_draft": drafted["speedup"],
        "draft_cost_ratio": per_token_flops(backbone.adapter, n, network)["draft_cost_ratio"],
        "head_source": source,
        "loss_label": loss_label(config["loss"]),
        "prompts": len(prompts),
    }
    for d, spec in ours.items():
        ssd = scores[spec.key]
        measured = {
            "speedup": ssd["speedup"],
            "acceptance_rate": ssd.get("acceptance_rate", 0.0),
            "mean_accepted_length": ssd.get("mean_accepted_length", 0.0),
            "verify_calls": ssd.get("verify_calls", 0.0),
            "tokens_per_second": ssd["tokens_per_second"],
            "cider_ssd": ssd["cider"],
            "bleu4_ssd": ssd["bleu4"],
            "identical_share": ssd["identical_share"],
            "lossless": float(ssd["identical_share"] == 1.0),
        }
        report.update({draft_len_key(k, d): v for k, v in measured.items()})
    lossless = [report[draft_len_key("speedup", d)] for d in ours if report[draft_len_key("lossless", d)] == 1.0]
    report["speedup"] = max(lossless, default=0.0)
    tune.report(report)


def check_space(space: SearchSpace, params: Params, num_layers: int) -> None:
    """Every value the grid can take must be usable, before any trial starts."""
    problems = []
    for n in space.values("draft_layers"):
        if not isinstance(n, int) or not 1 <= n < num_layers:
            problems.append(f"draft_layers {n!r}: must be an integer in 1..{num_layers - 1}")
    for loss in space.values("loss"):
        try:
            loss_weights(loss, params)
        except ValueError as exc:
            problems.append(str(exc))
    draft_lens = space.values("draft_len") if "draft_len" in space.space else []
    if not draft_lens:
        problems.append("draft_len: missing (the draft lengths every trial times, e.g. {grid: [2, 3, 5, growing]})")
    for d in draft_lens:
        try:
            draft_policy(d, params.decoding.growing)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(f"search space {space.path}:\n" + "\n".join(f"  - {p}" for p in problems))


def setting_label(row: dict[str, Any]) -> str:
    return f"n={row['config.draft_layers']} {loss_label(row['config.loss'])} d={row['config.draft_len']}"


@dataclass
class SweepOutcome:
    rows: list[dict[str, Any]]  # one per trial, fastest first: reports/sweep.csv
    pareto_rows: list[
        dict[str, Any]
    ]  # every SSD setting and every draft alone, on or off the front: plots/sweep_pareto.csv
    groups: dict[str, list[tuple[float, float, str]]]  # (speed-up, CIDEr, setting) per method, for the figure
    front: list[tuple[float, float]]
    summary: dict[str, Any]  # best setting, lossless over all trials: metrics/sweep.json

    def headline(self) -> str:
        best = self.summary["best"]
        return (
            f"sweep: {self.summary['trials']} trials ({self.summary['settings']} settings), best {best['setting']} "
            f"speed-up {best['speedup']:.2f}×, "
            f"lossless in every trial: {self.summary['all_lossless']}"
        )


def fastest_draft_len(rows: list[dict[str, Any]]) -> dict[str, int]:
    """For each n, the fixed d whose lossless trials (over every λ) have the highest mean speed-up: what evaluate
    uses when decoding.draft_len is auto."""
    speedups: dict[int, dict[int, list[float]]] = {}
    for row in rows:
        d = row["config.draft_len"]
        if isinstance(d, int) and not isinstance(d, bool) and row["identical_share"] == 1.0:
            speedups.setdefault(int(row["config.draft_layers"]), {}).setdefault(d, []).append(row["speedup"])
    return {str(n): max(by_d, key=lambda d: sum(by_d[d]) / len(by_d[d])) for n, by_d in sorted(speedups.items())}


def setting_rows(trial_rows: list[dict[str, Any]], draft_lens: list[int | str]) -> list[dict[str, Any]]:
    """One row per (n, λ, d) from the trials' rows (one per (n, λ), each d's metrics under "<metric>.d<d>"), in the
    layout of one trial per setting: `config.draft_len` and the metric names of `REPORTED`."""
    rows = []
    for trial in trial_rows:
        shared = {k: v for k, v in trial.items() if k not in PER_DRAFT_LEN and "." not in k.removeprefix("config.")}
        for d in draft_lens:
            row = {**shared, "config.draft_len": d}
            row.update({k: trial.get(draft_len_key(k, d)) for k in PER_DRAFT_LEN})
            rows.append(row)
    return rows


def summarise(results: Any, draft_lens: list[int | str]) -> SweepOutcome:
    """The setting table, the speed/quality Pareto front of SSD settings and drafts alone, the best setting."""
    per_d = [draft_len_key(k, d) for k in PER_DRAFT_LEN for d in draft_lens]
    once = [k for k in REPORTED if k not in PER_DRAFT_LEN]  # a trial reports these once, for all its d
    trial_rows = result_rows(results, [*once, *per_d, "head_source", "loss_label"])
    rows = setting_rows(trial_rows, draft_lens)
    done = [r for r in rows if r["speedup"] is not None]
    ssd = [(r["speedup"], r["cider_ssd"], setting_label(r)) for r in done]
    draft = [
        (r["speedup_draft"], r["cider_draft"], f"draft n={r['config.draft_layers']} {r['loss_label']}") for r in done
    ]
    draft = list({p[2]: p for p in draft}.values())  # one point per (n, λ): the draft alone has no d
    points = ssd + draft
    front = [points[i][:2] for i in pareto_front([p[:2] for p in points])]
    pareto_rows = [
        {
            "method": "ssd" if i < len(ssd) else "draft_only",
            "setting": p[2],
            "speedup": p[0],
            "cider": p[1],
            "pareto": p[:2] in front,
        }
        for i, p in enumerate(points)
    ]
    best = max(done, key=lambda r: r["speedup"])
    summary = {
        "draft_len_by_layers": fastest_draft_len(done),
        "trials": len(trial_rows),  # one per (n, λ): every d timed in it, interleaved per prompt
        "settings": len(rows),
        "failed_trials": sum(bool(r["error"]) for r in trial_rows),
        "all_lossless": all(r["identical_share"] == 1.0 for r in done),
        "min_identical_share": min(r["identical_share"] for r in done),
        "best": {"setting": setting_label(best), **{k: best[k] for k in REPORTED}},
        "pareto": [p[2] for p in points if p[:2] in front],
    }
    ordered = sorted(rows, key=lambda r: -(r["speedup"] or 0))
    return SweepOutcome(
        ordered, pareto_rows, {"SSD + imitation (lossless)": ssd, "draft alone (lossy)": draft}, front, summary
    )


def heads_to_train(space: SearchSpace, params: Params, reusable: dict[str, str]) -> list[int]:
    """The draft depths n of `space` with an (n, λ) head that train_imitation did not train (a trial trains it)."""
    losses = space.values("loss") if "loss" in space.space else []
    return [
        n
        for n in space.values("draft_layers")
        if any(head_key(int(n), loss_weights(loss, params)) not in reusable for loss in losses)
    ]


def run_sweep(
    params: Params,
    model_dir: Path,
    imitation_dir: Path,
    best_architecture: Path,
    layer_choice: Path,
    write: Callable[[SweepOutcome], None],
    features_dir: Path | None = None,
) -> SweepOutcome:
    """The n/λ grid on Ray Tune, every d timed inside each trial; `write(outcome)` runs inside the stage's MLflow
    run. Paths are relative to the repository root."""
    root = tracking.repo_root()
    model_dir, imitation_dir, data_dir = (
        (root / p).resolve() for p in (model_dir, imitation_dir, Path(params.data.out_dir))
    )
    space = load_search_space(root / params.sweep.search_space, allowed_keys=SPACE_KEYS)
    num_layers = load_backbone(model_dir).adapter.num_layers
    check_space(space, params, num_layers)
    evaluated = resolve_draft_layers(
        params.imitation.draft_layers, num_layers, root / layer_choice, "imitation.draft_layers"
    )
    # evaluate takes its d from the sweep's trials at its n: a select_layer n outside the file's grid gets trials too
    space = space.with_grid_value("draft_layers", evaluated)
    draft_lens = space.values("draft_len")
    arch = searched_architecture(params.imitation.architecture, root / best_architecture).model_dump()
    model_fingerprint = inputs_fingerprint({}, [model_dir])
    heads_dir = root / "ray_results" / "sweep_heads" / heads_fingerprint(params, arch, model_fingerprint)
    reusable = reusable_heads(imitation_dir, params, arch)
    # Trials that train their head take minutes, those reusing train_imitation's only decode: started first, the
    # long ones overlap (the default 2 x 2 grid on 2 cores: Tune's 213 s -> 165 s; the last trial used to train alone)
    space = space.with_values_first("draft_layers", heads_to_train(space, params, reusable))
    context = SweepContext(
        str(model_dir),
        str(data_dir),
        params.model_dump(),
        0,
        threads=max(1, int(params.ray.cpus_per_trial)),
        features_dir=str((root / features_dir).resolve()) if features_dir else "",
        heads_dir=str(heads_dir),
        reusable=reusable,
        architecture=arch,
        draft_lens=draft_lens,
    )
    settings = params.model_dump(include={"seed", "sweep", "imitation", "decoding"}) | {
        "space": space.space,
        "arch": arch,
    }
    spec = SearchSpec(
        name="sweep",
        fingerprint=inputs_fingerprint(settings, [model_dir, imitation_dir, data_dir]),
        metric="speedup",
        mode="max",
        num_samples=1,
        seed=params.seed,
        max_failures=params.ray.max_failures,
        max_concurrent_trials=params.sweep.max_concurrent_trials,
        reports_when_complete=1,  # a sweep trial reports once, after decoding every prompt
    )
    tuned = space.without("draft_len")
    return run_stage_search(
        "sweep", params, sweep_trial, context, tuned, spec, {}, lambda results: summarise(results, draft_lens), write
    )
