"""What both BLIP-2 families (OPT, FlanT5) share: a frozen ViT whose features the Q-Former's queries read, and those
queries' projected outputs written over the prompt's image tokens, as `Blip2ForConditionalGeneration` does
(transformers 5.x puts them into the prompt — the decoder's for OPT, the encoder's for T5 — not before it)."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from pipeline.models.adapters.base import splice_image_features


class Blip2Images:
    model: PreTrainedModel

    @property
    def vision_encoder(self) -> nn.Module | None:
        """The ViT; the Q-Former and the language projection are the trainable bridge, as in BLIP-2."""
        return cast(nn.Module, self.model.vision_model)

    @property
    def image_token_id(self) -> int | None:
        return int(self.model.config.image_token_id)

    @property
    def num_image_tokens(self) -> int:
        return int(self.model.config.num_query_tokens)

    def with_images(
        self, embeds: torch.Tensor, input_ids: torch.Tensor, pixel_values: torch.Tensor | None
    ) -> torch.Tensor:
        """`embeds` of `input_ids` with the images' query outputs over their image tokens (unchanged without images)."""
        if pixel_values is None:
            return embeds
        blip2: Any = self.model  # a Blip2ForConditionalGeneration
        # get_image_features runs the ViT in its dtype and the Q-Former in float32 (BLIP-2 keeps it there), casting back
        vision_dtype = next(blip2.vision_model.parameters()).dtype
        features = blip2.get_image_features(pixel_values=pixel_values.to(vision_dtype), return_dict=True).pooler_output
        return splice_image_features(embeds, input_ids, blip2.config.image_token_id, cast(torch.Tensor, features))
