"""DVC stage `prepare`: the data set in the real formats (Karpathy split, VQAv2) plus its tokenizer
(`pipeline.data.preparation`): synthetic by default, real COCO/VQAv2 files with `data.source: files`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.preparation import prepare_dataset
from pipeline.io import atomic_directory, atomic_write_json
from stages._common import run_stage

METRICS = Path("metrics/prepare.json")


def main(params: Params) -> None:
    out_dir = Path(params.data.out_dir)
    with tracking.stage_run("prepare", params.tracking.experiment, params.model_dump(include={"seed", "data"})):
        with atomic_directory(out_dir) as tmp:
            summary = prepare_dataset(params, tmp)
        atomic_write_json(METRICS, summary)
        tracking.log_metrics(summary)
    print(f"prepared {out_dir}: {summary}")


if __name__ == "__main__":
    run_stage(main)
