from pathlib import Path

import pytest
import yaml

from pipeline.config import OptimizerConfig, Params, TrainerConfig, load_params, parse_params
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_are_valid_and_complete():
    params = load_params(ROOT / "params.yaml")
    assert params.model.preset == "tiny-llava"
    # params.yaml spells out every field, so the file is the single place to read the defaults
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert Params.model_validate(raw).model_dump() == Params().model_dump()


def test_every_bad_field_is_listed_at_once():
    raw = {
        "finetune": {"optimizer": {"lr": -1}, "trainer": {"precision": "8-bit"}, "batch_size": 0, "bogus": 1},
        "imitation": {"optimizer": {"warmup_steps": -1}},
        "model": {"tiny": {"hidden_size": 250, "num_heads": 4}},
        "data": {"synthetic": {"min_objects": 5, "max_objects": 2}},
        "typo_section": {},
    }
    with pytest.raises(ConfigError) as info:
        parse_params(raw, source="params.yaml")
    message = str(info.value)
    for field in (
        "finetune.optimizer.lr",
        "finetune.trainer.precision",
        "imitation.optimizer.warmup_steps",
        "finetune.batch_size",
        "finetune.bogus",
        "model.tiny",
        "data.synthetic",
        "typo_section",
    ):
        assert field in message, field
    assert "unknown key" in message
    assert "divisible" in message and "min_objects" in message


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="tiny-llava"):
        parse_params({"model": {"preset": "gpt-5"}})


def test_pretrained_preset_needs_a_path():
    with pytest.raises(ConfigError, match="pretrained_path"):
        parse_params({"model": {"preset": "llava"}})


def test_model_placement_and_untrained_backbones_are_validated():
    parsed = parse_params({"model": {"preset": "tiny-blip2-t5", "dtype": "bfloat16", "device": "cuda:1"}})
    assert (parsed.model.dtype, parsed.model.device) == ("bfloat16", "cuda:1")
    with pytest.raises(ConfigError) as error:
        parse_params({"model": {"dtype": "int8", "device": "tpu"}})
    assert "model.dtype" in str(error.value) and "device must be cpu, mps, cuda or cuda:<index>, got 'tpu'" in str(
        error.value
    )
    with pytest.raises(ConfigError, match=r"finetune\.max_steps 0 keeps a pretrained checkpoint.*'tiny-llava'"):
        parse_params({"finetune": {"max_steps": 0}})
    kept = parse_params({"model": {"preset": "blip2", "pretrained_path": "/m"}, "finetune": {"max_steps": 0}})
    assert kept.finetune.max_steps == 0


def test_real_data_needs_paths():
    with pytest.raises(ConfigError, match="karpathy_json"):
        parse_params({"data": {"source": "files"}})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("finetune: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_dvc_yaml_params_exist_in_params_yaml():
    """A param named in dvc.yaml but missing from params.yaml fails the stage at run time."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in dvc["stages"].items():
        for param in stage.get("params", []):
            node = raw
            for part in param.split("."):
                assert isinstance(node, dict) and part in node, f"stage {name}: {param} not in params.yaml"
                node = node[part]


def test_baselines_section_is_validated():
    with pytest.raises(ConfigError) as info:
        parse_params(
            {
                "baselines": {
                    "layerskip": {"p_max": 1.5, "draft_layers": "deep"},
                    "draft_verify": {"thresholds": [0.5, 1.2], "acceptance_floor": -0.1, "max_skipped": 0},
                }
            }
        )
    message = str(info.value)
    for field in (
        "baselines.layerskip.p_max",
        "baselines.layerskip.draft_layers",
        "baselines.draft_verify.thresholds",
        "baselines.draft_verify.acceptance_floor",
        "baselines.draft_verify.max_skipped",
    ):
        assert field in message, field
    assert parse_params({"baselines": {"layerskip": {"draft_layers": 3}}}).baselines.layerskip.draft_layers == 3


def test_fusion_table_settings_are_validated():
    with pytest.raises(ConfigError, match=r"imitation\.fusion_comparison") as info:
        parse_params({"imitation": {"fusion_comparison": ["concat", "concat"]}})
    assert "at most once" in str(info.value)
    with pytest.raises(ConfigError, match=r"weights\.cs is 0"):
        parse_params({"imitation": {"weights": {"cs": 0.0}}})
    with pytest.raises(ConfigError, match="fusion_comparison"):
        parse_params({"imitation": {"fusion_comparison": ["max"]}})
    assert (
        parse_params({"imitation": {"weights": {"cs": 0.0}, "fusion_comparison": []}}).imitation.fusion_comparison == []
    )


def test_every_training_stage_shares_one_trainer_and_optimizer_type_with_its_own_defaults():
    params = parse_params({"imitation": {"optimizer": {"lr": 0.01}}})
    trainings = (params.finetune, params.imitation, params.baselines.layerskip)
    assert {type(t.optimizer) for t in trainings} == {OptimizerConfig} and {type(t.trainer) for t in trainings} == {
        TrainerConfig
    }
    # a partial nested block keeps the stage's own defaults for the keys it does not name
    assert params.imitation.optimizer == OptimizerConfig(lr=0.01, weight_decay=0.0, warmup_steps=10)
    weights = parse_params({"imitation": {"task_weights": {"caption": 1.0}}}).imitation.task_weights
    assert (weights.caption, weights.description, weights.vqa) == (1.0, 0.3, 0.1)
    assert (params.finetune.optimizer.lr, params.baselines.layerskip.optimizer.lr) == (1e-3, 1e-4)


def test_the_default_heads_train_the_papers_20_epochs_and_the_sweep_reuses_them():
    params = load_params(ROOT / "params.yaml")
    epoch = params.features.train_examples / params.imitation.batch_size
    assert params.imitation.max_steps == round(20 * epoch)
    assert params.sweep.train_steps == params.imitation.max_steps
