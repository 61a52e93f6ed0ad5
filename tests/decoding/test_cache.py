"""Rolling back the shared cache: each layer to an absolute length; an encoder–decoder's cross-attention entries are
kept."""

from __future__ import annotations

import torch
from transformers import EncoderDecoderCache

from pipeline.decoding.cache import crop_to, new_cache
from pipeline.models.adapters import adapter_for
from tests.conftest import make_causal_lm, make_text_prompt, make_tiny_blip2, make_vlm_inputs


def test_crop_cuts_each_layer_to_an_absolute_length():
    model = make_causal_lm("llama")
    adapter = adapter_for(model)
    cache = new_cache(adapter)
    with torch.no_grad():
        hidden = adapter.run_layers(adapter.prefix(make_text_prompt(6)).embeds, 0, 4, cache)
        adapter.run_layers(adapter.embed(torch.tensor([[7, 8, 9]])), 0, 2, cache)  # shallow layers run ahead
    assert [cache.get_seq_length(i) for i in range(4)] == [9, 9, 6, 6]
    crop_to(cache, 7)
    assert [cache.get_seq_length(i) for i in range(4)] == [7, 7, 6, 6]
    assert hidden.shape[1] == 6


def test_encoder_decoder_crop_cuts_self_attention_and_keeps_the_encoders_keys():
    model = make_tiny_blip2("t5", dtype=torch.float64)
    adapter = adapter_for(model)
    ids, pixels = make_vlm_inputs(batch=1, dtype=torch.float64)
    cache = new_cache(adapter)
    assert isinstance(cache, EncoderDecoderCache)
    with torch.no_grad():
        prefix = adapter.prefix(torch.tensor([[0, 5, 6, 7]]), encoder_input_ids=ids, pixel_values=pixels)
        adapter.run_layers(prefix.embeds, 0, 4, cache, encoder=prefix.encoder)
        adapter.run_layers(adapter.embed(torch.tensor([[9, 10]])), 0, 2, cache, encoder=prefix.encoder)
    cross = [layer.keys.clone() for layer in cache.cross_attention_cache.layers]
    assert [cache.get_seq_length(i) for i in range(4)] == [6, 6, 4, 4]
    crop_to(cache, 5)
    assert [cache.get_seq_length(i) for i in range(4)] == [5, 5, 4, 4]
    # the encoder's keys: one per encoder position, untouched by the decoder-side rollback
    assert all(
        torch.equal(layer.keys, before) and layer.keys.shape[-2] == ids.shape[1]
        for layer, before in zip(cache.cross_attention_cache.layers, cross, strict=True)
    )
