"""End to end: `dvc repro` on a tiny configuration in a throwaway copy of the repository.

Checks what the README promises: the stages run, a second repro is a no-op, a param change
re-runs only what depends on it, `dvc exp run -S` and `dvc metrics show` work, and the MLflow
store (read through a real `mlflow server`) holds the fine-tune run with its params and loss curve.
"""

from __future__ import annotations

import csv
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
import torch
import yaml

from pipeline.config import load_params
from pipeline.evaluation.methods import EvaluationPlan
from pipeline.report import series
from tests.conftest import ROOT, TINY
from tests.stages.import_closure import dvc_stages, stage_code

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

# The shared tiny model with two decoder layers (n = 1 is the only draft depth), and small budgets everywhere
SMALL = {
    "data": {"synthetic": {"n_train": 48, "n_val": 12, "n_test": 12}},
    "model": {"tiny": {**TINY.model_dump(), "num_layers": 2}},
    "finetune": {
        "max_steps": 6,
        "batch_size": 8,
        "val_every_steps": 3,
        "val_batches": 1,
        "optimizer": {"warmup_steps": 1},
        "eval_samples": 12,
        "eval_batch_size": 12,
        "eval_max_new_tokens": 8,
    },
    "layer_choice": {"val_examples": 12, "batch_size": 12},
    "imitation": {
        "max_steps": 4,
        "batch_size": 8,
        "val_every_steps": 2,
        "val_batches": 1,
        "val_decode_prompts": 2,
        "optimizer": {"warmup_steps": 1},
        "variants": ["ce", "ce+cs+kd"],
        "parallel_heads": 2,
        "mixed": {"max_steps": 4},
    },  # the worker-process path (auto is one process on 2 cores)
    "features": {"train_examples": 24, "val_examples": 8, "batch_size": 8},
    "baselines": {
        "layerskip": {
            "max_steps": 4,
            "batch_size": 8,
            "val_every_steps": 2,
            "val_batches": 1,
            "val_decode_prompts": 2,
            "optimizer": {"warmup_steps": 1},
            "eval_samples": 12,
        },
        "draft_verify": {"prompts": 2, "thresholds": [0.5], "max_skipped": 1, "acceptance_floor": 0.0},
        "language_draft": {
            "num_layers": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "max_steps": 4,
            "batch_size": 8,
            "val_every_steps": 2,
            "val_batches": 1,
            "optimizer": {"warmup_steps": 1},
        },
    },
    "ray": {"num_cpus": 2},
    "nas": {"num_samples": 2, "max_steps": 4, "report_every_steps": 2, "val_batches": 1, "val_decode_prompts": 1},
    "sweep": {"train_steps": 4, "captions": 2, "descriptions": 1},
    "evaluate": {
        "batch_size": 4,
        "captions": 6,
        "descriptions": 2,
        "vqa": 6,
        "speed": {"captions": 3, "descriptions": 1, "vqa": 3},
        "draft_lens": [1, 3],
        "hf_assisted": True,
    },
    # three repros here would log and register six models each: the cluster-mode test checks registration end to end
    "tracking": {"register_models": False},
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
    for name in (
        "pipeline",
        "stages",
        "experiments",
        "dvc.yaml",
        "params.yaml",
        "pyproject.toml",
        ".dvc",
        ".gitignore",
    ):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
        else:
            shutil.copy(source, work / name)
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), SMALL)
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


def test_repro_runs_every_stage_and_writes_outputs(workspace):
    work, _, log = workspace
    for stage in dvc_stages():
        assert f"Running stage '{stage}'" in log, stage
    metrics = json.loads((work / "metrics/finetune.json").read_text())
    assert metrics["steps"] == 6 and metrics["resumed"] == 0
    curve = list(csv.DictReader((work / "metrics/finetune_loss.csv").open()))
    assert [int(r["step"]) for r in curve] == [1, 2, 3, 4, 5, 6]
    assert metrics["train_loss_last50"] == pytest.approx(sum(float(r["train_loss"]) for r in curve) / 6)
    choice = json.loads((work / "metrics/layer_choice.json").read_text())
    assert (
        choice["chosen_n"] == 1
        and choice["layers"] == [1]
        and (work / "reports/figures/layer_reward.png").stat().st_size > 0
    )


def test_trained_heads_are_the_ones_measured_and_the_frozen_backbone_stays_frozen(workspace):
    from pipeline.data.prepared import load_prepared
    from pipeline.evaluation.prompts import validation_prompts
    from pipeline.models.imitation import load_imitation
    from pipeline.models.loading import load_backbone
    from pipeline.training.imitation import decode_acceptance
    from pipeline.training.imitation_heads import weights_fingerprint

    work, _, _ = workspace
    imitation = json.loads((work / "metrics/imitation.json").read_text())
    assert imitation["draft_layers"] == 1 and imitation["frozen_backbone_unchanged"] is True
    assert {k for k, v in imitation.items() if isinstance(v, dict) and "variant" in v} == {
        "ce",
        "ce+cs+kd",
        "fusion-concat",
        "fusion-attention",
        "mixed",
    }
    for kind in ("concat", "attention"):  # the fusion table's heads: full loss, the other fusions
        assert imitation[f"fusion-{kind}"]["fusion"] == kind and imitation[f"fusion-{kind}"]["variant"] == "ce+cs+kd"
    # the acceptance train_imitation reports is what the saved head achieves on the same validation prompts
    params = load_params(work / "params.yaml")
    finetuned = load_backbone(work / "models/finetuned")
    val = load_prepared(work / "data/prepared")["val"]
    prompts = validation_prompts(val, finetuned.prompt_builder(params.data.prompts), finetuned.image_processor, 2)
    head, extra = load_imitation(work / "models/imitation/ce+cs+kd")
    with torch.no_grad():
        stats = decode_acceptance(finetuned.model, head, extra["draft_layers"], prompts)
    assert stats.acceptance_rate == pytest.approx(imitation["ce+cs+kd"]["val_acceptance_rate"])
    # the mixed schedule trained its backbone; LayerSkip trained its own copy
    reference = weights_fingerprint(finetuned.model)
    assert weights_fingerprint(load_backbone(work / "models/mixed_backbone").model) != reference
    assert weights_fingerprint(load_backbone(work / "models/layerskip").model) != reference
    # the frozen heads trained from the features stage's cache (n = 1), the mixed schedule end to end
    features = json.loads((work / "metrics/features.json").read_text())
    assert features["draft_layers"] == [1] and 20 <= features["train_examples"] <= 24
    assert (work / "data/features/train/layer_1.npy").exists()
    assert {k: imitation[k]["from_feature_cache"] for k in ("ce", "ce+cs+kd", "fusion-concat", "mixed")} == {
        "ce": 1.0,
        "ce+cs+kd": 1.0,
        "fusion-concat": 1.0,
        "mixed": 0.0,
    }
    assert imitation["mixed"]["steps"] == 4 and imitation["ce"]["steps"] == 4
    # nas → train_imitation: the searched architecture is the one trained
    best = json.loads((work / "models/nas/best_architecture.json").read_text())["architecture"]
    assert json.loads((work / "models/imitation/ce/config.json").read_text())["architecture"] == best


def test_baselines_and_searches_report_what_they_found(workspace):
    work, _, _ = workspace
    draft_verify = json.loads((work / "models/draft_verify.json").read_text())
    assert draft_verify["skip_layers"] == [1] and draft_verify["threshold"] == 0.5 and len(draft_verify["trace"]) == 1
    baselines = json.loads((work / "metrics/baselines.json").read_text())
    assert baselines["draft_verify"] == {k: v for k, v in draft_verify.items() if k != "trace"}
    layerskip = baselines["layerskip"]
    assert layerskip["draft_layers"] == 1 and layerskip["steps"] == 4 and layerskip["layers_dropped"] >= 0
    assert json.loads((work / "metrics/nas.json").read_text())["trials"] == 2
    sweep = json.loads((work / "metrics/sweep.json").read_text())
    assert sweep["trials"] == 2 and sweep["all_lossless"] is True and sweep["failed_trials"] == 0
    pareto = list(csv.DictReader((work / "plots/sweep_pareto.csv").open()))
    assert {(r["method"], r["setting"]) for r in pareto} == {
        ("ssd", "n=1 ce d=2"),
        ("ssd", "n=1 ce+cs+kd d=2"),
        ("draft_only", "draft n=1 ce"),
        ("draft_only", "draft n=1 ce+cs+kd"),
    }


def test_evaluate_and_report_agree_with_each_other(workspace):
    work, _, _ = workspace
    evaluation = json.loads((work / "metrics/evaluate.json").read_text())
    plan, results = EvaluationPlan.from_dict(evaluation["plan"]), evaluation["methods"]
    assert set(results) == {s.key for s in plan.methods}
    assert results[plan.reference.key]["speedup"] == 1.0
    assert {s.label for s in plan.table1()} == {
        "full model",
        "model.generate",
        "draft without imitation",
        "draft with imitation",
        "Draft & Verify",
        "language-only draft model",
        "language-only draft model (HF assistant_model)",
        "LayerSkip",
        "ours (ce)",
        "ours (ce+cs+kd)",
        "ours, growing d",
        "ours, mixed schedule",
    }
    verified = [s for s in plan.methods if s.verified]
    assert len(verified) >= 10 and all(results[s.key]["identical_share"] == 1.0 for s in verified), {
        s.label: results[s.key]["identical_share"] for s in verified
    }
    tasks = results[plan.reference.key]["tasks"]
    assert {"bleu1", "bleu4", "meteor", "rouge_l", "cider"} <= set(tasks["caption"]) and "vqa_accuracy" in tasks["vqa"]
    assert "spice" in tasks["caption"] or "spice_unavailable" in tasks["caption"]
    # the plots files hold exactly the series the report draws
    by_d = [{k: float(v) for k, v in r.items()} for r in csv.DictReader((work / "plots/speedup_by_d.csv").open())]
    assert by_d == [{k: float(v) for k, v in r.items()} for r in series.speedup_by_draft_len(plan, results)]
    # evaluate's d is the sweep's fastest (decoding.draft_len: auto; the sweep's only d is 2), beside draft_lens'
    sweep = json.loads((work / "metrics/sweep.json").read_text())
    assert plan.draft_len == sweep["draft_len_by_layers"][str(plan.draft_layers)] == 2
    assert [r["d"] for r in by_d] == [1.0, 2.0, 3.0]
    acceptance = list(csv.DictReader((work / "plots/acceptance_by_position.csv").open()))
    assert {r["key"] for r in acceptance} == {s.key for s in plan.ours()}
    by_context = list(csv.DictReader((work / "plots/acceptance_by_context.csv").open()))
    assert by_context == [{k: str(v) for k, v in r.items()} for r in series.acceptance_by_context(plan, results)] and {
        r["key"] for r in by_context
    } == {s.key for s in plan.ours()}
    report = (work / "reports/results.md").read_text()
    table1 = report.split("## Table 1")[1].split("##")[0]
    assert [line.split(" | ")[0].removeprefix("| ") for line in table1.splitlines() if line.startswith("| ")][1:] == [
        s.label for s in plan.table1()
    ]
    main = results[plan.main.key]
    assert (
        f"| {plan.main.label} |" in table1
        and f"| {main['speedup']:.2f}× |" in table1.split(f"| {plan.main.label} |")[1].splitlines()[0]
    )
    assert "## VQA" in report and "## Draft layers n" in report
    fusion_table = report.split("## Fusion strategies")[1]
    assert all(f"| {kind} |" in fusion_table for kind in ("average", "concat", "attention"))
    figures = ("acceptance_by_context.png", "acceptance_by_position.png", "speedup_by_d.png", "sweep_pareto.png")
    for figure in (*figures, "layer_reward.png"):
        assert (work / "reports/figures" / figure).stat().st_size > 0 and figure in report, figure


def _stale_stages(work: Path, env: dict, edited: str) -> set[str]:
    """The stages `dvc status` reports as changed after appending a comment to `edited` (then restored)."""
    path = work / edited
    original = path.read_text()
    path.write_text(original + "\n# edited\n")
    try:
        return set(json.loads(_run([str(BIN / "dvc"), "status", "--json"], work, env)))
    finally:
        path.write_text(original)


def test_second_repro_is_a_no_op_and_param_change_reruns_only_dependants(workspace):
    work, env, _ = workspace
    again = _run([str(BIN / "dvc"), "repro"], work, env)
    assert "Running stage" not in again
    # an edit reaches every stage whose code imports the edited module, and no other
    every = set(dvc_stages(work))
    assert _stale_stages(work, env, "pipeline/config.py") == every
    decoding = {stage for stage in every if "pipeline/decoding/engine.py" in stage_code(stage).files()}
    assert decoding >= {"nas", "train_imitation", "train_baselines", "sweep", "evaluate"}
    assert not decoding & {"prepare", "finetune"}
    assert _stale_stages(work, env, "pipeline/decoding/engine.py") == decoding
    assert _stale_stages(work, env, "pipeline/report/tables.py") == {"report"}
    # a param reaches the stages that declare it (their downstream follows from the outputs, as dvc status shows
    # only once those change): an upstream one is seen by dvc status, a downstream one re-runs just its stages
    original = (work / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["finetune"]["max_steps"] = 4
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(json.loads(_run([str(BIN / "dvc"), "status", "--json"], work, env))) == {"finetune"}
    params["finetune"]["max_steps"] = yaml.safe_load(original)["finetune"]["max_steps"]
    params["evaluate"]["vqa"] = 4
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = _run([str(BIN / "dvc"), "repro"], work, env)
    assert "Running stage 'evaluate'" in changed and "Running stage 'report'" in changed
    assert not [s for s in every - {"evaluate", "report"} if f"Running stage '{s}'" in changed], changed[-2000:]
    assert json.loads((work / "metrics/evaluate.json").read_text())["prompts"]["vqa"] == 4


def test_dvc_exp_run_switches_to_the_encoder_decoder_preset_and_metrics_show(workspace):
    """`dvc exp run -S model.preset=tiny-blip2-t5` runs the whole pipeline on BLIP-2 with a T5 encoder–decoder."""
    work, env, _ = workspace
    git = ["git", "-c", "user.email=t@t.invalid", "-c", "user.name=t"]
    _run([*git, "add", "-A"], work, env)
    _run([*git, "commit", "-qm", "state"], work, env)
    out = _run([str(BIN / "dvc"), "exp", "run", "-S", "model.preset=tiny-blip2-t5"], work, env)
    assert all(f"Running stage '{stage}'" in out for stage in dvc_stages(work)), out[-2000:]
    config = json.loads((work / "models/finetuned/config.json").read_text())
    assert config["model_type"] == "blip-2" and config["text_config"]["model_type"] == "t5"
    evaluation = json.loads((work / "metrics/evaluate.json").read_text())
    plan, results = EvaluationPlan.from_dict(evaluation["plan"]), evaluation["methods"]
    verified = [s for s in plan.methods if s.verified]
    assert len(verified) >= 10 and all(results[s.key]["identical_share"] == 1.0 for s in verified)
    table1 = (work / "reports/results.md").read_text().split("## Table 1")[1].split("##")[0]
    assert all(f"| {s.label} |" in table1 for s in plan.table1())
    shown = _run([str(BIN / "dvc"), "metrics", "show"], work, env)
    assert "metrics/finetune.json" in shown and "test_cider" in shown and "metrics/evaluate.json" in shown
    plots = _run([str(BIN / "dvc"), "plots", "show", "--json"], work, env)
    assert "plots/speedup_by_d.csv" in plots and "plots/acceptance_by_position.csv" in plots
    exps = _run([str(BIN / "dvc"), "exp", "show", "--no-pager", "--csv"], work, env)
    assert "model.preset" in exps and "tiny-blip2-t5" in exps


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
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{work / 'mlflow.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
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
        finetune = [
            r for r in runs if any(t["key"] == "dvc_stage" and t["value"] == "finetune" for t in r["data"]["tags"])
        ]
        assert finetune, "no finetune run in the store"
        run = finetune[-1]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["finetune.optimizer.lr"] == "0.001" and params["model.tiny.num_layers"] == "2"
        with urllib.request.urlopen(
            f"{base}/api/2.0/mlflow/metrics/get-history?run_id={run['info']['run_id']}&metric_key=train/loss"
        ) as r:
            history = json.load(r)["metrics"]
        assert len(history) >= 2  # a curve, not a point
        # train_imitation: one child run per variant under the stage run, with its own agreement metric
        tags = lambda r: {t["key"]: t["value"] for t in r["data"].get("tags", [])}  # noqa: E731
        children = [
            r for r in runs if tags(r).get("dvc_stage") == "train_imitation" and "mlflow.parentRunId" in tags(r)
        ]
        assert {tags(r)["variant"] for r in children} >= {
            "ce",
            "ce+cs+kd",
            "mixed",
            "fusion-concat",
            "fusion-attention",
        }
        # trained in worker processes: Lightning's logger wrote each head's loss curve into its child run by id
        for child in children:
            assert {"val_agreement", "train/loss"} <= {m["key"] for m in child["data"].get("metrics", [])}, tags(child)[
                "variant"
            ]
            assert child["info"]["status"] == "FINISHED"
        baseline_runs = [
            r for r in runs if tags(r).get("dvc_stage") == "train_baselines" and "mlflow.parentRunId" in tags(r)
        ]
        assert {tags(r)["variant"] for r in baseline_runs} >= {"layerskip", "draft_verify"}
        # evaluate: one child run per method of the plan, under the latest evaluate run (dvc exp run made another)
        parent = max(
            (r for r in runs if tags(r).get("dvc_stage") == "evaluate" and "mlflow.parentRunId" not in tags(r)),
            key=lambda r: int(r["info"]["start_time"]),
        )
        evaluated = [r for r in runs if tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
        plan = EvaluationPlan.from_dict(json.loads((work / "metrics/evaluate.json").read_text())["plan"])
        assert sorted(tags(r).get("method") for r in evaluated) == sorted(s.key for s in plan.methods)
        assert {r["info"]["run_name"] for r in evaluated} == {s.label for s in plan.methods}
        # Ray Tune trials: nested under their search's stage run, side by side for the compare view
        for stage, trials in (("nas", 2), ("sweep", 2)):
            parents = [r for r in runs if tags(r).get("dvc_stage") == stage and "mlflow.parentRunId" not in tags(r)]
            nested = [r for r in runs if tags(r).get("mlflow.parentRunId") == parents[-1]["info"]["run_id"]]
            assert len(nested) == trials, stage
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
