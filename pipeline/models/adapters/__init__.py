"""Backbone adapters, one per family, and `adapter_for`, which picks the one a Hugging Face model needs.

| model class | adapter |
|---|---|
| `LlavaForConditionalGeneration` (Llama / Mistral / Qwen2 language model) | `LlavaAdapter` |
| `Blip2ForConditionalGeneration` with OPT | `Blip2OPTAdapter` |
| `Blip2ForConditionalGeneration` with (Flan)T5 | `Blip2T5Adapter` (encoder–decoder) |
| `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`, `OPTForCausalLM` | text-only, for the decoder's tests |
"""

from __future__ import annotations

from typing import cast

from torch import nn
from transformers import PreTrainedModel

from pipeline.errors import ModelLoadError
from pipeline.models.adapters.base import (
    BackboneAdapter,
    EncoderStates,
    Prefix,
    attention_layer_types,
    splice_image_features,
)
from pipeline.models.adapters.llama_family import CausalLMAdapter, LlavaAdapter
from pipeline.models.adapters.opt import Blip2OPTAdapter, OPTAdapter
from pipeline.models.adapters.t5 import Blip2T5Adapter

_ADAPTERS: dict[str, type[BackboneAdapter]] = {
    "LlavaForConditionalGeneration": LlavaAdapter,
    "LlamaForCausalLM": CausalLMAdapter,
    "MistralForCausalLM": CausalLMAdapter,
    "Qwen2ForCausalLM": CausalLMAdapter,
    "OPTForCausalLM": OPTAdapter,
}
# BLIP-2's language model decides the family
_BLIP2_LANGUAGE_MODELS: dict[str, type[BackboneAdapter]] = {"opt": Blip2OPTAdapter, "t5": Blip2T5Adapter}
SUPPORTED_CLASSES = sorted([*_ADAPTERS, "Blip2ForConditionalGeneration"])


def adapter_for(model: nn.Module) -> BackboneAdapter:
    """The adapter for a supported Hugging Face model; a clear error for anything else."""
    name = type(model).__name__
    if name == "Blip2ForConditionalGeneration":
        language = cast(PreTrainedModel, model).config.text_config.model_type
        if language not in _BLIP2_LANGUAGE_MODELS:
            raise ModelLoadError(
                f"BLIP-2 with a {language!r} language model is not supported; "
                f"supported: {sorted(_BLIP2_LANGUAGE_MODELS)}"
            )
        return _BLIP2_LANGUAGE_MODELS[language](cast(PreTrainedModel, model))
    if name not in _ADAPTERS:
        raise ModelLoadError(f"no backbone adapter for {name}; supported: {SUPPORTED_CLASSES}")
    # Every class named in _ADAPTERS is a transformers PreTrainedModel
    return _ADAPTERS[name](cast(PreTrainedModel, model))


__all__ = [
    "SUPPORTED_CLASSES",
    "BackboneAdapter",
    "Blip2OPTAdapter",
    "Blip2T5Adapter",
    "CausalLMAdapter",
    "EncoderStates",
    "LlavaAdapter",
    "OPTAdapter",
    "Prefix",
    "adapter_for",
    "attention_layer_types",
    "splice_image_features",
]
