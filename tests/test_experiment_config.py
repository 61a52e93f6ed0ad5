"""Experiment configs for the real checkpoints merge into params.yaml: valid, comments kept, nothing written when the
merge would be invalid."""

from __future__ import annotations

import shutil

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import load_params
from pipeline.errors import ConfigError
from pipeline.experiment_config import apply_config
from tests.conftest import ROOT

CONFIGS = [ROOT / f"experiments/configs/{name}.yaml" for name in ("blip2-flan-t5-xl", "blip2-opt-2.7b", "llava-1.5-7b")]


def test_the_three_paper_checkpoints_have_configs():
    assert all(config.is_file() for config in CONFIGS)


def test_the_tiny_and_cluster_configs_merge_into_valid_params(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_config(ROOT / "experiments/configs/tiny.yaml", params)
    apply_config(ROOT / "experiments/configs/cluster.yaml", params)
    merged = load_params(params)
    assert merged.model.tiny.num_layers == 2 and merged.evaluate.trainer.devices == 2


def test_the_long_config_restores_the_larger_default_sizes_and_nothing_else(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_config(ROOT / "experiments/configs/long.yaml", params)
    merged, default = load_params(params), load_params(ROOT / "params.yaml")
    # 20 epochs of the cached examples either way, and the sweep still reuses train_imitation's heads
    assert merged.imitation.max_steps == 20 * merged.features.train_examples // merged.imitation.batch_size
    assert merged.sweep.train_steps == merged.imitation.max_steps > default.imitation.max_steps
    assert merged.finetune.max_steps > default.finetune.max_steps
    assert merged.evaluate.captions > default.evaluate.captions
    assert merged.model == default.model and merged.data == default.data and merged.decoding == default.decoding


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_each_config_applies_to_the_repository_params(tmp_path, config):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    changed = apply_config(config, params)
    merged = load_params(params)
    assert merged.model.preset in ("llava", "blip2") and merged.model.dtype == "bfloat16"
    assert merged.data.source == "files" and merged.finetune.max_steps == 0 and merged.imitation.max_steps == 70820
    assert "model.pretrained_path" in changed and "seed" not in changed
    # untouched settings keep their values and params.yaml keeps its documentation
    assert merged.decoding == load_params(ROOT / "params.yaml").decoding
    text = params.read_text()
    assert "# Every knob of the pipeline." in text and "descriptions_json: null" in text
    assert yaml.safe_load(config.read_text())["model"]["pretrained_path"] in text


def test_an_invalid_merge_writes_nothing_and_lists_every_bad_field(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    before = params.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {dtype: int4, preset: nope}\nfinetune: {max_steps: -1}\n")
    with pytest.raises(ConfigError) as error:
        apply_config(bad, params)
    assert all(field in str(error.value) for field in ("model.dtype", "model.preset", "finetune.max_steps"))
    assert params.read_text() == before


def test_the_command_line_applies_a_config(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    assert main(["apply-config", str(CONFIGS[0]), "--params", str(params)]) == 0
    assert "model.pretrained_path" in capsys.readouterr().out
    assert main(["apply-config", str(tmp_path / "missing.yaml"), "--params", str(params)]) == 2
    assert "missing.yaml not found" in capsys.readouterr().err
