"""OPT decoders: `OPTForCausalLM`, and BLIP-2 with an OPT language model (`blip2-opt-2.7b`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import Cache, PreTrainedConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask

from pipeline.models.adapters.base import BackboneAdapter, EncoderStates, Prefix
from pipeline.models.adapters.blip2 import Blip2Images

if TYPE_CHECKING:
    from transformers.models.opt.modeling_opt import OPTDecoder


class OPTAdapter(BackboneAdapter):
    """`OPTForCausalLM`: learned absolute positions, optional input/output projections, no rotary embedding.

    OPT adds its positional embeddings to the token embeddings before layer 0. Positions are only known when the
    layers run, so `embed` returns token embeddings (projected to the hidden size) and `run_layers(start=0)` adds the
    positional embeddings of `position_ids`: `run_layers(embed(ids), 0, L)` equals the model's own forward pass.
    """

    prefix_inputs: frozenset[str] = frozenset()

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        self.language_model = model
        self.decoder: OPTDecoder = model.model.decoder

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def text_config(self) -> PreTrainedConfig:
        return self.decoder.config

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self._project_in(self.decoder.embed_tokens(input_ids))

    def _project_in(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.decoder.project_in(embeds) if self.decoder.project_in is not None else embeds

    def _prefix(self, input_ids: torch.Tensor, **model_inputs: torch.Tensor) -> Prefix:
        return Prefix(self.embed(input_ids))

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
        return self.language_model.lm_head(hidden)


class Blip2OPTAdapter(Blip2Images, OPTAdapter):
    """`Blip2ForConditionalGeneration` whose language model is OPT (`blip2-opt-2.7b`): the embeddings of the prompt's
    tokens, the query outputs written over its image tokens, then OPT's input projection."""

    prefix_inputs = frozenset({"pixel_values"})
    prompt_layout = "blip2-opt"

    def __init__(self, model: PreTrainedModel) -> None:
        BackboneAdapter.__init__(self, model)
        blip2: Any = model  # a Blip2ForConditionalGeneration (adapter_for checked its class and language model)
        self.language_model = blip2.language_model
        self.decoder = blip2.language_model.model.decoder

    def _prefix(self, input_ids: torch.Tensor, **model_inputs: torch.Tensor) -> Prefix:
        embeds = self.with_images(self.decoder.embed_tokens(input_ids), input_ids, model_inputs.get("pixel_values"))
        return Prefix(self._project_in(embeds))
