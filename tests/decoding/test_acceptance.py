"""Acceptance rules and logit warping on hand-made tensors."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from pipeline.decoding.acceptance import greedy_accept, residual_distribution, speculative_accept
from pipeline.decoding.sampling import SamplingConfig


def one_hot_logits(tokens: list[int], vocab: int = 10) -> torch.Tensor:
    logits = torch.zeros(len(tokens), vocab)
    logits[torch.arange(len(tokens)), torch.tensor(tokens)] = 5.0
    return logits


def committed(result, row: int = 0) -> list[int]:
    accepted, tokens = result
    return tokens[row, : int(accepted[row]) + 1].tolist()


@pytest.mark.parametrize(
    ("drafts", "target", "accepted", "tokens"),
    [
        ([3, 5, 7], [3, 5, 9, 2], 2, [3, 5, 9]),  # rejection at the third draft: corrected to 9
        ([3, 5, 7], [3, 5, 7, 2], 3, [3, 5, 7, 2]),  # all accepted: bonus token 2
        ([3, 5, 7], [4, 5, 7, 2], 0, [4]),  # first draft wrong: later matches do not count
        ([], [6], 0, [6]),  # nothing drafted: the verifier's own token
    ],
)
def test_greedy_accept(drafts, target, accepted, tokens):
    result = greedy_accept(torch.tensor([drafts], dtype=torch.long), one_hot_logits(target).unsqueeze(0))
    assert int(result[0][0]) == accepted
    assert committed(result) == tokens


def test_rows_accept_independently_and_never_past_their_own_drafts():
    drafts = torch.tensor([[3, 5, 7], [3, 5, 7], [4, 4, 4]])
    target = torch.stack([one_hot_logits([3, 5, 7, 2]), one_hot_logits([3, 5, 7, 2]), one_hot_logits([4, 8, 4, 1])])
    result = greedy_accept(drafts, target, drafted=torch.tensor([3, 1, 3]))
    assert result[0].tolist() == [3, 1, 1]  # row 1 drafted one token: its matching later positions are not its own
    assert [committed(result, row) for row in range(3)] == [[3, 5, 7, 2], [3, 5], [4, 8]]


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"\[B, k\+1, V\]"):
        greedy_accept(torch.tensor([[1, 2]]), torch.zeros(1, 2, 10))


def test_speculative_accepts_everything_when_draft_equals_target():
    probs = torch.softmax(torch.randn(4, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    bonus = torch.zeros(1, 6)
    bonus[0, 5] = 1.0
    target = torch.cat([probs[:3], bonus])
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        drafts = torch.multinomial(probs[:3], 1, generator=g).view(1, -1)
        accepted, tokens = speculative_accept(drafts, probs[:3].unsqueeze(0), target.unsqueeze(0), g)
        assert accepted.tolist() == [3]
        assert tokens.tolist() == [[*drafts[0].tolist(), 5]]


def test_speculative_bonus_after_a_short_rows_last_draft_comes_from_the_target_alone():
    """Row 1 drafted one token of the batch's two: after accepting it, its next token is drawn from p at position 1
    (it proposed nothing there), not from the residual against whatever its padded draft distribution holds."""
    certain = torch.eye(4)
    half = torch.tensor([0.5, 0.0, 0.5, 0.0])
    draft_probs = torch.stack([certain[[1, 2]], certain[[1, 2]]])  # row 1's position 1 is padding
    target = torch.stack([torch.stack([certain[1], certain[2], certain[3]]), torch.stack([certain[1], half, half])])
    g = torch.Generator().manual_seed(0)
    bonus = set()
    for _ in range(40):
        drafted = torch.tensor([2, 1])
        accepted, tokens = speculative_accept(torch.tensor([[1, 2], [1, 2]]), draft_probs, target, g, drafted)
        assert accepted.tolist() == [2, 1] and tokens[0].tolist() == [1, 2, 3]
        bonus.add(int(tokens[1, 1]))
    assert bonus == {0, 2}  # the residual against the padding (q = token 2) would only ever give 0


def test_speculative_rejects_a_token_the_target_never_emits_and_resamples_from_the_residual():
    draft = torch.tensor([[0.0, 1.0, 0.0]])  # the draft is sure of token 1...
    target = torch.tensor([[0.7, 0.0, 0.3], [1 / 3, 1 / 3, 1 / 3]])  # ...which the target never emits
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(100):
        accepted, tokens = speculative_accept(torch.tensor([[1]]), draft.unsqueeze(0), target.unsqueeze(0), g)
        assert accepted.tolist() == [0]
        seen.add(int(tokens[0, 0]))
    assert seen == {0, 2}


def test_speculative_first_token_is_distributed_as_the_target():
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    samples = 20000
    counts = torch.zeros(4)
    for _ in range(samples):
        draft = torch.multinomial(q, 1, generator=g).view(1, 1)
        _, tokens = speculative_accept(draft, q.unsqueeze(0), p.unsqueeze(0), g)
        counts[int(tokens[0, 0])] += 1
    tv = 0.5 * (counts / samples - p[0].float()).abs().sum()
    assert tv < 0.015, counts / samples


def test_residual_distribution():
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    torch.testing.assert_close(residual_distribution(p, q), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(residual_distribution(p, p), p)  # no residual mass: fall back to p


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (0.9, 4, 0.6)]
)
def test_warping_matches_generate(temperature, top_k, top_p):
    logits = torch.randn(3, 12, generator=torch.Generator().manual_seed(0))
    expected = logits
    for warper in (
        TemperatureLogitsWarper(temperature),
        *([TopKLogitsWarper(top_k)] if top_k else []),
        *([TopPLogitsWarper(top_p)] if top_p else []),
    ):
        expected = warper(None, expected)
    got = SamplingConfig(temperature, top_k, top_p).probabilities(logits)
    torch.testing.assert_close(got, torch.softmax(expected, dim=-1))


@pytest.mark.parametrize(
    "bad", [{"temperature": -1.0}, {"temperature": 1.0, "top_p": 0.0}, {"temperature": 1.0, "top_k": -2}]
)
def test_bad_sampling_settings_are_named(bad):
    with pytest.raises(ValueError, match=next(iter(bad)) if "top" not in str(bad) else "top_"):
        SamplingConfig(**bad)
