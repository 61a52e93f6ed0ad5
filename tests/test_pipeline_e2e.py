"""End to end: `dvc repro` on a tiny configuration in a throwaway copy of the repository.

Checks what the README promises: the stages run, a second repro is a no-op, a param change
re-runs only what depends on it, `dvc exp run -S` and `dvc metrics show` work, and the MLflow
store (read through a real `mlflow server`) holds the fine-tune run with its params and loss curve.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

TINY = {
    "data": {"synthetic": {"n_train": 48, "n_val": 12, "n_test": 12}},
    "model": {"tiny": {"num_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "num_kv_heads": 2,
                       "vision_layers": 1, "vision_hidden_size": 32, "vision_intermediate_size": 64, "vision_heads": 2}},
    "finetune": {"max_steps": 6, "batch_size": 8, "val_every_steps": 3, "val_batches": 1, "warmup_steps": 1,
                 "eval_samples": 12, "eval_batch_size": 12, "eval_max_new_tokens": 8},
    "layer_choice": {"val_examples": 12, "batch_size": 12},
    "imitation": {"max_steps": 4, "batch_size": 8, "val_every_steps": 2, "val_batches": 1, "val_decode_prompts": 2,
                  "warmup_steps": 1, "variants": ["ce", "ce+cs+kd"],
                  "parallel_heads": 2},  # the worker-process path (auto is one process on 2 cores)
    "baselines": {
        "layerskip": {"max_steps": 4, "batch_size": 8, "val_every_steps": 2, "val_batches": 1, "val_decode_prompts": 2,
                      "warmup_steps": 1, "eval_samples": 12},
        "draft_verify": {"prompts": 2, "thresholds": [0.5], "max_skipped": 1, "acceptance_floor": 0.0},
    },
    "ray": {"num_cpus": 2},
    "nas": {"num_samples": 2, "max_steps": 4, "report_every_steps": 2, "val_batches": 1, "val_decode_prompts": 1},
    "sweep": {"train_steps": 4, "captions": 2, "descriptions": 1},
    "evaluate": {"captions": 3, "descriptions": 1, "vqa": 3, "draft_lens": [1, 2]},
}
# The 2-layer e2e model drafts only from layer 1
SWEEP_SPACE = "space:\n  draft_layers: {grid: [1]}\n  loss: {grid: [ce, ce+cs+kd]}\n  draft_len: {grid: [2]}\n"


def _merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def _run(args: list[str], cwd: Path, env: dict) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    work = tmp_path_factory.mktemp("repo")
    for name in ("pipeline", "stages", "experiments", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvc", ".gitignore"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
        else:
            shutil.copy(source, work / name)
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / "experiments/search_spaces/sweep.yaml").write_text(SWEEP_SPACE)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(work), "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    git = ["git", "-c", "user.email=t@t.invalid", "-c", "user.name=t"]
    _run(["git", "init", "-q"], work, env)
    _run([*git, "add", "-A"], work, env)
    _run([*git, "commit", "-qm", "init"], work, env)
    first = _run([str(BIN / "dvc"), "repro"], work, env)
    return work, env, first


def test_repro_runs_both_stages_and_writes_outputs(workspace):
    work, _, log = workspace
    assert "Running stage 'prepare'" in log and "Running stage 'finetune'" in log
    assert (work / "models/finetuned/config.json").exists()
    assert (work / "models/finetuned/tokenizer.json").exists()
    metrics = json.loads((work / "metrics/finetune.json").read_text())
    for key in ("val_loss", "test_cider", "test_blank_cider", "steps"):
        assert key in metrics
    assert metrics["steps"] == 6
    assert (work / "metrics/finetune_loss.csv").read_text().startswith("step,train_loss")
    choice = json.loads((work / "metrics/layer_choice.json").read_text())
    assert choice["chosen_n"] == 1 and (work / "reports/figures/layer_reward.png").stat().st_size > 0
    imitation = json.loads((work / "metrics/imitation.json").read_text())
    assert imitation["draft_layers"] == 1 and imitation["frozen_backbone_unchanged"] is True
    for variant in ("ce", "ce+cs+kd", "mixed"):
        assert (work / "models/imitation" / variant / "model.safetensors").exists()
        assert 0 <= imitation[variant]["val_acceptance_rate"] <= 1
    assert (work / "models/mixed_backbone/config.json").exists()
    for kind in ("concat", "attention"):  # the fusion table's heads: full loss, the other fusions
        assert imitation[f"fusion-{kind}"]["fusion"] == kind and imitation[f"fusion-{kind}"]["variant"] == "ce+cs+kd"
        assert (work / "models/imitation" / f"fusion-{kind}" / "model.safetensors").exists()
    assert "Running stage 'train_baselines'" in log
    assert (work / "models/layerskip/config.json").exists() and (work / "models/layerskip/model.safetensors").exists()
    draft_verify = json.loads((work / "models/draft_verify.json").read_text())
    assert draft_verify["skip_layers"] == [1] and draft_verify["threshold"] == 0.5 and draft_verify["trace"]
    baselines = json.loads((work / "metrics/baselines.json").read_text())
    layerskip = baselines["layerskip"]
    assert layerskip["draft_layers"] == 1 and layerskip["steps"] == 4
    for key in ("val_agreement", "val_acceptance_rate", "val_mean_accepted_length", "full_model_test_cider",
                "finetuned_test_cider", "finetuned_val_acceptance_rate", "seconds_per_step"):
        assert key in layerskip, key
    assert 0 <= layerskip["val_acceptance_rate"] <= 1
    assert baselines["draft_verify"]["skip_layers"] == [1] and baselines["draft_verify"]["meets_floor"] is True
    for key in ("acceptance_rate", "mean_accepted_length", "objective", "cost_ratio"):
        assert key in baselines["draft_verify"], key
    # nas → train_imitation: the searched architecture is the one trained
    assert "Running stage 'nas'" in log and "Running stage 'sweep'" in log
    best = json.loads((work / "models/nas/best_architecture.json").read_text())["architecture"]
    trained = json.loads((work / "models/imitation/ce/config.json").read_text())["architecture"]
    assert all(trained[k] == v for k, v in best.items())
    assert json.loads((work / "metrics/nas.json").read_text())["trials"] == 2
    sweep = json.loads((work / "metrics/sweep.json").read_text())
    assert sweep["trials"] == 2 and sweep["all_lossless"] is True
    assert (work / "reports/figures/sweep_pareto.png").exists() and (work / "plots/sweep_pareto.csv").exists()
    # evaluate → report
    evaluation = json.loads((work / "metrics/evaluate.json").read_text())["methods"]
    for method in ("full model", "draft without imitation", "draft with imitation", "Draft & Verify", "LayerSkip",
                   "ours (ce)", "ours (ce+cs+kd)", "ours, growing d", "ours, mixed schedule", "ours (ce+cs+kd) d=1"):
        assert method in evaluation, method
    for method in ("ours (ce)", "ours (ce+cs+kd)", "ours, growing d", "LayerSkip", "ours, mixed schedule", "Draft & Verify",
                   "ours (ce+cs+kd), concat fusion", "ours (ce+cs+kd), attention fusion"):
        assert evaluation[method]["identical_share"] == 1.0, method
    assert "draft with imitation, attention fusion" in evaluation
    tasks = evaluation["full model"]["tasks"]
    assert {"bleu1", "bleu4", "meteor", "rouge_l", "cider"} <= set(tasks["caption"]) and "vqa_accuracy" in tasks["vqa"]
    assert "spice" in tasks["caption"] or "spice_unavailable" in tasks["caption"]
    report = (work / "reports/results.md").read_text()
    assert "## Table 1" in report and "| ours (ce+cs+kd) |" in report and "## VQA" in report and "## Draft layers n" in report
    fusion_table = report.split("## Fusion strategies")[1]
    assert all(f"| {kind} |" in fusion_table for kind in ("average", "concat", "attention"))
    for figure in ("acceptance_by_position.png", "speedup_by_d.png", "sweep_pareto.png", "layer_reward.png"):
        assert (work / "reports/figures" / figure).stat().st_size > 0 and figure in report, figure


def test_second_repro_is_a_no_op_and_param_change_reruns_only_dependants(workspace):
    work, env, _ = workspace
    again = _run([str(BIN / "dvc"), "repro"], work, env)
    assert "Running stage" not in again
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["finetune"]["max_steps"] = 4
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _run([str(BIN / "dvc"), "repro"], work, env)
    assert "Running stage 'finetune'" in changed and "Running stage 'prepare'" not in changed
    assert "Running stage 'select_layer'" in changed and "Running stage 'train_imitation'" in changed
    assert "Running stage 'train_baselines'" in changed
    assert "Running stage 'nas'" in changed and "Running stage 'sweep'" in changed
    assert json.loads((work / "metrics/finetune.json").read_text())["steps"] == 4


def test_dvc_exp_run_and_metrics_show(workspace):
    work, env, _ = workspace
    git = ["git", "-c", "user.email=t@t.invalid", "-c", "user.name=t"]
    _run([*git, "add", "-A"], work, env)
    _run([*git, "commit", "-qm", "state"], work, env)
    out = _run([str(BIN / "dvc"), "exp", "run", "-S", "finetune.max_steps=3"], work, env)
    assert "Running stage 'finetune'" in out
    shown = _run([str(BIN / "dvc"), "metrics", "show"], work, env)
    assert "metrics/finetune.json" in shown and "test_cider" in shown and "metrics/evaluate.json" in shown
    plots = _run([str(BIN / "dvc"), "plots", "show", "--json"], work, env)
    assert "plots/speedup_by_d.csv" in plots and "plots/acceptance_by_position.csv" in plots
    exps = _run([str(BIN / "dvc"), "exp", "show", "--no-pager", "--csv"], work, env)
    assert "finetune.max_steps" in exps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_mlflow_server_shows_the_finetune_run_with_params_and_loss_curve(workspace):
    work, env, _ = workspace
    port = _free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=fastvlm-ssd") as r:
            experiment = json.load(r)["experiment"]
        runs = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        finetune = [r for r in runs if any(t["key"] == "dvc_stage" and t["value"] == "finetune" for t in r["data"]["tags"])]
        assert finetune, "no finetune run in the store"
        run = finetune[-1]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert "finetune.lr" in params and "model.tiny.num_layers" in params
        with urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/metrics/get-history?run_id={run['info']['run_id']}&metric_key=train/loss"
        ) as r:
            history = json.load(r)["metrics"]
        assert len(history) >= 2  # a curve, not a point
        # train_imitation: one child run per variant under the stage run, with its own agreement metric
        tags = lambda r: {t["key"]: t["value"] for t in r["data"].get("tags", [])}  # noqa: E731
        children = [r for r in runs if tags(r).get("dvc_stage") == "train_imitation" and "mlflow.parentRunId" in tags(r)]
        assert {tags(r)["variant"] for r in children} >= {"ce", "ce+cs+kd", "mixed", "fusion-concat", "fusion-attention"}
        # trained in worker processes: Lightning's logger wrote each head's loss curve into its child run by id
        for child in children:
            assert {"val_agreement", "train/loss"} <= {m["key"] for m in child["data"].get("metrics", [])}, tags(child)["variant"]
            assert child["info"]["status"] == "FINISHED"
        baseline_runs = [r for r in runs if tags(r).get("dvc_stage") == "train_baselines" and "mlflow.parentRunId" in tags(r)]
        assert {tags(r)["variant"] for r in baseline_runs} >= {"layerskip", "draft_verify"}
        # Ray Tune trials: nested under their search's stage run, side by side for the compare view
        evaluated = [r for r in runs if tags(r).get("dvc_stage") == "evaluate" and "mlflow.parentRunId" in tags(r)]
        assert {"full model", "ours (ce+cs+kd)", "LayerSkip"} <= {tags(r).get("method") for r in evaluated}
        for stage, trials in (("nas", 2), ("sweep", 2)):
            parents = [r for r in runs if tags(r).get("dvc_stage") == stage and "mlflow.parentRunId" not in tags(r)]
            nested = [r for r in runs if tags(r).get("mlflow.parentRunId") == parents[-1]["info"]["run_id"]]
            assert len(nested) == trials, stage
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
