"""The full model's own text as the draft's training text (self-distillation).

A draft is judged on the full model's greedy continuations, not on the data set's references: at decode time every
token it drafts from follows the full model's own earlier choices. Trained on the references, the imitation network
learns to predict the next token of human text in contexts the full model would not have written (teacher forcing on
someone else's text), and its cross-entropy target often disagrees with the full model's choice. Trained on the full
model's own greedy continuations, every cross-entropy target *is* the full model's choice there (the KD term's argmax)
and every context is one the draft will meet. This is the self-distillation data of Medusa-2 (Cai et al. 2024) and the
on-policy data of DistillSpec (Zhou et al. 2024); FastVLM itself trains on the data set's text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from pipeline.data.pixels import PixelStore
from pipeline.data.prepared import Example
from pipeline.data.prompts import PromptBuilder
from pipeline.evaluation.greedy_captions import greedy_token_ids


def model_written(
    model: torch.nn.Module,
    builder: PromptBuilder,
    pixels: PixelStore,
    examples: Sequence[Example],
    max_new_tokens: Mapping[str, int],
    batch_size: int = 64,
) -> list[Example]:
    """`examples` with each target replaced by `model`'s greedy continuation of the example's prompt (up to and
    including its first EOS, at most `max_new_tokens[task]` tokens), in the same order; the prompt and image stay."""
    written: list[Example | None] = [None] * len(examples)
    for task in dict.fromkeys(e.task for e in examples):
        if task not in max_new_tokens:
            raise ValueError(f"no max_new_tokens for task {task!r} (have {sorted(max_new_tokens)})")
        index = [i for i, e in enumerate(examples) if e.task == task]
        rows = greedy_token_ids(
            model,
            builder,
            pixels,
            [examples[i] for i in index],
            batch_size=batch_size,
            max_new_tokens=max_new_tokens[task],
        )
        texts = builder.tokenizer.batch_decode(rows, skip_special_tokens=True)
        for i, tokens, text in zip(index, rows, texts, strict=True):
            written[i] = dataclasses.replace(examples[i], text=text.strip(), target_ids=tuple(tokens))
    return [e for e in written if e is not None]
