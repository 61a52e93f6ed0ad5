"""The decoder-side view of a VLM that self-speculative decoding needs, shared by every backbone family.

An adapter wraps a Hugging Face model without changing it. The decoder, the imitation network, the trainers and
the layer-choice code only ever talk to this interface, so a new family means one more adapter, not a change to
the decoder. Exit layers are always passed explicitly as `start`/`end`; the model's config is never edited.

For an encoder–decoder backbone (BLIP-2 FlanT5) the "layers" are the decoder blocks: `prefix` runs the image
encoder, the Q-Former and the text encoder once and returns the decoder's input embeddings together with the
encoder states its blocks cross-attend to (`Prefix.encoder`), which every `run_layers` call then takes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Literal, NamedTuple, overload

import torch
from torch import nn
from transformers import Cache, DynamicCache, PreTrainedConfig, PreTrainedModel


class EncoderStates(NamedTuple):
    """What an encoder–decoder's decoder blocks cross-attend to."""

    hidden: torch.Tensor  # [B, S, H]: the encoder's output
    mask: torch.Tensor | None = None  # [B, S]: 1 for real tokens, 0 for padding (None: no padding)


class Prefix(NamedTuple):
    """What the decoder layers see before any generated token."""

    embeds: torch.Tensor  # [B, T, H]: decoder input embeddings (image features spliced in for decoder-only VLMs)
    encoder: EncoderStates | None = None  # encoder–decoder models only


class BackboneAdapter(ABC):
    """A prefix of embeddings, a stack of decoder layers, a final norm and an LM head."""

    is_encoder_decoder = False
    # How prompts for this family are laid out when no checkpoint processor does it (pipeline.data.prompts)
    prompt_layout: str = "llava"
    # Keyword inputs `prefix` understands besides `input_ids`; anything else is refused, never silently dropped
    prefix_inputs: frozenset[str] = frozenset({"pixel_values"})

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
    def text_config(self) -> PreTrainedConfig:
        """The config of the decoder stack (what its masks and caches are built from)."""

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @abstractmethod
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Decoder input embeddings of text ids (no image features)."""

    @property
    def embed_weight(self) -> torch.Tensor:
        """The token-embedding table: its dtype and device are those of the decoder's hidden states."""
        weight = self.model.get_input_embeddings().weight
        assert isinstance(weight, torch.Tensor)  # an nn.Embedding's table
        return weight

    @property
    def vision_encoder(self) -> nn.Module | None:
        """The image encoder without what maps it into the language model (None for text-only models)."""
        return None

    @property
    def image_token_id(self) -> int | None:
        """The placeholder token whose positions the image features take (None for text-only models)."""
        return None

    @property
    def num_image_tokens(self) -> int:
        """Image-feature positions one image takes in the prompt (0 for text-only models)."""
        return 0

    @property
    def decoder_start_token_id(self) -> int | None:
        """The token an encoder–decoder's decoder starts from (None for decoder-only models)."""
        return None

    def new_cache(self) -> Cache:
        """An empty KV cache for the decoder stack (one layer object per layer, sliding-window ones where the config
        says so)."""
        return DynamicCache(config=self.text_config)

    def batch_prefix(self, batch: Mapping[str, torch.Tensor]) -> Prefix:
        """`prefix` of a collated batch: its `input_ids` and whichever of the inputs `prefix` takes it holds."""
        return self.prefix(batch["input_ids"], **{k: batch[k] for k in self.prefix_inputs if k in batch})

    def new_tokens(self, sequences: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        """The generated part of `sequences` (`model.generate`'s layout) for the prompt `prompt_ids`: after the prompt,
        or, for an encoder–decoder, after the decoder's start token."""
        return sequences[:, 1:] if self.is_encoder_decoder else sequences[:, prompt_ids.shape[1] :]

    def forward_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A collated training batch (`pipeline.data.datasets.collate_for_training`) as the Hugging Face model's
        `forward` takes it: its `.loss` is the cross-entropy of the target tokens and `.logits[:, t]` predicts
        `batch["labels"][:, t + 1]`."""
        return dict(batch)

    def continuation_prefix(
        self, prompt_ids: torch.Tensor, sequences: torch.Tensor, **model_inputs: torch.Tensor | None
    ) -> tuple[Prefix, int]:
        """Teacher-forced inputs for a prompt (as decoders take it) and the `sequences` a decoder returned for it: the
        prefix over the whole decoder sequence, and the index of its first generated token."""
        if self.is_encoder_decoder:  # the prompt was the encoder's; the decoder's sequence is start + new tokens
            return self.prefix(sequences, encoder_input_ids=prompt_ids, **model_inputs), 1
        return self.prefix(sequences, **model_inputs), prompt_ids.shape[1]

    def prefix(self, input_ids: torch.Tensor, **model_inputs: torch.Tensor | None) -> Prefix:
        """The embeddings the decoder sees for a prompt (and, for an encoder–decoder, the encoder states)."""
        given = {k: v for k, v in model_inputs.items() if v is not None}
        unknown = sorted(set(given) - self.prefix_inputs)
        if unknown:
            raise ValueError(
                f"{type(self.model).__name__} does not take {unknown}; its inputs are input_ids and "
                f"{sorted(self.prefix_inputs)}"
            )
        return self._prefix(input_ids, **given)

    @abstractmethod
    def _prefix(self, input_ids: torch.Tensor, **model_inputs: torch.Tensor) -> Prefix:
        """`prefix` with its inputs checked."""

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
        encoder: EncoderStates | None = None,
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
        encoder: EncoderStates | None = None,
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
        encoder: EncoderStates | None = None,
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
        encoder: EncoderStates | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run decoder layers `start..end-1`; with `collect_hidden` also return each layer's output.

        `attention_mask` is the 2-D padding mask over every position the layers attend to (cached + new);
        `encoder` is required by encoder–decoder backbones and refused by the others."""
        if not 0 <= start <= end <= self.num_layers:
            raise ValueError(f"layer range {start}..{end} is outside 0..{self.num_layers}")
        if self.is_encoder_decoder and encoder is None and start < end:
            raise ValueError(f"{type(self.model).__name__} is an encoder–decoder: run_layers needs prefix(...).encoder")
        if not self.is_encoder_decoder and encoder is not None:
            raise ValueError(f"{type(self.model).__name__} has no encoder: pass encoder=None")
        if position_ids is None:
            # Layers in one range share a cache length only if they were run together; `start` is the reference.
            past = cache.get_seq_length(start) if cache is not None and start < end else 0
            position_ids = torch.arange(past, past + hidden.shape[1], device=hidden.device).unsqueeze(0)
        outputs: list[torch.Tensor] = []
        if start < end:
            for output in self._layer_outputs(hidden, start, end, cache, position_ids, attention_mask, encoder):
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
        encoder: EncoderStates | None,
    ) -> Iterator[torch.Tensor]:
        """Each layer's output for layers `start..end-1` (start < end, positions resolved, inputs checked)."""

    @abstractmethod
    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """Everything between the last layer's output and the LM head (norm, output projection, output scaling)."""

    @abstractmethod
    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm then LM head: how any layer's (or an imitation network's) state becomes logits."""
        return self.lm_head(self.final_norm(hidden))


def attention_layer_types(config: PreTrainedConfig) -> list[str]:
    """Per-layer attention kind ("full_attention" | "sliding_attention") of a decoder config: `layer_types` when the
    config lists them (Qwen2 with `use_sliding_window` mixes both), else one window for every layer (Mistral)."""
    if getattr(config, "layer_types", None) is not None:
        return list(config.layer_types)
    if getattr(config, "sliding_window", None) is not None:
        return ["sliding_attention"] * config.num_hidden_layers
    return ["full_attention"] * config.num_hidden_layers


def splice_image_features(
    embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int, features: torch.Tensor
) -> torch.Tensor:
    """`features` [N, K, H] written into the image-token positions of `embeds`, in order, as the HF VLM classes do
    (`masked_scatter`); a count mismatch is an error naming both counts, not a shape error deep in torch."""
    mask = input_ids == image_token_id
    slots, given = int(mask.sum()), features.shape[0] * features.shape[1]
    if slots != given:
        raise ValueError(
            f"the prompt has {slots} image tokens (id {image_token_id}) but the images give {given} features "
            f"({features.shape[0]} image(s) × {features.shape[1]}): build prompts with the backbone's prompt builder"
        )
    return embeds.masked_scatter(mask.unsqueeze(-1), features.to(embeds.device, embeds.dtype))
