"""Layer choice (paper A.4): reward arithmetic and early-exit confidence on a real tiny model."""

from __future__ import annotations

import pytest
import torch

from pipeline.evaluation.layer_choice import choose_layer, early_exit_confidence
from pipeline.models.adapters import adapter_for
from tests.conftest import make_tiny_llava, make_vlm_inputs


def test_reward_is_confidence_minus_cost_and_picks_the_best():
    choice = choose_layer([0.2, 0.5, 0.6, 0.62], mu=1.0, layer_cost=0.05)
    assert choice.reward == pytest.approx([0.15, 0.4, 0.45, 0.42])
    assert choice.chosen == 3 and choice.layers == [1, 2, 3, 4]
    assert choose_layer([0.5, 0.5], mu=0.0, layer_cost=0.1).chosen == 1  # ties: the cheaper layer


def test_confidence_is_a_probability_per_candidate_layer():
    model = make_tiny_llava("llama", num_layers=4)
    input_ids, pixels = make_vlm_inputs(batch=2, text_len=6)
    labels = torch.full_like(input_ids, -100)
    labels[:, -3:] = input_ids[:, -3:]
    batch = {
        "input_ids": input_ids,
        "pixel_values": pixels,
        "labels": labels,
        "attention_mask": torch.ones_like(input_ids),
    }
    confidence = early_exit_confidence(adapter_for(model), [batch], max_layer=2)
    assert len(confidence) == 2 and all(0 < c <= 1 for c in confidence)
    with pytest.raises(ValueError, match="no scored tokens"):
        early_exit_confidence(adapter_for(model), [{**batch, "labels": torch.full_like(labels, -100)}], 2)


def test_flops_per_token_add_up():
    from pipeline.evaluation.flops import per_token_flops
    from pipeline.models.imitation import ImitationNetwork

    model = make_tiny_llava("llama", num_layers=4)
    adapter = adapter_for(model)
    hidden = adapter.hidden_size
    head = ImitationNetwork(hidden)
    flops = per_token_flops(adapter, 1, head, context=10)
    assert flops["imitation"] == 2 * 2 * hidden * hidden  # two H×H linears, 2 FLOPs per multiply-add
    vocab = model.config.text_config.vocab_size
    assert flops["lm_head"] == 2 * hidden * vocab
    assert flops["full"] == pytest.approx(4 * flops["layer"] + flops["lm_head"])
    assert flops["draft"] == pytest.approx(flops["full"] - flops["skipped_layers"] + flops["imitation"])
    assert 0 < flops["draft_cost_ratio"] < 1


def test_flops_of_an_encoder_decoder_block_count_cross_attention_once_per_prompt():
    """A T5 decoder block per token: self-attention q, k, v, o; cross-attention q, o only (the encoder's keys and values
    are computed once per prompt); the gated feed-forward's three matmuls; the attention terms for both contexts."""
    from pipeline.evaluation.flops import per_token_flops
    from tests.conftest import TINY, make_tiny_blip2

    adapter = adapter_for(make_tiny_blip2("t5"))
    hidden, ff, context = TINY.hidden_size, TINY.intermediate_size, 10
    matmuls = 2 * (4 * hidden * hidden + 2 * hidden * hidden + 3 * hidden * ff)
    flops = per_token_flops(adapter, 1, None, context=context)
    assert flops["layer"] == matmuls + 2 * 4 * hidden * context
    assert flops["imitation"] == 0 and flops["draft"] == pytest.approx(flops["layer"] + flops["lm_head"])


def test_draft_layers_auto_reads_the_layer_choice_and_checks_the_range(tmp_path):
    import json

    from pipeline.errors import ConfigError
    from pipeline.evaluation.layer_choice import resolve_draft_layers

    path = tmp_path / "layer_choice.json"
    with pytest.raises(ConfigError, match="select_layer"):
        resolve_draft_layers("auto", 12, path, "imitation.draft_layers")
    path.write_text(json.dumps({"chosen_n": 3}))
    assert resolve_draft_layers("auto", 12, path, "imitation.draft_layers") == 3
    assert resolve_draft_layers(5, 12, path, "imitation.draft_layers") == 5
    with pytest.raises(ConfigError, match=r"imitation\.draft_layers must be in 1\.\.11"):
        resolve_draft_layers(12, 12, path, "imitation.draft_layers")
