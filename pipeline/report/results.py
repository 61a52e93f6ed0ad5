"""`reports/results.md`: the counterparts of the paper's tables from the metrics files, the paper's claims checked
on our numbers, and the figures (PNG) they refer to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ImitationConfig
from pipeline.evaluation.methods import EvaluationPlan
from pipeline.report import series
from pipeline.report.claims import claims
from pipeline.report.figures import line_plot
from pipeline.report.markdown import markdown_table
from pipeline.report.tables import (
    Results,
    expected_rows,
    fusion_rows,
    lookup,
    table1,
    table_backbone,
    table_expected,
    table_fusion,
    table_n,
    table_variants,
    table_vqa,
    table_vqa_question_types,
)


@dataclass
class ReportInputs:
    evaluation: dict[str, Any]  # metrics/evaluate.json
    imitation: dict[str, Any] = field(default_factory=dict)  # metrics/imitation.json
    nas: dict[str, Any] | None = None  # metrics/nas.json
    sweep_rows: list[dict[str, Any]] = field(default_factory=list)  # reports/sweep.csv
    finetune: dict[str, Any] = field(default_factory=dict)  # metrics/finetune.json
    features: dict[str, Any] = field(default_factory=dict)  # metrics/features.json

    @property
    def plan(self) -> EvaluationPlan:
        return EvaluationPlan.from_dict(self.evaluation["plan"])

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        return self.evaluation["methods"]


def draw_figures(inputs: ReportInputs, figures_dir: Path) -> list[Path]:
    """Fig. 5 (acceptance by context length), acceptance by position in a draft round and Fig. 9, from the same
    series evaluate wrote for `dvc plots`. All are DVC outs: written even when a (tiny) run decoded no draft rounds,
    saying so."""
    plan, results = inputs.plan, inputs.results
    by_context = [row for row in series.acceptance_by_context(plan, results) if row["drafted"] >= series.MIN_DRAFTED]
    starts = sorted({row["context"] for row in by_context})
    context_curves: dict[str, list[float]] = {}
    for row in by_context:
        context_curves.setdefault(row["method"], [float("nan")] * len(starts))[starts.index(row["context"])] = row[
            "acceptance"
        ]
    context = figures_dir / "acceptance_by_context.png"
    line_plot(
        context,
        [start + (series.CONTEXT_BIN - 1) / 2 for start in starts],
        context_curves,
        xlabel=f"tokens generated before the round (bins of {series.CONTEXT_BIN})",
        ylabel="acceptance rate",
        title="acceptance by context length (Fig. 5)" + ("" if context_curves else ": no draft rounds in this run"),
    )
    curves: dict[str, list[float]] = {}
    for row in series.acceptance_by_position(plan, results):
        curves.setdefault(row["method"], []).append(row["acceptance"])
    depth = max((len(c) for c in curves.values()), default=0)
    acceptance = figures_dir / "acceptance_by_position.png"
    line_plot(
        acceptance,
        list(range(1, depth + 1)),
        {k: v + [float("nan")] * (depth - len(v)) for k, v in curves.items()},
        xlabel="position in the draft round",
        ylabel="acceptance rate",
        title="acceptance by position in a draft round" + ("" if curves else ": no draft rounds in this run"),
    )
    by_d = series.speedup_by_draft_len(plan, results)
    speedup = figures_dir / "speedup_by_d.png"
    line_plot(
        speedup,
        [row["d"] for row in by_d],
        {plan.main.label: [row["speedup"] for row in by_d]},
        xlabel="draft length d",
        ylabel="speed-up over the full model",
        title="speed-up by draft length (Fig. 9)",
    )
    return [context, acceptance, speedup]


def expected_text(
    expected: list[dict[str, Any]], plan: EvaluationPlan, results: Results, measured: Mapping[str, Any]
) -> str:
    """What the measured-vs-expected table compares, with this run's prefill share and verification costs."""
    worst = min(expected, key=lambda r: r["ratio"])
    if all(r["decode_phase"] for r in expected):
        share = results.get(plan.reference.key, {}).get("prefill_share", float("nan"))
        text = (
            "Leviathan et al.'s formula prices the rounds of the decode phase. The prefill (the prompt through the "
            "full model and the first token's pick), which a method and the full model both pay, is "
            f"{share:.0%} of the full model's wall time on the timed sample, so evaluate also times every prompt "
            "decoded to its first token only, in the same interleaved passes, and splits it off: the measured "
            "speed-up and the draft's cost c (its latency per token ÷ the full model's) below are the decode "
            "phase's, the end-to-end speed-up beside them. "
        )
    else:
        text = "The draft's cost c = 1 / the draft alone's speed-up, both end to end (the prefill included). "
    text += (
        "Expected = (1 + τ) / (1 + d̄ · c) from the timed rounds themselves (τ accepted and d̄ drafted tokens per "
        "verification, at batch 1 on the timed sample): what the rounds would give if a verification cost exactly "
        f"one full-model step. The lowest ratio is {worst['method']}'s ({worst['ratio']:.2f})."
    )
    verification = measured.get("relative", {})
    if not verification:
        return text + (
            " What the engine loses beyond that is verification over d + 1 positions costing more than one step, "
            "per-round bookkeeping (cache crop, slot table, the acceptance check's synchronisation) and the prefill."
        )
    widths = ", ".join(f"{w}: {float(c):.2f}" for w, c in sorted(verification.items(), key=lambda i: int(i[0])))
    verified = [r["ratio_verified"] for r in expected]
    return text + (
        "\n\nA verification does not cost one step here: timed as the engine runs it after drafting w - 1 tokens "
        "(the last draft through layers 0..n, which drafting did not run it through, then layers n..L, the final "
        f"norm and the LM head over all w positions, after a prompt and {measured['generated_tokens']} tokens; in "
        f"full-model steps) it costs {widths}. Priced with that — (1 + τ) / (v(d̄ + 1) + d̄ · c) — the rounds "
        f"explain the measured speed-ups to {min(verified):.2f}–{max(verified):.2f}. What is left is the engine's own "
        "per-round bookkeeping (slot table, cache crop, the acceptance check's host synchronisation, the draft-length "
        "policy: about 2 % of ours' decode time in a profile on the default CPU), an attention head's pass over the "
        "prompt at the first draft, and the noise of c and v, which are timed apart from the rounds; a ratio above 1 "
        "comes from that noise and from pricing every round at the mean width."
    )


def training_text(features: dict[str, Any]) -> str:
    """What the frozen heads trained and were validated on (the features stage's examples and their text)."""
    if not features.get("enabled"):
        return "The frozen heads trained end to end on the data set's text (no feature cache)."
    examples = f"{features['train_examples']} cached training examples"
    if features.get("targets") != "generated":
        return f"The frozen heads trained on {examples} with the data set's text; validation agreement is on that text."
    return (
        f"The frozen heads trained on {examples} whose text is the full model's own greedy continuation of each "
        f"prompt ({features['train_generated_tokens_per_example']:.1f} tokens per example, against "
        f"{features['train_reference_tokens_per_example']:.1f} in the references; self-distillation), and validation "
        "agreement is measured on the full model's own text too: every target there is the full model's choice."
    )


def render(
    inputs: ReportInputs, imitation_cfg: ImitationConfig, figures: Sequence[Path], extra_figures: Sequence[Path] = ()
) -> tuple[str, list[tuple[str, bool, str]]]:
    """The Markdown of results.md (figures linked relative to its folder) and the claims it checked."""
    evaluation, plan, results = inputs.evaluation, inputs.plan, inputs.results
    checks = claims(plan, results)
    prompts = evaluation["prompts"]
    timed = evaluation.get("timed_prompts", prompts)
    growing = evaluation["growing"]
    batch = evaluation.get("batch_size", 1)
    parts = [
        "# Results",
        f"Test split: {prompts['caption']} caption images, {prompts['description']} descriptions, "
        f"{prompts['vqa']} VQA questions, every method decoding all of them in batches of {batch} (quality, identity, "
        f"acceptance, throughput at batch {batch}); speed at batch 1 on the first {timed['caption']} captions, "
        f"{timed['description']} descriptions and {timed['vqa']} questions; "
        f"draft layers n = {plan.draft_layers}, d = {plan.draft_len}"
        f"{' (the sweep’s fastest fixed d at this n)' if evaluation.get('draft_len_source') == 'sweep' else ''} "
        f"(growing d: d = clip({growing['d_min']} + ⌊t / {growing['step']}⌋, "
        f"{growing['d_min']}, {growing['d_max']}) after t tokens — "
        "our stand-in for the paper's context-dependent d, eq. 5); "
        f"CPU, {evaluation['threads']} threads, all methods timed in one process (`dvc repro evaluate`). "
        "Speed-up = per-token latency of the full model (decoded token by token by the same engine) ÷ the method's; "
        "the `model.generate` row shows Hugging Face's own greedy decoding against that reference. "
        "CIDEr is CIDEr-D (0–10 scale; the paper ×100).",
        "## Table 1 — methods (captions; descriptions' CIDEr; speed over all tasks)",
        table1(plan, results),
        "Draft-alone rows are lossy (fast, but not the full model's text); "
        "the others are checked token for token against "
        "their backbone's greedy output (LayerSkip and the mixed schedule change the backbone, "
        "so their text is their own model's). "
        "Identity is exact in float64; in float32 (the default) it holds up to ties of the top two logits within "
        "rounding, and in half precision it is measured, not promised.",
    ]
    backbone = table_backbone(inputs.finetune)
    if backbone:
        parts += [
            "## The backbone sees (fine-tune stage)",
            "The fine-tuned full model's greedy captions and answers on the test split, and the same model's given a "
            "uniform grey image instead: what it says about the pixels is the gap between the two columns "
            "(`metrics/finetune.json`).",
            backbone,
        ]
    spice_note = lookup(results, plan.reference.key, "tasks", "caption", "spice_unavailable")
    if spice_note:
        parts.append(f"SPICE: unavailable — {spice_note}")
    parts += [
        "## The paper's claims, checked",
        markdown_table(["claim", "holds here", "evidence"], [[c, "yes" if h else "**no**", e] for c, h, e in checks]),
    ]
    if any(v in inputs.imitation for v in ("ce", "ce+cs", "ce+cs+kd", "mixed")):
        parts += [
            "## Loss variants (validation, train_imitation)",
            f"Cosine target: `{imitation_cfg.fusion}` fusion of the last {imitation_cfg.fusion_layers} layers. "
            + training_text(inputs.features),
            table_variants(inputs.imitation),
        ]
    fusions = fusion_rows(plan, results, inputs.imitation)
    if fusions:
        fastest = max(fusions, key=lambda r: r["ssd"]["speedup"])
        best_draft = max(fusions, key=lambda r: lookup(r["draft"], "tasks", "caption", "cider", default=0.0))
        parts += [
            "## Fusion strategies (Table 5 counterpart, test)",
            f"One ce+cs+kd imitation network per way of fusing the last {imitation_cfg.fusion_layers} layers "
            "into the cosine "
            "target (same steps, seed and architecture); SSD at the default d, and the draft alone. "
            f"Fastest: `{fastest['fusion']}` ({fastest['ssd']['speedup']:.2f}×); "
            f"best draft alone: `{best_draft['fusion']}` "
            f"(CIDEr {lookup(best_draft['draft'], 'tasks', 'caption', 'cider', default=0.0):.3f}).",
            table_fusion(fusions),
        ]
    if inputs.sweep_rows:
        parts += [
            "## Draft layers n (Table 6 counterpart, validation, from the sweep)",
            table_n(inputs.sweep_rows),
            "![Pareto](figures/sweep_pareto.png)",
        ]
    measured = evaluation.get("verification_cost", {})
    verification = {int(width): float(cost) for width, cost in measured.get("relative", {}).items()}
    expected = expected_rows(plan, results, verification)
    if expected:
        parts += [
            "## Measured vs expected speed-up (Leviathan et al.)",
            expected_text(expected, plan, results, measured),
        ]
        parts.append(table_expected(expected))
    parts += ["## VQA (Table 9 counterpart)", table_vqa(plan, results)]
    question_types = table_vqa_question_types(plan, results)
    if question_types:
        parts += [
            "VQA accuracy by question type (VQAv2's `question_type`; the synthetic set's are one per kind of "
            "question), question counts in brackets:",
            question_types,
        ]
    if inputs.nas:
        parts.append(architecture_search(inputs.nas))
    parts += ["## Figures"] + [f"![{p.stem}](figures/{p.name})" for p in [*figures, *extra_figures]]
    return "\n\n".join(parts) + "\n", checks


def architecture_search(nas: Mapping[str, Any]) -> str:
    best, paper = nas["best"], nas.get("paper_choice")
    cost = nas.get("cost", "flops")  # results from before latency pricing were priced by FLOPs

    def costs(row: Mapping[str, Any]) -> str:
        both = [
            f"{kind} {row[f'{kind}_cost_ratio']:.3f}" for kind in ("latency", "flops") if f"{kind}_cost_ratio" in row
        ]
        return f"draft cost ratio {row['draft_cost_ratio']:.3f}" + (f" ({', '.join(both)})" if both else "")

    versus = f"agreement {paper['agreement']:.3f}, {costs(paper)}" if paper else "not among the trials"
    return (
        f"## Architecture search\n\nScore = agreement − {nas.get('cost_weight', 1.0):g} · draft cost ratio, the draft "
        f"priced by {cost}. "
        f"Best: {best['architecture']} (score {best['score']:.3f}, agreement {best['agreement']:.3f}, {costs(best)}); "
        f"the paper's choice (two linear layers): {versus}. All trials: `reports/nas_trials.csv`."
    )
