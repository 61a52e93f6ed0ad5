import time

import pytest

from pipeline import tracking
from pipeline.errors import TrackingError


def test_default_uri_is_absolute_sqlite_at_repo_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # a Ray trial or stage running in a sub-directory
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking.tracking_uri() == "http://tracking.example:5000"


def test_unreachable_server_fails_fast_naming_it():
    started = time.perf_counter()
    with pytest.raises(TrackingError, match=r"127\.0\.0\.1:9") as info:
        tracking.check_reachable("http://127.0.0.1:9", timeout_s=2)
    assert time.perf_counter() - started < 5
    assert "MLFLOW_TRACKING_URI" in str(info.value)


def test_stage_run_logs_params_tags_and_metrics(monkeypatch, tmp_path):
    import mlflow

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with tracking.stage_run("demo", "exp", {"finetune": {"lr": 0.1}}) as run:
        tracking.log_metrics({"loss": 1.5}, step=3)
    client = mlflow.MlflowClient(tracking.tracking_uri())
    stored = client.get_run(run.info.run_id)
    assert stored.data.params["finetune.lr"] == "0.1"
    assert stored.data.tags["dvc_stage"] == "demo" and "git_commit" in stored.data.tags
    assert stored.data.metrics["loss"] == 1.5
    assert (tmp_path / "mlflow.db").exists()


def test_resumed_search_closes_the_trial_runs_an_interruption_left_running(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracking.stage_run("nas", "resume-test", {}) as parent:
        client = mlflow.MlflowClient(tracking.tracking_uri())
        cut_off = client.create_run(parent.info.experiment_id, tags={"mlflow.parentRunId": parent.info.run_id})
        finished = client.create_run(parent.info.experiment_id, tags={"mlflow.parentRunId": parent.info.run_id})
        client.set_terminated(finished.info.run_id)
        assert tracking.close_stale_children(parent.info.run_id) == 1
    assert client.get_run(cut_off.info.run_id).info.status == "KILLED"
    assert client.get_run(finished.info.run_id).info.status == "FINISHED"
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_child_run_opened_for_a_worker_is_nested_logged_and_closed(monkeypatch, tmp_path):
    import multiprocessing

    import mlflow

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.open_child_run("orphan") is None  # no stage run: nothing to nest under
    with tracking.stage_run("train_imitation", "exp", {}) as parent:
        ok = tracking.open_child_run("ce", {"loss_weights": {"ce": 1.0}}, tags={"kind": "head"})
        bad = tracking.open_child_run("mixed")
        # another process logs into the open run by id, as Lightning's MLflow logger does in a worker
        worker = multiprocessing.get_context("spawn").Process(target=_log_step, args=(tracking.tracking_uri(), ok))
        worker.start()
        worker.join(60)
        assert worker.exitcode == 0
        tracking.close_child_run(ok, {"val_agreement": 0.5})
        tracking.close_child_run(bad, failed=True)
    client = mlflow.MlflowClient(tracking.tracking_uri())
    run = client.get_run(ok)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.data.tags["dvc_stage"] == "train_imitation"
    assert run.data.tags["kind"] == "head" and run.data.params["loss_weights.ce"] == "1.0"
    assert run.data.metrics == {"train/loss": 2.0, "val_agreement": 0.5} and run.info.status == "FINISHED"
    assert client.get_run(bad).info.status == "FAILED"


def _log_step(uri: str, run_id: str) -> None:
    import mlflow

    mlflow.MlflowClient(uri).log_metric(run_id, "train/loss", 2.0, step=1)


def test_nested_run_is_an_active_child_of_the_stage_run(monkeypatch, tmp_path):
    import mlflow

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with tracking.nested_run("outside") as orphan:
        assert orphan is None
    with tracking.stage_run("evaluate", "exp", {}) as parent:
        with tracking.nested_run("full model", {"method": "full model"}, tags={"method": "full model"}) as child:
            tracking.log_metrics({"speedup": 1.0})  # goes to the child, the active run
        assert tracking.active_run_id() == parent.info.run_id
    client = mlflow.MlflowClient(tracking.tracking_uri())
    run = client.get_run(child.info.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.data.tags["dvc_stage"] == "evaluate"
    assert run.data.tags["method"] == "full model" and run.data.tags["variant"] == "full model"
    assert run.data.params == {"method": "full model"} and run.data.metrics == {"speedup": 1.0}
    assert run.info.status == "FINISHED" and run.info.run_name == "full model"
    assert client.get_run(parent.info.run_id).data.metrics == {}


def test_the_experiment_is_a_model_training_experiment(monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient(tracking.tracking_uri())
    older = client.create_experiment("older", artifact_location=(tmp_path / "art").as_uri())  # before the kind tag
    with tracking.stage_run("demo", "fresh", {}):
        pass
    with tracking.stage_run("demo", "older", {}):
        pass
    for name in ("fresh", "older"):
        tags = client.get_experiment_by_name(name).tags
        assert tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development", name
    assert tracking.runs_page("http://127.0.0.1:5000/", older) == (
        f"http://127.0.0.1:5000/#/experiments/{older}/runs?workflowType=machine_learning"
    )


def test_a_registered_draft_loads_back_by_its_models_uri_and_decodes_identically(monkeypatch, tmp_path):
    import mlflow
    import mlflow.pytorch
    import torch

    from pipeline.decoding import SelfSpeculativeDecoder
    from pipeline.models.imitation import ImitationNetwork, as_draft_head, save_imitation
    from pipeline.training.imitation_heads import log_head_model
    from tests.conftest import TINY, make_tiny_llava, make_vlm_inputs

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.manual_seed(0)
    network = ImitationNetwork(TINY.hidden_size).eval()
    for parameter in network.parameters():  # trained-looking weights: the zero-initialised layer would hide a mix-up
        torch.nn.init.normal_(parameter, std=0.3)
    save_imitation(network, tmp_path / "models/imitation/ce+cs+kd", {"draft_layers": 2, "variant": "ce+cs+kd"})
    with tracking.stage_run("train_imitation", "exp", {}):
        run_id = tracking.open_child_run("ce+cs+kd")
        logged = log_head_model(run_id, tmp_path / "models/imitation/ce+cs+kd", "exp")
        tracking.close_child_run(run_id, {"val_agreement": 0.5})
    assert logged == {"registered_model": "models:/exp-imitation-ce-cs-kd/1"}
    client = mlflow.MlflowClient(tracking.tracking_uri())
    assert client.get_run(run_id).info.status == "FINISHED"
    version = client.get_model_version("exp-imitation-ce-cs-kd", "1")
    assert version.run_id == run_id
    info = mlflow.models.get_model_info(logged["registered_model"])
    assert info.metadata["draft_layers"] == 2 and info.metadata["architecture"]["num_linear"] == 2
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, -1, TINY.hidden_size]
    loaded = mlflow.pytorch.load_model(logged["registered_model"])
    model = make_tiny_llava()
    ids, pixels = make_vlm_inputs(batch=1, text_len=4)
    outputs = []
    for head in (network, loaded):
        decoder = SelfSpeculativeDecoder(model, draft_layers=2, head=as_draft_head(head.eval()), draft_len=3)
        out = decoder.generate(ids, max_new_tokens=12, pixel_values=pixels)
        outputs.append((out.sequences.tolist(), out.stats.drafted, out.stats.accepted))
    assert outputs[0] == outputs[1]
    assert outputs[0][1] > outputs[0][2]  # the draft is rejected somewhere: the head shapes what is decoded
