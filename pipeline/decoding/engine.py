"""The self-speculative decode loop and `SelfSpeculativeDecoder`, its public face, for a batch of prompts.

One round, with n draft layers out of L and each row's pending token x0 (committed, not yet in the cache):

1. Draft: x0, d1, ..., d_{k-1} go through layers 0..n-1 one at a time (their KV goes into the shared cache), each
   layer-n state goes through the drafter (head / remaining layers) to give d1..dk. Each row drafts as many tokens as
   its own draft-length policy proposes; the batch runs k = the most any row asked for.
2. Verify: dk goes through layers 0..n-1, then layers n..L-1 run once over the k + 1 cached layer-n states
   [x0, d1..dk]: the full model's distributions after each of them, for every row.
3. Accept, per row, a prefix of its own drafts (greedy match, or speculative sampling); commit it plus the verifier's
   next token, which becomes the row's new pending token. A row that accepts more is never held back to the batch
   minimum: the slots another row rejected stay in the cache as dead slots of that row (`pipeline.decoding.slots`),
   and the cache is cut back to the longest row's kept slots. A row that finishes (EOS or budget) leaves the batch.

The loop synchronises with the device once per round (to read how many tokens each row accepted), and once per
drafted token only when the policy stops on confidence.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import Cache

from pipeline.decoding.acceptance import greedy_accept, speculative_accept
from pipeline.decoding.cache import crop_to, has_sliding_layers, new_cache
from pipeline.decoding.drafters import Drafter, EarlyExitDrafter
from pipeline.decoding.inputs import GenerationRequest, model_device, prepare_request
from pipeline.decoding.policies import DraftPolicy, as_policy
from pipeline.decoding.sampling import SamplingConfig, sample
from pipeline.decoding.slots import SlotTable
from pipeline.decoding.stats import DecodingStats, GenerationOutput
from pipeline.models.adapters import BackboneAdapter, EncoderStates, adapter_for


def check_draft_layers(adapter: BackboneAdapter, draft_layers: int) -> int:
    total = adapter.num_layers
    if isinstance(draft_layers, bool) or not isinstance(draft_layers, int) or not 1 <= draft_layers < total:
        raise ValueError(
            f"draft_layers must be an integer in 1..{total - 1} (the model has {total} decoder layers), "
            f"got {draft_layers!r}"
        )
    return draft_layers


def pick(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """The next token of every row from logits [B, V] → [B]: argmax, or a sample of the warped distribution."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    return sample(sampling.probabilities(logits), generator)


def prefill(
    adapter: BackboneAdapter, request: GenerationRequest, cache: Cache, slots: SlotTable, split: int
) -> tuple[torch.Tensor, torch.Tensor, EncoderStates | None]:
    """The prompts through the full model once; returns (layer-`split` states, last-position logits [B, V], the
    encoder states an encoder–decoder's blocks attend to)."""
    where, mask = request.prompt_positions(), slots.mask(0)
    prefix = adapter.prefix(request.input_ids, **request.model_inputs)
    encoder = prefix.encoder
    shallow = adapter.run_layers(prefix.embeds, 0, split, cache, where, mask, encoder=encoder)
    deep = adapter.run_layers(shallow, split, adapter.num_layers, cache, where, mask, encoder=encoder)
    return shallow, adapter.logits(deep[:, -1]), encoder


@dataclass
class Rows:
    """The rows still decoding (their index in the request), with what each has committed so far."""

    request: GenerationRequest
    active: list[int] = field(default_factory=list)
    committed: list[list[int]] = field(default_factory=list)
    stats: list[DecodingStats] = field(default_factory=list)

    def __post_init__(self) -> None:
        batch = self.request.batch_size
        self.active = list(range(batch))
        self.committed = [[] for _ in range(batch)]
        self.stats = [DecodingStats() for _ in range(batch)]

    def count(self, slot: int) -> int:
        return len(self.committed[self.active[slot]])

    def commit(self, slot: int, tokens: list[int]) -> bool:
        """Append `tokens` to active row `slot`, cut to its budget and after its first EOS; whether it is done."""
        row = self.committed[self.active[slot]]
        budget, eos = self.request.max_new_tokens, self.request.eos_token_ids
        for token in tokens[: budget - len(row)]:
            row.append(token)
            if token in eos:
                return True
        return len(row) >= budget

    def output(self) -> GenerationOutput:
        for row, tokens in zip(self.stats, self.committed, strict=True):
            row.new_tokens = len(tokens)
        return GenerationOutput.of_rows(self.request.sequences(self.committed), self.stats)


def drop_finished(
    done: list[bool],
    rows: Rows,
    cache: Cache,
    slots: SlotTable,
    encoder: EncoderStates | None,
    drafter: Drafter | None,
) -> tuple[list[int], EncoderStates | None]:
    """Drop the finished rows from everything that holds one entry per active row (the rows, the cache, the slot
    table, the drafter's state); returns the kept rows' positions among the active ones (for the caller's own per-row
    state) and their encoder states."""
    keep = [slot for slot, finished in enumerate(done) if not finished]
    index = torch.tensor(keep, device=slots.valid.device)
    cache.batch_select_indices(index)
    slots.select(index)
    if drafter is not None:
        drafter.select(index)
    rows.active = [rows.active[slot] for slot in keep]
    if encoder is not None:
        encoder = EncoderStates(encoder.hidden[index], None if encoder.mask is None else encoder.mask[index])
    return keep, encoder


def speculative_generate(
    adapter: BackboneAdapter, drafter: Drafter, policy: DraftPolicy, request: GenerationRequest
) -> GenerationOutput:
    rows = Rows(request)
    if request.max_new_tokens == 0:
        return rows.output()
    n, total, batch = drafter.shared_layers, adapter.num_layers, request.batch_size
    sampling, generator = request.sampling, request.generator
    cache = new_cache(adapter)
    sliding = has_sliding_layers(cache)
    if sliding and batch > 1:
        raise ValueError(
            "batched speculative decoding of a model with sliding-window attention is not supported: its window "
            "would count the rows' rejected drafts; decode its prompts one at a time"
        )
    # Each row keeps its own policy state (its own acceptance history); the first row uses the decoder's own object
    policies = [policy] + [copy.deepcopy(policy) for _ in range(batch - 1)]
    for row_policy in policies:
        row_policy.reset()
    drafter.reset()
    prompt = request.prompt_length
    eos = sorted(request.eos_token_ids)
    eos_ids = torch.tensor(eos, device=request.device) if eos else None
    slots = SlotTable(request.prompt_mask, batch, prompt, prompt + request.max_new_tokens + 1, request.device)
    shallow, logits, encoder = prefill(adapter, request, cache, slots, n)
    drafter.start(request)
    drafter.observe_prompt(shallow, slots.mask(0), request.prompt_positions())
    pending = pick(logits, sampling, generator)
    done = [rows.commit(slot, [token]) for slot, token in enumerate(pending.tolist())]

    while not all(done):
        if any(done):
            keep, encoder = drop_finished(done, rows, cache, slots, encoder, drafter)
            pending, policies = pending[keep], [policies[slot] for slot in keep]
        size, base = len(rows.active), slots.length
        counts = [rows.count(slot) for slot in range(size)]
        # A round commits up to k + 1 tokens: drafting more than remaining - 1 could only be thrown away
        limits = [
            min(policies[slot].propose(counts[slot]), request.max_new_tokens - counts[slot] - 1) for slot in range(size)
        ]
        rounds = max(limits)
        positions = slots.positions(rounds + 1)
        current = pending
        states: list[torch.Tensor] = []
        drafts: list[torch.Tensor] = []
        draft_probs: list[torch.Tensor] = []
        eos_cut = [False] * size  # rows whose draft stopped before a drafted EOS
        for i in range(rounds):
            where, mask = positions[:, i : i + 1], slots.mask(1)
            state = adapter.run_layers(adapter.embed(current.view(size, 1)), 0, n, cache, where, mask, encoder=encoder)
            draft_logits = drafter.draft_logits(current.view(size, 1), state, cache, where, encoder, mask)
            slots.append(1, advance=False)
            states.append(state)
            if sampling.greedy:
                current = draft_logits.argmax(dim=-1)
                needs = policies[0].needs_confidence
                confidence = torch.softmax(draft_logits.float(), dim=-1).amax(dim=-1) if needs else None
            else:
                probs = sampling.probabilities(draft_logits)
                current = sample(probs, generator)
                draft_probs.append(probs)
                confidence = probs.amax(dim=-1)
            drafts.append(current)
            # A drafted EOS ends its row's draft before it: a token after it is never committed, and the EOS itself
            # is the verifier's next token whenever the draft was right, so verifying it buys nothing. A short
            # answer's round then verifies only what precedes its EOS (a first-token EOS makes the round a plain
            # step). One host sync per draft step, as a confidence-stopping policy needs anyway
            ended = torch.isin(current, eos_ids).tolist() if eos_ids is not None else [False] * size
            confidences = confidence.tolist() if confidence is not None and policies[0].needs_confidence else None
            for slot in range(size):
                if ended[slot] and limits[slot] > i:
                    limits[slot], eos_cut[slot] = i, True
                elif limits[slot] > i + 1 and (
                    confidences is not None and not policies[slot].keep_drafting(i + 1, confidences[slot])
                ):
                    limits[slot] = i + 1  # this row stops after the token just drafted
            if max(limits) <= i + 1:
                break
        # every row ended before a drafted EOS: the round verifies one draft fewer than it ran
        k = min(len(drafts), max(limits))
        drafted = [min(limit, k) for limit in limits]

        drafter.before_verify(cache, base)
        where = positions[:, k : k + 1]
        if k < len(drafts):
            # the inputs of all k + 1 verified slots went through layers 0..n (and the drafter) while drafting
            drafts, draft_probs, states = drafts[:k], draft_probs[:k], states[: k + 1]
            last, drafter_saw_last = states[k], True
            verify_in = torch.cat(states, dim=1)
        else:
            mask = slots.mask(1)
            last = adapter.run_layers(adapter.embed(current.view(size, 1)), 0, n, cache, where, mask, encoder=encoder)
            drafter.observe_token(current.view(size, 1), where, mask)
            slots.append(1, advance=False)
            verify_in = torch.cat([*states, last], dim=1) if states else last
            drafter_saw_last = False
        deep = adapter.run_layers(verify_in, n, total, cache, positions[:, : k + 1], slots.mask(0), encoder=encoder)
        verify_logits = adapter.logits(deep)
        draft_tokens = torch.stack(drafts, dim=1) if drafts else pending.new_empty(size, 0)
        own = torch.tensor(drafted, device=request.device)
        if sampling.greedy:
            num_accepted, candidates = greedy_accept(draft_tokens, verify_logits, own)
        else:
            target = sampling.probabilities(verify_logits)
            proposal = torch.stack(draft_probs, dim=1) if draft_probs else target[:, :0]
            num_accepted, candidates = speculative_accept(draft_tokens, proposal, target, generator, own)
        accepted = num_accepted.tolist()  # the verification's synchronisation (drafting syncs once per step)

        for slot in range(size):
            rows.stats[rows.active[slot]].record_round(drafted[slot], accepted[slot], counts[slot])
            # the policy pays for the EOS it drafted and left to the verifier: a draft step that bought no token
            policies[slot].update(drafted[slot] + eos_cut[slot], accepted[slot])
        kept = slots.settle(base, k + 1, accepted)
        if kept < base + k + 1 or sliding:
            crop_to(cache, kept)
        unseen = last if kept == base + k + 1 and not drafter_saw_last else None
        drafter.after_verify(kept, unseen, slots.mask(0), where)
        pending = candidates.gather(1, num_accepted.view(size, 1)).view(size)
        committed = candidates.tolist()
        done = [rows.commit(slot, committed[slot][: accepted[slot] + 1]) for slot in range(size)]
    return rows.output()


class Decoder:
    """The `generate` every decoder shares: `model.generate`'s inputs in, its sequence layout and our stats out."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.adapter = adapter_for(model)
        self.device = model_device(model)  # refuses a model split over devices now, not mid-decode

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 64,
        eos_token_id: int | Iterable[int] | None = None,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        pad_token_id: int | None = None,
        **model_inputs: torch.Tensor,
    ) -> GenerationOutput:
        """`input_ids` [B, T], left padded with `attention_mask` when rows differ in length. `eos_token_id=None` stops
        at the model's generation-config EOS, like `model.generate`; `[]` never stops early. Finished rows are filled
        with `pad_token_id` (default: the model's, else its first EOS) up to the longest row."""
        sampling = SamplingConfig(temperature, top_k, top_p)
        request = prepare_request(
            self.adapter, input_ids, max_new_tokens, eos_token_id, sampling, generator, model_inputs, pad_token_id
        )
        return self._generate(request)

    def _generate(self, request: GenerationRequest) -> GenerationOutput:
        raise NotImplementedError


class SelfSpeculativeDecoder(Decoder):
    """Self-speculative decoding: the first `draft_layers` layers (plus `head`) draft, the rest verify.

    `head=None` drafts by early exit (layer-n states → final norm → LM head); otherwise `head` is an
    `nn.Module` mapping layer-n states [B, T, H] to states for the final norm and LM head (see
    `pipeline.decoding.head_protocol` for heads that keep state). `draft_len` is an int (fixed) or a
    `DraftPolicy`, applied to every row separately. Greedy output equals `model.generate(do_sample=False)` row for
    row, token for token; with `temperature > 0` each row is distributed as the full model's sampling distribution.
    """

    def __init__(
        self, model: nn.Module, draft_layers: int, head: nn.Module | None = None, draft_len: int | DraftPolicy = 5
    ) -> None:
        super().__init__(model)
        self.draft_layers = check_draft_layers(self.adapter, draft_layers)
        if head is not None and not isinstance(head, nn.Module):
            raise TypeError(f"head must be an nn.Module or None, got {type(head).__name__}")
        self.head = head
        self.policy = as_policy(draft_len)
        self.drafter: Drafter = EarlyExitDrafter(self.adapter, self.draft_layers, head)

    def _generate(self, request: GenerationRequest) -> GenerationOutput:
        return speculative_generate(self.adapter, self.drafter, self.policy, request)
