"""Stages turn bad input into one clear message and exit code 2, never a library traceback."""

import pytest

from pipeline.errors import ImageError
from stages._common import run_stage


def test_invalid_params_exit_cleanly_listing_fields(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("finetune:\n  optimizer: {lr: -1}\n  batch_size: zero\n  lr: 0.1\nmodel:\n  preset: nope\n")
    with pytest.raises(SystemExit) as info:
        run_stage(lambda params: None, str(bad))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "params.yaml has 4 invalid field(s)" in err
    assert (
        "finetune.optimizer.lr: Input should be greater than 0" in err
        and "finetune.batch_size: Input should be a valid integer" in err
    )
    assert "finetune.lr: unknown key" in err and "model.preset: Value error, unknown preset 'nope'" in err
    assert "Traceback" not in err


def test_pipeline_errors_from_the_stage_body_exit_cleanly(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\n")

    def stage(_):
        raise ImageError("image file not found: data/x.png")

    with pytest.raises(SystemExit) as info:
        run_stage(stage, str(params))
    assert info.value.code == 2 and "data/x.png" in capsys.readouterr().err


def test_a_launch_that_cannot_work_stops_the_stage_in_one_line(tmp_path, capsys):
    from stages import finetune

    params = tmp_path / "params.yaml"
    params.write_text("finetune:\n  trainer: {devices: 4096, strategy: ddp}\n")
    with pytest.raises(SystemExit) as info:
        run_stage(finetune.main, str(params))
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err
    assert err.startswith("error: finetune.trainer.devices is 4096 but this node shows") and "at most" in err


def test_an_unreachable_tracking_server_stops_the_stage_in_one_line(tmp_path, capsys, monkeypatch):
    from stages import prepare

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\n")
    with pytest.raises(SystemExit) as info:
        run_stage(prepare.main, str(params))
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err
    assert "MLflow tracking server http://127.0.0.1:9" in err and "unset MLFLOW_TRACKING_URI" in err
