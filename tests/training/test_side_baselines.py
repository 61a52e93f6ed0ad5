"""Draft & Verify's search and the language-only draft beside LayerSkip's training: when they get a worker process
and how many threads each side gets, and what their MLflow child runs end as. (The worker path end to end:
tests/stages/test_dvc_repro.py, on 2 cores.)"""

from __future__ import annotations

import pytest
import torch

from pipeline import tracking
from pipeline.config import TrainerConfig, parse_params
from pipeline.search.skip_layers import SkipSearchResult
from pipeline.training import baselines
from pipeline.training.baselines import (
    DecodingBaselines,
    close_decoding_baselines_runs,
    decoding_baselines_job,
    side_layout,
)
from pipeline.training.language_draft import LanguageDraftResult
from pipeline.training.trainer import torch_threads


@pytest.mark.parametrize(("cpus", "expected"), [(1, None), (2, (1, 1)), (3, (1, 2)), (8, (4, 4))])
def test_a_cpu_run_of_one_process_shares_its_cores_with_the_worker(monkeypatch, cpus, expected):
    monkeypatch.setattr(baselines, "available_cpus", lambda: cpus)
    assert side_layout(TrainerConfig(accelerator="cpu", devices=1)) == expected


def test_an_accelerator_or_ddp_keeps_the_decoding_baselines_after_the_training(monkeypatch):
    monkeypatch.setattr(baselines, "available_cpus", lambda: 8)
    assert side_layout(TrainerConfig(accelerator="gpu", devices=1)) is None
    assert side_layout(TrainerConfig(accelerator="auto", devices=1)) is None
    assert side_layout(TrainerConfig(accelerator="cpu", devices=2, strategy="ddp")) is None


def test_torch_threads_are_set_for_the_block_and_restored_even_on_error():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("training failed")
    assert torch.get_num_threads() == before
    with torch_threads(0):  # 0: left as they are
        assert torch.get_num_threads() == before


def test_the_child_runs_end_finished_with_the_drafts_metrics_or_failed_without_a_result(monkeypatch, tmp_path):
    import mlflow

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = parse_params({})
    found = SkipSearchResult([3], 0.6, 8, 0.8, 2.5, 3.0, 0.7, 1.1, True, 12)
    language = LanguageDraftResult(None, {"trained": True, "val_loss": 0.6, "reason": "text is not logged"})
    with tracking.stage_run("train_baselines", "exp", {}) as parent:
        done = decoding_baselines_job(params, tmp_path / "models/finetuned", threads=1)
        failed = decoding_baselines_job(params, tmp_path / "models/finetuned", threads=1)
        with tracking.resumed_run(done.draft_verify_run):  # as the worker logs the search into its run
            tracking.log_metrics({"objective": 1.1})
        close_decoding_baselines_runs(done, DecodingBaselines(found, language))
        close_decoding_baselines_runs(failed, None)
    client = mlflow.MlflowClient(tracking.tracking_uri())
    assert done.draft_verify_run is not None and done.language_draft_run is not None
    verify, draft = client.get_run(done.draft_verify_run.run_id), client.get_run(done.language_draft_run.run_id)
    assert verify.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert verify.data.tags["variant"] == "draft_verify"
    assert verify.data.metrics == {"objective": 1.1} and verify.info.status == "FINISHED"
    assert draft.data.metrics == {"trained": 1.0, "val_loss": 0.6} and draft.info.status == "FINISHED"
    assert draft.data.params["num_layers"] == str(params.baselines.language_draft.num_layers)
    assert failed.draft_verify_run is not None and failed.language_draft_run is not None
    assert {client.get_run(r.run_id).info.status for r in (failed.draft_verify_run, failed.language_draft_run)} == {
        "FAILED"
    }
