"""Draft & Verify skip-set search: a valid skip set, the acceptance floor respected, the objective as defined,
and the decoder built from the result still lossless against `model.generate`."""

from __future__ import annotations

import pytest
import torch

from pipeline.decoding import ConfidenceStop, DraftAndVerifyDecoder
from pipeline.evaluation.speed import expected_speedup
from pipeline.search.skip_layers import reference_continuations, search_skip_layers, teacher_forced_agreement
from tests.conftest import make_tiny_llava, make_vlm_inputs

NUM_LAYERS = 6
THRESHOLDS = [0.0, 0.5]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    model = make_tiny_llava(num_layers=NUM_LAYERS, dtype=torch.float64)
    prompts = []
    for seed in range(3):
        ids, pixels = make_vlm_inputs(batch=1, text_len=4, seed=seed, dtype=torch.float64)
        prompts.append({"input_ids": ids, "pixel_values": pixels, "max_new_tokens": 16})
    free = search_skip_layers(model, prompts, thresholds=THRESHOLDS, acceptance_floor=0.0, max_skipped=3)
    return model, prompts, free


def test_search_returns_a_valid_skip_set_with_the_defined_objective(setup):
    model, prompts, result = setup
    assert 1 <= len(result.skip_layers) <= 3 and result.skip_layers == sorted(set(result.skip_layers))
    assert all(1 <= layer < NUM_LAYERS for layer in result.skip_layers)
    assert result.threshold in THRESHOLDS and result.meets_floor
    # greedy forward selection: each step adds one layer to the previous step's set
    steps = sorted({row["step"] for row in result.trace})
    assert steps == list(range(1, 4))
    sets = [next(r["skip_layers"] for r in result.trace if r["step"] == s) for s in steps]
    for previous, current in zip([[], *sets], sets, strict=False):
        assert set(previous) < set(current) and len(current) == len(previous) + 1
    for row in result.trace:
        assert row["cost_ratio"] == pytest.approx((NUM_LAYERS - len(row["skip_layers"])) / NUM_LAYERS)
        assert row["objective"] == pytest.approx(
            expected_speedup(row["acceptance_rate"], row["cost_ratio"], row["mean_draft_length"])
        )
    assert result.objective == max(row["objective"] for row in result.trace)
    # the proxy that ranks candidates: skipping nothing agrees with the full model everywhere
    assert teacher_forced_agreement(model, prompts, reference_continuations(model, prompts), []) == 1.0


def test_floor_is_respected_and_an_unreachable_floor_is_flagged(setup):
    model, prompts, free = setup
    rates = sorted({row["acceptance_rate"] for row in free.trace})
    floor = rates[len(rates) // 2]
    bounded = search_skip_layers(model, prompts, thresholds=THRESHOLDS, acceptance_floor=floor, max_skipped=3)
    assert bounded.meets_floor and bounded.acceptance_rate >= floor
    feasible = [row for row in bounded.trace if row["acceptance_rate"] >= floor]
    assert bounded.objective == max(row["objective"] for row in feasible)
    impossible = search_skip_layers(model, prompts, thresholds=THRESHOLDS, acceptance_floor=1.01, max_skipped=3)
    assert not impossible.meets_floor
    assert len({row["step"] for row in impossible.trace}) == 1  # no threshold feasible: the search stops


def test_decoder_with_the_found_set_is_lossless(setup):
    model, prompts, result = setup
    decoder = DraftAndVerifyDecoder(
        model, skip_layers=result.skip_layers, draft_len=ConfidenceStop(result.threshold, result.max_draft_len)
    )
    for p in prompts:
        with torch.no_grad():
            reference = model.generate(
                input_ids=p["input_ids"], pixel_values=p["pixel_values"], max_new_tokens=24, do_sample=False
            )
        out = decoder.generate(p["input_ids"], max_new_tokens=24, pixel_values=p["pixel_values"])
        assert torch.equal(out.sequences, reference)
