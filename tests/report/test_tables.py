"""The report's tables and its checks of the paper's claims, on hand-made results; the figure data that both the
plots file and the PNG are drawn from."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import parse_params
from pipeline.evaluation.methods import EvaluationPlan, evaluation_plan
from pipeline.report import series
from pipeline.report.claims import claims
from pipeline.report.markdown import markdown_table
from pipeline.report.results import ReportInputs, draw_figures, training_text
from pipeline.report.tables import (
    fusion_rows,
    table1,
    table_backbone,
    table_fusion,
    table_n,
    table_vqa_question_types,
)

FOUND = {"skip_layers": [2], "threshold": 0.6, "max_draft_len": 8}


def _row(speedup: float, cider: float, identical: float = 1.0, acceptance: float | None = None) -> dict:
    row = {
        "speedup": speedup,
        "tokens_per_second": 100.0 * speedup,
        "throughput_tokens_per_second": 700.0 * speedup,
        "identical_share": identical,
        "speedup_by_task": {"caption": speedup},
        "tasks": {"caption": {"bleu4": 0.3, "rouge_l": 0.5, "cider": cider, "meteor": 0.2}},
    }
    if acceptance is not None:
        row.update(
            acceptance_rate=acceptance, mean_accepted_length=1.5, acceptance_by_position=[acceptance, acceptance / 2]
        )
    return row


def _plan() -> EvaluationPlan:
    params = parse_params(
        {
            "imitation": {"variants": ["ce+cs+kd"], "fusion_comparison": ["average", "concat"]},
            "decoding": {"draft_len": 3},
            "evaluate": {"draft_lens": [1, 5]},
        }
    )
    return evaluation_plan(params, {"ce+cs+kd": 1, "fusion-concat": 1}, FOUND)


def _results(plan: EvaluationPlan, **by_label: dict) -> dict[str, dict]:
    """Every planned method gets a default row; `by_label` overrides some (labels only pick the rows to fill in)."""
    rows = {}
    for spec in plan.methods:
        default = (
            _row(1.0, 0.5)
            if spec.kind in ("autoregressive", "hf_generate")
            else (_row(4.0, 0.2, identical=0.0) if spec.kind == "draft_only" else _row(1.2, 0.5, acceptance=0.4))
        )
        rows[spec.key] = by_label.get(spec.label, default)
    return rows


def test_claims_are_checked_not_assumed():
    plan = _plan()
    results = _results(
        plan,
        **{
            "draft with imitation": _row(3.5, 0.3, identical=0.2),
            "draft without imitation": _row(4.0, 0.1, identical=0.0),
            "ours (ce+cs+kd)": _row(1.4, 0.5, acceptance=0.4),
            "LayerSkip": _row(1.3, 0.6, acceptance=0.3),
            "Draft & Verify": _row(1.1, 0.5, acceptance=0.8),
            "ours, growing d": _row(1.2, 0.5, identical=0.95, acceptance=0.4),
        },
    )
    checked = {claim: (held, evidence) for claim, held, evidence in claims(plan, results)}
    assert checked["draft with imitation ≫ draft without (caption CIDEr of the draft alone)"] == (
        True,
        "0.300 vs 0.100",
    )
    assert checked["ours faster than LayerSkip"] == (True, "1.40× vs 1.30×")
    assert checked["ours faster than Draft & Verify"] == (True, "1.40× vs 1.10×")
    held, evidence = checked["lossless methods identical to their full model's greedy output"]
    assert held is False and evidence == "ours, growing d 95 %"
    # one differing prompt in 1300 is not rounded up to a "100 %" beside a failed claim
    almost = {**results, next(s.key for s in plan.methods if s.label == "ours, growing d"): _row(1.2, 0.5, 1299 / 1300)}
    held, evidence = {c: (h, e) for c, h, e in claims(plan, almost)}[
        "lossless methods identical to their full model's greedy output"
    ]
    assert held is False and evidence == "ours, growing d 99.92 %"
    assert "| 99.92 % |" in next(line for line in table1(plan, almost).splitlines() if "| ours, growing d |" in line)
    slower = {**results, next(s.key for s in plan.methods if s.label == "LayerSkip"): _row(2.0, 0.6, acceptance=0.3)}
    assert {c: h for c, h, _ in claims(plan, slower)}["ours faster than LayerSkip"] is False
    # the paper's best speed-up is checked against Hugging Face's generate, not against our own token-by-token engine
    paper = "ours at least 1.85× faster than model.generate (the paper's best speed-up)"
    generate = next(s.key for s in plan.methods if s.kind == "hf_generate")
    assert checked[paper] == (False, "1.40× (1.40× ÷ 1.00× over the full model)")
    slow_generate = {**results, generate: _row(0.75, 0.5)}
    assert {c: (h, e) for c, h, e in claims(plan, slow_generate)}[paper] == (
        True,
        "1.87× (1.40× ÷ 0.75× over the full model)",
    )
    # judged on the medians; the evidence says how far the timing passes moved it (ours ÷ generate per pass)
    ours_key = next(s.key for s in plan.methods if s.label == "ours (ce+cs+kd)")
    passes = {
        **results,
        ours_key: {**results[ours_key], "speedup_by_repeat": [1.5, 1.3, 1.4]},
        generate: {**results[generate], "speedup_by_repeat": [0.8, 0.8, 0.7]},
    }
    assert {c: (h, e) for c, h, e in claims(plan, passes)}[paper] == (
        False,
        "1.40× (1.40× ÷ 1.00× over the full model); per timing pass 1.62–2.00×",
    )


def test_table1_shows_each_planned_row_once_in_order():
    plan = _plan()
    table = table1(plan, _results(plan, **{"ours (ce+cs+kd)": _row(1.4, 0.5, acceptance=0.4)})).splitlines()
    assert table[0].startswith("| method | BLEU-4 | METEOR")
    assert [line.split(" | ")[0].removeprefix("| ") for line in table[2:]] == [s.label for s in plan.table1()]
    ours = next(line for line in table if line.startswith("| ours (ce+cs+kd) |"))
    assert "| 0.300 | 0.200 | 0.500 | 0.500 | n/a |" in ours and "| 1.40× | 140 | 980 | 0.400 | 1.500 | 100 % |" in ours
    assert markdown_table(["a", "b"], [[None, "x|y"]]).splitlines()[2] == "| – | x\\|y |"


def test_table_n_keeps_the_best_d_per_n_and_loss():
    rows = [
        {
            "config.draft_layers": "1",
            "loss_label": "ce",
            "config.draft_len": d,
            "speedup": s,
            "acceptance_rate": "0.5",
            "mean_accepted_length": "1",
            "cider_draft": "0.2",
            "cider_ssd": "0.5",
            "cider_full": "0.5",
            "draft_cost_ratio": "0.1",
        }
        for d, s in (("2", "1.2"), ("4", "1.5"))
    ]
    assert table_n(rows).splitlines()[2].startswith("| 1 | ce | 4 | 1.50× |")


def test_fusion_table_has_a_row_per_evaluated_fusion():
    plan = _plan()
    results = _results(
        plan,
        **{
            "ours (ce+cs+kd)": _row(1.4, 0.5, acceptance=0.45),
            "draft with imitation": _row(9.0, 0.30, identical=0.0),
            "ours (ce+cs+kd), concat fusion": _row(1.2, 0.5, acceptance=0.35),
            "draft with imitation, concat fusion": _row(9.0, 0.25, identical=0.0),
        },
    )
    imitation = {"ce+cs+kd": {"val_agreement": 0.6}, "fusion-concat": {"val_agreement": 0.55}}
    table = table_fusion(fusion_rows(plan, results, imitation)).splitlines()
    assert table[0].startswith("| fusion | val agreement | speed-up | acceptance")
    assert table[2].startswith("| average | 0.600 | 1.40× | 0.450 |") and "| 0.300 |" in table[2]
    assert table[3].startswith("| concat | 0.550 | 1.20× | 0.350 |") and "| 0.250 |" in table[3]
    # a fusion without validation metrics (not trained in this run) has no row
    assert [r["fusion"] for r in fusion_rows(plan, results, {"ce+cs+kd": {"val_agreement": 0.6}})] == ["average"]


def test_figures_and_plots_files_share_their_series(tmp_path: Path, monkeypatch):
    plan = _plan()
    results = _results(plan)
    drawn: dict[str, dict] = {}
    monkeypatch.setattr(
        "pipeline.report.results.line_plot",
        lambda path, x, curves, **_: drawn.update({Path(path).name: {"x": list(x), **curves}}),
    )
    draw_figures(ReportInputs({"plan": plan.to_dict(), "methods": results}), tmp_path)
    by_d = series.speedup_by_draft_len(plan, results)
    assert [row["d"] for row in by_d] == [1, 3, 5] == drawn["speedup_by_d.png"]["x"]
    assert drawn["speedup_by_d.png"]["ours (ce+cs+kd)"] == [row["speedup"] for row in by_d]
    curves = series.acceptance_by_position(plan, results)
    assert (
        {row["method"] for row in curves}
        == set(drawn["acceptance_by_position.png"]) - {"x"}
        == {s.label for s in plan.ours()}
    )
    assert "ours (ce+cs+kd), concat fusion" not in drawn["acceptance_by_position.png"]


def test_fig5_bins_acceptance_by_tokens_generated_before_each_round(tmp_path: Path, monkeypatch):
    plan = _plan()
    main = plan.main.key
    # [context, drafted, accepted]: contexts 1 and 4 share the bin 0–7; 9 and 12 the bin 8–15; 17 has too few drafts
    results = _results(plan)
    results[main]["acceptance_by_context"] = [[1, 30, 24], [4, 30, 12], [9, 40, 10], [12, 20, 20], [17, 3, 3]]
    rows = [r for r in series.acceptance_by_context(plan, results) if r["key"] == main]
    assert [(r["context"], r["drafted"], r["acceptance"]) for r in rows] == [(0, 60, 0.6), (8, 60, 0.5), (16, 3, 1.0)]
    drawn: dict[str, dict] = {}
    monkeypatch.setattr(
        "pipeline.report.results.line_plot",
        lambda path, x, curves, **_: drawn.update({Path(path).name: {"x": list(x), **curves}}),
    )
    draw_figures(ReportInputs({"plan": plan.to_dict(), "methods": results}), tmp_path)
    # bin centres on x; a bin resting on fewer than MIN_DRAFTED tokens is left out of the figure
    assert drawn["acceptance_by_context.png"] == {"x": [3.5, 11.5], plan.main.label: [0.6, 0.5]}


def test_expected_speedup_is_leviathans_from_the_timed_rounds_and_prices_each_draft_by_its_own_row():
    from pipeline.report.tables import expected_rows, expected_speedup

    # a round of 3 drafts at a fifth of a full step, 2 accepted: 3 tokens for 1.6 steps
    assert expected_speedup(2.0, 3.0, 0.2) == pytest.approx(3 / 1.6)
    plan = _plan()
    results = _results(plan)
    for spec in plan.methods:
        if spec.kind == "ssd":
            results[spec.key].update(timed_mean_accepted_length=1.0, timed_mean_draft_length=3.0)
    results[plan.main.key]["speedup"] = 1.5
    main_draft = next(s for s in plan.methods if s.kind == "draft_only" and s.head == plan.main_head)
    results[main_draft.key]["speedup"] = 5.0  # c = 0.2
    rows = {r["method"]: r for r in expected_rows(plan, results)}
    main = rows[plan.main.label]
    assert main["cost_ratio"] == pytest.approx(0.2) and main["expected"] == pytest.approx(2 / 1.6)
    assert main["ratio"] == pytest.approx(1.5 / (2 / 1.6))
    assert "ours, mixed schedule" not in rows  # its draft runs on another backbone: no draft-alone row prices it
    concat = rows["ours (ce+cs+kd), concat fusion"]  # priced by the concat head's own draft-alone row (4.0×)
    assert concat["cost_ratio"] == pytest.approx(1 / 4.0)
    assert "expected_verified" not in main
    # with the measured verification cost by width: 3 drafts + the verifier's position = width 4, between 3 and 5
    priced = {r["method"]: r for r in expected_rows(plan, results, {1: 1.0, 3: 1.2, 5: 1.6})}[plan.main.label]
    assert priced["verification"] == pytest.approx(1.4)
    assert priced["expected_verified"] == pytest.approx(2 / (1.4 + 0.6))
    assert priced["ratio_verified"] == pytest.approx(1.5 / (2 / 2.0))
    assert priced["expected"] == main["expected"]  # Leviathan's own figure stays beside it


def test_expected_speedup_compares_the_decode_phase_where_evaluate_split_the_prefill_off():
    from pipeline.report.tables import expected_rows, table_expected

    plan = _plan()
    results = _results(plan)
    for spec in plan.methods:
        if spec.kind == "ssd":
            results[spec.key].update(timed_mean_accepted_length=1.0, timed_mean_draft_length=3.0)
    main_draft = next(s for s in plan.methods if s.kind == "draft_only" and s.head == plan.main_head)
    results[plan.main.key].update(speedup=1.5, decode_speedup=1.8)
    results[main_draft.key].update(speedup=5.0, decode_speedup=8.0)  # c = 1/8 after the first token
    main = {r["method"]: r for r in expected_rows(plan, results)}[plan.main.label]
    assert main["decode_phase"] and main["cost_ratio"] == pytest.approx(1 / 8)
    assert main["expected"] == pytest.approx(2 / (1 + 3 / 8))
    assert main["measured"] == 1.8 and main["measured_end_to_end"] == 1.5
    assert main["ratio"] == pytest.approx(1.8 / (2 / 1.375))
    table = table_expected([main])
    assert "measured, decode phase" in table and "| 1.50× |" in table
    # a draft timed without its prefill split off prices the row end to end, measured end to end
    del results[main_draft.key]["decode_speedup"]
    fallback = {r["method"]: r for r in expected_rows(plan, results)}[plan.main.label]
    assert not fallback["decode_phase"] and fallback["cost_ratio"] == pytest.approx(0.2)
    assert fallback["measured"] == 1.5
    assert "measured, decode phase" not in table_expected([fallback])


def test_interpolated_verification_cost_is_linear_between_measured_widths_and_flat_outside():
    from pipeline.report.tables import interpolated_cost

    costs = {2: 1.2, 4: 1.6, 1: 1.0}
    assert interpolated_cost(costs, 3.0) == pytest.approx(1.4)
    assert interpolated_cost(costs, 1.5) == pytest.approx(1.1)
    assert interpolated_cost(costs, 4.0) == pytest.approx(1.6)
    assert interpolated_cost(costs, 0.5) == 1.0 and interpolated_cost(costs, 9.0) == 1.6


def test_vqa_question_type_table_has_a_column_per_type_by_count_and_a_row_per_method():
    plan = _plan()
    results = _results(plan)
    full, draft = plan.table1()[0], next(s for s in plan.table1() if s.kind == "draft_only")
    for spec, colour in ((full, 0.5), (draft, 0.25)):
        results[spec.key]["tasks"]["vqa"] = {
            "vqa_accuracy": 0.4,
            "by_question_type": {
                "how many": {"accuracy": 0.75, "questions": 4},
                "what colour is the": {"accuracy": colour, "questions": 6},
            },
        }
    lines = table_vqa_question_types(plan, results).splitlines()
    assert lines[0] == "| method | what colour is the (6) | how many (4) |"
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines[2:]}
    assert list(rows) == [spec.label for spec in plan.table1()]
    assert rows[full.label].endswith("| 0.500 | 0.750 |") and rows[draft.label].endswith("| 0.250 | 0.750 |")
    assert rows["ours (ce+cs+kd)"].endswith("| – | – |")  # a method without VQA types
    assert table_vqa_question_types(plan, _results(plan)) is None


def test_backbone_table_sets_each_score_beside_its_blank_image_control():
    finetune = {
        "test_cider": 1.6,
        "test_blank_cider": 0.3,
        "test_bleu4": 0.5,
        "test_blank_bleu4": 0.1,
        "test_vqa_accuracy": 0.45,
        "test_blank_vqa_accuracy": 0.2,
        "test_vqa_accuracy/what shape is": 0.6,
        "test_blank_vqa_accuracy/what shape is": 0.1,
        "vision_pretraining_val_loss": 0.4,
    }
    lines = table_backbone(finetune).splitlines()
    assert lines[2:] == [
        "| caption CIDEr | 1.600 | 0.300 |",
        "| caption BLEU-4 | 0.500 | 0.100 |",
        "| VQA accuracy | 0.450 | 0.200 |",
        "| VQA: what shape is | 0.600 | 0.100 |",
    ]
    assert table_backbone({"steps": 600.0}) is None


def test_architecture_search_names_the_price_it_scored_by_and_both_ratios():
    from pipeline.report.results import architecture_search

    trial = {"score": 0.70, "agreement": 0.85, "draft_cost_ratio": 0.15, "latency_cost_ratio": 0.15}
    nas = {
        "cost": "latency",
        "cost_weight": 1.0,
        "best": {**trial, "flops_cost_ratio": 0.13, "architecture": {"num_linear": 2, "attention": True}},
        "paper_choice": {**trial, "agreement": 0.69, "flops_cost_ratio": 0.10, "architecture": {"num_linear": 2}},
    }
    text = architecture_search(nas)
    assert "priced by latency" in text
    assert "draft cost ratio 0.150 (latency 0.150, flops 0.130)" in text
    assert "agreement 0.690, draft cost ratio 0.150 (latency 0.150, flops 0.100)" in text
    # a nas.json from before latency pricing: FLOPs priced it and only one ratio exists
    old = {"best": {"score": 0.7, "agreement": 0.8, "draft_cost_ratio": 0.1, "architecture": {}}}
    assert "priced by flops" in architecture_search(old) and "draft cost ratio 0.100)" in architecture_search(old)


def test_loss_variant_section_says_which_text_the_heads_learned():
    generated = {
        "enabled": True,
        "targets": "generated",
        "train_examples": 2000,
        "train_generated_tokens_per_example": 31.26,
        "train_reference_tokens_per_example": 29.5,
    }
    text = training_text(generated)
    assert "2000 cached training examples" in text and "full model's own greedy continuation" in text
    assert "31.3 tokens per example, against 29.5 in the references" in text
    reference = training_text({**generated, "targets": "reference"})
    assert "data set's text" in reference and "greedy" not in reference
    assert "end to end" in training_text({"enabled": False})
