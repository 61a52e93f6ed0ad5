"""The data of the report's figures, from evaluate's results: one function per figure, used both for the plots
file `dvc plots` reads (written by `evaluate`) and for the PNG (drawn by `report`), so the two always agree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.evaluation.methods import EvaluationPlan


def acceptance_by_position(plan: EvaluationPlan, results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Paper Fig. 5: acceptance rate at each position of a draft round, for ours as trained (`plan.ours()`)."""
    return [
        {"method": spec.label, "key": spec.key, "position": position, "acceptance": rate}
        for spec in plan.ours()
        if spec.key in results
        for position, rate in enumerate(results[spec.key].get("acceptance_by_position", []), start=1)
    ]


def speedup_by_draft_len(plan: EvaluationPlan, results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Paper Fig. 9: ours (the main head) at every fixed d."""
    return [
        {
            "d": spec.draft_len,
            "speedup": results[spec.key]["speedup"],
            "acceptance_rate": results[spec.key].get("acceptance_rate", 0.0),
            "mean_accepted_length": results[spec.key].get("mean_accepted_length", 0.0),
        }
        for spec in plan.by_draft_len()
        if spec.key in results
    ]
