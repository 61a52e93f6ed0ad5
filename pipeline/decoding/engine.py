"""The self-speculative decode loop and `SelfSpeculativeDecoder`, its public face.

One round, with n draft layers out of L and a pending token x0 (committed, not yet in the cache):

1. Draft: x0, d1, ..., d_{k-1} go through layers 0..n-1 one at a time (their KV goes into the shared
   cache), each layer-n state goes through the drafter (head / remaining layers) to give d1..dk.
2. Verify: dk goes through layers 0..n-1, then layers n..L-1 run once over the k + 1 cached layer-n
   states [x0, d1..dk]: the full model's distributions after each of them.
3. Accept a prefix of the drafts (greedy match, or speculative sampling); commit it plus the
   verifier's next token, which becomes the new pending token. Every layer's cache is cut to the
   committed length, so rejected tokens leave nothing behind.

The loop synchronises with the device once per round (to read how many tokens were accepted), and once
per drafted token only when the policy stops on confidence.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import Cache

from pipeline.decoding.acceptance import greedy_accept, speculative_accept
from pipeline.decoding.cache import crop_to, has_sliding_layers, new_cache
from pipeline.decoding.drafters import Drafter, EarlyExitDrafter
from pipeline.decoding.inputs import GenerationRequest, model_device, prepare_request
from pipeline.decoding.policies import DraftPolicy, as_policy
from pipeline.decoding.sampling import SamplingConfig, sample
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
    """The next token from logits [1, V] → [1]: argmax, or a sample of the warped distribution."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    return sample(sampling.probabilities(logits), generator)


def prefill(
    adapter: BackboneAdapter, request: GenerationRequest, cache: Cache, positions: torch.Tensor, split: int
) -> tuple[torch.Tensor, torch.Tensor, EncoderStates | None]:
    """The prompt through the full model once; returns (layer-`split` states, last-position logits [1, V], the
    encoder states an encoder–decoder's blocks attend to)."""
    where = positions[:, : request.prompt_length]
    prefix = adapter.prefix(request.input_ids, **request.model_inputs)
    encoder = prefix.encoder
    shallow = adapter.run_layers(prefix.embeds, 0, split, cache, position_ids=where, encoder=encoder)
    deep = adapter.run_layers(shallow, split, adapter.num_layers, cache, position_ids=where, encoder=encoder)
    return shallow, adapter.logits(deep[:, -1]), encoder


def truncate(new: torch.Tensor, budget: int, eos: frozenset[int]) -> tuple[torch.Tensor, bool]:
    """Cut committed tokens to the budget and after the first EOS, as `model.generate` would have stopped."""
    new = new[:budget]
    if eos:
        for i, token in enumerate(new.tolist()):
            if token in eos:
                return new[: i + 1], True
    return new, False


def speculative_generate(
    adapter: BackboneAdapter, drafter: Drafter, policy: DraftPolicy, request: GenerationRequest
) -> GenerationOutput:
    stats = DecodingStats()
    if request.max_new_tokens == 0:
        return GenerationOutput(request.sequences([]), stats)
    n, total = drafter.shared_layers, adapter.num_layers
    sampling, generator, eos = request.sampling, request.generator, request.eos_token_ids
    policy.reset()
    drafter.reset()
    cache = new_cache(adapter)
    # Sliding-window layers are cut every round, not only after a rejection: their memory stays bounded by the window
    # even while every draft is accepted
    always_crop = has_sliding_layers(cache)
    prompt = request.prompt_length
    # Positions of every token this generation can touch, sliced instead of rebuilt in the loop
    positions = torch.arange(prompt + request.max_new_tokens + 1, device=request.device).unsqueeze(0)

    shallow, logits, encoder = prefill(adapter, request, cache, positions, n)
    drafter.observe_prompt(shallow)
    token = pick(logits, sampling, generator)
    committed = [token]
    count = 1
    done = count >= request.max_new_tokens or (bool(eos) and int(token) in eos)
    empty = torch.empty(0, dtype=torch.long, device=request.device)

    while not done:
        base = prompt + count - 1  # tokens every layer's cache holds; the pending token sits at `base`
        remaining = request.max_new_tokens - count
        # A round commits up to k + 1 tokens: drafting more than remaining - 1 could only be thrown away
        limit = min(policy.propose(count), remaining - 1)
        current = token
        states: list[torch.Tensor] = []
        drafts: list[torch.Tensor] = []
        draft_probs: list[torch.Tensor] = []
        for i in range(limit):
            where = positions[:, base + i : base + i + 1]
            state = adapter.run_layers(
                adapter.embed(current.view(1, 1)), 0, n, cache, position_ids=where, encoder=encoder
            )
            states.append(state)
            draft_logits = adapter.logits(drafter.draft_hidden(state, cache, where, encoder)[:, -1])
            if sampling.greedy:
                current = draft_logits.argmax(dim=-1)
                confidence = torch.softmax(draft_logits, dim=-1).amax() if policy.needs_confidence else None
            else:
                probs = sampling.probabilities(draft_logits)
                current = sample(probs, generator)
                draft_probs.append(probs)
                confidence = probs.amax()
            drafts.append(current)
            if policy.needs_confidence:
                assert confidence is not None  # computed above whenever the policy needs it
                if not policy.keep_drafting(i + 1, float(confidence)):
                    break
        k = len(drafts)

        drafter.before_verify(cache, base)
        where = positions[:, base + k : base + k + 1]
        last = adapter.run_layers(adapter.embed(current.view(1, 1)), 0, n, cache, position_ids=where, encoder=encoder)
        verify_in = torch.cat([*states, last], dim=1) if states else last
        deep = adapter.run_layers(
            verify_in, n, total, cache, position_ids=positions[:, base : base + k + 1], encoder=encoder
        )
        verify_logits = adapter.logits(deep)[0]
        draft_tokens = torch.cat(drafts) if drafts else empty
        if sampling.greedy:
            num_accepted, candidates = greedy_accept(draft_tokens, verify_logits)
        else:
            target = sampling.probabilities(verify_logits)
            proposal = torch.cat(draft_probs) if draft_probs else target[:0]
            num_accepted, candidates = speculative_accept(draft_tokens, proposal, target, generator)
        accepted = int(num_accepted)  # the round's one synchronisation

        stats.record_round(k, accepted)
        policy.update(k, accepted)
        kept = base + accepted + 1
        if accepted < k or always_crop:
            crop_to(cache, kept)
        drafter.after_verify(kept, last if accepted == k else None)

        new, done = truncate(candidates[: accepted + 1], remaining, eos)
        committed.append(new)
        count += new.shape[0]
        token = new[-1:]
        done = done or count >= request.max_new_tokens

    stats.new_tokens = count
    return GenerationOutput(request.sequences(committed), stats)


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
        **model_inputs: torch.Tensor,
    ) -> GenerationOutput:
        """`eos_token_id=None` stops at the model's generation-config EOS, like `model.generate`;
        `[]` never stops early."""
        sampling = SamplingConfig(temperature, top_k, top_p)
        request = prepare_request(
            self.adapter, input_ids, max_new_tokens, eos_token_id, sampling, generator, model_inputs
        )
        return self._generate(request)

    def _generate(self, request: GenerationRequest) -> GenerationOutput:
        raise NotImplementedError


class SelfSpeculativeDecoder(Decoder):
    """Self-speculative decoding: the first `draft_layers` layers (plus `head`) draft, the rest verify.

    `head=None` drafts by early exit (layer-n states → final norm → LM head); otherwise `head` is an
    `nn.Module` mapping layer-n states [B, T, H] to states for the final norm and LM head (see
    `pipeline.decoding.head_protocol` for heads that keep state). `draft_len` is an int (fixed) or a
    `DraftPolicy`. Greedy output equals `model.generate(do_sample=False)` token for token; with
    `temperature > 0` the output is distributed as the full model's sampling distribution.
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
