"""The nas and sweep stages end to end on a tiny model: a NAS submitted by address to a real Ray head node
(`ray start --head` on loopback), and a sweep on a local instance; their outputs, trials and MLflow runs."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_params

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head node on loopback, as `ray start --head` starts one on a cluster's head machine.
    (Teardown runs `ray stop`, which stops every Ray instance of this user on the machine.)"""
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [
            RAY,
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=180,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _runs(root: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["fastvlm-ssd"])


@pytest.mark.scale  # a Ray head node, as cluster mode starts one: `make test-scale`
def test_nas_runs_on_a_ray_cluster_by_address(tiny_repo, ray_head, monkeypatch):
    from stages import nas

    monkeypatch.chdir(tiny_repo)
    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    nas.main(tiny_params())
    rows = list(csv.DictReader((tiny_repo / "reports/nas_trials.csv").open()))
    assert len(rows) == 2 and all(not r["error"] for r in rows)
    trial_dirs = [p for p in (tiny_repo / "ray_results/nas").iterdir() if p.name.startswith("nas_trial")]
    assert len(trial_dirs) == 2 and all((p / "result.json").stat().st_size > 0 for p in trial_dirs)
    best = json.loads((tiny_repo / "models/nas/best_architecture.json").read_text())
    top = max(rows, key=lambda r: float(r["score"]))  # the table is what ASHA saw: the winner is its best last score
    assert best["draft_layers"] == 1 and best["score"] == pytest.approx(float(top["score"]))
    assert {k: str(best["architecture"][k]) for k in ("num_linear", "activation")} == {
        "num_linear": top["config.num_linear"],
        "activation": top["config.activation"],
    }
    summary = json.loads((tiny_repo / "metrics/nas.json").read_text())
    assert summary["trials"] == 2 and summary["best"]["score"] == best["score"]
    # the reported costs are the winner's: FLOPs of layer 0 + its network + the LM head over the full model's, and
    # the measured latency of that draft step over a full step, which (params' default) is the price it was scored by
    from pipeline.config import ImitationArchitecture
    from pipeline.evaluation.flops import per_token_flops
    from pipeline.models.imitation import ImitationNetwork
    from pipeline.models.loading import load_backbone

    adapter = load_backbone(tiny_repo / "models/finetuned").adapter
    network = ImitationNetwork(adapter.hidden_size, ImitationArchitecture.model_validate(best["architecture"]))
    assert summary["best"]["flops_cost_ratio"] == pytest.approx(
        per_token_flops(adapter, 1, network)["draft_cost_ratio"]
    )
    assert summary["cost"] == "latency" and summary["best"]["draft_cost_ratio"] == summary["best"]["latency_cost_ratio"]
    # on a cluster the stage's machine is not the trials': each trial timed its own draft where it ran
    assert summary["latency_timed_by"] == "trial" and summary["latency_prices"] == {}
    runs = _runs(tiny_repo)
    parent = runs[runs["tags.dvc_stage"] == "nas"]
    parent = parent[parent["tags.mlflow.parentRunId"].isna()]
    assert len(parent) == 1
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]]
    assert len(children) == 2 and set(children["tags.search"]) == {"nas"}
    assert children["metrics.score"].notna().all() and children["params.num_linear"].notna().all()


@pytest.mark.scale
def test_a_cluster_without_the_gpus_trials_ask_for_fails_at_once(ray_head, monkeypatch, tmp_path):
    from pipeline.config import RayConfig
    from pipeline.search.ray_runtime import RayClusterError, start_ray

    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    with pytest.raises(RayClusterError, match="cluster_gpus_per_trial"):
        start_ray(RayConfig(cluster_gpus_per_trial=1), tmp_path)


def test_sweep_stage_reports_speed_quality_and_losslessness(tiny_repo, monkeypatch):
    from stages import sweep

    monkeypatch.chdir(tiny_repo)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep.main(tiny_params())
    rows = list(csv.DictReader((tiny_repo / "reports/sweep.csv").open()))
    assert {(r["config.draft_layers"], r["config.draft_len"]) for r in rows} == {
        ("1", "2"),
        ("2", "2"),
        ("1", "growing"),
        ("2", "growing"),
    }
    for row in rows:
        assert float(row["identical_share"]) == 1.0 and float(row["cider_ssd"]) == pytest.approx(
            float(row["cider_full"])
        )
        # speed-up = the full model's per-token latency over SSD's, both measured in the trial
        assert float(row["speedup"]) == pytest.approx(
            float(row["tokens_per_second"]) / float(row["tokens_per_second_full"])
        )
    # one trial per (n, λ), which trained its head and timed both d against one timing of the full model
    by_trial: dict[str, list[dict]] = {}
    for row in rows:
        by_trial.setdefault(row["trial_id"], []).append(row)
    assert len(by_trial) == 2 and {r["head_source"] for r in rows} == {"sweep"}
    for trial_rows in by_trial.values():
        assert sorted(r["config.draft_len"] for r in trial_rows) == ["2", "growing"]
        assert len({r["config.draft_layers"] for r in trial_rows}) == 1
        assert len({r["tokens_per_second_full"] for r in trial_rows}) == 1
    summary = json.loads((tiny_repo / "metrics/sweep.json").read_text())
    assert summary["all_lossless"] is True and summary["trials"] == 2 and summary["settings"] == 4
    assert summary["pareto"]
    assert summary["draft_len_by_layers"] == {"1": 2, "2": 2}  # the only fixed d, at each n: evaluate's when auto
    assert (tiny_repo / "reports/figures/sweep_pareto.png").stat().st_size > 0
    pareto = list(csv.DictReader((tiny_repo / "plots/sweep_pareto.csv").open()))
    assert {r["method"] for r in pareto} == {"ssd", "draft_only"}
    runs = _runs(tiny_repo)
    parent = runs[(runs["tags.dvc_stage"] == "sweep") & runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]]
    assert len(children) == 2 and children["metrics.speedup"].notna().all()
    assert children["metrics.speedup.d2"].notna().all() and children["metrics.cider_ssd.dgrowing"].notna().all()
