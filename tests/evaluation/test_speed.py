"""The speed-measurement helpers: timing bookkeeping, identity share and the Leviathan et al. formula."""

from __future__ import annotations

import time

import pytest
import torch

from pipeline.decoding.stats import DecodingStats
from pipeline.evaluation.speed import (
    MethodTiming,
    expected_speedup,
    first_token_only,
    identical_share,
    time_methods,
)


def test_expected_speedup_known_values():
    # α = 0: every round yields only the verifier's token and pays γ draft steps
    assert expected_speedup(0.0, 0.25, 4) == pytest.approx(1 / (4 * 0.25 + 1))
    # α = 1: γ + 1 tokens per round
    assert expected_speedup(1.0, 0.25, 4) == pytest.approx(5 / 2)
    # α = 0.5, c = 0.5, γ = 3: (1 − 0.5⁴) / (0.5 · 2.5) = 0.75
    assert expected_speedup(0.5, 0.5, 3) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="acceptance"):
        expected_speedup(1.5, 0.1, 3)


def test_identical_share_counts_exact_matches():
    assert identical_share([[1, 2], [3], [4, 5]], [[1, 2], [3, 9], [4, 5]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        identical_share([[1]], [[1], [2]])


def test_latency_per_repeat_and_its_median_from_known_seconds():
    timing = MethodTiming("m", outputs=[[1, 2], [3, 4, 5, 6]], seconds=[[0.2, 0.4], [0.3, 0.9], [0.1, 0.5]])
    # pooled seconds over pooled tokens (6), per pass; the latency is their median
    assert timing.latency_by_repeat() == pytest.approx([0.1, 0.2, 0.1])
    assert timing.latency() == pytest.approx(0.1)
    assert timing.latency_by_repeat([1]) == pytest.approx([0.1, 0.225, 0.125])
    assert timing.latency([1]) == pytest.approx(0.125)


def test_decode_latency_is_the_time_beyond_the_first_token_pass_over_the_tokens_beyond_the_first():
    timing = MethodTiming("m", outputs=[[1, 2, 3], [4]], seconds=[[1.0, 0.5], [1.2, 0.6], [1.1, 0.4]])
    first = MethodTiming("m (first token)", outputs=[[1], [4]], seconds=[[0.4, 0.5], [0.4, 0.6], [0.3, 0.4]])
    # per pass: (1.5 - 0.9) / 2, (1.8 - 1.0) / 2, (1.5 - 0.7) / 2 tokens after the first; a one-token answer adds none
    assert timing.decode_latency(first) == pytest.approx(0.4)
    assert timing.latency() == pytest.approx(1.5 / 4)  # end to end, the prefill included
    with pytest.raises(ValueError, match="same prompts and repeats"):
        timing.decode_latency(MethodTiming("short", outputs=[[1], [4]], seconds=[[0.4, 0.5]]))


def test_first_token_only_decodes_each_prompt_to_one_token_and_leaves_the_prompt_alone():
    seen = []

    def method(prompt):
        seen.append(prompt["max_new_tokens"])
        return torch.arange(prompt["max_new_tokens"]), None

    prompt = {"input_ids": torch.ones(1, 3), "max_new_tokens": 32}
    tokens, _ = first_token_only(method)(prompt)
    assert tokens.tolist() == [0] and seen == [1] and prompt["max_new_tokens"] == 32


def test_time_methods_times_every_method_on_every_prompt_and_keeps_first_outputs():
    calls = {"slow": 0, "fast": 0}

    def slow(prompt):
        calls["slow"] += 1
        time.sleep(0.004)
        return torch.arange(prompt["n"]), None

    def fast(prompt):
        calls["fast"] += 1
        stats = DecodingStats()
        stats.record_round(3, 2, context=1)
        return torch.arange(prompt["n"]), stats

    prompts = [{"n": 2}, {"n": 3}, {"n": 5}]
    timings = time_methods({"slow": slow, "fast": fast}, prompts, repeats=3, warmup_prompts=1)
    # the first method primes every prompt shape once; each warms up on one prompt; then 3 repeats × 3 prompts
    assert calls == {"slow": 3 + 1 + 9, "fast": 1 + 9}
    unprimed = {"slow": 0}
    time_methods(
        {"slow": lambda p: (unprimed.__setitem__("slow", unprimed["slow"] + 1), slow(p))[1]},
        prompts,
        repeats=1,
        warmup_prompts=0,
        prime_all=False,
    )
    assert unprimed == {"slow": 3}
    for t in timings.values():
        assert t.outputs == [[0, 1], [0, 1, 2], [0, 1, 2, 3, 4]] and len(t.seconds) == 3
        assert t.new_tokens() == 10
    assert timings["slow"].latency() > 0.004 * 3 / 10 * 0.9
    assert timings["fast"].latency() < timings["slow"].latency()
    assert timings["fast"].has_stats and timings["fast"].stats.verify_calls == 3  # first repeat only
    assert not timings["slow"].has_stats
    assert timings["slow"].latency([0]) > timings["slow"].latency([2])  # fewer tokens over the same sleep


def test_time_methods_interleaves_methods_per_prompt_so_drift_hits_all_alike():
    order = []

    def method(name):
        return lambda prompt: (order.append((name, prompt["n"])), (torch.arange(prompt["n"]), None))[1]

    prompts = [{"n": 1}, {"n": 2}]
    time_methods({"a": method("a"), "b": method("b")}, prompts, repeats=2, warmup_prompts=0, prime_all=False)
    assert order == [("a", 1), ("b", 1), ("b", 2), ("a", 2)] * 2

    # a machine that slows down steadily: with methods outermost the last would look 2.7× slower, with a fixed
    # order per prompt 1.17×
    clock = {"now": 0.0}

    def drifting(prompt):
        clock["now"] += 1.0
        time.sleep(0.01 * clock["now"])  # 10 ms steps: scheduler jitter on a loaded machine stays small beside them
        return torch.arange(4), None

    timings = time_methods(
        {"first": drifting, "last": drifting}, [{"n": 4}] * 6, repeats=1, warmup_prompts=0, prime_all=False
    )
    assert timings["last"].latency() / timings["first"].latency() == pytest.approx(1.0, abs=0.06)


def test_time_methods_rejects_nonsense():
    with pytest.raises(ValueError, match="repeats"):
        time_methods({"m": lambda p: (torch.zeros(1), None)}, [{}], repeats=0)
    with pytest.raises(ValueError, match="prompts"):
        time_methods({"m": lambda p: (torch.zeros(1), None)}, [], repeats=1)
