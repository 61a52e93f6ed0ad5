"""Test doubles for the decoder's draft-head seam: a head that drafts exactly the full model's tokens (and checks the
stateful-head protocol), and one whose drafts (almost) never match."""

from __future__ import annotations

import torch


class FullModelHead(torch.nn.Module):
    """A stateful head that runs layers n..L-1 with its own KV cache: its drafts are the full model's.

    Acceptance is then 100 %, but only if the decoder keeps the head's state aligned with the sequence
    (reset, prompt, crop after rejections, catch-up after full acceptance), so it tests that protocol too.
    """

    def __init__(self, model, draft_layers: int, encoder=None) -> None:
        """`encoder`: the prompt's encoder states, which an encoder–decoder's deep blocks cross-attend to."""
        super().__init__()
        self.prompt_encoder = self.encoder = encoder
        from pipeline.models.adapters import adapter_for

        self._model = [model]  # not a submodule: the head must not own the model's parameters
        self.adapter = adapter_for(model)
        self.n = draft_layers
        self.calls = 0
        self.reset()

    def reset(self) -> None:
        self.cache = self.adapter.new_cache()
        self.encoder = self.prompt_encoder  # a batched generation may have dropped finished rows from it

    def crop(self, length: int) -> None:
        from pipeline.decoding.cache import crop_to

        crop_to(self.cache, length)

    @property
    def length(self) -> int:
        return self.cache.get_seq_length(self.n)

    def select(self, rows: torch.Tensor) -> None:
        from pipeline.models.adapters import EncoderStates

        self.cache.batch_select_indices(rows)
        if self.encoder is not None:
            mask = None if self.encoder.mask is None else self.encoder.mask[rows]
            self.encoder = EncoderStates(self.encoder.hidden[rows], mask)

    def forward(self, hidden: torch.Tensor, attention_mask=None, position_ids=None) -> torch.Tensor:
        self.calls += 1
        layers = (self.n, self.adapter.num_layers)
        return self.adapter.run_layers(hidden, *layers, self.cache, position_ids, attention_mask, encoder=self.encoder)


class RandomHead(torch.nn.Module):
    """A random linear map: drafts that (almost) never match."""

    def __init__(self, hidden_size: int, seed: int = 1, dtype=torch.float64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(hidden_size, hidden_size, bias=False, dtype=dtype)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(hidden_size, hidden_size, generator=g, dtype=dtype) * 3)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)
