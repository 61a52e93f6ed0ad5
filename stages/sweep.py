"""DVC stage `sweep`: Ray Tune sweep over draft layers n, loss weights λ and draft length d.

Outputs: `reports/sweep.csv` (every trial), `metrics/sweep.json` (best setting, lossless check over all
trials), `plots/sweep_pareto.csv` + `reports/figures/sweep_pareto.png` (speed-up against CIDEr: SSD at
every setting and the draft alone — the lossy alternative SSD is compared with). Trials are nested MLflow
runs under this stage's run; the plot is logged to it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.errors import ConfigError
from pipeline.evaluation.pareto import pareto_front
from pipeline.io import atomic_write_csv, atomic_write_json
from pipeline.models.imitation import architecture_spec
from pipeline.models.loading import load_backbone
from pipeline.report import pareto_plot
from pipeline.search import sweep
from pipeline.search.space import load_search_space
from pipeline.search.tuning import SearchSpec, inputs_fingerprint, result_rows
from stages._common import run_stage, search_in_stage

FINETUNED = Path("models/finetuned")
IMITATION = Path("models/imitation")
BEST_ARCHITECTURE = Path("models/nas/best_architecture.json")
TABLE = Path("reports/sweep.csv")
METRICS = Path("metrics/sweep.json")
PARETO_DATA = Path("plots/sweep_pareto.csv")
PARETO_FIGURE = Path("reports/figures/sweep_pareto.png")


def check_space(space, params: Params, num_layers: int) -> None:
    """Every value the grid can take must be usable, before any trial starts."""
    problems = []
    for n in space.values("draft_layers"):
        if not isinstance(n, int) or not 1 <= n < num_layers:
            problems.append(f"draft_layers {n!r}: must be an integer in 1..{num_layers - 1}")
    for loss in space.values("loss"):
        try:
            sweep.loss_weights(loss, params)
        except ValueError as exc:
            problems.append(str(exc))
    for d in space.values("draft_len"):
        try:
            sweep.draft_policy(d, params)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError(f"search space {space.path}:\n" + "\n".join(f"  - {p}" for p in problems))


def label(row: dict) -> str:
    return f"n={row['config.draft_layers']} {sweep.loss_label(row['config.loss'])} d={row['config.draft_len']}"


def main(params: Params) -> None:
    root = tracking.repo_root()
    space = load_search_space(root / params.sweep.search_space, allowed_keys=sweep.SPACE_KEYS)
    backbone = load_backbone(FINETUNED)
    check_space(space, params, backbone.adapter.num_layers)
    arch = architecture_spec(params.imitation.architecture.model_dump(), BEST_ARCHITECTURE)
    model_fingerprint = inputs_fingerprint({}, [root / FINETUNED])
    heads_dir = root / "ray_results" / "sweep_heads" / sweep.heads_fingerprint(params, arch, model_fingerprint)
    context = sweep.SweepContext(
        str((root / FINETUNED).resolve()), str((root / params.data.out_dir).resolve()), params.model_dump(), 0,
        threads=max(1, int(params.ray.cpus_per_trial)), heads_dir=str(heads_dir),
        reusable=sweep.reusable_heads(root / IMITATION, params, arch), architecture=arch,
    )
    settings = params.model_dump(include={"seed", "sweep", "imitation", "decoding"}) | {"space": space.space, "arch": arch}
    spec = SearchSpec(
        name="sweep", fingerprint=inputs_fingerprint(settings, [root / FINETUNED, root / IMITATION, root / params.data.out_dir]),
        metric="speedup", mode="max", num_samples=1, seed=params.seed, max_failures=params.ray.max_failures,
        max_concurrent_trials=params.sweep.max_concurrent_trials,
    )
    outcome: dict = {}

    def finish(results) -> None:
        rows = result_rows(results, [*sweep.REPORTED, "head_source", "loss_label"])
        done = [r for r in rows if r["speedup"] is not None]
        ssd = [(r["speedup"], r["cider_ssd"], label(r)) for r in done]
        draft = [(r["speedup_draft"], r["cider_draft"], f"draft n={r['config.draft_layers']} {r['loss_label']}") for r in done]
        draft = list({p[2]: p for p in draft}.values())  # one point per (n, λ): the draft alone has no d
        points = ssd + draft
        front = [points[i][:2] for i in pareto_front([p[:2] for p in points])]
        atomic_write_csv(TABLE, sorted(rows, key=lambda r: -(r["speedup"] or 0)))
        atomic_write_csv(PARETO_DATA, [{"method": "ssd" if i < len(ssd) else "draft_only", "setting": p[2], "speedup": p[0],
                                        "cider": p[1], "pareto": p[:2] in front} for i, p in enumerate(points)])
        pareto_plot(PARETO_FIGURE, {"SSD + imitation (lossless)": ssd, "draft alone (lossy)": draft}, front,
                    xlabel="speed-up over the full model", ylabel="CIDEr (validation captions)",
                    title=f"sweep: {len(done)} settings of n, λ, d")
        best = max(done, key=lambda r: r["speedup"])
        summary = {
            "trials": len(rows),
            "failed_trials": sum(bool(r["error"]) for r in rows),
            "all_lossless": all(r["identical_share"] == 1.0 for r in done),
            "min_identical_share": min(r["identical_share"] for r in done),
            "best": {"setting": label(best), **{k: best[k] for k in sweep.REPORTED}},
            "pareto": [p[2] for p in points if p[:2] in front],
        }
        atomic_write_json(METRICS, summary)
        tracking.log_metrics({f"best_{k}": float(v) for k, v in summary["best"].items() if isinstance(v, int | float)})
        for path in (TABLE, PARETO_FIGURE):
            tracking.log_artifact(path)
        outcome.update(summary)

    from ray import tune

    search_in_stage("sweep", params, tune.with_parameters(sweep.sweep_trial, context=context), space, spec, {}, finish)
    print(f"sweep: {outcome['trials']} trials, best {outcome['best']['setting']} speed-up {outcome['best']['speedup']:.2f}×, "
          f"lossless in every trial: {outcome['all_lossless']}")
    print(json.dumps(outcome["best"], indent=1, default=str))


if __name__ == "__main__":
    run_stage(main)
