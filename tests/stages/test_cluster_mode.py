"""Cluster mode end to end: the tiny pipeline through `dvc repro` with a real Ray head (`ray start --head` on
127.0.0.1) running the nas and sweep trials, a real MLflow tracking server (SQLite backend, its own artifact root)
receiving every run, and the Lightning stages on 2 processes (DDP over gloo: finetune, train_imitation, LayerSkip
train with 2; select_layer and evaluate share their work out). The test starts and stops both servers
(`experiments/cluster_demo.py`, which `make cluster-demo` runs for a person) and reads everything back through the
server's REST API: one run per stage (no duplicates from the second process), the nested trials and per-method runs
with their params, metrics and artifacts, and the registered drafts, one of which it loads by its `models:/` URI
and decodes with. `make test-scale` (CI runs it after `make test`).
"""

from __future__ import annotations

import csv
import json
import time
import urllib.parse
import urllib.request

import pytest
import torch

from pipeline.evaluation.evaluate import COMPARED
from tests.stages.dvc_workspace import cluster_demo

pytestmark = [pytest.mark.slow, pytest.mark.scale]
STAGES = (
    "prepare",
    "finetune",
    "select_layer",
    "features",
    "nas",
    "train_imitation",
    "train_baselines",
    "sweep",
    "evaluate",
)


def _get(base: str, endpoint: str, **query: str) -> dict:
    with urllib.request.urlopen(f"{base}{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        return json.load(response)


def _post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _params(run: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def _metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def _artifacts(base: str, run_id: str, path: str = "") -> set[str]:
    listed = _get(base, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path=path).get("files", [])
    return {f["path"] for f in listed}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The pipeline run in cluster mode; yields (repository copy, MLflow URL, repro log, seconds) while the server
    is still up."""
    work = tmp_path_factory.mktemp("cluster")
    cluster_demo.copy_repository(work / "repo", cluster_demo.cluster_params())
    env = cluster_demo.base_env(work / "repo")
    with cluster_demo.ray_head(env) as address, cluster_demo.mlflow_server(work / "mlflow", env) as url:
        env.update({"RAY_ADDRESS": address, "MLFLOW_TRACKING_URI": url})
        started = time.perf_counter()
        log = cluster_demo.repro(work / "repo", env)
        seconds = time.perf_counter() - started
        print(f"\ncluster-mode dvc repro: {seconds:.0f} s")
        yield work / "repo", url, log, address, seconds


def test_every_stage_ran_on_the_cluster_and_wrote_its_outputs_once(cluster):
    repo, _, log, _, _ = cluster
    for stage in (*STAGES, "report"):
        assert f"Running stage '{stage}'" in log, stage
    finetune = json.loads((repo / "metrics/finetune.json").read_text())
    assert finetune["processes"] == 2 and finetune["steps"] == 6
    assert [int(r["step"]) for r in csv.DictReader((repo / "metrics/finetune_loss.csv").open())] == list(range(1, 7))
    imitation = json.loads((repo / "metrics/imitation.json").read_text())
    assert imitation["frozen_backbone_unchanged"] is True and imitation["workers"]["ddp_processes"] == 2
    assert {imitation[h]["processes"] for h in ("ce", "ce+cs+kd", "mixed")} == {2.0}
    # the frozen heads trained under DDP from the cached features; the mixed schedule changes the backbone, so not
    assert [imitation[h]["from_feature_cache"] for h in ("ce", "ce+cs+kd", "mixed")] == [1.0, 1.0, 0.0]
    assert json.loads((repo / "metrics/baselines.json").read_text())["layerskip"]["processes"] == 2
    evaluation = json.loads((repo / "metrics/evaluate.json").read_text())
    assert evaluation["processes"] == 2
    # rank zero alone times a sample; every process shares out the whole split
    assert sum(evaluation["timed_prompts"].values()) < sum(evaluation["prompts"].values())
    assert json.loads((repo / "metrics/nas.json").read_text())["trials"] == 2
    assert json.loads((repo / "metrics/sweep.json").read_text())["trials"] == 2


def test_the_server_holds_every_run_with_params_metrics_and_artifacts(cluster):
    repo, url, _, address, _ = cluster
    experiment = _get(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="fastvlm-ssd")["experiment"]
    assert {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    runs = _post(
        url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000}
    )["runs"]
    parents = [r for r in runs if "mlflow.parentRunId" not in _tags(r)]
    by_stage = {}
    for run in parents:
        by_stage.setdefault(_tags(run)["dvc_stage"], []).append(run)
    # one run per stage: the second DDP process of a stage logs nothing
    assert {stage: len(found) for stage, found in by_stage.items()} == dict.fromkeys((*STAGES, "report"), 1)
    stage = {name: found[0] for name, found in by_stage.items()}
    assert all(r["info"]["status"] == "FINISHED" for r in runs), [
        r["info"]["run_name"] for r in runs if r["info"]["status"] != "FINISHED"
    ]
    assert _params(stage["finetune"])["finetune.trainer.devices"] == "2"
    history = _get(
        url, "/api/2.0/mlflow/metrics/get-history", run_id=stage["finetune"]["info"]["run_id"], metric_key="train/loss"
    )
    logged_steps = [m["step"] for m in history["metrics"]]
    assert len(logged_steps) == len(set(logged_steps)) == 6  # each of the 6 steps once: rank zero logs alone
    children = {
        name: [r for r in runs if _tags(r).get("mlflow.parentRunId") == run["info"]["run_id"]]
        for name, run in stage.items()
    }
    # the searches ran on the Ray head, their trials nested under the stage run with config params and metrics
    for name in ("nas", "sweep"):
        assert _tags(stage[name])["ray_cluster"] == address
        assert len(children[name]) == 2, name
        assert all(_tags(c)["search"] == name for c in children[name])
    assert all("score" in _metrics(c) and "num_linear" in _params(c) for c in children["nas"])
    # a sweep trial is one (n, λ): each d it timed under its own names, its fastest lossless d as `speedup`
    assert all({"speedup", "speedup.d2", "cider_ssd.d2"} <= set(_metrics(c)) for c in children["sweep"])
    assert {"nas_trials.csv", "best_architecture.json"} <= _artifacts(url, stage["nas"]["info"]["run_id"])
    # evaluate: a run per method, tagged, with the compared metrics under their stable names
    plan = json.loads((repo / "metrics/evaluate.json").read_text())["plan"]
    methods = children["evaluate"]
    assert sorted(_tags(r)["method"] for r in methods) == sorted(cluster_demo_keys(plan))
    for run in methods:
        metrics, kind = _metrics(run), _tags(run)["method_kind"]
        # the compared metrics under their stable names; acceptance and τ where a draft is verified
        compared = set(COMPARED) if kind in ("ssd", "draft_verify") else set(COMPARED) - {"acceptance_rate", "tau"}
        assert compared <= set(metrics), _tags(run)["method"]
    # train_imitation: a run per head with its curve, its logged model and its registered version
    heads = children["train_imitation"]
    assert {_tags(r)["variant"] for r in heads} == {"ce", "ce+cs+kd", "fusion-concat", "fusion-attention", "mixed"}
    for run in heads:
        assert {"train/loss", "val_agreement"} <= set(_metrics(run))
    assert "results.md" in _artifacts(url, stage["report"]["info"]["run_id"])
    registered = {
        m["name"] for m in _get(url, "/api/2.0/mlflow/registered-models/search", max_results="100")["registered_models"]
    }
    assert registered == {
        "fastvlm-ssd-imitation-ce",
        "fastvlm-ssd-imitation-ce-cs-kd",
        "fastvlm-ssd-imitation-fusion-concat",
        "fastvlm-ssd-imitation-fusion-attention",
        "fastvlm-ssd-imitation-mixed",
        "fastvlm-ssd-layerskip-backbone",
    }


def cluster_demo_keys(plan: dict) -> list[str]:
    from pipeline.evaluation.methods import EvaluationPlan

    return [spec.key for spec in EvaluationPlan.from_dict(plan).methods]


def test_a_registered_draft_loads_from_the_server_and_decodes_as_the_saved_one(cluster, monkeypatch):
    import mlflow
    import mlflow.pytorch

    from pipeline.config import load_params
    from pipeline.data.prepared import load_prepared
    from pipeline.decoding import SelfSpeculativeDecoder
    from pipeline.evaluation.prompts import validation_prompts
    from pipeline.models.imitation import as_draft_head, load_imitation
    from pipeline.models.loading import load_backbone

    repo, url, _, _, _ = cluster
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)
    imitation = json.loads((repo / "metrics/imitation.json").read_text())
    uri = imitation["ce+cs+kd"]["registered_model"]
    assert uri == "models:/fastvlm-ssd-imitation-ce-cs-kd/1"
    from_registry = mlflow.pytorch.load_model(uri)
    saved, extra = load_imitation(repo / "models/imitation/ce+cs+kd")
    backbone = load_backbone(repo / "models/finetuned")
    params = load_params(repo / "params.yaml")
    prompts = validation_prompts(
        load_prepared(repo / "data/prepared")["val"],
        backbone.prompt_builder(params.data.prompts),
        backbone.image_processor,
        2,
    )
    for prompt in prompts:
        decoded = []
        for head in (saved, from_registry):
            decoder = SelfSpeculativeDecoder(backbone.model, extra["draft_layers"], as_draft_head(head.eval()), 2)
            with torch.no_grad():
                out = decoder.generate(
                    prompt["input_ids"], prompt["max_new_tokens"], pixel_values=prompt["pixel_values"]
                )
            decoded.append((out.sequences.tolist(), out.stats.accepted, out.stats.drafted))
        assert decoded[0] == decoded[1]
    layerskip = mlflow.pytorch.load_model(
        json.loads((repo / "metrics/baselines.json").read_text())["layerskip"]["registered_model"]
    )
    reference = load_backbone(repo / "models/layerskip").model
    assert all(
        torch.equal(a, b) for a, b in zip(layerskip.state_dict().values(), reference.state_dict().values(), strict=True)
    )
