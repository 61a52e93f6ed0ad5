"""Half precision and devices: a draft head follows the backbone's dtype and device (cast at load, checked by the
decoder), sampling math runs in float32 as `model.generate`'s does, a model split over devices is refused up front,
and every family decodes in bfloat16 with an imitation network."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ImitationArchitecture
from pipeline.decoding import DraftOnlyDecoder, SelfSpeculativeDecoder
from pipeline.decoding.sampling import SamplingConfig
from pipeline.models.adapters import adapter_for
from pipeline.models.imitation import ImitationNetwork, load_draft_head, save_imitation
from tests.conftest import make_tiny_blip2, make_tiny_llava, make_vlm_inputs

FAMILIES = ["llava-llama", "blip2-opt", "blip2-t5"]


def make(family: str, dtype: torch.dtype):
    kind, _, language = family.partition("-")
    return (make_tiny_llava if kind == "llava" else make_tiny_blip2)(language, dtype=dtype)


def saved_head(tmp_path, hidden_size: int):
    torch.manual_seed(3)
    network = ImitationNetwork(hidden_size, ImitationArchitecture(residual=False))  # float32, non-trivial weights
    save_imitation(network, tmp_path / "head", {"draft_layers": 2})
    return tmp_path / "head"


def test_a_head_in_another_dtype_than_the_backbone_is_refused_with_the_fix():
    model = make_tiny_llava(dtype=torch.bfloat16)
    head = ImitationNetwork(32)  # float32
    with pytest.raises(ValueError, match=r"torch.float32 on cpu but the backbone's hidden states are torch.bfloat16.*"):
        SelfSpeculativeDecoder(model, 2, head=head)
    with pytest.raises(ValueError, match=r"head\.to\(device=\.\.\., dtype=\.\.\.\)"):
        DraftOnlyDecoder(model, 2, head)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_decodes_in_bfloat16_with_an_imitation_network(tmp_path, family):
    model = make(family, torch.bfloat16)
    head, extra = load_draft_head(saved_head(tmp_path, 32), model)
    assert {p.dtype for p in head.parameters()} == {torch.bfloat16}
    ids, pixels = make_vlm_inputs(batch=1, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model.generate(
            input_ids=ids, pixel_values=pixels, max_new_tokens=12, do_sample=False, eos_token_id=[]
        )
    out = SelfSpeculativeDecoder(model, extra["draft_layers"], head=head, draft_len=3).generate(
        ids, 12, [], pixel_values=pixels
    )
    new = adapter_for(model).new_tokens(out.sequences, ids)
    assert new.shape[1] == 12 and out.stats.drafted > 0
    # the first token comes from the full model's prefill alone: the same computation as model.generate's
    assert torch.equal(new[:, :1], adapter_for(model).new_tokens(expected, ids)[:, :1])


def test_sampling_probabilities_are_computed_in_float32():
    logits = torch.randn(3, 50).mul(8).to(torch.bfloat16)
    probs = SamplingConfig(temperature=0.7, top_p=0.9).probabilities(logits)
    assert probs.dtype == torch.float32
    expected = SamplingConfig(temperature=0.7, top_p=0.9).probabilities(logits.float())
    torch.testing.assert_close(probs, expected, rtol=0, atol=0)


def test_sampled_decoding_of_a_bfloat16_model_compares_float32_probabilities():
    model = make_tiny_llava(dtype=torch.bfloat16)
    ids, pixels = make_vlm_inputs(batch=1, dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    out = SelfSpeculativeDecoder(model, 2, draft_len=3).generate(
        ids, 10, [], temperature=1.0, generator=generator, pixel_values=pixels
    )
    assert out.sequences.shape[1] == ids.shape[1] + 10 and out.stats.verify_calls > 0


def test_a_model_split_over_devices_is_refused_before_decoding():
    model = make_tiny_llava()
    model.lm_head.to("meta")  # as device_map="auto" would put the head on another device
    with pytest.raises(ValueError, match=r"spread over \['cpu', 'meta'\].*one device"):
        SelfSpeculativeDecoder(model, 2)


def test_prefix_refuses_inputs_it_would_otherwise_drop():
    model = make_tiny_llava()
    ids, pixels = make_vlm_inputs(batch=1)
    with pytest.raises(ValueError, match=r"does not take \['image_sizes'\]"):
        adapter_for(model).prefix(ids, pixel_values=pixels, image_sizes=torch.tensor([[16, 16]]))
    with pytest.raises(ValueError, match=r"does not take \['image_sizes'\]"):
        SelfSpeculativeDecoder(model, 2).generate(ids, 4, [], pixel_values=pixels, image_sizes=torch.tensor([[16, 16]]))
