"""Draft & Verify (Zhang et al. 2023): which layers the draft skips, found by greedy forward selection.

Objective. For a skip set S and confidence-stop threshold θ, D&V decodes the search prompts
(`DraftAndVerifyDecoder(model, S, ConfidenceStop(θ, max_draft_len))`) and measures acceptance α
(accepted / drafted) and the mean draft length γ (drafted / verification calls). The objective is
Leviathan et al.'s expected speedup `expected_speedup(α, c, γ)` with the draft's cost ratio
`c = (L − |S|) / L` (the draft runs the kept layers): measured acceptance, modelled cost, because
wall-clock time on a shared CPU is too noisy to rank sets that differ by one layer. A point is
*feasible* when α ≥ `acceptance_floor`.

Search. Candidates are layers 1..L-1 (layer 0 always runs: the draft shares at least one layer's KV
with verification). Starting from S = ∅, each step
1. ranks every remaining candidate by how little skipping it (on top of S) hurts the draft: its
   teacher-forced agreement — the share of positions of the full model's own greedy continuations of
   the prompts where the draft (S ∪ {l}, one forward pass without cache) predicts the full model's
   token. This costs one forward pass per candidate instead of a decode per candidate and threshold;
2. adds the best-ranked layer to S;
3. decodes the prompts with S at every threshold in `thresholds` and records α, τ, γ and the objective.
It stops after `max_skipped` layers, or as soon as no threshold is feasible (skipping more only lowers
acceptance further). It does not stop when the objective falls: skipping one layer of twelve costs
more than it saves, so the objective often only rises after several. The result is the feasible
(S, θ) with the highest objective along the path; when no point is feasible, the one with the highest
acceptance, flagged `meets_floor = False`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.decoding import AutoregressiveDecoder, ConfidenceStop, DraftAndVerifyDecoder
from pipeline.evaluation.speed import expected_speedup
from pipeline.models.adapters import adapter_for


@dataclass
class SkipSearchResult:
    skip_layers: list[int]
    threshold: float
    max_draft_len: int
    acceptance_rate: float
    mean_accepted_length: float
    mean_draft_length: float
    cost_ratio: float
    objective: float
    meets_floor: bool
    num_layers: int
    trace: list[dict] = field(default_factory=list)  # one row per (step, threshold), in search order

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> dict:
        """Everything but the search trace."""
        return {k: v for k, v in self.to_dict().items() if k != "trace"}


@torch.no_grad()
def reference_continuations(model: nn.Module, prompts: Sequence[dict]) -> list[torch.Tensor]:
    """Each prompt followed by the full model's greedy continuation: the sequences drafts are scored on."""
    decoder = AutoregressiveDecoder(model)
    return [
        decoder.generate(p["input_ids"], p["max_new_tokens"], pixel_values=p["pixel_values"]).sequences for p in prompts
    ]


@torch.no_grad()
def teacher_forced_agreement(
    model: nn.Module, prompts: Sequence[dict], sequences: Sequence[torch.Tensor], skip: Sequence[int]
) -> float:
    """Share of generated positions where the draft skipping `skip` predicts the full model's greedy token."""
    adapter = adapter_for(model)
    skipped = set(skip)
    hits = total = 0
    for prompt, sequence in zip(prompts, sequences, strict=True):
        (hidden, encoder), start = adapter.continuation_prefix(
            prompt["input_ids"], sequence, pixel_values=prompt["pixel_values"]
        )
        if sequence.shape[1] <= start:
            continue
        for index in range(adapter.num_layers):
            if index not in skipped:
                hidden = adapter.run_layers(hidden, index, index + 1, encoder=encoder)
        predicted = adapter.logits(hidden[:, start - 1 : -1]).argmax(-1)
        hits += int((predicted == sequence[:, start:]).sum())
        total += sequence.shape[1] - start
    return hits / total if total else 0.0


@torch.no_grad()
def measure(
    model: nn.Module, prompts: Sequence[dict], skip: Sequence[int], threshold: float, max_draft_len: int
) -> dict:
    """Decode `prompts` with Draft & Verify; acceptance, τ, γ, cost ratio and the expected-speedup objective."""
    decoder = DraftAndVerifyDecoder(model, skip_layers=skip, draft_len=ConfidenceStop(threshold, max_draft_len))
    total = None
    for p in prompts:
        stats = decoder.generate(p["input_ids"], p["max_new_tokens"], pixel_values=p["pixel_values"]).stats
        total = stats if total is None else total.merge(stats)
    if total is None:
        raise ValueError("no prompts to decode")
    num_layers = decoder.adapter.num_layers
    cost = (num_layers - len(set(skip))) / num_layers
    gamma = total.drafted / total.verify_calls if total.verify_calls else 0.0
    objective = expected_speedup(total.acceptance_rate, cost, gamma)
    return {
        "acceptance_rate": total.acceptance_rate,
        "mean_accepted_length": total.mean_accepted_length,
        "mean_draft_length": gamma,
        "cost_ratio": cost,
        "objective": objective,
    }


def search_skip_layers(
    model: nn.Module,
    prompts: Sequence[dict],
    *,
    thresholds: Sequence[float],
    acceptance_floor: float,
    max_skipped: int,
    max_draft_len: int = 8,
    progress: Callable[[str], None] | None = None,
) -> SkipSearchResult:
    """Greedy forward selection of D&V's skipped layers (see the module docstring).

    `prompts`: dicts with `input_ids` [1, T], `pixel_values` and `max_new_tokens` (as `validation_prompts` makes).
    """
    if not prompts:
        raise ValueError("no prompts to search on")
    if not thresholds:
        raise ValueError("no confidence thresholds to try")
    was_training = model.training
    model.eval()
    num_layers = adapter_for(model).num_layers
    candidates = list(range(1, num_layers))
    if not candidates:
        raise ValueError("the model has one layer: there is no layer for the draft to skip")
    sequences = reference_continuations(model, prompts)
    skip: list[int] = []
    trace: list[dict] = []
    for step in range(1, min(max_skipped, len(candidates)) + 1):
        ranking = {
            layer: teacher_forced_agreement(model, prompts, sequences, [*skip, layer])
            for layer in candidates
            if layer not in skip
        }
        added = max(ranking, key=lambda layer: (ranking[layer], -layer))  # ties: the shallower layer
        skip = sorted([*skip, added])
        feasible_here = False
        for threshold in thresholds:
            row: dict[str, Any] = {
                "step": step,
                "skip_layers": list(skip),
                "added": added,
                "proxy_agreement": ranking[added],
                "threshold": float(threshold),
            }
            row.update(measure(model, prompts, skip, threshold, max_draft_len))
            row["feasible"] = row["acceptance_rate"] >= acceptance_floor
            feasible_here |= row["feasible"]
            trace.append(row)
            if progress is not None:
                progress(
                    f"  skip {skip} θ={threshold}: acceptance {row['acceptance_rate']:.3f}, "
                    f"γ {row['mean_draft_length']:.2f}, τ {row['mean_accepted_length']:.2f}, "
                    f"objective {row['objective']:.3f}{'' if row['feasible'] else ' (below floor)'}"
                )
        if not feasible_here:
            break
    model.train(was_training)
    feasible = [row for row in trace if row["feasible"]]
    best = max(feasible, key=lambda r: r["objective"]) if feasible else max(trace, key=lambda r: r["acceptance_rate"])
    return SkipSearchResult(
        skip_layers=list(best["skip_layers"]),
        threshold=best["threshold"],
        max_draft_len=max_draft_len,
        acceptance_rate=best["acceptance_rate"],
        mean_accepted_length=best["mean_accepted_length"],
        mean_draft_length=best["mean_draft_length"],
        cost_ratio=best["cost_ratio"],
        objective=best["objective"],
        meets_floor=bool(feasible),
        num_layers=num_layers,
        trace=trace,
    )
