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
    merged = perfect.merge(never)
    assert merged.rounds == perfect.rounds + never.rounds and isinstance(merged.rounds[0], tuple)
    assert torch.is_tensor(prompt)
