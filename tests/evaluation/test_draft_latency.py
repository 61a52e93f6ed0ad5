"""The draft price the architecture search uses: one draft step (layers 0..n, the head, the LM head) over one full
step (layers 0..L, the LM head), at a context held in the caches."""

from __future__ import annotations

import pytest

from pipeline.config import ImitationArchitecture
from pipeline.evaluation import draft_latency
from pipeline.models.adapters import adapter_for
from pipeline.models.imitation import ImitationNetwork, as_draft_head
from tests.conftest import make_tiny_blip2, make_tiny_llava

LM_HEAD_UNITS, HEAD_UNITS = 3.0, 0.5


def fake_clock(monkeypatch, adapter, head=None):
    """Each decoder layer costs 1 unit per position, the LM head LM_HEAD_UNITS, the imitation head HEAD_UNITS: the
    expected ratio is then known exactly. Returns the list of the head's cached key counts at each timed call."""
    clock = [0.0]
    adapter_class = type(adapter)
    real_run_layers, real_logits = adapter_class.run_layers, adapter_class.logits

    def run_layers(self, hidden, start, end, *args, **kwargs):
        clock[0] += (end - start) * hidden.shape[1]
        return real_run_layers(self, hidden, start, end, *args, **kwargs)

    def logits(self, hidden):
        clock[0] += LM_HEAD_UNITS
        return real_logits(self, hidden)

    monkeypatch.setattr(adapter_class, "run_layers", run_layers)
    monkeypatch.setattr(adapter_class, "logits", logits)
    monkeypatch.setattr(draft_latency.time, "perf_counter", lambda: clock[0])
    seen: list[int] = []
    if head is not None:
        network = head if isinstance(head, ImitationNetwork) else head.network
        real_forward = type(network).forward

        def forward(self, hidden, *args, **kwargs):
            clock[0] += HEAD_UNITS
            out = real_forward(self, hidden, *args, **kwargs)
            if self.attention is not None and self.attention.keys is not None:
                seen.append(self.attention.keys.shape[2])
            return out

        monkeypatch.setattr(type(network), "forward", forward)
    return seen


@pytest.mark.parametrize("family", ["llava", "blip2-t5"])
@pytest.mark.parametrize("attention", [False, True])
def test_a_draft_step_is_priced_against_a_full_step(monkeypatch, family, attention):
    # an encoder–decoder's steps attend to encoder states, computed once like its prefill does
    model = make_tiny_llava(num_layers=4) if family == "llava" else make_tiny_blip2("t5", num_layers=4)
    adapter = adapter_for(model)
    network = ImitationNetwork(adapter.hidden_size, ImitationArchitecture(attention=attention)).eval()
    head = as_draft_head(network)
    seen = fake_clock(monkeypatch, adapter, head)
    cost = draft_latency.draft_step_cost(adapter, 1, head, context=7, repeats=3)
    assert cost == pytest.approx((1 + HEAD_UNITS + LM_HEAD_UNITS) / (4 + LM_HEAD_UNITS))
    if attention:
        # the timed draft steps attend over the context plus their own position; the caller's head holds nothing
        assert seen[-4:] == [8, 8, 8, 8]
        assert network.attention is not None and network.attention.keys is None


def test_an_early_exit_draft_costs_its_layers_and_the_lm_head(monkeypatch):
    adapter = adapter_for(make_tiny_llava(num_layers=4))
    fake_clock(monkeypatch, adapter)
    assert draft_latency.draft_step_cost(adapter, 2, None, repeats=2) == pytest.approx(
        (2 + LM_HEAD_UNITS) / (4 + LM_HEAD_UNITS)
    )


def test_the_steps_leave_the_backbone_cache_at_the_context():
    """Every timed step is cropped away: were one left behind, later steps would run at a growing context (and on
    real time, a stateful head's cache would grow with it)."""
    adapter = adapter_for(make_tiny_llava(num_layers=2))
    crops: list[int] = []
    real_crop = draft_latency.crop_to

    def crop_to(cache, length, layers=None):
        real_crop(cache, length, layers)
        crops.append(cache.get_seq_length())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(draft_latency, "crop_to", crop_to)
        draft_latency.draft_step_cost(adapter, 1, None, context=5, repeats=3)
    assert crops == [5] * 8  # warm-up + 3 repeats, a full step and a draft step each


def test_bad_arguments_are_refused():
    adapter = adapter_for(make_tiny_llava(num_layers=2))
    with pytest.raises(ValueError, match="draft_layers"):
        draft_latency.draft_step_cost(adapter, 2)
    with pytest.raises(ValueError, match="repeats"):
        draft_latency.draft_step_cost(adapter, 1, repeats=0)


def test_several_heads_are_priced_in_one_interleaved_run(monkeypatch):
    adapter = adapter_for(make_tiny_llava(num_layers=4))
    heads = {
        "early exit": None,
        "linear": as_draft_head(ImitationNetwork(adapter.hidden_size, ImitationArchitecture(num_linear=1)).eval()),
        "attention": as_draft_head(ImitationNetwork(adapter.hidden_size, ImitationArchitecture(attention=True)).eval()),
    }
    fake_clock(monkeypatch, adapter, heads["attention"])
    ranges: list[int] = []
    real_run_layers = type(adapter).run_layers  # the fake clock's, which counts units

    def recorded(self, hidden, start, end, *args, **kwargs):
        ranges.append(end - start)
        return real_run_layers(self, hidden, start, end, *args, **kwargs)

    monkeypatch.setattr(type(adapter), "run_layers", recorded)
    costs = draft_latency.draft_step_costs(adapter, 1, heads, context=3, repeats=2)
    with_head = (1 + HEAD_UNITS + LM_HEAD_UNITS) / (4 + LM_HEAD_UNITS)
    assert costs == {
        "early exit": pytest.approx((1 + LM_HEAD_UNITS) / (4 + LM_HEAD_UNITS)),
        "linear": pytest.approx(with_head),
        "attention": pytest.approx(with_head),
    }
    # the context pass, the warm-up (a full step, then every head's draft step), then in each repeat every head's
    # draft step right after a full step
    assert ranges == [4] + [4, 1, 1, 1] + [4, 1] * 3 * 2
