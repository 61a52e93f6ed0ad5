"""The decoding benchmark script end to end on a tiny model: every method runs, the JSON has the promised
fields, lossless methods are 100 % identical to greedy, and the imitation / LayerSkip / D&V options work."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import yaml

from pipeline.config import Params
from pipeline.evaluation.speed import expected_speedup
from pipeline.io import atomic_write_json
from pipeline.models.imitation import ImitationNetwork, save_imitation
from pipeline.models.loading import save_backbone
from tests.conftest import ROOT, TINY, tiny_backbone


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark_decoding", ROOT / "experiments/benchmark_decoding.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_every_method_and_reports_lossless_identity(tiny_data, tmp_path, one_thread):
    splits, tokenizer = tiny_data
    data_dir = splits["test"].images[0].image_path.parents[2]  # <root>/images/test/x.png
    backbone = tiny_backbone(tokenizer)
    save_backbone(backbone, tmp_path / "model")
    save_backbone(backbone, tmp_path / "layerskip")
    torch.manual_seed(0)
    save_imitation(ImitationNetwork(TINY.hidden_size), tmp_path / "imitation/ce", {"draft_layers": 1})
    atomic_write_json(tmp_path / "dv.json", {"skip_layers": [2], "threshold": 0.5, "max_draft_len": 4})
    params = Params().model_dump(mode="json")
    params["data"]["out_dir"] = str(data_dir)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "bench.json"
    result = _benchmark_module().main(
        [
            "--model",
            str(tmp_path / "model"),
            "--params",
            str(tmp_path / "params.yaml"),
            "--captions",
            "2",
            "--descriptions",
            "1",
            "--max-new-tokens",
            "12",
            "--repeats",
            "1",
            "--draft-layers",
            "1",
            "2",
            "--draft-lens",
            "2",
            "--imitation",
            str(tmp_path / "imitation"),
            "--layerskip",
            str(tmp_path / "layerskip"),
            "--draft-verify",
            str(tmp_path / "dv.json"),
            "--out",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    assert saved["methods"] == json.loads(json.dumps(result["methods"]))
    rows = {r["method"]: r for r in saved["methods"]}
    lossless = [
        "generate",
        "full",
        "hf-early-exit:n1:d2",
        "ssd:early-exit:n2:d2",
        "ssd:early-exit:n1:dgrowing",
        "draft-verify:skip2:t0.6",
        "draft-verify:skip2:t0.5",
        "ssd:ce:n1:d2",
        "ssd:ce:n1:dgrowing",
        "layerskip:generate",
        "layerskip:ssd:early-exit:n1:d2",
    ]
    for name in lossless:
        assert rows[name]["identical_to_greedy"] == 1.0, name
        # the same tokens as greedy decoding, so the same count; speed-up = the ratio of tokens/s to model.generate's
        assert rows[name]["new_tokens"] == rows["generate"]["new_tokens"], name
        assert rows[name]["speedup_vs_hf_generate"] == pytest.approx(
            rows[name]["tokens_per_second"] / rows["generate"]["tokens_per_second"]
        )
    assert rows["generate"]["speedup_vs_hf_generate"] == 1.0
    assert {"draft:early-exit:n1", "draft:early-exit:n2", "draft:ce:n1"} <= set(
        rows
    )  # the drafts alone: lossy, but timed
    ssd = rows["ssd:early-exit:n1:d2"]
    assert ssd["acceptance_rate"] == pytest.approx(ssd["accepted"] / ssd["drafted"])
    assert ssd["expected_speedup_leviathan"] == pytest.approx(
        expected_speedup(ssd["acceptance_rate"], 1 / TINY.num_layers, 2)
    )
    assert set(ssd["speedup_by_task"]) == {"caption", "description"}
