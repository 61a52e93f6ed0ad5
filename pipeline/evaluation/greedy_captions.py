"""The full model's own captions, decoded in batches by `model.generate` (greedy), and what they score: the check
that the fine-tuned model sees (captions of real images against blank ones) and the check that a method which
changes the backbone (mixed schedule, LayerSkip) did not cost it its captions; the same check for VQA answers."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.data.datasets import ExampleDataset, collate_prompts
from pipeline.data.pixels import PixelStore
from pipeline.data.prepared import Example, SplitData
from pipeline.data.prompts import PromptBuilder
from pipeline.evaluation.batching import new_token_rows
from pipeline.evaluation.caption_metrics import caption_scores, caption_scores_of_sets
from pipeline.evaluation.prompts import MAX_NEW_TOKENS
from pipeline.evaluation.vqa_accuracy import vqa_scores
from pipeline.models.adapters import adapter_for
from pipeline.models.loading import Backbone


@torch.no_grad()
def greedy_token_ids(
    model: torch.nn.Module,
    builder: PromptBuilder,
    pixels: PixelStore,
    examples: Sequence[Example],
    *,
    batch_size: int = 64,
    max_new_tokens: int = 32,
    blank_images: bool = False,
    progress: bool = False,
) -> list[list[int]]:
    """`model.generate`'s greedy continuation of each example's prompt: its new tokens up to and including its first
    EOS (all `max_new_tokens` of them when it never ends), without the padding of the batch's finished rows.

    `blank_images=True` swaps every image for a uniform grey one: the control that shows whether
    the captions come from the pixels or only from the language prior.
    """
    tokenizer = builder.tokenizer
    dataset = ExampleDataset(examples, pixels, builder)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=lambda b: collate_prompts(b, tokenizer.pad_token_id))
    adapter = adapter_for(model)
    device = adapter.embed_weight.device
    blank = pixels.blank_like(0) if blank_images else None
    eos = {tokenizer.eos_token_id}
    was_training = model.training
    model.eval()
    rows: list[list[int]] = []
    for batch in tqdm(loader, disable=not progress, desc="generate"):
        if blank is not None:
            batch["pixel_values"] = blank.expand_as(batch["pixel_values"]).clone()
        batch = {k: v.to(device) for k, v in batch.items()}
        # nn.Module.__getattr__ types every attribute as Tensor | Module; `model` is a Hugging Face model
        out = model.generate(  # type: ignore[operator]
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        rows += new_token_rows(adapter.new_tokens(out, batch["input_ids"]), eos)
    model.train(was_training)
    return rows


def greedy_generate(
    model: torch.nn.Module, builder: PromptBuilder, pixels: PixelStore, examples: Sequence[Example], **options: Any
) -> list[str]:
    """`greedy_token_ids`' continuations (same `options`) as text, decoded without special tokens."""
    rows = greedy_token_ids(model, builder, pixels, examples, **options)
    return [t.strip() for t in builder.tokenizer.batch_decode(rows, skip_special_tokens=True)]


def caption_cider(
    backbone: Backbone,
    builder: PromptBuilder,
    split: SplitData,
    count: int,
    *,
    batch_size: int = 100,
    max_new_tokens: int = 32,
) -> float:
    """CIDEr of `backbone`'s greedy captions of the first `count` images of `split` against their references."""
    records = split.images[:count]
    pixels = PixelStore([r.image_path for r in records], backbone.image_processor)
    examples = [Example(i, "caption", r.captions[0]) for i, r in enumerate(records)]
    texts = greedy_generate(
        backbone.model, builder, pixels, examples, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    cider = caption_scores({i: list(r.captions) for i, r in enumerate(records)}, dict(enumerate(texts)))["cider"]
    assert isinstance(cider, float)  # only the "spice_unavailable" entry holds a str
    return cider


def sees_check(
    backbone: Backbone,
    builder: PromptBuilder,
    split: SplitData,
    count: int,
    *,
    batch_size: int,
    max_new_tokens: int,
    show: int = 3,
) -> dict[str, Any]:
    """Caption metrics of greedy captions of the first `count` images (`test_*`) and of the same model given blank
    images (`test_blank_*`): the captions must come from the pixels, not only from the language prior. Likewise the
    VQA accuracy of greedy answers to those images' questions, overall and per question type
    (`test_vqa_accuracy/<type>`, `test_blank_vqa_accuracy/<type>`): which kinds of question the pixels answer. Prints
    `show` examples."""
    records = split.images[:count]
    pixels = PixelStore([r.image_path for r in records], backbone.image_processor)
    examples = [Example(i, "caption", r.captions[0]) for i, r in enumerate(records)]
    references = {i: list(r.captions) for i, r in enumerate(records)}
    decode = partial(greedy_generate, backbone.model, builder, pixels, batch_size=batch_size)
    seen = decode(examples, max_new_tokens=max_new_tokens)
    blank = decode(examples, max_new_tokens=max_new_tokens, blank_images=True)
    both = caption_scores_of_sets(references, {"test_": dict(enumerate(seen)), "test_blank_": dict(enumerate(blank))})
    scores: dict[str, Any] = {f"{prefix}{k}": v for prefix, metrics in both.items() for k, v in metrics.items()}
    row = {r.image_id: i for i, r in enumerate(records)}
    questions = [q for q in split.vqa if q.answers and q.image_id in row]
    if questions:
        asked = [Example(row[q.image_id], "vqa", q.answers[0], q.question) for q in questions]
        for prefix, blank_images in (("test_", False), ("test_blank_", True)):
            answers = decode(asked, max_new_tokens=MAX_NEW_TOKENS["vqa"], blank_images=blank_images)
            vqa = vqa_scores(
                dict(enumerate(answers)),
                {k: q.answers for k, q in enumerate(questions)},
                question_types={k: q.question_type for k, q in enumerate(questions)},
            )
            scores[f"{prefix}vqa_accuracy"] = vqa["vqa_accuracy"]
            for kind, group in vqa["by_question_type"].items():
                scores[f"{prefix}vqa_accuracy/{kind}"] = group["accuracy"]
    for i in range(min(show, len(records))):
        print(
            f"  test image {records[i].image_path.name}: {seen[i]!r} (blank: {blank[i]!r}) "
            f"ref: {records[i].captions[0]!r}"
        )
    return scores
