"""Backbone adapters: uniform access to the parts of a VLM that self-speculative decoding needs.

An adapter wraps a Hugging Face model without changing it. The decoder, the imitation
network and the layer-choice code only ever talk to this interface, so supporting a new
family (BLIP-2 OPT/FlanT5) means writing one more adapter, not touching the decoder.
Exit layers are always passed explicitly as `start`/`end`; the model's config is never edited.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import torch
from torch import nn
from transformers import Cache, PreTrainedConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

if TYPE_CHECKING:
    from transformers import LlamaModel, MistralModel, Qwen2Model
    from transformers.models.opt.modeling_opt import OPTDecoder


class BackboneAdapter(ABC):
    """The decoder-side view of a VLM: a prefix of embeddings, a stack of layers, a norm and a head."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model

    @property
    @abstractmethod
    def layers(self) -> nn.ModuleList: ...

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    @abstractmethod
    def hidden_size(self) -> int: ...

    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of text ids (no image features)."""

    @property
    def vision_encoder(self) -> nn.Module | None:
        """The image encoder without the projector into the language model (None for text-only models)."""
        return None

    @abstractmethod
    def prefix(self, input_ids: torch.Tensor, **model_inputs: torch.Tensor | None) -> torch.Tensor:
        """The embeddings the decoder sees for a prompt: image features spliced in at the image tokens."""

    @overload
    def run_layers(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        cache: Cache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        collect_hidden: Literal[False] = False,
    ) -> torch.Tensor: ...

    @overload
    def run_layers(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        cache: Cache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        collect_hidden: Literal[True],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]: ...

    @overload
    def run_layers(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        cache: Cache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        collect_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]: ...

    def run_layers(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        cache: Cache | None = None,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        collect_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run decoder layers `start..end-1`; with `collect_hidden` also return each layer's output."""
        if not 0 <= start <= end <= self.num_layers:
            raise ValueError(f"layer range {start}..{end} is outside 0..{self.num_layers}")
        if position_ids is None:
            # Layers in one range share a cache length only if they were run together; `start` is the reference.
            past = cache.get_seq_length(start) if cache is not None and start < end else 0
            position_ids = torch.arange(past, past + hidden.shape[1], device=hidden.device).unsqueeze(0)
        outputs: list[torch.Tensor] = []
        if start < end:
            for output in self._layer_outputs(hidden, start, end, cache, position_ids, attention_mask):
                if collect_hidden:
                    outputs.append(output)
                hidden = output
        return (hidden, outputs) if collect_hidden else hidden

    @abstractmethod
    def _layer_outputs(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        cache: Cache | None,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> Iterator[torch.Tensor]:
        """Each layer's output for layers `start..end-1` (start < end, positions resolved)."""

    @abstractmethod
    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm then LM head: how any layer's (or an imitation network's) state becomes logits."""
        return self.lm_head(self.final_norm(hidden))


class LlavaAdapter(BackboneAdapter):
    """`LlavaForConditionalGeneration` with a Llama, Mistral or Qwen2 text decoder."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        self.text: LlamaModel | MistralModel | Qwen2Model = model.model.language_model
        config = self.text.config
        if getattr(config, "layer_types", None) is not None:
            self._layer_types = list(config.layer_types)
        elif getattr(config, "sliding_window", None) is not None:  # Mistral: one window for every layer
            self._layer_types = ["sliding_attention"] * config.num_hidden_layers
        else:
            self._layer_types = ["full_attention"] * config.num_hidden_layers

    @property
    def layers(self) -> nn.ModuleList:
        return self.text.layers

    @property
    def hidden_size(self) -> int:
        return self.text.config.hidden_size

    @property
    def num_image_tokens(self) -> int:
        config = self.model.config
        vision = config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        return patches + (1 if config.vision_feature_select_strategy == "full" else 0)

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text.embed_tokens(input_ids)

    @property
    def vision_encoder(self) -> nn.Module | None:
        """The image encoder (CLIP tower), without the projector into the language model."""
        return self.model.model.vision_tower

    def prefix(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **_: torch.Tensor | None
    ) -> torch.Tensor:
        embeds = self.embed(input_ids)
        if pixel_values is None:
            return embeds
        outer = self.model.model
        config = self.model.config
        features = outer.get_image_features(
            pixel_values=pixel_values.to(embeds.dtype),
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            return_dict=True,
        ).pooler_output
        features = torch.cat(list(features), dim=0).to(embeds.device, embeds.dtype)
        mask = outer.get_placeholder_mask(input_ids, inputs_embeds=embeds, image_features=features)
        return embeds.masked_scatter(mask, features)

    def _layer_outputs(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        cache: Cache | None,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> Iterator[torch.Tensor]:
        mask_kwargs: dict[str, Any] = {
            "config": self.text.config,
            "inputs_embeds": hidden,
            "attention_mask": attention_mask,
            "past_key_values": cache,
            "position_ids": position_ids,
        }
        masks = {}
        for kind in set(self._layer_types[start:end]):
            builder = create_causal_mask if kind == "full_attention" else create_sliding_window_causal_mask
            masks[kind] = builder(**mask_kwargs, layer_idx=start)
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


_ADAPTERS: dict[str, type[BackboneAdapter]] = {"LlavaForConditionalGeneration": LlavaAdapter}


def adapter_for(model: nn.Module) -> BackboneAdapter:
    """The adapter for a supported Hugging Face model; a clear error for anything else."""
    name = type(model).__name__
    if name not in _ADAPTERS:
        from pipeline.errors import ModelLoadError

        raise ModelLoadError(f"no backbone adapter for {name}; supported: {sorted(_ADAPTERS)}")
    # Every class named in _ADAPTERS is a transformers PreTrainedModel
    return _ADAPTERS[name](cast(PreTrainedModel, model))


# --- Plain causal LMs (added for the decoder: the same layer stack without a vision tower) ---------------------


def _attention_layer_types(config: PreTrainedConfig) -> list[str]:
    """Per-layer attention kind ("full_attention" | "sliding_attention"), by the same rule `LlavaAdapter` uses."""
    if getattr(config, "layer_types", None) is not None:
        return list(config.layer_types)
    if getattr(config, "sliding_window", None) is not None:
        return ["sliding_attention"] * config.num_hidden_layers
    return ["full_attention"] * config.num_hidden_layers


class CausalLMAdapter(LlavaAdapter):
    """`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`: a text-only model.

    Their decoder stack (`model.model`) is the very class LLaVA wraps as its language model, so the layer
    running, norm and head code is LLaVA's; only where the stack lives and the prefix (no image) differ.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        BackboneAdapter.__init__(self, model)
        self.text = model.model
        self._layer_types = _attention_layer_types(self.text.config)

    @property
    def num_image_tokens(self) -> int:
        raise AttributeError(f"{type(self.model).__name__} is a text-only model: it has no image tokens")

    @property
    def image_token_id(self) -> int:
        raise AttributeError(f"{type(self.model).__name__} is a text-only model: it has no image token")

    @property
    def vision_encoder(self) -> None:
        return None

    def prefix(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **_: torch.Tensor | None
    ) -> torch.Tensor:
        if pixel_values is not None:
            raise ValueError(f"{type(self.model).__name__} is a text-only model: it takes no pixel_values")
        return self.embed(input_ids)


class OPTAdapter(BackboneAdapter):
    """`OPTForCausalLM`: learned absolute positions, optional input/output projections, no rotary embedding.

    OPT adds its positional embeddings to the token embeddings before layer 0. Positions are only known
    when the layers run, so `embed` returns token embeddings (projected to the hidden size) and
    `run_layers(start=0)` adds the positional embeddings of `position_ids`: `run_layers(embed(ids), 0, L)`
    equals the model's own forward pass, as for every other adapter.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        self.decoder: OPTDecoder = model.model.decoder

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def hidden_size(self) -> int:
        return self.decoder.config.hidden_size

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeds = self.decoder.embed_tokens(input_ids)
        return self.decoder.project_in(embeds) if self.decoder.project_in is not None else embeds

    def prefix(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **_: torch.Tensor | None
    ) -> torch.Tensor:
        if pixel_values is not None:
            raise ValueError("OPTForCausalLM is a text-only model: it takes no pixel_values")
        return self.embed(input_ids)

    def _layer_outputs(
        self,
        hidden: torch.Tensor,
        start: int,
        end: int,
        cache: Cache | None,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> Iterator[torch.Tensor]:
        if start == 0:
            # `embed_positions` adds OPT's offset of 2 itself; its first argument is only used without position_ids
            hidden = hidden + self.decoder.embed_positions(None, 0, position_ids=position_ids).to(hidden.dtype)
        mask = create_causal_mask(
            config=self.decoder.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=cache,
            position_ids=position_ids,
            layer_idx=start,
        )
        for index in range(start, end):
            hidden = self.decoder.layers[index](
                hidden,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=cache is not None,
            )
            yield hidden

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        # OPT-350m has no final layer norm but projects back to the embedding width; both count as "the norm"
        # here so that `logits(h) = lm_head(final_norm(h))` holds for every adapter.
        if self.decoder.final_layer_norm is not None:
            hidden = self.decoder.final_layer_norm(hidden)
        if self.decoder.project_out is not None:
            hidden = self.decoder.project_out(hidden)
        return hidden

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)


_ADAPTERS.update(
    {
        "LlamaForCausalLM": CausalLMAdapter,
        "MistralForCausalLM": CausalLMAdapter,
        "Qwen2ForCausalLM": CausalLMAdapter,
        "OPTForCausalLM": OPTAdapter,
    }
)
