"""The decoding benchmark script end to end on a tiny model: every method runs, the JSON has the promised
fields, lossless methods are 100 % identical to greedy, and the imitation / LayerSkip / D&V options work."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
import yaml

from pipeline.config import ModelConfig, Params
from pipeline.io import atomic_write_json
from pipeline.models.imitation import ImitationNetwork, ImitationNetworkConfig, save_imitation
from pipeline.models.loading import build_backbone, save_backbone
from tests.training.conftest import TINY, tiny_data  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("benchmark_decoding", ROOT / "experiments/benchmark_decoding.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_every_method_and_reports_lossless_identity(tiny_data, tmp_path):
    splits, tokenizer = tiny_data
    data_dir = splits["test"].images[0].image_path.parents[2]  # <root>/images/test/x.png
    backbone = build_backbone(ModelConfig(tiny=TINY), tokenizer, seed=0)
    save_backbone(backbone, tmp_path / "model")
    save_backbone(backbone, tmp_path / "layerskip")
    torch.manual_seed(0)
    save_imitation(ImitationNetwork(ImitationNetworkConfig(hidden_size=TINY.hidden_size)), tmp_path / "imitation/ce", {"draft_layers": 1})
    atomic_write_json(tmp_path / "dv.json", {"skip_layers": [2], "threshold": 0.5, "max_draft_len": 4})
    params = Params().model_dump(mode="json")
    params["data"]["out_dir"] = str(data_dir)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "bench.json"
    result = _benchmark_module().main([
        "--model", str(tmp_path / "model"), "--params", str(tmp_path / "params.yaml"), "--captions", "2", "--descriptions", "1",
        "--max-new-tokens", "12", "--repeats", "1", "--draft-layers", "1", "2", "--draft-lens", "2",
        "--imitation", str(tmp_path / "imitation"), "--layerskip", str(tmp_path / "layerskip"),
        "--draft-verify", str(tmp_path / "dv.json"), "--out", str(out),
    ])
    saved = json.loads(out.read_text())
    assert saved["methods"] == json.loads(json.dumps(result["methods"]))
    rows = {r["method"]: r for r in saved["methods"]}
    for name in ("hf_generate", "ours_autoregressive", "hf_early_exit n=1 d=2", "ssd n=2 d=2", "ssd n=1 d=growing",
                 "draft_and_verify", "draft_and_verify(searched)", "ssd+imitation(ce) n=1 d=2", "layerskip:ssd n=1 d=2"):
        assert name in rows, name
        assert rows[name]["identical_to_greedy"] == 1.0, name
        assert rows[name]["tokens_per_second"] > 0 and rows[name]["speedup_vs_hf_generate"] > 0
    assert rows["hf_generate"]["speedup_vs_hf_generate"] == 1.0
    assert 0 <= rows["ssd n=1 d=2"]["acceptance_rate"] <= 1 and "mean_accepted_length" in rows["ssd n=1 d=2"]
    assert set(rows["ssd n=1 d=2"]["speedup_by_task"]) == {"caption", "description"}
