"""Checking and normalising what `generate` is given, the same way for every decoder.

The decoders take their inputs as `model.generate` does (`input_ids` [B, T], left padded with its `attention_mask`,
`max_new_tokens`, `eos_token_id`, `pixel_values`, ...) and return sequences in its layout: the prompt as given, the
new tokens, and `pad_token_id` after a row's EOS up to the longest row. Padding columns every row shares are removed
before decoding (a single prompt is then decoded without any padding, positions counted from its first real token, as
`model.generate` does) and put back in front of the output.

For an encoder–decoder backbone, `input_ids` (and `attention_mask`) are the encoder's prompts, as for
`model.generate`: they become `encoder_input_ids` of the adapter's prefix, every row's decoder starts from its
`decoder_start_token_id`, and the sequences are the decoder's (start token + new tokens), as `model.generate`
returns them for encoder–decoder models.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.decoding.sampling import SamplingConfig
from pipeline.models.adapters import BackboneAdapter


@dataclass
class GenerationRequest:
    input_ids: torch.Tensor  # [B, P]: the decoders' prompts, left padded, shared padding columns removed
    prompt_mask: torch.Tensor | None  # [B, P]: 1 for real tokens; None when no row is padded
    padding: torch.Tensor  # [B, p]: the removed shared left-padding columns (p may be 0)
    model_inputs: dict[str, torch.Tensor]  # what the adapter's `prefix` takes (pixel_values, encoder_input_ids, ...)
    max_new_tokens: int
    eos_token_ids: frozenset[int]
    sampling: SamplingConfig
    generator: torch.Generator | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    pad_token_id: int = 0  # what fills a finished row up to the longest one

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1]

    def prompt_positions(self) -> torch.Tensor:
        """[B, P]: each prompt token's position, counted from the row's first real token."""
        if self.prompt_mask is None:
            return torch.arange(self.prompt_length, device=self.device).unsqueeze(0).expand(self.batch_size, -1)
        return (self.prompt_mask.long().cumsum(-1) - 1).clamp_min(0)

    def sequences(self, new_tokens: Sequence[Sequence[int]]) -> torch.Tensor:
        """padding + prompt + each row's new tokens, `pad_token_id` after the shorter rows: [B, T + longest]."""
        longest = max((len(row) for row in new_tokens), default=0)
        new = torch.full((self.batch_size, longest), self.pad_token_id, dtype=torch.long, device=self.device)
        for row, tokens in enumerate(new_tokens):
            if tokens:
                new[row, : len(tokens)] = torch.tensor(list(tokens), dtype=torch.long, device=self.device)
        return torch.cat([self.padding, self.input_ids, new], dim=1)


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


def resolve_pad(model: nn.Module, eos: frozenset[int], pad_token_id: int | None) -> int:
    """The token after a finished row's EOS: as `model.generate` picks it (its pad token, else its first EOS)."""
    if pad_token_id is None:
        pad_token_id = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if isinstance(pad_token_id, int):
        return pad_token_id
    return min(eos) if eos else 0


def _check_left_padding(mask: torch.Tensor) -> None:
    real = mask.bool()
    if not bool(real.any(dim=1).all()):
        raise ValueError("attention_mask masks every token of a prompt: give each row at least one real token")
    # left padding: once a row's real tokens start they never stop
    if bool((real.long().cummax(dim=1).values.bool() & ~real).any()):
        raise ValueError("attention_mask may only mask left padding (zeros before each row's first real token)")


def prepare_request(
    adapter: BackboneAdapter,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | Iterable[int] | None,
    sampling: SamplingConfig,
    generator: torch.Generator | None,
    model_inputs: dict[str, torch.Tensor],
    pad_token_id: int | None = None,
) -> GenerationRequest:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a [batch, length] tensor, got {shape}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} is empty: give at least one prompt of one token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer ≥ 0, got {max_new_tokens!r}")
    for unsupported in ("inputs_embeds", "decoder_input_ids", "encoder_input_ids"):
        if unsupported in model_inputs:
            raise ValueError(f"{unsupported} is not supported: pass input_ids (and pixel_values for images)")
    model = adapter.model
    device = model_device(model)
    batch = input_ids.shape[0]
    input_ids = input_ids.to(device)
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model_inputs.items() if v is not None}
    mask = inputs.pop("attention_mask", None)
    if mask is not None:
        if mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(mask.shape)} does not match input_ids {tuple(input_ids.shape)}")
        if not adapter.is_encoder_decoder:
            _check_left_padding(mask)
    if adapter.is_encoder_decoder:
        # The prompts are the encoder's; every decoder starts from its start token (model.generate's layout)
        inputs["encoder_input_ids"] = input_ids
        if mask is not None:
            inputs["encoder_attention_mask"] = mask
        start = adapter.decoder_start_token_id
        input_ids = torch.full((batch, 1), start if start is not None else 0, dtype=torch.long, device=device)
        mask = None
    padding = input_ids[:, :0]
    if mask is not None:
        shared = int(mask.bool().any(dim=0).long().argmax())  # columns padded in every row
        padding, input_ids, mask = input_ids[:, :shared], input_ids[:, shared:], mask[:, shared:]
        if bool(mask.bool().all()):
            mask = None
    eos = resolve_eos(model, eos_token_id)
    return GenerationRequest(
        input_ids=input_ids,
        prompt_mask=mask.long() if mask is not None else None,
        padding=padding,
        model_inputs=inputs,
        max_new_tokens=max_new_tokens,
        eos_token_ids=eos,
        sampling=sampling,
        generator=generator,
        device=device,
        pad_token_id=resolve_pad(model, eos, pad_token_id),
    )
