"""Sliding-window attention: models whose layers mix full and sliding-window attention decode losslessly for every
draft depth, and a sliding-window layer's cache stays bounded by its window even when every draft is accepted."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from pipeline.decoding import AutoregressiveDecoder, DraftAndVerifyDecoder, SelfSpeculativeDecoder, engine
from tests.conftest import make_text_prompt
from tests.decoding.draft_heads import FullModelHead

WINDOW = 5
NEW_TOKENS = 30


def hybrid_qwen2(num_layers: int = 4, max_window_layers: int = 2) -> Qwen2ForCausalLM:
    """Qwen2 whose first `max_window_layers` layers attend fully and the others through a 5-token window."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=WINDOW,
        max_window_layers=max_window_layers,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = Qwen2ForCausalLM(config).double().eval()
    assert config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    return model


@pytest.fixture(scope="module")
def hybrid():
    model = hybrid_qwen2()
    ids = make_text_prompt(8)
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=[])
    return model, ids, expected


def test_hybrid_sliding_window_model_is_lossless_for_every_draft_depth(hybrid):
    model, ids, expected = hybrid
    assert torch.equal(AutoregressiveDecoder(model).generate(ids, NEW_TOKENS, []).sequences, expected)
    for n in range(1, 4):
        for d in (1, 3, 6):
            out = SelfSpeculativeDecoder(model, n, draft_len=d).generate(ids, NEW_TOKENS, [])
            assert torch.equal(out.sequences, expected), f"n={n} d={d}"
    for skip in ([1], [2], [3], [1, 3]):
        out = DraftAndVerifyDecoder(model, skip_layers=skip, draft_len=3).generate(ids, NEW_TOKENS, [])
        assert torch.equal(out.sequences, expected), f"skip={skip}"


def test_sliding_layers_stay_within_their_window_while_every_draft_is_accepted(hybrid, monkeypatch):
    """With a head that is always right no round rejects anything: the sliding-window layers must still release what
    their window no longer needs, instead of keeping the whole history until a rejection that never comes."""
    model, ids, expected = hybrid
    caches = []
    original = engine.new_cache

    def recording(adapter, rollback=True):
        caches.append(original(adapter, rollback))
        return caches[-1]

    monkeypatch.setattr(engine, "new_cache", recording)
    d = 4
    out = SelfSpeculativeDecoder(model, 2, head=FullModelHead(model, 2), draft_len=d).generate(ids, NEW_TOKENS, [])
    assert torch.equal(out.sequences, expected)
    assert out.stats.acceptance_rate == 1.0 and out.stats.verify_calls > 3
    (cache,) = caches
    total = ids.shape[1] + NEW_TOKENS - 1
    for index, layer in enumerate(cache.layers):
        held = layer.keys.shape[-2]
        if index < 2:  # full attention: every committed token
            assert held == total, index
        else:  # the window minus one, plus at most what one round adds before its crop
            assert held <= WINDOW - 1, (index, held)
