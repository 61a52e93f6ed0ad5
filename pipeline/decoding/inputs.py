"""Checking and normalising what `generate` is given, the same way for every decoder.

The decoders take their inputs as `model.generate` does (`input_ids`, `max_new_tokens`,
`eos_token_id`, `pixel_values`, `attention_mask`, ...) and return sequences in its layout. Batch size is 1.
A left-padded prompt is decoded without its padding (with positions counted from the first real token,
as `model.generate` does) and the padding is put back in front of the output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.decoding.sampling import SamplingConfig


@dataclass
class GenerationRequest:
    input_ids: torch.Tensor  # [1, P]: the prompt without left padding, on the model's device
    padding: torch.Tensor  # [1, p]: the removed left padding (p may be 0)
    model_inputs: dict[str, torch.Tensor]  # what the adapter's `prefix` takes (pixel_values, ...)
    max_new_tokens: int
    eos_token_ids: frozenset[int]
    sampling: SamplingConfig
    generator: torch.Generator | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1]

    def sequences(self, new_tokens: list[torch.Tensor]) -> torch.Tensor:
        """padding + prompt + new tokens, as one [1, T] tensor (`model.generate(...).sequences`)."""
        parts = [self.padding.view(-1), self.input_ids.view(-1), *(t.view(-1) for t in new_tokens)]
        return torch.cat(parts).unsqueeze(0)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def resolve_eos(model: nn.Module, eos_token_id: int | Iterable[int] | None) -> frozenset[int]:
    """`None` means the model's generation config's EOS, as in `model.generate`; `[]` disables EOS stopping."""
    if eos_token_id is None:
        config = getattr(model, "generation_config", None)
        eos_token_id = getattr(config, "eos_token_id", None)
        if eos_token_id is None:
            return frozenset()
    if isinstance(eos_token_id, torch.Tensor):
        eos_token_id = eos_token_id.flatten().tolist()
    if isinstance(eos_token_id, int):
        eos_token_id = [eos_token_id]
    return frozenset(int(t) for t in eos_token_id)


def prepare_request(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | Iterable[int] | None,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    model_inputs: dict[str, torch.Tensor],
) -> GenerationRequest:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a [batch, length] tensor, got {shape}")
    if input_ids.shape[0] != 1:
        raise ValueError(
            "batch size must be 1 (speculative decoding commits a different number of tokens per row), "
            f"got {input_ids.shape[0]}"
        )
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty: give at least one prompt token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer ≥ 0, got {max_new_tokens!r}")
    if "inputs_embeds" in model_inputs:
        raise ValueError("inputs_embeds is not supported: pass input_ids (and pixel_values for images)")
    device = model_device(model)
    input_ids = input_ids.to(device)
    inputs = {k: v for k, v in model_inputs.items() if v is not None}
    attention_mask = inputs.pop("attention_mask", None)
    padding = input_ids[:, :0]
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
            )
        keep = attention_mask[0].to(device).bool()
        pads = int((~keep).sum())
        if pads:
            if bool(keep[:pads].any()) or not bool(keep[pads:].all()):
                raise ValueError("attention_mask may only mask left padding (zeros before the first real token)")
            if pads == input_ids.shape[1]:
                raise ValueError("attention_mask masks every prompt token")
            padding, input_ids = input_ids[:, :pads], input_ids[:, pads:]
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return GenerationRequest(
        input_ids=input_ids,
        padding=padding,
        model_inputs=inputs,
        max_new_tokens=max_new_tokens,
        eos_token_ids=resolve_eos(model, eos_token_id),
        sampling=sampling,
        generator=generator,
        device=device,
    )
