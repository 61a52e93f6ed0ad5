"""Speculative decoding with a separate draft model: the baseline of Gagrani et al. 2024 ("On Speculative Decoding for
Multimodal Large Language Models"), a small language-only model that drafts for the VLM without seeing the image.

The draft model reads the same token sequence as the VLM, image placeholder tokens included (they carry no pixels:
to the draft they are ordinary vocabulary entries), so Hugging Face's `assistant_model` can drive it too, and its KV
cache mirrors the VLM's slot for slot: the engine (`pipeline.decoding.engine`) runs it with no shared layers
(n = 0), the draft model writing its own cache while drafting, verification running all of the VLM's layers, and
both caches cut back to the same kept slots after every round. Batches work as for self-speculation: the draft model
gets the same slot mask (dead slots of rejected drafts) and the same per-row positions.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from transformers import Cache, DynamicCache, PreTrainedModel

from pipeline.decoding.cache import crop_to
from pipeline.decoding.drafters import Drafter, check_head_placement
from pipeline.decoding.engine import Decoder, speculative_generate
from pipeline.decoding.inputs import GenerationRequest, model_device
from pipeline.decoding.policies import DraftPolicy, as_policy
from pipeline.decoding.stats import GenerationOutput
from pipeline.models.adapters import BackboneAdapter, EncoderStates


class SeparateModelDrafter(Drafter):
    """Drafts with `draft_model` (a Hugging Face causal LM over the backbone's vocabulary) and its own cache."""

    def __init__(self, adapter: BackboneAdapter, draft_model: nn.Module) -> None:
        super().__init__(adapter, 0)
        self.draft_model = draft_model
        self.cache: Cache | None = None

    def _cache(self) -> Cache:
        if self.cache is None:
            raise RuntimeError("the draft model's cache is used before start(): a generation must begin with it")
        return self.cache

    def _forward(
        self, ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        out = self.draft_model(
            input_ids=ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=self._cache(),
            use_cache=True,
        )
        return out.logits

    def start(self, request: GenerationRequest) -> None:
        self.cache = DynamicCache(config=cast(PreTrainedModel, self.draft_model).config)
        self._forward(request.input_ids, request.prompt_positions(), request.prompt_mask)

    def draft_logits(
        self,
        tokens: torch.Tensor,
        hidden: torch.Tensor,
        cache: Cache,
        position_ids: torch.Tensor,
        encoder: EncoderStates | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._forward(tokens, position_ids, attention_mask)[:, -1]

    def observe_token(
        self, tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> None:
        self._forward(tokens, position_ids, attention_mask)

    def after_verify(
        self,
        kept: int,
        unseen: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
    ) -> None:
        crop_to(self._cache(), kept)

    def select(self, rows: torch.Tensor) -> None:
        self._cache().batch_select_indices(rows)


def check_draft_model(model: nn.Module, adapter: BackboneAdapter, draft_model: nn.Module) -> None:
    """What a separate draft must share with the VLM, checked before decoding: a decoder-only backbone (its cache is
    the draft's mirror), one vocabulary, one device and dtype."""
    if adapter.is_encoder_decoder:
        raise ValueError(
            f"{type(model).__name__} is an encoder–decoder: a separate language-only draft model needs a decoder-only "
            "backbone (its token sequence and cache mirror the backbone's)"
        )
    vocab = adapter.embed_weight.shape[0]
    embeddings = cast(nn.Embedding, cast(PreTrainedModel, draft_model).get_input_embeddings())
    draft_vocab = embeddings.weight.shape[0]
    if draft_vocab != vocab:
        raise ValueError(
            f"the draft model's vocabulary has {draft_vocab} entries but the backbone's has {vocab}: train the draft "
            "on the backbone's tokenizer"
        )
    check_head_placement(draft_model, adapter, "the draft model", "load it with the backbone's dtype and device")


class SeparateDraftDecoder(Decoder):
    """Speculative decoding of `model` with `draft_model` drafting: greedy output equals `model.generate` row for row;
    with `temperature > 0` each row is distributed as the full model's sampling distribution."""

    def __init__(self, model: nn.Module, draft_model: nn.Module, draft_len: int | DraftPolicy = 5) -> None:
        super().__init__(model)
        model_device(draft_model)  # refuses a draft split over devices
        check_draft_model(model, self.adapter, draft_model)
        self.draft_model = draft_model
        self.policy = as_policy(draft_len)
        self.drafter = SeparateModelDrafter(self.adapter, draft_model)

    def _generate(self, request: GenerationRequest) -> GenerationOutput:
        return speculative_generate(self.adapter, self.drafter, self.policy, request)
