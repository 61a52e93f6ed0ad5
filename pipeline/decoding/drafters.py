"""Draft models that live inside the full model: which layers a draft token goes through.

Every drafter runs layers 0..n-1 exactly as the full model does (`shared_layers = n`): those layers' KV
entries for drafted tokens stay valid for verification, which then only runs layers n..L-1. What a
drafter does after layer n differs:

- `EarlyExitDrafter` (SSD / LayerSkip): nothing, or an imitation head; it writes no KV past layer n.
- `SkipLayerDrafter` (Draft & Verify): the remaining non-skipped layers, with the shared cache. Those
  layers see other inputs than in the full model, so their draft KV entries are dropped before
  verification recomputes them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import cast

import torch
from torch import nn
from transformers import Cache

from pipeline.decoding.cache import crop_to
from pipeline.decoding.head_protocol import StatefulHead, is_stateful
from pipeline.decoding.inputs import GenerationRequest
from pipeline.models.adapters import BackboneAdapter, EncoderStates


class Drafter(ABC):
    def __init__(self, adapter: BackboneAdapter, shared_layers: int) -> None:
        self.adapter = adapter
        self.shared_layers = shared_layers

    # The hooks without @abstractmethod are optional: no-ops unless a drafter keeps state (B027 is intended)
    def reset(self) -> None:  # noqa: B027
        """Forget per-generation state."""

    def start(self, request: GenerationRequest) -> None:  # noqa: B027
        """A generation begins: the prompts as the decoder was given them (for drafters with a model of their own)."""

    def observe_prompt(  # noqa: B027
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor
    ) -> None:
        """The prompts' layer-n states, once per generation (for drafters that keep state)."""

    @abstractmethod
    def draft_logits(
        self,
        tokens: torch.Tensor,
        hidden: torch.Tensor,
        cache: Cache,
        position_ids: torch.Tensor,
        encoder: EncoderStates | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draft logits [B, V] for the token after `tokens` [B, 1], whose layer-n states are `hidden`.
        `attention_mask` is the batch's slot mask over every position these tokens attend to (None: all)."""

    def observe_token(  # noqa: B027
        self, tokens: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> None:
        """The round's last draft token [B, 1], which goes to verification without being drafted from: drafters with
        a cache of their own append it, so that their cache holds every slot the full model's does."""

    def before_verify(self, cache: Cache, length: int) -> None:  # noqa: B027
        """Drop any KV entries past layer n the draft wrote (the cache held `length` slots before drafting)."""

    def after_verify(  # noqa: B027
        self,
        kept: int,
        unseen: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
    ) -> None:
        """Verification kept `kept` slots; `unseen` is the layer-n state of the round's last slot, which the draft
        never saw, when that slot was kept (at `position_ids`, under `attention_mask`)."""

    def select(self, rows: torch.Tensor) -> None:  # noqa: B027
        """Keep only `rows` of the batch (the others finished)."""


class LayerStateDrafter(Drafter):
    """A draft made of the full model's own pieces: layer-n states → `draft_hidden` → the full model's final norm and
    LM head."""

    @abstractmethod
    def draft_hidden(
        self,
        hidden: torch.Tensor,
        cache: Cache,
        position_ids: torch.Tensor,
        encoder: EncoderStates | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Layer-n states of new tokens → the states the final norm and LM head turn into draft logits."""

    def draft_logits(
        self,
        tokens: torch.Tensor,
        hidden: torch.Tensor,
        cache: Cache,
        position_ids: torch.Tensor,
        encoder: EncoderStates | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.adapter.logits(self.draft_hidden(hidden, cache, position_ids, encoder, attention_mask)[:, -1])


class EarlyExitDrafter(LayerStateDrafter):
    """Layers 0..n-1, then `head` (or nothing) before the final norm and LM head."""

    def __init__(self, adapter: BackboneAdapter, draft_layers: int, head: nn.Module | None = None) -> None:
        super().__init__(adapter, draft_layers)
        if head is not None:
            check_head_placement(head, adapter)
        self.head = head
        self.stateful = is_stateful(head)
        # layer-n states of the prompt and kept round-end slots the head has not seen yet: (states, slot mask,
        # positions)
        self.unseen: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = []

    def _head(self) -> StatefulHead:
        return cast(StatefulHead, self.head)  # `stateful`: the head passed the protocol check in __init__

    def reset(self) -> None:
        self.unseen = []
        if self.stateful:
            self._head().reset()

    def _catch_up(self) -> None:
        """Show the head the slots it has not seen, in one call: the prompt and plain decoding steps (d = 0) leave
        their slots to the head's next draft instead of running the head for a draft nobody asked for."""
        if not self.unseen:
            return
        hidden = torch.cat([states for states, _, _ in self.unseen], dim=1)
        positions = torch.cat([where for _, _, where in self.unseen], dim=1)
        mask = self.unseen[-1][1]  # the latest mask covers every earlier slot; the head's causal mask does the rest
        self.unseen = []
        self._head()(hidden, attention_mask=mask, position_ids=positions)

    def observe_prompt(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor
    ) -> None:
        if self.stateful:  # seen with the first draft: a generation that never drafts never runs the head
            self.unseen.append((hidden, attention_mask, position_ids))

    def draft_hidden(
        self,
        hidden: torch.Tensor,
        cache: Cache,
        position_ids: torch.Tensor,
        encoder: EncoderStates | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.head is None:
            return hidden
        if self.stateful:
            self._catch_up()
            return self._head()(hidden, attention_mask=attention_mask, position_ids=position_ids)
        return self.head(hidden)

    def after_verify(
        self,
        kept: int,
        unseen: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
    ) -> None:
        if not self.stateful:
            return
        if unseen is None:
            # only a round that drafted cuts slots or leaves none unseen, and drafting caught the head up
            assert not self.unseen
            self._head().crop(kept)
        else:
            self.unseen.append((unseen, attention_mask, position_ids))

    def select(self, rows: torch.Tensor) -> None:
        if not self.stateful:
            return
        select = getattr(self.head, "select", None)
        if select is None:
            raise ValueError(
                f"the draft head {type(self.head).__name__} keeps state (reset/crop) but has no select(rows): batched "
                "decoding drops finished rows from it; implement select or decode one prompt at a time"
            )
        select(rows)
        self.unseen = [
            (states[rows], None if mask is None else mask[rows], where[rows]) for states, mask, where in self.unseen
        ]


HEAD_PLACEMENT_FIX = (
    "cast it with head.to(device=..., dtype=...) (pipeline.models.imitation.load_draft_head does this when it loads a "
    "saved network)"
)


def check_head_placement(
    head: nn.Module, adapter: BackboneAdapter, what: str = "the draft head", fix: str = HEAD_PLACEMENT_FIX
) -> None:
    """A draft (`what`: a head, or a draft model of its own) must compute in the dtype and on the device of the
    backbone's hidden states: say so up front, with the `fix`, instead of failing at the first draft with a bare matmul
    error."""
    weight = adapter.embed_weight
    found = {(p.dtype, p.device) for p in head.parameters()}
    if found - {(weight.dtype, weight.device)}:
        have = ", ".join(sorted(f"{dtype} on {device}" for dtype, device in found))
        raise ValueError(
            f"{what}'s parameters are {have} but the backbone's hidden states are {weight.dtype} on "
            f"{weight.device}: {fix}"
        )


class SkipLayerDrafter(LayerStateDrafter):
    """Draft & Verify's draft: the full stack with `skip_layers` left out; layers before the first skip are shared."""

    def __init__(self, adapter: BackboneAdapter, skip_layers: Iterable[int]) -> None:
        skip = sorted(set(skip_layers))
        total = adapter.num_layers
        if not skip:
            raise ValueError("skip_layers is empty: Draft & Verify needs at least one layer to skip")
        if skip[0] < 0 or skip[-1] >= total:
            raise ValueError(f"skip_layers {skip} must lie in 0..{total - 1} (the model has {total} layers)")
        if len(skip) == total:
            raise ValueError("skip_layers skips every layer: the draft would be the embeddings alone")
        super().__init__(adapter, skip[0])
        self.skip_layers = tuple(skip)
        # Contiguous runs of kept layers after the first skipped one: one `run_layers` call each
        kept = [i for i in range(skip[0], total) if i not in set(skip)]
        self.segments: list[tuple[int, int]] = []
        for index in kept:
            if self.segments and self.segments[-1][1] == index:
                self.segments[-1] = (self.segments[-1][0], index + 1)
            else:
                self.segments.append((index, index + 1))

    def draft_hidden(
        self,
        hidden: torch.Tensor,
        cache: Cache,
        position_ids: torch.Tensor,
        encoder: EncoderStates | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for start, end in self.segments:
            hidden = self.adapter.run_layers(hidden, start, end, cache, position_ids, attention_mask, encoder=encoder)
        return hidden

    def before_verify(self, cache: Cache, length: int) -> None:
        crop_to(cache, length, range(self.shared_layers, self.adapter.num_layers))
