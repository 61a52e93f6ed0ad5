"""The data of the report's figures, from evaluate's results: one function per figure, used both for the plots
file `dvc plots` reads (written by `evaluate`) and for the PNG (drawn by `report`), so the two always agree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.evaluation.methods import EvaluationPlan

# Fig. 5's bins: tokens generated before a round, in groups of this many (captions are ~10 tokens, descriptions ~60)
CONTEXT_BIN = 8
# a bin with fewer drafted tokens than this is left out of the figure (its rate is noise), kept in the CSV
MIN_DRAFTED = 30


def acceptance_by_context(
    plan: EvaluationPlan, results: Mapping[str, Mapping[str, Any]], bin_width: int = CONTEXT_BIN
) -> list[dict[str, Any]]:
    """Paper Fig. 5: acceptance rate (accepted ÷ drafted tokens) of the rounds that start after t generated tokens,
    t binned by `bin_width`, for ours as trained (`plan.ours()`) over the whole test split. `drafted` says how many
    tokens each rate rests on."""
    rows = []
    for spec in plan.ours():
        bins: dict[int, list[int]] = {}
        for context, drafted, accepted in results.get(spec.key, {}).get("acceptance_by_context", []):
            total = bins.setdefault(context // bin_width * bin_width, [0, 0])
            total[0] += drafted
            total[1] += accepted
        rows += [
            {
                "method": spec.label,
                "key": spec.key,
                "context": start,
                "context_end": start + bin_width - 1,
                "acceptance": accepted / drafted,
                "drafted": drafted,
            }
            for start, (drafted, accepted) in sorted(bins.items())
            if drafted
        ]
    return rows


def acceptance_by_position(plan: EvaluationPlan, results: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Acceptance rate at each position inside a draft round (the k-th drafted token given the first k-1 were
    accepted or not), for ours as trained (`plan.ours()`): a different quantity from Fig. 5's, which is by context
    length."""
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
