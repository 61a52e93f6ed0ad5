"""The imitation network and the fusion targets: shapes, starting point, save/load, stateful decoding."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ImitationArchitecture
from pipeline.decoding import SelfSpeculativeDecoder
from pipeline.errors import ModelLoadError
from pipeline.models.deep_layer_fusion import AttentionPoolFusion, build_fusion
from pipeline.models.imitation import ImitationNetwork, as_draft_head, load_imitation, save_imitation
from tests.conftest import make_tiny_llava, make_vlm_inputs

H = 32


def test_residual_network_starts_as_the_early_exit_draft():
    net = ImitationNetwork(H)
    h = torch.randn(2, 5, H)
    assert torch.equal(net(h), h)
    assert sum(p.numel() for p in net.parameters()) == 2 * (H * H + H) + 2 * H  # two linears + layer norm


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("attention", [True, False])
def test_selected_positions_equal_the_whole_sequence_output_at_those_positions(attention, residual):
    # training asks only for the scored positions; with attention the others must still be seen as keys
    torch.manual_seed(0)
    net = ImitationNetwork(H, ImitationArchitecture(attention=attention, residual=residual))
    torch.nn.init.normal_(net.mlp[-1].weight, std=0.1)
    hidden = torch.randn(3, 7, H)
    select = torch.rand(3, 7) < 0.5
    select[0, -1] = True
    picked = net(hidden, select=select)
    assert picked.shape == (int(select.sum()), H)
    torch.testing.assert_close(picked, net(hidden)[select])


def test_invalid_architecture_is_rejected_with_every_problem():
    with pytest.raises(ValueError, match=r"(?s)num_linear.*activation.*dropout"):
        ImitationArchitecture(num_linear=3, activation="swish", dropout=1.5)
    with pytest.raises(ValueError, match="hidden_size 30 is not divisible by the attention's num_heads 4"):
        ImitationNetwork(30, ImitationArchitecture(attention=True))


@pytest.mark.parametrize("attention", [False, True])
def test_save_and_load_round_trip(tmp_path, attention):
    torch.manual_seed(0)
    net = ImitationNetwork(H, ImitationArchitecture(attention=attention, residual=False))
    save_imitation(net, tmp_path / "net", {"draft_layers": 3})
    loaded, extra = load_imitation(tmp_path / "net")
    assert (
        extra["draft_layers"] == 3 and loaded.architecture == net.architecture and loaded.hidden_size == net.hidden_size
    )
    h = torch.randn(1, 4, H)
    net.eval()
    assert torch.equal(loaded(h), net(h))


def test_loading_something_else_fails_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="not a saved imitation network"):
        load_imitation(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a valid imitation network config"):
        load_imitation(tmp_path)


def test_attention_network_decodes_incrementally_like_a_whole_sequence():
    torch.manual_seed(0)
    net = ImitationNetwork(H, ImitationArchitecture(attention=True, residual=False)).eval()
    h = torch.randn(1, 7, H)
    with torch.no_grad():
        whole = net.attention(h)
        net.reset()
        parts = [net.attention(h[:, :4])] + [net.attention(h[:, i : i + 1]) for i in range(4, 7)]
        assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-6)
        net.crop(5)  # roll back two positions and redo them
        redo = torch.cat([net.attention(h[:, 5:6]), net.attention(h[:, 6:7])], dim=1)
        assert torch.allclose(redo, whole[:, 5:], atol=1e-6)


@pytest.mark.parametrize("attention", [False, True])
def test_decoding_with_an_imitation_head_is_lossless(attention):
    model = make_tiny_llava("llama", num_layers=4, dtype=torch.float64)
    input_ids, pixels = make_vlm_inputs(batch=1, text_len=5, dtype=torch.float64)
    torch.manual_seed(1)
    net = ImitationNetwork(
        model.config.text_config.hidden_size, ImitationArchitecture(attention=attention, residual=False)
    )
    net = net.to(torch.float64).eval()
    expected = model.generate(
        input_ids=input_ids, pixel_values=pixels, max_new_tokens=20, do_sample=False, eos_token_id=[]
    )
    out = SelfSpeculativeDecoder(model, 2, as_draft_head(net), 4).generate(input_ids, 20, [], pixel_values=pixels)
    assert torch.equal(out.sequences, expected)
    assert out.stats.verify_calls > 1


def test_fusions():
    states = [torch.randn(2, 3, H) for _ in range(4)]
    mean = torch.stack(states).mean(0)
    assert torch.allclose(build_fusion("average", H)(states), mean)
    assert torch.allclose(build_fusion("concat", H, 4)(states), mean, atol=1e-6)  # starts at the average
    same = [states[0]] * 4
    assert torch.allclose(AttentionPoolFusion(H)(same), states[0], atol=1e-6)  # a convex combination
    with pytest.raises(ValueError, match="unknown fusion"):
        build_fusion("max", H)
