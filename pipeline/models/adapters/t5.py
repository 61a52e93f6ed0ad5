"""BLIP-2 with a FlanT5 language model (`blip2-flan-t5-xl`): an encoder–decoder.

Self-speculative decoding happens in the T5 *decoder*: the draft is its first `n` blocks (+ imitation network),
verification its remaining blocks, over one `EncoderDecoderCache` whose self-attention entries are cropped on
rollback while the cross-attention entries (the encoder's keys and values, the same for every position) are
computed once per block and kept. The image tokens sit in the encoder's input, where the Q-Former outputs replace
them; the decoder starts from `decoder_start_token_id`.

Two T5 details the model's own stack handles and a block range must reproduce:
- only block 0 owns the relative-position bias table (and hands the bias to the blocks after it), so every range
  computes the bias itself from block 0's table, for the absolute positions it runs at;
- T5 multiplies the decoder output by d_model^-0.5 before the LM head when its embeddings are tied
  (`scale_decoder_outputs`; FlanT5 does not tie them): that belongs to `final_norm` here, so that an imitation
  network's output becomes logits exactly as the last block's does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import Cache, DynamicCache, EncoderDecoderCache, PreTrainedConfig, PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from pipeline.models.adapters.base import BackboneAdapter, EncoderStates, Prefix
from pipeline.models.adapters.blip2 import Blip2Images

if TYPE_CHECKING:
    from transformers.models.t5.modeling_t5 import T5Attention, T5ForConditionalGeneration, T5Stack


class Blip2T5Adapter(Blip2Images, BackboneAdapter):
    is_encoder_decoder = True
    prompt_layout = "blip2-t5"
    prefix_inputs = frozenset({"pixel_values", "encoder_input_ids", "encoder_attention_mask"})

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__(model)
        blip2: Any = model  # a Blip2ForConditionalGeneration with a T5 language model (checked by adapter_for)
        self.language_model: T5ForConditionalGeneration = blip2.language_model
        self.decoder: T5Stack = self.language_model.decoder
        self.encoder: T5Stack = self.language_model.encoder
        first: Any = self.decoder.block[0]
        self._bias: T5Attention = first.layer[0].SelfAttention
        config = self.language_model.config
        self._output_scale = (
            config.d_model**-0.5 if getattr(config, "scale_decoder_outputs", config.tie_word_embeddings) else None
        )

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.block

    @property
    def text_config(self) -> PreTrainedConfig:
        return self.decoder.config

    @property
    def hidden_size(self) -> int:
        return int(self.decoder.config.d_model)

    @property
    def decoder_start_token_id(self) -> int:
        return int(self.language_model.config.decoder_start_token_id)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(input_ids)

    def new_cache(self) -> Cache:
        return EncoderDecoderCache(DynamicCache(config=self.text_config), DynamicCache(config=self.text_config))

    def _prefix(self, input_ids: torch.Tensor, **model_inputs: torch.Tensor) -> Prefix:
        encoder_ids = model_inputs.get("encoder_input_ids")
        if encoder_ids is None:
            raise ValueError(
                f"{type(self.model).__name__} is an encoder–decoder: prefix needs encoder_input_ids (the prompt) "
                "besides the decoder's input_ids"
            )
        mask = model_inputs.get("encoder_attention_mask")
        embeds = self.with_images(self.encoder.embed_tokens(encoder_ids), encoder_ids, model_inputs.get("pixel_values"))
        states = self.encoder(inputs_embeds=embeds, attention_mask=mask, return_dict=True).last_hidden_state
        return Prefix(self.embed(input_ids), EncoderStates(states, mask))

    def forward_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # The batch's decoder sequence is start + target, labelled on the target; T5's forward takes its decoder input
        # and its (unshifted) labels one position apart
        return {
            "pixel_values": batch["pixel_values"],
            "input_ids": batch["encoder_input_ids"],
            "attention_mask": batch["encoder_attention_mask"],
            "decoder_input_ids": batch["input_ids"][:, :-1],
            "decoder_attention_mask": batch["attention_mask"][:, :-1],
            "labels": batch["labels"][:, 1:].contiguous(),  # T5 flattens them with view()
        }

    def _position_bias(
        self, position_ids: torch.Tensor, key_length: int, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Block 0's relative-position bias [B, heads, q, k] for queries at `position_ids` over `key_length` keys.

        Key j sits at position j, or, where a padding mask marks holes, at the count of real keys before it."""
        device = position_ids.device
        if attention_mask is not None:
            key_positions = attention_mask[:, -key_length:].long().cumsum(-1) - 1
        else:
            key_positions = torch.arange(key_length, device=device).unsqueeze(0)
        relative = key_positions[:, None, :] - position_ids[:, :, None]  # [B, q, k]
        buckets = self._bias._relative_position_bucket(
            relative,
            bidirectional=False,
            num_buckets=self._bias.relative_attention_num_buckets,
            max_distance=self._bias.relative_attention_max_distance,
        )
        return self._bias.relative_attention_bias(buckets).permute(0, 3, 1, 2)

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
        assert encoder is not None  # run_layers refuses an encoder–decoder call without it
        self_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        past = self_cache.get_seq_length(start) if self_cache is not None else 0
        config = self.decoder.config
        causal = create_causal_mask(
            config=config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=self_cache,
            position_ids=position_ids,
            layer_idx=start,
        )
        bias = self._position_bias(position_ids, past + hidden.shape[1], attention_mask).to(hidden.dtype)
        cross = create_bidirectional_mask(
            config=config, inputs_embeds=hidden, attention_mask=encoder.mask, encoder_hidden_states=encoder.hidden
        )
        for index in range(start, end):
            hidden, _, _ = self.decoder.block[index](
                hidden, causal, bias, encoder.hidden, cross, None, past_key_values=cache
            )
            yield hidden

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder.dropout(self.decoder.final_layer_norm(hidden))
        return hidden * self._output_scale if self._output_scale is not None else hidden

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.lm_head(hidden)
