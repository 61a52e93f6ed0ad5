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
from pipeline.io import atomic_write_csv, atomic_write_json
from pipeline.report.figures import pareto_plot
from pipeline.search.sweep import SweepOutcome, run_sweep
from stages._common import run_stage

FINETUNED = Path("models/finetuned")
IMITATION = Path("models/imitation")
BEST_ARCHITECTURE = Path("models/nas/best_architecture.json")
TABLE = Path("reports/sweep.csv")
METRICS = Path("metrics/sweep.json")
FEATURES = Path("data/features")
LAYER_CHOICE = Path("metrics/layer_choice.json")
PARETO_DATA = Path("plots/sweep_pareto.csv")
PARETO_FIGURE = Path("reports/figures/sweep_pareto.png")


def write(outcome: SweepOutcome) -> None:
    atomic_write_csv(TABLE, outcome.rows)
    atomic_write_csv(PARETO_DATA, outcome.pareto_rows)
    pareto_plot(
        PARETO_FIGURE,
        outcome.groups,
        outcome.front,
        xlabel="speed-up over the full model",
        ylabel="CIDEr (validation captions)",
        title=f"sweep: {len(outcome.groups['SSD + imitation (lossless)'])} settings of n, λ, d",
        ranked="SSD + imitation (lossless)",
    )
    atomic_write_json(METRICS, outcome.summary)
    best = outcome.summary["best"]
    tracking.log_metrics({f"best_{k}": float(v) for k, v in best.items() if isinstance(v, int | float)})
    for path in (TABLE, PARETO_FIGURE):
        tracking.log_artifact(path)


def main(params: Params) -> None:
    features = FEATURES if params.features.enabled else None
    outcome = run_sweep(params, FINETUNED, IMITATION, BEST_ARCHITECTURE, LAYER_CHOICE, write, features)
    print(outcome.headline())
    print(json.dumps(outcome.summary["best"], indent=1, default=str))


if __name__ == "__main__":
    run_stage(main)
