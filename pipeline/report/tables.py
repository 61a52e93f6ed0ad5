"""The report's tables: the counterparts of the paper's Table 1 (methods), Table 5 (fusion strategies), Table 6
(draft layers n, from the sweep) and Table 9 (VQA), from the metrics files. Rows are chosen by the evaluation
plan's selectors (`pipeline.evaluation.methods.EvaluationPlan`), never by parsing labels."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.evaluation.methods import FINETUNED, MIXED, EvaluationPlan
from pipeline.report.markdown import markdown_table

Results = Mapping[str, Mapping[str, Any]]  # method key → its row of metrics/evaluate.json


def lookup(row: Any, *keys: str, default: Any = None) -> Any:
    """row[k1][k2]…, or `default` where a level is missing."""
    for key in keys:
        if not isinstance(row, Mapping) or key not in row:
            return default
        row = row[key]
    return row


def identical_percent(share: float) -> str:
    """A share of outputs identical to the reference, as a percentage that reads 100 % only when every one is: one
    differing prompt in 1300 is 99.92 %, not a rounded "100 %"."""
    if share == 1.0:
        return "100 %"
    # rounded down: 0.99996 must not print as "100.00 %" either
    return f"{math.floor(10000 * share) / 100:.2f} %" if share >= 0.99 else f"{100 * share:.0f} %"


def table1(plan: EvaluationPlan, results: Results) -> str:
    rows = []
    for spec in plan.table1():
        r = results[spec.key]
        cap = lookup(r, "tasks", "caption", default={})
        rows.append(
            [
                spec.label,
                cap.get("bleu4"),
                cap.get("meteor"),
                cap.get("rouge_l"),
                cap.get("cider"),
                cap.get("spice", "n/a"),
                lookup(r, "tasks", "description", "cider"),
                f"{r['speedup']:.2f}×",
                f"{r['tokens_per_second']:.0f}",
                f"{r['throughput_tokens_per_second']:.0f}" if "throughput_tokens_per_second" in r else "–",
                r.get("acceptance_rate"),
                r.get("mean_accepted_length"),
                identical_percent(r["identical_share"]),
            ]
        )
    headers = [
        "method",
        "BLEU-4",
        "METEOR",
        "ROUGE-L",
        "CIDEr",
        "SPICE",
        "descr. CIDEr",
        "speed-up",
        "tok/s",
        "tok/s batched",
        "acceptance",
        "τ",
        "identical",
    ]
    return markdown_table(headers, rows)


def table_vqa(plan: EvaluationPlan, results: Results) -> str:
    rows = []
    for spec in plan.table1():
        vqa = lookup(results[spec.key], "tasks", "vqa", default={})
        by_type = ", ".join(
            f"{k.removeprefix('vqa_accuracy_')} {v:.2f}"
            for k, v in sorted(vqa.items())
            if k.startswith("vqa_accuracy_")
        )
        speedup = results[spec.key]["speedup_by_task"].get("vqa", float("nan"))
        rows.append([spec.label, vqa.get("vqa_accuracy"), by_type or "–", f"{speedup:.2f}×"])
    return markdown_table(["method", "VQA accuracy", "by answer type", "speed-up on VQA"], rows)


def table_vqa_question_types(plan: EvaluationPlan, results: Results) -> str | None:
    """VQA accuracy by question type (VQAv2's question-prefix labels; on the synthetic set one per kind: colour,
    shape, count, position, yes/no), a column per type with its question count, a row per Table-1 method; None when
    the questions carry no types."""
    by_method = {
        spec.label: lookup(results[spec.key], "tasks", "vqa", "by_question_type", default={}) for spec in plan.table1()
    }
    counts: dict[str, int] = {}
    for groups in by_method.values():
        for kind, group in groups.items():
            counts[kind] = max(counts.get(kind, 0), group["questions"])
    if not counts:
        return None
    kinds = sorted(counts, key=lambda kind: (-counts[kind], kind))
    rows = [
        [label, *(groups[kind]["accuracy"] if kind in groups else None for kind in kinds)]
        for label, groups in by_method.items()
    ]
    return markdown_table(["method", *(f"{kind} ({counts[kind]})" for kind in kinds)], rows)


def table_n(sweep_rows: Sequence[Mapping[str, Any]]) -> str:
    """Best d per (n, λ) in the sweep (its CSV rows): the n ablation."""
    best: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in sweep_rows:
        if not row.get("speedup"):
            continue
        key = (row["config.draft_layers"], row.get("loss_label", row.get("config.loss")))
        if key not in best or float(row["speedup"]) > float(best[key]["speedup"]):
            best[key] = row
    rows = [
        [
            n,
            loss,
            r["config.draft_len"],
            f"{float(r['speedup']):.2f}×",
            float(r["acceptance_rate"]),
            float(r["mean_accepted_length"]),
            float(r["cider_draft"]),
            float(r["cider_ssd"]),
            float(r["cider_full"]),
            float(r["draft_cost_ratio"]),
        ]
        for (n, loss), r in sorted(best.items(), key=lambda kv: (int(kv[0][0]), kv[0][1]))
    ]
    return markdown_table(
        [
            "n",
            "λ",
            "best d",
            "speed-up",
            "acceptance",
            "τ",
            "CIDEr draft alone",
            "CIDEr SSD",
            "CIDEr full",
            "draft cost ratio (FLOPs)",
        ],
        rows,
    )


def fusion_rows(plan: EvaluationPlan, results: Results, imitation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per fusion strategy: its head's SSD row, draft-alone row and validation metrics (train_imitation's); fusions
    whose rows were not evaluated are left out."""
    rows = []
    for kind, ssd, draft in plan.fusion_rows():
        val = imitation.get(ssd.head or "")
        if ssd.key in results and draft.key in results and val:
            rows.append({"fusion": kind, "ssd": results[ssd.key], "draft": results[draft.key], "val": val})
    return rows


def table_fusion(rows: Sequence[Mapping[str, Any]]) -> str:
    table = [
        [
            r["fusion"],
            r["val"].get("val_agreement"),
            f"{r['ssd']['speedup']:.2f}×",
            r["ssd"].get("acceptance_rate"),
            r["ssd"].get("mean_accepted_length"),
            lookup(r["draft"], "tasks", "caption", "cider"),
            lookup(r["draft"], "tasks", "caption", "bleu4"),
            lookup(r["draft"], "tasks", "description", "cider"),
            identical_percent(r["ssd"]["identical_share"]),
        ]
        for r in rows
    ]
    return markdown_table(
        [
            "fusion",
            "val agreement",
            "speed-up",
            "acceptance",
            "τ",
            "draft-alone CIDEr",
            "draft-alone BLEU-4",
            "draft-alone descr. CIDEr",
            "SSD identical",
        ],
        table,
    )


def table_variants(imitation: Mapping[str, Any]) -> str:
    """The loss variants (and the mixed schedule) on validation, from train_imitation's metrics."""
    variants = [v for v in ("ce", "ce+cs", "ce+cs+kd", "mixed") if v in imitation]
    return markdown_table(
        ["variant", "val agreement", "val acceptance", "val τ"],
        [
            [
                v,
                imitation[v].get("val_agreement"),
                imitation[v].get("val_acceptance_rate"),
                imitation[v].get("val_mean_accepted_length"),
            ]
            for v in variants
        ],
    )


def expected_speedup(
    accepted_per_round: float, drafted_per_round: float, cost_ratio: float, verification: float = 1.0
) -> float:
    """Leviathan et al. (2023)'s speed-up with the measured rounds: a round commits its accepted drafts plus the
    verifier's token and costs a verification (`verification` full-model steps: one in Leviathan's model) plus its
    drafts at `cost_ratio` (a draft token's latency over a full-model token's)."""
    return (1 + accepted_per_round) / (verification + drafted_per_round * cost_ratio)


def interpolated_cost(costs: Mapping[int, float], width: float) -> float:
    """The relative cost of a verification over `width` positions (a mean over rounds need not be whole): linear
    between the measured widths, the nearest measured one outside them."""
    widths = sorted(costs)
    return float(np.interp(width, widths, [costs[w] for w in widths]))


def expected_rows(
    plan: EvaluationPlan, results: Results, verification: Mapping[int, float] | None = None
) -> list[dict[str, Any]]:
    """Measured vs expected speed-up of the self-speculative rows whose draft has a draft-alone row to price it: ours
    (every loss variant and d, growing d) by the main head's draft alone, each fusion's by its own, the early-exit SSD
    rows (no imitation, LayerSkip) by the draft without imitation; the mixed schedule's draft runs on another backbone
    and has no such row. Leviathan's formula models the decode phase, so where evaluate split the prefill off (the
    rows' `decode_speedup`), the measured speed-up and the draft's cost c (its latency per token ÷ the full model's)
    are the decode phase's; otherwise both are end to end (c = 1 / the draft alone's speed-up), all timed at batch 1.
    With `verification` (evaluate's measured cost of a verification by its width, in full-model steps), each row is
    also priced with the verification its rounds ran: d̄ + 1 positions on average."""
    drafts = {spec.head: spec for spec in plan.methods if spec.kind == "draft_only" and spec.backbone == FINETUNED}
    rows = []
    for spec in plan.methods:
        r = results.get(spec.key, {})
        if spec.kind != "ssd" or spec.backbone == MIXED or "timed_mean_accepted_length" not in r:
            continue
        # the loss variants share the main head's architecture, hence its cost; a fusion's head has its own row
        draft = drafts.get(plan.main_head if spec.head in plan.variants else spec.head)
        if draft is None or draft.key not in results:
            continue
        alone = results[draft.key]
        decode_phase = "decode_speedup" in r and "decode_speedup" in alone
        cost = 1 / alone["decode_speedup" if decode_phase else "speedup"]
        measured = r["decode_speedup" if decode_phase else "speedup"]
        tau, depth = r["timed_mean_accepted_length"], r["timed_mean_draft_length"]
        expected = expected_speedup(tau, depth, cost)
        row = {
            "method": spec.label,
            "d": spec.draft_len,
            "decode_phase": decode_phase,
            "drafted_per_round": depth,
            "accepted_per_round": tau,
            "cost_ratio": cost,
            "expected": expected,
            "measured": measured,
            "measured_end_to_end": r["speedup"],
            "ratio": measured / expected,
        }
        if verification:
            row["verification"] = interpolated_cost(verification, depth + 1)
            row["expected_verified"] = expected_speedup(tau, depth, cost, row["verification"])
            row["ratio_verified"] = measured / row["expected_verified"]
        rows.append(row)
    return rows


def table_expected(rows: Sequence[Mapping[str, Any]]) -> str:
    verified = all("expected_verified" in r for r in rows)
    decode = all(r.get("decode_phase") for r in rows)
    measured = "measured, decode phase" if decode else "measured"
    headers = ["method", "d", "drafted / round", "accepted / round (τ)", "draft cost c", "expected", measured]
    headers += ["measured ÷ expected"]
    if verified:
        headers += ["verification (steps)", "expected, measured verification", "measured ÷ that"]
    if decode:
        headers += ["measured end to end"]
    body = []
    for r in rows:
        line = [r["method"], r["d"], r["drafted_per_round"], r["accepted_per_round"], r["cost_ratio"]]
        line += [f"{r['expected']:.2f}×", f"{r['measured']:.2f}×", r["ratio"]]
        if verified:
            line += [r["verification"], f"{r['expected_verified']:.2f}×", r["ratio_verified"]]
        if decode:
            line += [f"{r['measured_end_to_end']:.2f}×"]
        body.append(line)
    return markdown_table(headers, body)


def table_backbone(finetune: Mapping[str, Any]) -> str | None:
    """The fine-tuned backbone's "sees" check (metrics/finetune.json): captions and VQA answers of the test images
    beside the same model's given blank images, VQA per question type; None without those metrics."""
    if "test_cider" not in finetune:
        return None
    rows = [
        [label, finetune.get(f"test_{key}"), finetune.get(f"test_blank_{key}")]
        for label, key in (("caption CIDEr", "cider"), ("caption BLEU-4", "bleu4"), ("VQA accuracy", "vqa_accuracy"))
    ]
    prefix = "test_vqa_accuracy/"
    for key in sorted(k for k in finetune if k.startswith(prefix)):
        kind = key.removeprefix(prefix)
        rows.append([f"VQA: {kind}", finetune[key], finetune.get(f"test_blank_vqa_accuracy/{kind}")])
    return markdown_table(["greedy, model.generate", "test images", "blank images"], rows)
