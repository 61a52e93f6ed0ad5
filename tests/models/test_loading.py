import json

import pytest
import torch

from pipeline.errors import ModelLoadError
from pipeline.models.adapters import adapter_for
from pipeline.models.loading import Backbone, load_backbone, save_backbone
from pipeline.models.tiny_llava import tiny_image_processor
from tests.conftest import make_tiny_llava, make_vlm_inputs


@pytest.fixture
def word_tokenizer(tmp_path):
    from pipeline.data.tokenizer import train_word_tokenizer

    return train_word_tokenizer(["a red circle", "a blue square in the center"], tmp_path / "tok")


def test_save_and_load_round_trip(tmp_path, word_tokenizer):
    model = make_tiny_llava()
    save_backbone(Backbone(model, word_tokenizer, tiny_image_processor(16), adapter_for(model)), tmp_path / "m")
    loaded = load_backbone(tmp_path / "m")
    ids, pixels = make_vlm_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(input_ids=ids, pixel_values=pixels).logits, model(input_ids=ids, pixel_values=pixels).logits
        )
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("a red circle", add_special_tokens=False)) == "a red circle"
    assert loaded.adapter.num_layers == 4


def test_weights_that_do_not_fit_the_config_fail_loudly(tmp_path, word_tokenizer):
    model = make_tiny_llava()
    save_backbone(Backbone(model, word_tokenizer, tiny_image_processor(16), adapter_for(model)), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 96  # the saved MLP weights are 64 wide
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ModelLoadError, match=r"the weights in .*/m do not match its config \(mismatched_keys: .*mlp.down_proj.weight"
    ):
        load_backbone(tmp_path / "m")
