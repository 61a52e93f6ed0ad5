"""Self-distillation targets: each example's target becomes exactly the full model's greedy continuation of its prompt
(`model.generate`, one prompt at a time, as the reference), in the examples' order and within each task's budget; the
cache built from them makes every cross-entropy target the teacher's own top-1 choice, which reference text does
not."""

from __future__ import annotations

import pytest

from pipeline.config import PromptConfig
from pipeline.data.datasets import ExampleDataset, collate_for_training, collate_prompts
from pipeline.training.feature_cache import FeatureLayout, cache_splits, cached_examples, split_pixels
from pipeline.training.self_distillation import model_written
from tests.conftest import TINY_PRESETS, teacher_top1_agreement, tiny_backbone

BUDGETS = {"caption": 7, "description": 12, "vqa": 3}
WEIGHTS = {"caption": 0.5, "description": 0.25, "vqa": 0.25}


def _reference_continuation(backbone, builder, pixels, example, budget: int) -> list[int]:
    """`model.generate`'s greedy new tokens for one prompt alone, through its first EOS."""
    tokenizer = builder.tokenizer
    item = ExampleDataset([example], pixels, builder)[0]
    batch = collate_prompts([item], tokenizer.pad_token_id)
    out = backbone.model.generate(
        **batch,
        max_new_tokens=budget,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = backbone.adapter.new_tokens(out, batch["input_ids"])[0].tolist()
    return new[: new.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in new else new


def _setup(tiny_data, preset: str, count: int = 8):
    """(backbone, prompt builder, train split, its pixels, `count` examples of every task) of a tiny `preset`."""
    splits, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer, preset)
    backbone.model.eval()
    split = splits["train"]
    pixels = split_pixels(split, backbone.image_processor)
    examples = cached_examples(split, WEIGHTS, count, seed=0)
    assert {e.task for e in examples} == {"caption", "description"}  # two budgets (the tiny set has no VQA)
    return backbone, backbone.prompt_builder(PromptConfig()), split, pixels, examples


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_targets_are_the_full_models_own_greedy_continuations(tiny_data, preset, one_thread):
    backbone, builder, _, pixels, examples = _setup(tiny_data, preset)
    tokenizer = builder.tokenizer

    written = model_written(backbone.model, builder, pixels, examples, BUDGETS, batch_size=3)

    assert [(e.image_index, e.task, e.question) for e in written] == [
        (e.image_index, e.task, e.question) for e in examples
    ]
    for example, new in zip(examples, written, strict=True):
        expected = _reference_continuation(backbone, builder, pixels, example, BUDGETS[example.task])
        assert list(new.target_ids or ()) == expected, example
        assert new.text == tokenizer.decode(expected, skip_special_tokens=True).strip()
    # the training batch's labels are the generated tokens, not a re-tokenisation of their text
    items = [ExampleDataset(written, pixels, builder)[i] for i in range(len(written))]
    batch = collate_for_training(items, tokenizer.pad_token_id, builder.decoder_start_id)
    for row, example in enumerate(written):
        labels = batch["labels"][row]
        assert labels[labels != -100].tolist() == list(example.target_ids or ())


def test_unknown_task_budget_is_refused(tiny_data, one_thread):
    backbone, builder, _, pixels, examples = _setup(tiny_data, "tiny-llava")
    with pytest.raises(ValueError, match="no max_new_tokens for task 'description'"):
        model_written(backbone.model, builder, pixels, examples, {"caption": 4, "vqa": 4})


@pytest.mark.parametrize("preset", ["tiny-llava", "tiny-blip2-t5"])
def test_on_generated_targets_every_ce_target_is_the_teachers_top_choice(tiny_data, tmp_path, preset, one_thread):
    backbone, builder, _, pixels, examples = _setup(tiny_data, preset)
    written = model_written(backbone.model, builder, pixels, examples, BUDGETS, batch_size=4)
    layout = FeatureLayout(draft_layers=(1,), deep_layers=2, top_k=3, temperature=2.0, dtype="float32")
    chosen = {"generated": (pixels, written), "reference": (pixels, examples)}
    cache_splits(backbone.adapter, builder, chosen, layout, tmp_path, 4)

    # teacher forcing over the model's own greedy text reproduces every choice it made while generating
    assert teacher_top1_agreement(tmp_path / "generated", 1) == 1.0
    # the data set's text is someone else's: an untrained model agrees with little of it
    assert teacher_top1_agreement(tmp_path / "reference", 1) < 0.5
