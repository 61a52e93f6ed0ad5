"""Checking and normalising what `generate` is given, the same way for every decoder.

The decoders take their inputs as `model.generate` does (`input_ids`, `max_new_tokens`,
`eos_token_id`, `pixel_values`, `attention_mask`, ...) and return sequences in its layout. Batch size is 1.
A left-padded prompt is decoded without its padding (with positions counted from the first real token,
as `model.generate` does) and the padding is put back in front of the output.

For an encoder–decoder backbone, `input_ids` (and `attention_mask`) are the encoder's prompt, as for
`model.generate`: they become `encoder_input_ids` of the adapter's prefix, the decoder starts from its
`decoder_start_token_id`, and the sequences are the decoder's (start token + new tokens), as `model.generate`
returns them for encoder–decoder models.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.decoding.sampling import SamplingConfig
from pipeline.models.adapters import BackboneAdapter


@dataclass
class GenerationRequest:
    input_ids: torch.Tensor  # [1, P]: the decoder's prompt without left padding, on the model's device
    padding: torch.Tensor  # [1, p]: the removed left padding (p may be 0)
    model_inputs: dict[str, torch.Tensor]  # what the adapter's `prefix` takes (pixel_values, encoder_input_ids, ...)
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
    """The one device the model lives on; a model split over several devices is refused with the reason."""
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        raise ValueError(
            f"the model's parameters are spread over {sorted(map(str, devices))}: self-speculative decoding runs "
            "draft and verification over one shared KV cache on one device; load the model onto one device "
            "(model.device in params.yaml, or .to(device)) instead of a device_map"
        )
    return devices.pop()


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
    adapter: BackboneAdapter,
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
    for unsupported in ("inputs_embeds", "decoder_input_ids", "encoder_input_ids"):
        if unsupported in model_inputs:
            raise ValueError(f"{unsupported} is not supported: pass input_ids (and pixel_values for images)")
    model = adapter.model
    device = model_device(model)
    input_ids = input_ids.to(device)
    inputs = {k: v for k, v in model_inputs.items() if v is not None}
    attention_mask = inputs.pop("attention_mask", None)
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )
    if adapter.is_encoder_decoder:
        # The prompt is the encoder's; the decoder starts from its start token (model.generate's layout)
        inputs["encoder_input_ids"] = input_ids
        if attention_mask is not None:
            inputs["encoder_attention_mask"] = attention_mask.to(device)
        attention_mask = None
        start = adapter.decoder_start_token_id
        input_ids = torch.full((1, 1), start if start is not None else 0, dtype=torch.long, device=device)
    padding = input_ids[:, :0]
    if attention_mask is not None:
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
