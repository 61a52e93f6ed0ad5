"""Draft-length policies on their own, and the decode loop driving any policy through the one interface."""

from __future__ import annotations

import itertools

import pytest
import torch

from pipeline.decoding import (
    ConfidenceStop,
    DraftPolicy,
    FixedDraftLength,
    GrowingDraftLength,
    HeuristicDraftLength,
    SelfSpeculativeDecoder,
    as_policy,
)
from tests.conftest import make_causal_lm, make_text_prompt


def test_int_means_fixed_length():
    policy = as_policy(4)
    assert isinstance(policy, FixedDraftLength)
    assert [policy.propose(t) for t in (1, 10, 100)] == [4, 4, 4]


@pytest.mark.parametrize("bad", [0, -3])
def test_draft_len_below_one_is_refused(bad):
    with pytest.raises(ValueError, match="draft_len must be an integer ≥ 1"):
        as_policy(bad)


def test_draft_len_of_another_type_is_refused():
    with pytest.raises(TypeError, match="draft_len"):
        as_policy("5")


def test_growing_schedule_is_monotone_and_bounded():
    policy = GrowingDraftLength(d_min=2, d_max=6, step=5)
    lengths = [policy.propose(t) for t in range(60)]
    assert lengths[0] == 2 and lengths[-1] == 6
    assert all(a <= b for a, b in itertools.pairwise(lengths))
    assert set(lengths) == {2, 3, 4, 5, 6}
    with pytest.raises(ValueError, match="d_max"):
        GrowingDraftLength(d_min=5, d_max=3)


def test_heuristic_grows_on_full_acceptance_and_shrinks_otherwise():
    policy = HeuristicDraftLength(initial=3)
    policy.update(drafted=3, accepted=3)
    assert policy.propose(0) == 5
    policy.update(drafted=5, accepted=2)
    assert policy.propose(0) == 4
    for _ in range(10):
        policy.update(drafted=policy.propose(0), accepted=0)
    assert policy.propose(0) == 1
    policy.reset()
    assert policy.propose(0) == 3


def test_confidence_stop():
    policy = ConfidenceStop(threshold=0.5, base=6)
    assert policy.needs_confidence
    assert policy.propose(0) == 6
    assert policy.keep_drafting(1, 0.9) and not policy.keep_drafting(1, 0.2)
    with pytest.raises(ValueError, match="threshold"):
        ConfidenceStop(threshold=1.5)


class RecordingPolicy(DraftPolicy):
    """Proposes 1, 2, 3, 1, 2, 3, ... and records what the loop tells it."""

    def __init__(self) -> None:
        self.proposed: list[tuple[int, int]] = []
        self.updates: list[tuple[int, int]] = []

    def reset(self) -> None:
        self.proposed.clear()
        self.updates.clear()

    def propose(self, generated: int) -> int:
        self.proposed.append((generated, len(self.proposed) % 3 + 1))
        return self.proposed[-1][1]

    def update(self, drafted: int, accepted: int) -> None:
        self.updates.append((drafted, accepted))


def test_the_loop_follows_whatever_policy_it_is_given():
    model = make_causal_lm("llama")
    policy = RecordingPolicy()
    out = SelfSpeculativeDecoder(model, 2, draft_len=policy).generate(
        make_text_prompt(8), max_new_tokens=30, eos_token_id=[]
    )
    stats = out.stats
    assert len(policy.updates) == stats.verify_calls == len(policy.proposed)
    assert sum(d for d, _ in policy.updates) == stats.drafted
    assert sum(a for _, a in policy.updates) == stats.accepted
    generated = [g for g, _ in policy.proposed]
    assert generated[0] == 1 and all(a < b for a, b in itertools.pairwise(generated))
    for (_, proposed), (drafted, accepted) in zip(policy.proposed, policy.updates, strict=True):
        assert accepted <= drafted <= proposed


def test_confidence_stop_cuts_rounds_short():
    model = make_causal_lm("llama")
    ids = make_text_prompt(8)
    always_stop = SelfSpeculativeDecoder(model, 2, draft_len=ConfidenceStop(threshold=1.0, base=5))
    stats = always_stop.generate(ids, 30, []).stats
    assert len(stats.drafted_by_position) == 1  # every round stopped after its first draft token
    never_stop = SelfSpeculativeDecoder(model, 2, draft_len=ConfidenceStop(threshold=0.0, base=5))
    assert len(never_stop.generate(ids, 30, []).stats.drafted_by_position) == 5


def test_growing_schedule_drives_longer_drafts_later():
    model = make_causal_lm("llama")
    decoder = SelfSpeculativeDecoder(model, 2, draft_len=GrowingDraftLength(d_min=1, d_max=4, step=4))
    stats = decoder.generate(make_text_prompt(8), 40, []).stats
    assert len(stats.drafted_by_position) == 4
    assert stats.drafted_by_position[0] > stats.drafted_by_position[3] > 0


def test_token_sources_say_which_tokens_the_draft_wrote():

    from pipeline.decoding import SelfSpeculativeDecoder
    from tests.conftest import make_causal_lm, make_text_prompt
    from tests.decoding.draft_heads import FullModelHead, RandomHead

    model, prompt = make_causal_lm(num_layers=4), make_text_prompt()
    perfect = SelfSpeculativeDecoder(model, 2, head=FullModelHead(model, 2), draft_len=3).generate(prompt, 9, []).stats
    # first token from prefill, then rounds of 3 accepted draft tokens + the verifier's bonus token
    assert (
        perfect.rounds == [(3, 3), (3, 3)] and perfect.token_sources() == ["verify"] + (["draft"] * 3 + ["verify"]) * 2
    )
    never = (
        SelfSpeculativeDecoder(model, 2, head=RandomHead(model.config.hidden_size), draft_len=3)
        .generate(prompt, 5, [])
        .stats
    )
    assert never.token_sources() == ["verify"] * 5 and all(accepted == 0 for _, accepted in never.rounds)
    # rounds start after 1 token (prefill's), then after 1 + 4; a useless draft commits one token per round
    assert perfect.contexts == [1, 5] and never.contexts == [1, 2, 3, 4]
    merged = perfect.merge(never)
    assert merged.rounds == perfect.rounds + never.rounds and isinstance(merged.rounds[0], tuple)
    # near the budget of 5 a round drafts only what it could commit: 2, then 1, then nothing
    assert never.rounds == [(3, 0), (2, 0), (1, 0), (0, 0)]
    assert merged.by_context() == [(1, 6, 3), (2, 2, 0), (3, 1, 0), (4, 0, 0), (5, 3, 3)]
    assert torch.is_tensor(prompt)


def test_backoff_stops_drafting_when_acceptance_collapses_probes_and_comes_back():
    from pipeline.decoding import AcceptanceBackoff

    policy = AcceptanceBackoff(5, cost_ratio=0.15, probe_every=4)
    assert policy.propose(0) == 5  # the prior (0.6) pays for the base's full 5
    for _ in range(6):  # every draft rejected: acceptance falls and drafting stops
        policy.update(drafted=policy.propose(0) or 1, accepted=0)
    assert policy.acceptance < 0.1
    proposals = [policy.propose(0) for _ in range(8)]
    probes = [i for i, d in enumerate(proposals) if d]
    # plain decoding, with a one-token probe every 4 rounds
    assert set(proposals) == {0, 1} and len(probes) == 2 and probes[1] - probes[0] == 4
    for _ in range(4):  # the probes start being accepted: drafting comes back, and grows
        policy.update(drafted=1, accepted=1)
    assert policy.acceptance > 0.6 and policy.propose(0) >= 3
    policy.reset()
    assert policy.propose(0) == 5


def test_backoff_drafts_what_pays_off_and_never_more_than_its_base():
    from pipeline.decoding import AcceptanceBackoff
    from pipeline.decoding.policies import expected_gain

    assert expected_gain(0.0, 0.2, 3) == pytest.approx(1 / 1.6) and expected_gain(0.5, 0.1, 0) == 1.0
    assert expected_gain(1.0, 0.1, 4) == pytest.approx(5 / 1.4)
    policy = AcceptanceBackoff(GrowingDraftLength(1, 6, 4), cost_ratio=0.1)
    for _ in range(20):
        policy.update(drafted=6, accepted=6)
    assert [policy.propose(t) for t in (0, 4, 8, 100)] == [1, 2, 3, 6]  # capped by the growing schedule
    cheap, dear = AcceptanceBackoff(8, cost_ratio=0.05), AcceptanceBackoff(8, cost_ratio=0.7)
    for policy in (cheap, dear):
        for _ in range(20):
            policy.update(drafted=4, accepted=1)  # α ≈ 0.5 (one accepted of two tested per round)
    assert cheap.propose(0) > dear.propose(0) == 0  # a dear draft at α 0.5 is not worth drafting


def test_rejected_probes_wait_ever_longer_and_an_accepted_one_resets_the_wait():
    from pipeline.decoding import AcceptanceBackoff

    def plain_steps_between_drafts(policy: AcceptanceBackoff, rounds: int) -> list[int]:
        """Run `rounds` rounds whose drafts are all rejected; the plain steps before each drafting round."""
        waits, plain = [], 0
        for _ in range(rounds):
            drafted = policy.propose(0)
            if drafted:
                waits.append(plain)
                plain = 0
            else:
                plain += 1
            policy.update(drafted=drafted, accepted=0)
        return waits

    policy = AcceptanceBackoff(5, cost_ratio=0.15, probe_every=4, max_probe_every=16)
    waits = plain_steps_between_drafts(policy, 80)
    # drafting at the prior until acceptance collapses, then a probe every 4, 8, 16 (the cap), 16, ... rounds
    assert waits[:7] == [0, 0, 0, 3, 7, 15, 15], waits
    while not policy.propose(0):  # wait for the next probe, and accept it: the wait starts over at 4
        policy.update(drafted=0, accepted=0)
    policy.update(drafted=1, accepted=1)
    assert [w for w in plain_steps_between_drafts(policy, 40) if w][:2] == [3, 7]


def test_a_rounds_verification_overhead_is_priced_and_backs_drafting_off():
    from pipeline.decoding import AcceptanceBackoff
    from pipeline.decoding.policies import expected_gain

    # α 0.5, c 0.1, d 2: 1.75 tokens per round; a drafting round costs 1 + γ + 2·0.1, a plain step 1
    assert expected_gain(0.5, 0.1, 2) == pytest.approx(1.75 / 1.2)
    assert expected_gain(0.5, 0.1, 2, round_overhead=0.4) == pytest.approx(1.75 / 1.6)
    assert expected_gain(0.5, 0.1, 0, round_overhead=0.4) == 1.0
    free, dear = AcceptanceBackoff(3, cost_ratio=0.15), AcceptanceBackoff(3, cost_ratio=0.15, round_overhead=0.6)
    for policy in (free, dear):
        for _ in range(20):
            policy.update(drafted=3, accepted=1)  # α ≈ 0.5
    # without overhead d = 3 pays (1.88 / 1.45); at γ 0.6 no d does (d = 1, 2, 3: 1.5 / 1.75, 1.75 / 1.9, 1.88 / 2.05)
    assert free.propose(0) == 3 and dear.propose(0) == 0
    with pytest.raises(ValueError, match="round_overhead"):
        AcceptanceBackoff(3, cost_ratio=0.1, round_overhead=-0.1)


def test_backed_off_decoding_stays_lossless_and_drafts_nothing_for_a_useless_head():
    from pipeline.decoding import AcceptanceBackoff
    from tests.decoding.draft_heads import RandomHead

    model = make_causal_lm("llama")
    ids = make_text_prompt(8)
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=[])
    head = RandomHead(model.config.hidden_size)
    out = SelfSpeculativeDecoder(model, 2, head=head, draft_len=AcceptanceBackoff(4, cost_ratio=0.2)).generate(
        ids, 40, []
    )
    assert torch.equal(out.sequences, expected)
    plain_rounds = sum(1 for drafted, _ in out.stats.rounds if drafted == 0)
    assert plain_rounds > len(out.stats.rounds) / 2 and out.stats.drafted < 20  # mostly plain decoding steps


def test_across_prompts_short_answers_stop_the_drafting_and_a_long_answer_wins_it_back():
    from pipeline.decoding import AcceptanceBackoff
    from tests.decoding.draft_heads import FullModelHead

    model = make_causal_lm("llama")
    ids = make_text_prompt(8)
    with torch.no_grad():
        free = model.generate(ids, max_new_tokens=30, do_sample=False, eos_token_id=[])
    first, eos = free[0, 8].item(), free[0, 9].item()
    assert first != eos  # an answer of two tokens: the prefill's, then the EOS
    head = FullModelHead(model, 2)  # always right, so its drafted EOS comes first in every round of an answer

    def drafts_run(policy: AcceptanceBackoff) -> list[int]:
        """Head calls per generation over six two-token answers, each output checked against generate."""
        decoder, calls = SelfSpeculativeDecoder(model, 2, head=head, draft_len=policy), []
        for _ in range(6):
            head.calls = 0
            assert decoder.generate(ids, 30, eos).sequences[0, 8:].tolist() == [first, eos]
            calls.append(head.calls)
        return calls

    assert min(drafts_run(AcceptanceBackoff(4, cost_ratio=0.15))) > 0  # every answer starts over at the prior
    across = AcceptanceBackoff(4, cost_ratio=0.15, across_prompts=True)
    calls = drafts_run(across)
    # a drafted-EOS round buys no token: after a few, the next answers are decoded without running the draft at all
    assert calls[0] > 0 and calls[-2:] == [0, 0], calls
    out = SelfSpeculativeDecoder(model, 2, head=head, draft_len=across).generate(ids, 30, [])
    assert torch.equal(out.sequences, free)
    assert out.stats.drafted >= 15 and out.stats.acceptance_rate == 1.0  # the first probe wins drafting back
