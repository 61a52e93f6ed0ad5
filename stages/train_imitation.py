"""DVC stage `train_imitation`: one imitation network per loss variant on the frozen backbone, one ce+cs+kd network
per other fusion of the cosine target (the fusion table), and the mixed schedule (`pipeline.training.imitation_heads`).

Outputs: `models/imitation/<variant>/` and `models/imitation/fusion-<fusion>/` (config + weights, loadable
without training code), `models/mixed_backbone/` (the mixed schedule's backbone), `metrics/imitation.json`
(validation agreement with the full model's greedy tokens and end-to-end acceptance per head, the early-exit
draft without imitation as the reference, and the full-model CIDEr the mixed schedule costs). Each head is logged as
an MLflow model in its child run and registered (`<experiment>-imitation-<head>`). With `imitation.trainer` naming
several processes every head trains with DDP; rank zero alone writes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.io import atomic_write_json
from pipeline.training.imitation_heads import ImitationPaths, summary_line, train_imitation_heads
from pipeline.training.launch import check_launch
from stages._common import run_stage

PATHS = ImitationPaths(
    finetuned=Path("models/finetuned"),
    layer_choice=Path("metrics/layer_choice.json"),
    best_architecture=Path("models/nas/best_architecture.json"),
    heads=Path("models/imitation"),
    mixed_backbone=Path("models/mixed_backbone"),
    features=Path("data/features"),
)
METRICS = Path("metrics/imitation.json")


def main(params: Params) -> None:
    check_launch(params.imitation.trainer, "imitation.trainer", params.imitation.batch_size)
    with tracking.stage_run("train_imitation", params.tracking.experiment, params.model_dump(include={"imitation"})):
        paths = PATHS if params.features.enabled else dataclasses.replace(PATHS, features=None)
        results = train_imitation_heads(params, paths)
        if results is None:  # another DDP process: rank zero writes
            return
        atomic_write_json(METRICS, results)
    print(summary_line(results))


if __name__ == "__main__":
    run_stage(main)
