"""The method registry: the plan `evaluate` decodes, the rows each table and figure selects from it (by what a method
is, never by its label), stable keys, and a plan that survives the round trip through metrics/evaluate.json."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipeline.config import parse_params
from pipeline.errors import PipelineError
from pipeline.evaluation import methods
from pipeline.evaluation.methods import EvaluationPlan, MethodSpec, evaluation_plan

FOUND = {"skip_layers": [2, 5], "threshold": 0.6, "max_draft_len": 8}
HEADS = {"ce": 1, "ce+cs": 1, "ce+cs+kd": 1, "fusion-concat": 1, "fusion-attention": 1, "mixed": 1}


def _plan(**imitation) -> EvaluationPlan:
    params = parse_params({"imitation": imitation, "decoding": {"draft_len": 3}, "evaluate": {"draft_lens": [1, 3, 5]}})
    return evaluation_plan(params, HEADS, FOUND)


def test_keys_name_what_a_method_is_and_are_unique():
    plan = _plan()
    keys = [spec.key for spec in plan.methods]
    assert len(keys) == len(set(keys))
    assert methods.ssd("ce+cs+kd", 1, 3).key == "ssd:ce+cs+kd:n1:d3"
    assert methods.ssd(None, 2, "growing", backbone="layerskip").key == "layerskip:ssd:early-exit:n2:dgrowing"
    assert methods.draft_verify([2, 5], 0.6, 8).key == "draft-verify:skip2-5:t0.6"
    assert methods.autoregressive("mixed").key == "mixed:full"
    # the label does not enter the key: relabelling a method keeps its identity
    assert dataclasses.replace(methods.ssd("ce", 1, 3, "ours (ce)"), label="anything").key == "ssd:ce:n1:d3"


def test_table1_rows_in_the_papers_order():
    labels = [spec.label for spec in _plan().table1()]
    assert labels == [
        "full model",
        "model.generate",
        "draft without imitation",
        "draft with imitation",
        "Draft & Verify",
        "LayerSkip",
        "ours (ce)",
        "ours (ce+cs)",
        "ours (ce+cs+kd)",
        "ours, growing d",
        "ours, mixed schedule",
    ]


def test_figure_series_are_selected_by_what_a_method_is():
    plan = _plan()
    assert [(s.head, s.draft_len) for s in plan.by_draft_len()] == [("ce+cs+kd", 1), ("ce+cs+kd", 3), ("ce+cs+kd", 5)]
    # Fig. 5: ours as trained; neither the fusion-table heads nor the other d's
    assert [s.label for s in plan.ours()] == [
        "ours (ce)",
        "ours (ce+cs)",
        "ours (ce+cs+kd)",
        "ours, growing d",
        "ours, mixed schedule",
    ]
    rows = plan.fusion_rows()
    assert [(kind, ssd.head, draft.head) for kind, ssd, draft in rows] == [
        ("average", "ce+cs+kd", "ce+cs+kd"),
        ("concat", "fusion-concat", "fusion-concat"),
        ("attention", "fusion-attention", "fusion-attention"),
    ]
    assert all(ssd.kind == "ssd" and ssd.draft_len == 3 and draft.kind == "draft_only" for _, ssd, draft in rows)


def test_methods_on_another_backbone_are_checked_against_that_backbones_own_output():
    plan = _plan()
    layerskip = next(s for s in plan.methods if s.backbone == "layerskip" and s.kind == "ssd")
    assert layerskip.identity_reference.key == "layerskip:full"
    # unverified methods are compared with the fine-tuned model: how far LayerSkip's own text moved from it
    assert methods.autoregressive("layerskip").identity_reference == plan.reference
    assert methods.draft_only("ce", 1).identity_reference == plan.reference
    assert plan.main.identity_reference == plan.reference
    assert {s.kind for s in plan.methods if s.verified} == {"ssd", "draft_verify"}


def test_plan_round_trips_through_json():
    plan = _plan()
    again = EvaluationPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.table1() == plan.table1()
    spec = methods.draft_verify([1, 3], 0.4, 6)
    assert MethodSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_a_missing_fusion_head_is_named_with_the_fix():
    params = parse_params({"imitation": {"fusion_comparison": ["average", "concat"]}})
    with pytest.raises(PipelineError, match=r"fusion-concat.*dvc repro train_imitation"):
        evaluation_plan(params, {"ce+cs+kd": 1}, FOUND, draft_len=3)


def test_without_the_full_loss_variant_ours_is_the_first_head_and_the_fusions_get_their_own_rows():
    params = parse_params({"imitation": {"variants": ["ce"], "fusion_comparison": ["average", "concat"]}})
    plan = evaluation_plan(
        params, {"ce": 2, "fusion-average": 2, "fusion-concat": 2}, FOUND, layerskip=False, draft_len=3
    )
    assert plan.main_head == "ce" and plan.draft_layers == 2
    assert [(kind, ssd.label) for kind, ssd, _ in plan.fusion_rows()] == [
        ("average", "ours (ce), average fusion"),
        ("concat", "ours (ce), concat fusion"),
    ]
    assert not any(s.backbone == "layerskip" for s in plan.methods)


def test_the_language_only_draft_joins_table1_decoded_by_our_engine_and_by_hf():
    params = parse_params(
        {"decoding": {"draft_len": 3}, "evaluate": {"draft_lens": [1]}, "imitation": {"fusion_comparison": []}}
    )
    plan = evaluation_plan(params, {"ce+cs+kd": 1}, FOUND, language_draft=True, hf_assisted=True)
    rows = {spec.kind: spec for spec in plan.table1() if spec.draft_model == methods.LANGUAGE_DRAFT}
    assert set(rows) == {"separate_draft", "hf_assisted"}
    # HF's row is opt-in (it decodes the split one prompt at a time); ours is there whenever the draft is
    cheap = evaluation_plan(params, {"ce+cs+kd": 1}, FOUND, language_draft=True)
    assert [s.kind for s in cheap.table1() if s.draft_model] == ["separate_draft"]
    assert rows["separate_draft"].key == "separate:language-draft:d3" and rows["hf_assisted"].draft_len == 3
    assert all(spec.verified for spec in rows.values())  # held to the full model's greedy output, token for token
    assert not any(s.draft_model for s in evaluation_plan(params, {"ce+cs+kd": 1}, FOUND).methods)
    assert EvaluationPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
