"""DVC stage `nas`: Ray Tune search over imitation-network architectures at the chosen n (paper Appendix B).

Outputs: `models/nas/best_architecture.json` (read by `train_imitation`), `reports/nas_trials.csv` (every
trial: architecture, agreement, acceptance, FLOPs, score, how far ASHA let it train, errors) and
`metrics/nas.json` (the winner against the paper's choice, two linear layers). Trials are nested MLflow runs
under this stage's run. Ray's own results live in `<ray.storage_path>/nas` (not a DVC out: an interrupted
search is resumed from there).
"""

from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.evaluation.layer_choice import resolve_draft_layers
from pipeline.io import atomic_write_csv, atomic_write_json
from pipeline.models.loading import load_backbone
from pipeline.search import nas
from pipeline.search.space import load_search_space
from pipeline.search.trial_setup import TrialContext
from pipeline.search.tuning import SearchSpec, inputs_fingerprint, result_rows
from stages._common import run_stage, search_in_stage

FINETUNED = Path("models/finetuned")
LAYER_CHOICE = Path("metrics/layer_choice.json")
BEST = Path("models/nas/best_architecture.json")
TABLE = Path("reports/nas_trials.csv")
METRICS = Path("metrics/nas.json")
PAPER_CHOICE = {"num_linear": 2, "attention": False}


def max_reports(cfg) -> int:
    return max(1, cfg.max_steps // cfg.report_every_steps)


def scheduler(cfg):
    from ray.tune.schedulers import ASHAScheduler

    reports = max_reports(cfg)
    return ASHAScheduler(time_attr="training_iteration", max_t=reports, grace_period=min(cfg.grace_reports, reports),
                         reduction_factor=cfg.reduction_factor)


def main(params: Params) -> None:
    cfg = params.nas
    root = tracking.repo_root()
    space = load_search_space(root / cfg.search_space, allowed_keys=nas.ARCHITECTURE_KEYS)
    backbone = load_backbone(FINETUNED)
    n = resolve_draft_layers(params.imitation.draft_layers, backbone.adapter.num_layers, LAYER_CHOICE, "imitation.draft_layers")
    context = TrialContext(str((root / FINETUNED).resolve()), str((root / params.data.out_dir).resolve()),
                           params.model_dump(), n, threads=max(1, int(params.ray.cpus_per_trial)))
    settings = params.model_dump(include={"seed", "nas", "imitation"}) | {"space": space.space, "first": space.evaluate_first, "n": n}
    spec = SearchSpec(
        name="nas", fingerprint=inputs_fingerprint(settings, [root / FINETUNED, root / params.data.out_dir]),
        metric="score", mode="max", num_samples=cfg.num_samples, seed=params.seed, max_failures=params.ray.max_failures,
        max_concurrent_trials=cfg.max_concurrent_trials, scheduler=scheduler(cfg),
    )
    outcome: dict = {}

    def finish(results) -> None:
        rows = sorted(result_rows(results, nas.REPORTED), key=lambda r: -(r["score"] if r["score"] is not None else float("-inf")))
        best = results.get_best_result(metric="score", mode="max", scope="last")
        winner = nas.architecture(params.imitation.architecture.model_dump(), best.config, backbone.adapter.hidden_size)
        paper = [r for r in rows if all(r.get(f"config.{k}") == v for k, v in PAPER_CHOICE.items()) and r["score"] is not None]
        summary = {
            "draft_layers": n,
            "trials": len(rows),
            "failed_trials": sum(bool(r["error"]) for r in rows),
            "stopped_early": sum(r["reports"] < max_reports(cfg) for r in rows if not r["error"]),
            "best": {k: best.metrics.get(k) for k in nas.REPORTED} | {"architecture": best.config},
            "paper_choice": ({k: paper[0][k] for k in nas.REPORTED} | {"architecture": {k[7:]: v for k, v in paper[0].items() if k.startswith("config.")}})
            if paper else None,
        }
        chosen = {k: v for k, v in vars(winner).items() if k != "hidden_size"}
        atomic_write_csv(TABLE, rows)
        atomic_write_json(METRICS, summary)
        atomic_write_json(BEST, {"architecture": chosen, "score": best.metrics["score"], "draft_layers": n})
        tracking.log_metrics({f"best_{k}": float(v) for k, v in summary["best"].items() if isinstance(v, int | float)})
        tracking.log_artifact(TABLE)
        tracking.log_artifact(BEST)
        outcome.update(trials=len(rows), chosen=chosen, best=best.metrics)

    from ray import tune

    search_in_stage("nas", params, tune.with_parameters(nas.nas_trial, context=context), space, spec, {"draft_layers": str(n)}, finish)
    best = outcome["best"]
    print(f"nas: best of {outcome['trials']} trials at n = {n}: {outcome['chosen']} score {best['score']:.3f} "
          f"(agreement {best.get('agreement', float('nan')):.3f}, cost ratio {best['draft_cost_ratio']:.3f})")


if __name__ == "__main__":
    run_stage(main)
