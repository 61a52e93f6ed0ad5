"""End to end: `dvc exp run -S model.preset=tiny-blip2-t5` runs the whole pipeline on BLIP-2 with a T5
encoder–decoder in a throwaway copy of the repository (tiny budgets), and `dvc metrics show`, `dvc plots show` and
`dvc exp show` read what it wrote.

Its own module (and workspace) so that it can run beside tests/stages/test_dvc_repro.py on a second pytest-xdist
worker: each is a whole pipeline run of a few minutes.
"""

from __future__ import annotations

import json

import pytest

from pipeline.evaluation.methods import EvaluationPlan
from tests.stages.dvc_workspace import DVC, make_workspace, run
from tests.stages.import_closure import dvc_stages

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    work = tmp_path_factory.mktemp("exp")
    env = make_workspace(work)
    return work, env, run([DVC, "exp", "run", "-S", "model.preset=tiny-blip2-t5"], work, env)


def test_the_experiment_runs_every_stage_on_the_encoder_decoder_losslessly(experiment):
    work, _, log = experiment
    assert all(f"Running stage '{stage}'" in log for stage in dvc_stages(work)), log[-2000:]
    config = json.loads((work / "models/finetuned/config.json").read_text())
    assert config["model_type"] == "blip-2" and config["text_config"]["model_type"] == "t5"
    evaluation = json.loads((work / "metrics/evaluate.json").read_text())
    plan, results = EvaluationPlan.from_dict(evaluation["plan"]), evaluation["methods"]
    verified = [s for s in plan.methods if s.verified]
    assert len(verified) >= 10 and all(results[s.key]["identical_share"] == 1.0 for s in verified), {
        s.label: results[s.key]["identical_share"] for s in verified
    }
    table1 = (work / "reports/results.md").read_text().split("## Table 1")[1].split("##")[0]
    assert all(f"| {s.label} |" in table1 for s in plan.table1())


def test_dvc_reads_the_experiments_metrics_plots_and_params(experiment):
    work, env, _ = experiment
    shown = run([DVC, "metrics", "show"], work, env)
    assert "metrics/finetune.json" in shown and "test_cider" in shown and "metrics/evaluate.json" in shown
    plots = run([DVC, "plots", "show", "--json"], work, env)
    assert "plots/speedup_by_d.csv" in plots and "plots/acceptance_by_position.csv" in plots
    exps = run([DVC, "exp", "show", "--no-pager", "--csv"], work, env)
    assert "model.preset" in exps and "tiny-blip2-t5" in exps
