"""The separate language-only draft model (Gagrani et al.): trained on the prompts' text without pixels, saved and
loaded in the backbone's dtype, and a lossless drafter for the backbone it was trained for; refused, with the reason
recorded, for an encoder–decoder backbone."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.config import LanguageDraftConfig, PromptConfig
from pipeline.decoding import AutoregressiveDecoder
from pipeline.decoding.separate_draft import SeparateDraftDecoder
from pipeline.errors import ModelLoadError
from pipeline.evaluation.prompts import caption_prompts
from pipeline.training.language_draft import fit_language_draft, load_language_draft, save_language_draft, text_only
from tests.conftest import tiny_backbone

CFG = LanguageDraftConfig(
    num_layers=1,
    hidden_size=32,
    intermediate_size=64,
    max_steps=60,
    batch_size=8,
    val_every_steps=20,
    val_batches=1,
    optimizer={"warmup_steps": 2, "lr": 5e-3},
)


def test_the_draft_learns_the_captions_text_and_drafts_losslessly(tiny_data, tmp_path, one_thread):
    splits, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer, num_layers=2)
    backbone.model.eval()
    untrained = fit_language_draft(backbone, splits, PromptConfig(), CFG.model_copy(update={"max_steps": 1}), seed=0)
    result = fit_language_draft(backbone, splits, PromptConfig(), CFG, seed=0)
    assert result.metrics["trained"] and result.metrics["steps"] == 60
    assert result.metrics["val_loss"] < untrained.metrics["val_loss"] - 0.5  # it learned the captions' language
    save_language_draft(result, tmp_path / "draft")
    loaded = load_language_draft(tmp_path / "draft", backbone.model.double())
    assert loaded is not None and next(loaded.parameters()).dtype == torch.float64
    prompts = caption_prompts(splits["test"], backbone.prompt_builder(PromptConfig()), backbone.image_processor, 4, 0)
    decoder = SeparateDraftDecoder(backbone.model, loaded, 3)
    drafted = 0
    for prompt in prompts:
        ids, pixels = prompt["input_ids"].view(1, -1), prompt["pixel_values"].double()
        expected = AutoregressiveDecoder(backbone.model).generate(ids, 12, pixel_values=pixels).sequences
        out = decoder.generate(ids, 12, pixel_values=pixels)
        assert torch.equal(out.sequences, expected)
        drafted += out.stats.drafted
    assert drafted > 0  # (the backbone is untrained here: what it accepts is measured by the pipeline's evaluate)


def test_pixels_never_reach_the_draft():
    batch = {k: torch.zeros(2, 3) for k in ("input_ids", "attention_mask", "labels", "pixel_values")}
    assert set(text_only(batch)) == {"input_ids", "attention_mask", "labels"}


def test_an_encoder_decoder_backbone_gets_no_draft_and_says_why(tiny_data, tmp_path):
    splits, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer, "tiny-blip2-t5", num_layers=2)
    result = fit_language_draft(backbone, splits, PromptConfig(), CFG, seed=0)
    assert result.model is None and "encoder–decoder" in result.metrics["reason"]
    save_language_draft(result, tmp_path / "draft")
    assert json.loads((tmp_path / "draft/status.json").read_text())["trained"] is False
    assert load_language_draft(tmp_path / "draft", backbone.model) is None
    with pytest.raises(ModelLoadError, match="run `dvc repro train_baselines`"):
        load_language_draft(tmp_path / "missing", backbone.model)
