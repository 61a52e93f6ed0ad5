"""Pretrained checkpoints from local directories in the hub's layout: the model, its processor and chat template load
together, prompts come from the checkpoint's own processor, decoding is lossless on them, and an incomplete or
unsupported directory fails at load with one error naming everything that is missing."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pipeline.config import PromptConfig
from pipeline.data.prompts import ProcessorPromptBuilder, blank_image
from pipeline.decoding import SelfSpeculativeDecoder
from pipeline.errors import ModelLoadError
from pipeline.models.loading import load_backbone, save_backbone
from tests.models.hub_checkpoints import write_blip2_checkpoint, write_llava_checkpoint

FAMILIES = {
    "llava-1.5-7b-hf": lambda path: write_llava_checkpoint(path),
    "blip2-opt-2.7b": lambda path: write_blip2_checkpoint(path, "opt"),
    "blip2-flan-t5-xl": lambda path: write_blip2_checkpoint(path, "t5"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return {name: write(root / name) for name, write in FAMILIES.items()}


def _prompt(backbone, task="vqa", question="what colour is the square ?"):
    builder = backbone.prompt_builder(PromptConfig())
    ids = torch.tensor([builder.prompt_ids(task, question)])
    pixels = backbone.image_processor(images=[blank_image(backbone.image_processor)], return_tensors="pt")
    return builder, ids, pixels["pixel_values"].to(torch.float64)


def test_llava_prompts_follow_the_checkpoints_chat_template(checkpoints):
    backbone = load_backbone(checkpoints["llava-1.5-7b-hf"])
    builder, ids, _ = _prompt(backbone)
    assert isinstance(builder, ProcessorPromptBuilder)
    words = backbone.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    image = backbone.model.config.image_token_id
    assert words[:3] == ["<s>", "USER", ":"] and words[-2:] == ["ASSISTANT", ":"]
    # the processor expands the template's one <image> into the model's 4 image tokens, in one run
    assert (ids[0] == image).sum() == 4 and words[3:7] == ["<image>"] * 4
    assert "what colour is the square ?" in backbone.tokenizer.decode(ids[0].tolist())


def test_blip2_prompts_put_the_query_tokens_first_as_its_processor_does(checkpoints):
    for name, last in (("blip2-opt-2.7b", None), ("blip2-flan-t5-xl", "</s>")):
        backbone = load_backbone(checkpoints[name])
        _, ids, _ = _prompt(backbone, "caption")
        tokens = backbone.tokenizer.convert_ids_to_tokens(ids[0].tolist())
        assert tokens[:4] == ["<image>"] * 4, name
        if last:  # T5's tokenizer ends the encoder's prompt with </s>
            assert tokens[-1] == last
        else:  # OPT's prepends its BOS (</s>) after the queries
            assert tokens[4] == "</s>"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_decoding_a_checkpoint_with_its_own_prompts_is_lossless(checkpoints, name):
    backbone = load_backbone(checkpoints[name], dtype="float64")
    assert backbone.model.dtype == torch.float64 or name.startswith("blip2")  # BLIP-2 keeps its Q-Former in fp32
    _, ids, pixels = _prompt(backbone)
    with torch.no_grad():
        expected = backbone.model.generate(
            input_ids=ids, pixel_values=pixels, max_new_tokens=10, do_sample=False, eos_token_id=[]
        )
    for n in (1, 2):
        out = SelfSpeculativeDecoder(backbone.model, n, draft_len=3).generate(ids, 10, [], pixel_values=pixels)
        assert torch.equal(out.sequences, expected), (name, n)


def test_a_saved_pretrained_backbone_keeps_its_processor(checkpoints, tmp_path):
    backbone = load_backbone(checkpoints["llava-1.5-7b-hf"])
    save_backbone(backbone, tmp_path / "finetuned")
    again = load_backbone(tmp_path / "finetuned")
    assert _prompt(again)[1].tolist() == _prompt(backbone)[1].tolist()
    assert again.processor is not None and again.processor.chat_template == backbone.processor.chat_template


def test_an_incomplete_checkpoint_names_every_missing_part(checkpoints, tmp_path):
    broken = tmp_path / "llava"
    shutil.copytree(checkpoints["llava-1.5-7b-hf"], broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(
        ModelLoadError, match=r"incomplete llava checkpoint: missing weights \(one of model\.safetensors"
    ):
        load_backbone(broken)
    (broken / "tokenizer.json").unlink()
    processor = json.loads((broken / "processor_config.json").read_text())
    del processor["image_processor"]
    (broken / "processor_config.json").write_text(json.dumps(processor))
    with pytest.raises(ModelLoadError) as error:
        load_backbone(broken)
    message = str(error.value)
    assert "missing weights" in message and "a tokenizer (one of tokenizer.json" in message
    assert "an image processor (preprocessor_config.json" in message and "\n" not in message


def test_an_unsupported_or_broken_directory_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match=r"absent is not a Hugging Face model directory \(no config\.json\)"):
        load_backbone(tmp_path / "absent")
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelLoadError, match=r"model_type 'gpt2' is not supported; supported: \['blip-2', 'llava'\]"):
        load_backbone(tmp_path / "gpt")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json is not valid JSON"):
        load_backbone(tmp_path / "bad")


def test_a_device_the_machine_lacks_is_refused_at_load(checkpoints):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match=r"model\.device is 'cuda:0' but no CUDA device is visible"):
        load_backbone(checkpoints["llava-1.5-7b-hf"], device="cuda:0")
