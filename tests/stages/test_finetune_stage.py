"""The finetune stage's choice of which backbones get their vision tower pre-trained."""

import pytest
import torch

from pipeline.config import parse_params
from pipeline.errors import ConfigError
from stages.finetune import vision_pretraining
from tests.conftest import tiny_backbone


@pytest.mark.parametrize(
    ("preset", "steps", "pretrains"),
    [("tiny-llava", 3, True), ("tiny-blip2-t5", 3, True), ("tiny-llava", 0, False), ("llava", 3, False)],
)
def test_the_stage_pretrains_only_a_tower_built_from_scratch(tiny_data, preset, steps, pretrains):
    splits, tokenizer = tiny_data
    raw = {"model": {"preset": preset}, "finetune": {"vision_pretraining": {"max_steps": steps, "batch_size": 8}}}
    if preset == "llava":  # a checkpoint brings its own pretrained CLIP; a tiny stand-in of the same class here
        raw["model"]["pretrained_path"] = "/checkpoint"
    backbone = tiny_backbone(tokenizer, "tiny-llava" if preset == "llava" else preset, num_layers=2)
    before = {k: v.clone() for k, v in backbone.adapter.vision_encoder.state_dict().items()}
    run = vision_pretraining(backbone, splits, parse_params(raw))
    assert (run is not None) == pretrains
    if run is not None:
        assert run()["vision_pretraining_steps"] == steps
        after = backbone.adapter.vision_encoder.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("pretraining", "trainer", "message"),
    [
        ({"batch_size": 64}, {}, "finetune.vision_pretraining.batch_size is 64 but the training split has 24 images"),
        ({"batch_size": 9}, {"devices": 2, "strategy": "ddp"}, "batch_size 9 does not divide among the 2 processes"),
    ],
)
def test_a_pretraining_batch_that_cannot_run_is_a_config_error_naming_it(tiny_data, pretraining, trainer, message):
    splits, tokenizer = tiny_data
    raw = {"finetune": {"vision_pretraining": pretraining, "trainer": trainer}}
    with pytest.raises(ConfigError, match=message):
        vision_pretraining(tiny_backbone(tokenizer, num_layers=2), splits, parse_params(raw))
