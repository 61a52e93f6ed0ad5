"""DVC stage `report`: `reports/results.md` — the counterparts of the paper's tables from the metrics files — and
its figures (PNG), all logged to MLflow. The paper's qualitative claims are checked against our numbers, not
assumed: each check prints what was compared and whether it held.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.io import atomic_write_text
from pipeline.report.results import ReportInputs, draw_figures, render
from stages._common import run_stage

EVALUATE = Path("metrics/evaluate.json")
FEATURES = Path("metrics/features.json")
FINETUNE = Path("metrics/finetune.json")
IMITATION = Path("metrics/imitation.json")
NAS = Path("metrics/nas.json")
SWEEP_TABLE = Path("reports/sweep.csv")
LAYER_FIGURE = Path("reports/figures/layer_reward.png")  # select_layer's, linked when present
REPORT = Path("reports/results.md")
FIGURES = Path("reports/figures")


def main(params: Params) -> None:
    inputs = ReportInputs(
        json.loads(EVALUATE.read_text()),
        json.loads(IMITATION.read_text()) if IMITATION.exists() else {},
        json.loads(NAS.read_text()) if NAS.exists() else None,
        list(csv.DictReader(SWEEP_TABLE.open())) if SWEEP_TABLE.exists() else [],
        json.loads(FINETUNE.read_text()) if FINETUNE.exists() else {},
        json.loads(FEATURES.read_text()) if FEATURES.exists() else {},
    )
    figures = draw_figures(inputs, FIGURES)
    text, checks = render(inputs, params.imitation, figures, [LAYER_FIGURE] if LAYER_FIGURE.exists() else [])
    atomic_write_text(REPORT, text)
    with tracking.stage_run("report", params.tracking.experiment, {}):
        tracking.log_metrics({f"claim_{i}": float(held) for i, (_, held, _) in enumerate(checks)})
        for path in [REPORT, *figures]:
            tracking.log_artifact(path)
    for claim, held, evidence in checks:
        print(f"{'✓' if held else '✗'} {claim}: {evidence}")


if __name__ == "__main__":
    run_stage(main)
