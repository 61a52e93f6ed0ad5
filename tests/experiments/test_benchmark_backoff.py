"""The backoff benchmark end to end on a tiny model with a useless (random) draft: every input kind and method runs,
every method returns the full model's tokens, and with the backoff ours drafts far less than without it."""

from __future__ import annotations

import importlib.util
import json

import torch
import yaml

from pipeline.config import Params
from pipeline.models.imitation import ImitationNetwork, save_imitation
from pipeline.models.loading import save_backbone
from tests.conftest import ROOT, TINY, tiny_backbone


def test_each_input_kind_is_lossless_and_the_backoff_stops_drafting_a_useless_draft(tiny_data, tmp_path, one_thread):
    spec = importlib.util.spec_from_file_location("benchmark_backoff", ROOT / "experiments/benchmark_backoff.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    splits, tokenizer = tiny_data
    save_backbone(tiny_backbone(tokenizer), tmp_path / "model")
    torch.manual_seed(0)
    network = ImitationNetwork(TINY.hidden_size)
    with torch.no_grad():  # weights of unit scale: its states are noise to the LM head, its drafts near-random
        for parameter in network.parameters():
            parameter.normal_(0.0, 1.0)
    save_imitation(network, tmp_path / "head", {"draft_layers": 2})
    params = Params().model_dump(mode="json")
    params["data"]["out_dir"] = str(splits["test"].images[0].image_path.parents[2])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["--model", str(tmp_path / "model"), "--imitation", str(tmp_path / "head"), "--params"]
    argv += [str(tmp_path / "params.yaml"), "--prompts", "3", "--draft-len", "3", "--repeats", "1"]
    result = module.main([*argv, "--out", str(tmp_path / "bench.json")])
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(result))
    rows = {(r["input"], r["method"]): r for r in result["rows"]}
    kinds = {"real", "grey", "black"} | ({"vqa"} if splits["test"].vqa else set())
    assert set(rows) == {(k, m) for k in kinds for m in ("full model", "ours, backoff", "ours, no backoff")}
    assert all(row["identical_share"] == 1.0 for row in rows.values())
    for kind in ("real", "grey", "black"):
        backed_off, plain = rows[(kind, "ours, backoff")], rows[(kind, "ours, no backoff")]
        assert plain["acceptance_rate"] < 0.1 and plain["drafted_per_round"] > 2.5  # a useless draft, drafted at d
        assert backed_off["drafted_per_round"] < plain["drafted_per_round"] / 2, kind
