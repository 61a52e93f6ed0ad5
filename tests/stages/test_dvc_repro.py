"""End to end: `dvc repro` on a tiny configuration in a throwaway copy of the repository.

Checks what the README promises: the stages run, a second repro is a no-op, a param change
re-runs only what depends on it, and the MLflow
store (read through a real `mlflow server`) holds the fine-tune run with its params and loss curve. (`dvc exp run -S`
with another preset: tests/stages/test_dvc_exp_run.py.)
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import load_params
from pipeline.evaluation.methods import EvaluationPlan, hf_generate
from pipeline.report import series
from tests.conftest import teacher_top1_agreement
from tests.stages.dvc_workspace import BIN, DVC, make_workspace, run
from tests.stages.import_closure import dvc_stages, stage_code

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    work = tmp_path_factory.mktemp("repo")
    env = make_workspace(work)
    return work, env, run([DVC, "repro"], work, env)


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
    # ... on the fine-tuned model's own greedy text: every cached target is the teacher's top choice
    assert features["targets"] == "generated"
    assert teacher_top1_agreement(work / "data/features/train", 1) == 1.0
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
    nas = json.loads((work / "metrics/nas.json").read_text())
    assert nas["trials"] == 2 and nas["cost"] == "latency"
    # on the local instance the stage timed every architecture of the space that runs differently (dropout does not)
    # before the search; each trial is priced by its architecture's measured draft step (params' default) and scored
    # with that price
    from pipeline.config import ImitationArchitecture
    from pipeline.search.nas import latency_key, space_architectures
    from pipeline.search.space import load_search_space

    params = load_params(work / "params.yaml")
    base = params.imitation.architecture
    space = space_architectures(load_search_space(work / params.nas.search_space), base)
    assert space is not None and len(space) > 2
    assert nas["latency_timed_by"] == "stage" and set(nas["latency_prices"]) == {latency_key(a) for a in space}
    for trial in csv.DictReader((work / "reports/nas_trials.csv").open()):
        sampled = {k.removeprefix("config."): yaml.safe_load(v) for k, v in trial.items() if k.startswith("config.")}
        key = latency_key(ImitationArchitecture.model_validate(base.model_dump() | sampled))
        assert float(trial["draft_cost_ratio"]) == float(trial["latency_cost_ratio"]) == nas["latency_prices"][key]
        assert float(trial["latency_cost_ratio"]) != float(trial["flops_cost_ratio"])
        assert float(trial["score"]) == pytest.approx(float(trial["agreement"]) - float(trial["latency_cost_ratio"]))
    sweep = json.loads((work / "metrics/sweep.json").read_text())
    assert sweep["trials"] == sweep["settings"] == 2 and sweep["all_lossless"] is True and sweep["failed_trials"] == 0
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
    # the split's prompts are evaluate's params (SMALL: 6 captions, 2 descriptions, 6 questions; 3 + 1 + 3 timed)
    assert evaluation["prompts"] == {"caption": 6, "description": 2, "vqa": 6}
    assert evaluation["timed_prompts"] == {"caption": 3, "description": 1, "vqa": 3}
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
    # the prefill, timed as a first-token-only decode, is split off the rows that share it: not off model.generate's
    assert results[plan.reference.key]["decode_speedup"] == 1.0
    assert all("decode_speedup" in results[s.key] for s in plan.ours())
    assert "decode_speedup" not in results[hf_generate().key]
    expected = report.split("## Measured vs expected")[1].split("\n## ")[0]
    main_row = next(line for line in expected.splitlines() if line.startswith(f"| {plan.main.label} |"))
    assert "measured, decode phase" in expected and f"| {main['decode_speedup']:.2f}× |" in main_row
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
        return set(json.loads(run([DVC, "status", "--json"], work, env)))
    finally:
        path.write_text(original)


def test_second_repro_is_a_no_op_and_an_edit_or_param_change_stales_only_its_stages(workspace):
    work, env, _ = workspace
    again = run([DVC, "repro"], work, env)
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
    # only once those change); dvc status names them without re-running a stage (evaluate reading its params is
    # checked on the first repro's outputs)
    original = (work / "params.yaml").read_text()
    for section, key, value, stage in (
        ("finetune", "max_steps", 4, "finetune"),
        ("evaluate", "vqa", 4, "evaluate"),
        ("layer_choice", "mu", 0.25, "select_layer"),
    ):
        params = yaml.safe_load(original)
        params[section][key] = value
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        stale = set(json.loads(run([DVC, "status", "--json"], work, env)))
        assert stale == {stage}, (section, stale)
    (work / "params.yaml").write_text(original)


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
        assert {tags(r)["variant"] for r in baseline_runs} >= {"layerskip", "draft_verify", "language_draft"}
        # Draft & Verify and the language-only draft ran in a worker beside LayerSkip (2 cores): each logged into the
        # child run the stage opened for it by id, and the stage closed it
        logged = {tags(r)["variant"]: {m["key"] for m in r["data"].get("metrics", [])} for r in baseline_runs}
        assert {"objective", "acceptance_rate"} <= logged["draft_verify"], logged
        assert {"train/loss", "val_loss", "trained"} <= logged["language_draft"], logged
        assert all(r["info"]["status"] == "FINISHED" for r in baseline_runs)
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
