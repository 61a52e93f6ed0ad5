"""The verification cost evaluate measures: the round's last draft through layers 0..n, then layers n..L over all w
positions, against one full step (0..L, width 1)."""

from __future__ import annotations

import pytest

from pipeline.evaluation import verification_cost
from pipeline.models.adapters import adapter_for
from tests.conftest import make_tiny_blip2, make_tiny_llava, make_vlm_inputs


@pytest.mark.parametrize("family", ["llava", "blip2-t5"])
def test_verification_cost_times_the_last_draft_to_n_and_layers_n_to_l_over_w_positions_against_one_full_step(
    monkeypatch, family
):
    # an encoder–decoder's passes attend to the encoder states its prefill computed
    model = make_tiny_llava(num_layers=4) if family == "llava" else make_tiny_blip2("t5", num_layers=4)
    ids, pixels = make_vlm_inputs(batch=1)
    adapter_class = type(adapter_for(model))
    clock = [0.0]
    real_run_layers = adapter_class.run_layers

    def counted(self, hidden, start, end, *args, **kwargs):
        # a fake clock: each layer costs one unit per position, so the expected ratios are known exactly
        clock[0] += (end - start) * hidden.shape[1]
        return real_run_layers(self, hidden, start, end, *args, **kwargs)

    monkeypatch.setattr(adapter_class, "run_layers", counted)
    monkeypatch.setattr(verification_cost.time, "perf_counter", lambda: clock[0])
    costs = verification_cost.verification_costs(
        model, {"input_ids": ids, "pixel_values": pixels}, [1, 2, 5], draft_layers=1, generated=3, repeats=2
    )
    # the other w - 1 drafts went through layers 0..1 while drafting (untimed); the last one's 0..1 pass is timed:
    # 1 + 3w units against the step's 4
    assert costs == {1: pytest.approx(4 / 4), 2: pytest.approx(7 / 4), 5: pytest.approx(16 / 4)}


def test_verification_cost_refuses_empty_widths_or_repeats():
    model = make_tiny_llava(num_layers=2)
    ids, pixels = make_vlm_inputs(batch=1)
    prompt = {"input_ids": ids, "pixel_values": pixels}
    with pytest.raises(ValueError, match="widths"):
        verification_cost.verification_costs(model, prompt, [], draft_layers=1)
    with pytest.raises(ValueError, match="widths"):
        verification_cost.verification_costs(model, prompt, [0, 1], draft_layers=1)
    with pytest.raises(ValueError, match="repeats"):
        verification_cost.verification_costs(model, prompt, [1], draft_layers=1, repeats=0)
