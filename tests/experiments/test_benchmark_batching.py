"""The batch-size benchmark end to end on a tiny model: every batch size and method runs, ours and our
autoregressive decoder return exactly `model.generate`'s tokens at every batch size, and the waste figures add up."""

from __future__ import annotations

import importlib.util
import json

import torch
import yaml

from pipeline.config import ImitationArchitecture, Params
from pipeline.models.imitation import ImitationNetwork, save_imitation
from pipeline.models.loading import save_backbone
from tests.conftest import ROOT, TINY, tiny_backbone


def _module():
    spec = importlib.util.spec_from_file_location("benchmark_batching", ROOT / "experiments/benchmark_batching.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_batch_size_is_lossless_and_reported(tiny_data, tmp_path, one_thread):
    splits, tokenizer = tiny_data
    save_backbone(tiny_backbone(tokenizer), tmp_path / "model")
    torch.manual_seed(0)
    network = ImitationNetwork(TINY.hidden_size, ImitationArchitecture(attention=True, num_heads=2))
    save_imitation(network, tmp_path / "head", {"draft_layers": 2})
    params = Params().model_dump(mode="json")
    params["data"]["out_dir"] = str(splits["test"].images[0].image_path.parents[2])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "bench.json"
    module = _module()
    argv = ["--model", str(tmp_path / "model"), "--imitation", str(tmp_path / "head"), "--params"]
    argv += [str(tmp_path / "params.yaml"), "--batch-sizes", "1", "3", "--captions", "4", "--descriptions", "2"]
    result = module.main([*argv, "--draft-len", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = {(r["batch_size"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {(b, m) for b in (1, 3) for m in ("generate", "full", "ssd:ours:n2:d2")}
    for (batch, method), row in rows.items():
        assert row["identical_to_generate"] == 1.0, (batch, method)  # lossless at every batch size
        assert row["new_tokens"] == rows[(batch, "generate")]["new_tokens"]
    ssd = rows[(3, "ssd:ours:n2:d2")]
    assert ssd["acceptance_min"] <= ssd["acceptance_mean"] <= ssd["acceptance_max"]
    # every round verifies drafted + 1 positions and commits accepted + 1 tokens
    assert 1.0 <= ssd["verified_per_committed"] <= 3.0
    stats = [module.DecodingStats(drafted=2, accepted=1, verify_calls=1, rounds=[(2, 1)])]
    assert module.waste(stats) == {
        "verified_per_committed": 1.5,
        "acceptance_mean": 0.5,
        "acceptance_min": 0.5,
        "acceptance_max": 0.5,
    }
