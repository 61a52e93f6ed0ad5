"""The fusion table (paper Table 5) after training: which heads the sweep may reuse, which rows evaluate builds
and how the report tabulates them (the training plan: tests/test_train_imitation_plan.py)."""

from __future__ import annotations

import pytest

from pipeline.config import parse_params
from pipeline.errors import ModelLoadError
from pipeline.models.imitation import ImitationNetwork, ImitationNetworkConfig, save_imitation
from pipeline.search.sweep import head_key, loss_weights, reusable_heads
from stages.evaluate import fusion_heads
from stages.report import fusion_rows, table_fusion
from tests.test_report import _method


def test_the_sweep_never_reuses_a_head_trained_with_another_fusion(tmp_path):
    params = parse_params({"imitation": {"fusion": "average"}})
    arch = {"num_linear": 2}
    network = ImitationNetwork(ImitationNetworkConfig(hidden_size=8))
    # same n and loss as the main ce+cs+kd head, and sorted after it: a name-order overwrite would pick it
    save_imitation(network, tmp_path / "ce+cs+kd", {"draft_layers": 1, "variant": "ce+cs+kd", "fusion": "average", "mixed": False})
    save_imitation(network, tmp_path / "fusion-concat", {"draft_layers": 1, "variant": "ce+cs+kd", "fusion": "concat", "mixed": False})
    save_imitation(network, tmp_path / "mixed", {"draft_layers": 1, "variant": "ce+cs+kd", "fusion": "average", "mixed": True})
    found = reusable_heads(tmp_path, params, arch)
    assert found == {head_key(1, loss_weights("ce+cs+kd", params)): str((tmp_path / "ce+cs+kd").resolve())}


def test_evaluate_finds_each_fusion_head_and_names_a_missing_one():
    params = parse_params({"imitation": {"fusion": "average", "fusion_comparison": ["average", "concat"]}})
    heads = {"ce+cs+kd": object(), "fusion-concat": object()}
    assert fusion_heads(params, heads) == {"concat": "fusion-concat"}  # average: the ours (ce+cs+kd) rows
    with pytest.raises(ModelLoadError, match="fusion-concat.*dvc repro train_imitation"):
        fusion_heads(params, {"ce+cs+kd": object()})


def test_report_tabulates_every_fusion_with_its_own_rows():
    methods = {
        "ours (ce+cs+kd)": _method(1.4, 0.5, acceptance=0.45), "draft with imitation": _method(9.0, 0.30, identical=0.0),
        "ours (ce+cs+kd), concat fusion": _method(1.2, 0.5, acceptance=0.35),
        "draft with imitation, concat fusion": _method(9.0, 0.25, identical=0.0),
    }
    imitation = {"ce+cs+kd": {"val_agreement": 0.6}, "fusion-concat": {"val_agreement": 0.55}}
    heads = parse_params({"imitation": {"fusion": "average", "fusion_comparison": ["average", "concat", "attention"]}}).imitation.fusion_table_heads()
    assert heads == {"average": "ce+cs+kd", "concat": "fusion-concat", "attention": "fusion-attention"}
    rows = fusion_rows(methods, imitation, heads)
    assert [r["fusion"] for r in rows] == ["average", "concat"]  # attention: not evaluated, so no row
    table = table_fusion(rows).splitlines()
    assert table[0].startswith("| fusion | val agreement | speed-up | acceptance")
    assert table[2].startswith("| average | 0.600 | 1.40× | 0.450 |") and "| 0.300 |" in table[2]
    assert table[3].startswith("| concat | 0.550 | 1.20× | 0.350 |") and "| 0.250 |" in table[3]
