"""Hugging Face's own decoding, called the way our decoders are called, for comparison.

- `hf_greedy`: `model.generate(do_sample=False)`, the reference for losslessness and speed.
- `hf_early_exit`: `model.generate(assistant_early_exit=n)`, HF's LayerSkip-style self-speculation,
  which drafts with the first `n` layers but keeps no shared cache between draft and verification.
- `hf_assisted`: `model.generate(assistant_model=draft)`, HF's speculative decoding with a separate draft model
  (the reference for the language-only draft baseline).

HF implements the early exit by temporarily setting `num_hidden_layers` on the config of
`getattr(model, model.base_model_prefix)`. For `LlavaForConditionalGeneration` that is the composite
`LlavaConfig`, which no layer loop reads: the "early exit" would silently run the whole model (100 %
acceptance, no speed-up, and a misleading baseline). `_text_depth_follows_composite_config` forwards that
attribute to the language model's own config for the duration of the call, so HF's baseline really
drafts with `n` layers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel


def _language_model_config(model: nn.Module) -> tuple[PreTrainedModel, PreTrainedConfig | None]:
    hf_model = cast(PreTrainedModel, model)  # this module only ever runs Hugging Face models
    base = getattr(hf_model, hf_model.base_model_prefix, hf_model)
    language_model = getattr(base, "language_model", None)
    return base, (language_model.config if language_model is not None else None)


@contextmanager
def _text_depth_follows_composite_config(model: nn.Module) -> Iterator[None]:
    base, text_config = _language_model_config(model)
    if text_config is None or base.config is text_config:
        yield
        return
    composite = base.config
    original_class = type(composite)
    forwarding = type(
        f"{original_class.__name__}WithTextDepth",
        (original_class,),
        {
            "num_hidden_layers": property(
                lambda self: text_config.num_hidden_layers,
                lambda self, value: setattr(text_config, "num_hidden_layers", value),
            )
        },
    )
    depth = text_config.num_hidden_layers
    composite.__class__ = forwarding
    try:
        yield
    finally:
        composite.__class__ = original_class
        text_config.num_hidden_layers = depth


def _generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | Iterable[int] | None,
    **kwargs: Any,
) -> torch.Tensor:
    attention_mask = kwargs.pop("attention_mask", None)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    hf_model = cast(PreTrainedModel, model)  # `generate` below needs a Hugging Face model anyway
    pad = kwargs.pop("pad_token_id", None)
    pad = hf_model.generation_config.pad_token_id if pad is None else pad
    # PreTrainedModel does not declare `generate`; GenerationMixin does, with a `self` type no model class matches
    generate = cast(Callable[..., Any], hf_model.generate)
    out = generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos_token_id,
        pad_token_id=pad if pad is not None else eos_token_id,
        **kwargs,
    )
    return out if isinstance(out, torch.Tensor) else out.sequences


@torch.inference_mode()
def hf_greedy(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | Iterable[int] | None = None,
    **model_inputs: Any,
) -> torch.Tensor:
    """`model.generate(..., do_sample=False).sequences`."""
    return _generate(model, input_ids, max_new_tokens, eos_token_id, **model_inputs)


@torch.inference_mode()
def hf_early_exit(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | Iterable[int] | None = None,
    *,
    draft_layers: int,
    draft_len: int,
    **model_inputs: Any,
) -> torch.Tensor:
    """`model.generate(assistant_early_exit=draft_layers)` with a constant `draft_len` tokens per round."""
    with _text_depth_follows_composite_config(model):
        return _generate(
            model,
            input_ids,
            max_new_tokens,
            eos_token_id,
            assistant_early_exit=draft_layers,
            num_assistant_tokens=draft_len,
            num_assistant_tokens_schedule="constant",
            assistant_confidence_threshold=0.0,  # HF's default 0.4 would stop drafts early; equal d means all d
            **model_inputs,
        )


@torch.inference_mode()
def hf_assisted(
    model: nn.Module,
    draft_model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | Iterable[int] | None = None,
    *,
    draft_len: int,
    **model_inputs: Any,
) -> torch.Tensor:
    """`model.generate(assistant_model=draft_model)` with a constant `draft_len` tokens per round (one prompt: HF's
    assisted generation refuses batches)."""
    # HF reads the round length, its schedule and the confidence stop from the assistant's own generation config
    assistant = cast(PreTrainedModel, draft_model)
    original = assistant.generation_config
    assistant.generation_config = copy.deepcopy(original)
    assistant.generation_config.num_assistant_tokens = draft_len
    assistant.generation_config.num_assistant_tokens_schedule = "constant"
    assistant.generation_config.assistant_confidence_threshold = 0.0  # HF's 0.4 would stop rounds early
    try:
        return _generate(model, input_ids, max_new_tokens, eos_token_id, assistant_model=draft_model, **model_inputs)
    finally:
        assistant.generation_config = original
