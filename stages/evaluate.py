"""DVC stage `evaluate`: every method on the same test prompts (short captions, long descriptions, VQA), in one
process, so every speed-up is a ratio measured in one run on one machine (methods: `pipeline.evaluation.evaluate`).

Outputs: `metrics/evaluate.json` (the evaluation plan; per method: speed-up, tokens/s, acceptance, τ, verification
calls, share identical to its backbone's greedy output, per-task metrics), `plots/acceptance_by_context.csv` (Fig. 5:
acceptance against tokens generated so far), `plots/acceptance_by_position.csv` (acceptance by position inside a
draft round), `plots/speedup_by_d.csv` (Fig. 9); one nested MLflow run per method. With `evaluate.trainer` naming
several processes the prompts are shared out and rank zero, which times its share, writes.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.evaluation.evaluate import EvaluationInputs, log_method_runs, run_evaluation
from pipeline.io import atomic_write_csv, atomic_write_json
from pipeline.training.launch import check_launch
from stages._common import run_stage

INPUTS = EvaluationInputs(
    finetuned=Path("models/finetuned"),
    imitation=Path("models/imitation"),
    layerskip=Path("models/layerskip"),
    mixed_backbone=Path("models/mixed_backbone"),
    draft_verify=Path("models/draft_verify.json"),
    language_draft=Path("models/language_draft"),
)
METRICS = Path("metrics/evaluate.json")
CONTEXT_PLOT = Path("plots/acceptance_by_context.csv")
ACCEPTANCE_PLOT = Path("plots/acceptance_by_position.csv")
SPEEDUP_PLOT = Path("plots/speedup_by_d.csv")


def main(params: Params) -> None:
    check_launch(params.evaluate.trainer, "evaluate.trainer")
    with tracking.stage_run(
        "evaluate", params.tracking.experiment, params.model_dump(include={"evaluate", "decoding"})
    ):
        evaluation = run_evaluation(params, INPUTS)
        if evaluation is None:  # another process of a shared-out run: rank zero writes
            return
        log_method_runs(evaluation)
        atomic_write_json(METRICS, evaluation.summary)
        atomic_write_csv(CONTEXT_PLOT, evaluation.acceptance_by_context())
        atomic_write_csv(ACCEPTANCE_PLOT, evaluation.acceptance_by_position())
        atomic_write_csv(SPEEDUP_PLOT, evaluation.speedup_by_draft_len())
    print("\n".join(evaluation.lines()))


if __name__ == "__main__":
    run_stage(main)
