"""The methods SSD is compared with, run by the same machinery so they are measured alike.

- `AutoregressiveDecoder`: the full model, one token per forward pass, with a KV cache — the reference.
- `DraftOnlyDecoder`: the draft alone, no verification (what the draft would say by itself; lossy).
- `DraftAndVerifyDecoder`: Draft & Verify (Zhang et al. 2023): the draft skips intermediate layers
  and stops on low confidence; the full model verifies.
- LayerSkip-style self-speculation is `SelfSpeculativeDecoder(model, n, head=None)`.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from pipeline.decoding.cache import new_cache
from pipeline.decoding.drafters import EarlyExitDrafter, LayerStateDrafter, SkipLayerDrafter
from pipeline.decoding.engine import (
    Decoder,
    Rows,
    check_draft_layers,
    drop_finished,
    pick,
    prefill,
    speculative_generate,
)
from pipeline.decoding.inputs import GenerationRequest
from pipeline.decoding.policies import ConfidenceStop, DraftPolicy, as_policy
from pipeline.decoding.slots import SlotTable
from pipeline.decoding.stats import GenerationOutput
from pipeline.models.adapters import BackboneAdapter


def _token_by_token(
    adapter: BackboneAdapter, request: GenerationRequest, drafter: LayerStateDrafter | None
) -> GenerationOutput:
    """Plain decoding: each token of every row through the full stack (`drafter=None`) or through the draft only."""
    rows = Rows(request)
    if request.max_new_tokens == 0:
        return rows.output()
    batch, split = request.batch_size, adapter.num_layers if drafter is None else drafter.shared_layers
    sampling, generator = request.sampling, request.generator
    cache = new_cache(adapter, rollback=False)  # one token at a time: nothing is ever taken back
    prompt = request.prompt_length
    slots = SlotTable(request.prompt_mask, batch, prompt, prompt + request.max_new_tokens, request.device)
    if drafter is None:
        _, logits, encoder = prefill(adapter, request, cache, slots, split)
    else:
        # The draft alone from the first token on: the prompt too goes through the draft's layers only
        drafter.reset()
        where, mask = request.prompt_positions(), slots.mask(0)
        prefix = adapter.prefix(request.input_ids, **request.model_inputs)
        encoder = prefix.encoder
        shallow = adapter.run_layers(prefix.embeds, 0, split, cache, where, mask, encoder=encoder)
        logits = adapter.logits(drafter.draft_hidden(shallow, cache, where, encoder, mask)[:, -1])
    token = pick(logits, sampling, generator)
    done = [rows.commit(slot, [value]) for slot, value in enumerate(token.tolist())]
    # The hot loop: no per-step allocation beyond the layers' own
    while not all(done):
        if any(done):
            keep, encoder = drop_finished(done, rows, cache, slots, encoder, drafter)
            token = token[keep]
        size = len(rows.active)
        where, mask = slots.positions(1), slots.mask(1)
        hidden = adapter.run_layers(adapter.embed(token.view(size, 1)), 0, split, cache, where, mask, encoder=encoder)
        if drafter is not None:
            hidden = drafter.draft_hidden(hidden, cache, where, encoder, mask)
        slots.append(1)
        token = pick(adapter.logits(hidden[:, -1]), sampling, generator)
        done = [rows.commit(slot, [value]) for slot, value in enumerate(token.tolist())]
    return rows.output()


class AutoregressiveDecoder(Decoder):
    """The full model, one token per step, KV-cached: the reference every speedup is measured against."""

    def _generate(self, request: GenerationRequest) -> GenerationOutput:
        return _token_by_token(self.adapter, request, None)


class DraftOnlyDecoder(Decoder):
    """The draft's own output, never verified: `draft_layers` (+ `head`) as SSD drafts, or `skip_layers` as D&V does."""

    def __init__(
        self,
        model: nn.Module,
        draft_layers: int | None = None,
        head: nn.Module | None = None,
        *,
        skip_layers: Iterable[int] | None = None,
    ) -> None:
        super().__init__(model)
        if (draft_layers is None) == (skip_layers is None):
            raise ValueError(
                "give exactly one of draft_layers (early-exit draft) and skip_layers (layer-skipping draft)"
            )
        if skip_layers is not None:
            if head is not None:
                raise ValueError("a head goes with an early-exit draft (draft_layers), not with skip_layers")
            self.drafter: LayerStateDrafter = SkipLayerDrafter(self.adapter, skip_layers)
        else:
            assert draft_layers is not None  # exactly one of the two was given (checked above)
            self.drafter = EarlyExitDrafter(self.adapter, check_draft_layers(self.adapter, draft_layers), head)

    def _generate(self, request: GenerationRequest) -> GenerationOutput:
        return _token_by_token(self.adapter, request, self.drafter)


def default_skip_layers(num_layers: int) -> list[int]:
    """Every other layer of the upper half, a common Draft & Verify starting point (≈ 25 % of the layers)."""
    return list(range(num_layers // 2, num_layers - 1, 2))


class DraftAndVerifyDecoder(Decoder):
    """Draft & Verify: the draft skips `skip_layers`; drafting stops on low top-1 probability.

    Layers before the first skipped one are shared with verification, like SSD's first n layers; the
    draft's KV entries in later layers are dropped before verification recomputes them.
    """

    def __init__(
        self,
        model: nn.Module,
        skip_layers: Iterable[int] | None = None,
        draft_len: int | DraftPolicy | None = None,
    ) -> None:
        super().__init__(model)
        skip = default_skip_layers(self.adapter.num_layers) if skip_layers is None else list(skip_layers)
        self.drafter = SkipLayerDrafter(self.adapter, skip)
        self.policy = ConfidenceStop(0.6, 8) if draft_len is None else as_policy(draft_len)

    @property
    def skip_layers(self) -> tuple[int, ...]:
        return self.drafter.skip_layers

    def _generate(self, request: GenerationRequest) -> GenerationOutput:
        return speculative_generate(self.adapter, self.drafter, self.policy, request)
