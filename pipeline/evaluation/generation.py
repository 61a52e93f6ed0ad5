"""Batched greedy generation with `model.generate`: the reference output every method is compared to."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.data.datasets import ExampleDataset, collate_prompts
from pipeline.data.examples import Example
from pipeline.data.pixels import PixelStore
from pipeline.data.prompts import PromptBuilder


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    builder: PromptBuilder,
    pixels: PixelStore,
    examples: Sequence[Example],
    *,
    batch_size: int = 64,
    max_new_tokens: int = 32,
    blank_images: bool = False,
    progress: bool = False,
) -> list[str]:
    """Greedy continuations of each example's prompt, decoded without special tokens.

    `blank_images=True` swaps every image for a uniform grey one: the control that shows whether
    the captions come from the pixels or only from the language prior.
    """
    tokenizer = builder.tokenizer
    dataset = ExampleDataset(examples, pixels, builder)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=lambda b: collate_prompts(b, tokenizer.pad_token_id))
    device = next(model.parameters()).device
    blank = pixels.blank_like(0) if blank_images else None
    was_training = model.training
    model.eval()
    texts: list[str] = []
    for batch in tqdm(loader, disable=not progress, desc="generate"):
        if blank is not None:
            batch["pixel_values"] = blank.expand_as(batch["pixel_values"]).clone()
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        texts += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    model.train(was_training)
    return texts
