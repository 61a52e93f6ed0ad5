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
from pipeline.io import atomic_write_csv, atomic_write_json
from pipeline.search.nas import NASOutcome, run_nas
from stages._common import run_stage

FINETUNED = Path("models/finetuned")
LAYER_CHOICE = Path("metrics/layer_choice.json")
BEST = Path("models/nas/best_architecture.json")
TABLE = Path("reports/nas_trials.csv")
METRICS = Path("metrics/nas.json")
FEATURES = Path("data/features")


def write(outcome: NASOutcome) -> None:
    atomic_write_csv(TABLE, outcome.rows)
    atomic_write_json(METRICS, outcome.summary)
    atomic_write_json(BEST, outcome.best)
    tracking.log_metrics(
        {f"best_{k}": float(v) for k, v in outcome.summary["best"].items() if isinstance(v, int | float)}
    )
    tracking.log_artifact(TABLE)
    tracking.log_artifact(BEST)


def main(params: Params) -> None:
    features = FEATURES if params.features.enabled else None
    print(run_nas(params, FINETUNED, LAYER_CHOICE, write, features).headline())


if __name__ == "__main__":
    run_stage(main)
