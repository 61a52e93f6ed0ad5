"""Rotary-position decoders: LLaVA (with a Llama, Mistral or Qwen2 language model) and those text models alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import Cache, PreTrainedConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from pipeline.models.adapters.base import (
    BackboneAdapter,
    EncoderStates,
    Prefix,
    attention_layer_types,
    splice_image_features,
)

if TYPE_CHECKING:
    from transformers import LlamaModel, MistralModel, Qwen2Model


class LlamaFamilyAdapter(BackboneAdapter):
    """A Llama / Mistral / Qwen2 decoder stack (`self.text`), with full and sliding-window layers mixed freely."""

    text: LlamaModel | MistralModel | Qwen2Model
    _layer_types: list[str]

    def _bind_text(self, text: LlamaModel | MistralModel | Qwen2Model) -> None:
        self.text = text
        self._layer_types = attention_layer_types(text.config)

    @property
    def layers(self) -> nn.ModuleList:
        return self.text.layers

    @property
    def text_config(self) -> PreTrainedConfig:
        return self.text.config

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text.embed_tokens(input_ids)

    def _layer_outputs(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        cache: Cache | None,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder: EncoderStates | None,
    ) -> Iterator[torch.Tensor]:
        mask_kwargs: dict[str, Any] = {
            "config": self.text.config,
            "inputs_embeds": hidden,
            "attention_mask": attention_mask,
            "past_key_values": cache,
            "position_ids": position_ids,
        }
        masks = {}
        for index in range(start, end):
            kind = self._layer_types[index]
            if kind not in masks:
                # Sized against the first layer *of this kind* in the range: a sliding-window layer's cache holds
                # fewer states than a full-attention layer's, so one layer's sizes do not fit the other kind.
                builder = create_causal_mask if kind == "full_attention" else create_sliding_window_causal_mask
                masks[kind] = builder(**mask_kwargs, layer_idx=index)
        rotary = self.text.rotary_emb(hidden, position_ids)
        for index in range(start, end):
            hidden = self.text.layers[index](
                hidden,
                attention_mask=masks[self._layer_types[index]],
                position_embeddings=rotary,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=cache is not None,
            )
            yield hidden

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.text.norm(hidden)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)


class LlavaAdapter(LlamaFamilyAdapter):
    """`LlavaForConditionalGeneration` with a Llama, Mistral or Qwen2 text decoder."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        self._bind_text(model.model.language_model)

    @property
    def num_image_tokens(self) -> int:
        config = self.model.config
        vision = config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return patches + (1 if config.vision_feature_select_strategy == "full" else 0)

    @property
    def image_token_id(self) -> int | None:
        return int(self.model.config.image_token_id)

    @property
    def vision_encoder(self) -> nn.Module | None:
        """The image encoder (CLIP tower), without the projector into the language model."""
        return self.model.model.vision_tower

    def _prefix(self, input_ids: torch.Tensor, **model_inputs: torch.Tensor) -> Prefix:
        embeds = self.embed(input_ids)
        pixel_values = model_inputs.get("pixel_values")
        if pixel_values is None:
            return Prefix(embeds)
        config = self.model.config
        # LLaVA-1.5's CLIP tower takes fixed-size images: no `image_sizes` (refused by `prefix`, not dropped)
        features = self.model.model.get_image_features(
            pixel_values=pixel_values.to(embeds.dtype),
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            return_dict=True,
        ).pooler_output  # one [K, H] per image
        return Prefix(
            splice_image_features(embeds, input_ids, self.model.config.image_token_id, torch.stack(list(features)))
        )


class CausalLMAdapter(LlamaFamilyAdapter):
    """`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`: the decoder LLaVA wraps, without images."""

    prefix_inputs: frozenset[str] = frozenset()

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        self._bind_text(model.model)

    def _prefix(self, input_ids: torch.Tensor, **model_inputs: torch.Tensor) -> Prefix:
        return Prefix(self.embed(input_ids))
