"""score_methods' decode-phase speed-up: the prefill, timed as a first-token-only decode in the same passes, split off
every latency that shares it."""

from __future__ import annotations

import time

import pytest
import torch

from pipeline.evaluation.comparison import score_methods
from pipeline.evaluation.speed import SplitRun, first_token_only, time_methods

PREFILL_S, STEP_S = 0.012, 0.004


def _decoder(step_seconds: float):
    """A method that sleeps a prefill, then `step_seconds` per token after the first."""

    def method(prompt):
        new = prompt["max_new_tokens"]
        time.sleep(PREFILL_S + step_seconds * (new - 1))
        return torch.arange(new), None

    return method


def test_decode_speedup_splits_the_shared_prefill_off_both_latencies():
    full, fast = _decoder(STEP_S), _decoder(STEP_S / 2)
    prompts = [{"task": "caption", "max_new_tokens": 9}] * 4
    timings = time_methods(
        {"full": full, "fast": fast, "full (first token)": first_token_only(full)}, prompts, repeats=2
    )
    first = timings.pop("full (first token)")
    assert first.outputs == [[0]] * 4
    runs = {name: SplitRun([[0]] * 4, [None] * 4, 1.0, 1) for name in timings}
    rows = score_methods(
        runs,
        prompts,
        timings,
        prompts,
        None,
        reference="full",
        caption_metrics=False,
        prefill={"full": first, "fast": first},
    )
    # end to end the prefill dilutes the gain: (12 + 32) / (12 + 16) ms = 1.57x; after the first token it is 2x
    assert rows["fast"]["speedup"] == pytest.approx(44 / 28, rel=0.12)
    assert rows["fast"]["decode_speedup"] == pytest.approx(2.0, rel=0.12)
    assert rows["full"]["decode_speedup"] == 1.0
    assert rows["full"]["prefill_share"] == pytest.approx(12 / 44, rel=0.15)
    assert rows["fast"]["decode_ms_per_token"] == pytest.approx(2.0, rel=0.2)
    # without the reference's prefill nothing is split off
    alone = score_methods(runs, prompts, timings, prompts, None, reference="full", caption_metrics=False)
    assert "decode_speedup" not in alone["fast"]
