"""Stages turn bad input into one clear message and exit code 2, never a library traceback."""

import pytest

from pipeline.errors import ImageError
from stages._common import run_stage


def test_invalid_params_exit_cleanly_listing_fields(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("finetune:\n  lr: -1\n  batch_size: zero\nmodel:\n  preset: nope\n")
    with pytest.raises(SystemExit) as info:
        run_stage(lambda params: None, str(bad))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "finetune.lr" in err and "finetune.batch_size" in err and "model.preset" in err
    assert "Traceback" not in err


def test_pipeline_errors_from_the_stage_body_exit_cleanly(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\n")

    def stage(_):
        raise ImageError("image file not found: data/x.png")

    with pytest.raises(SystemExit) as info:
        run_stage(stage, str(params))
    assert info.value.code == 2 and "data/x.png" in capsys.readouterr().err


def test_prepared_data_with_a_missing_image_names_it(tmp_path):
    from pipeline.data.examples import MANIFEST, load_prepared
    from pipeline.data.synthetic import generate_synthetic_dataset
    from pipeline.io import atomic_write_json

    generate_synthetic_dataset(tmp_path, n_train=3, n_val=2, n_test=2, seed=0)
    atomic_write_json(
        tmp_path / MANIFEST,
        {"karpathy_json": "dataset_coco.json", "image_root": "images", "vqa": [], "descriptions_json": None},
    )
    victim = next((tmp_path / "images" / "val").glob("*.png"))
    victim.unlink()
    with pytest.raises(ImageError, match=victim.name):
        load_prepared(tmp_path)
