"""HF's own decoding as our comparison baseline: greedy and `assistant_early_exit` on LLaVA.

The early exit must really draft with `n` layers (on LLaVA, HF's own switch silently reaches no layer loop)
and, being HF's lossless assisted decoding, still return the greedy sequences.
"""

from __future__ import annotations

import torch

from pipeline.decoding import SelfSpeculativeDecoder
from pipeline.decoding.hf_reference import _text_depth_follows_composite_config, hf_early_exit, hf_greedy
from tests.conftest import make_tiny_llava, make_vlm_inputs


def _llava():
    model = make_tiny_llava("llama", num_layers=4, dtype=torch.float64)
    input_ids, pixels = make_vlm_inputs(batch=1, text_len=5, dtype=torch.float64)
    return model, input_ids, pixels


def test_hf_greedy_is_generate_and_early_exit_returns_the_same_tokens():
    model, input_ids, pixels = _llava()
    greedy = hf_greedy(model, input_ids, 16, [], pixel_values=pixels)
    expected = model.generate(
        input_ids=input_ids, pixel_values=pixels, max_new_tokens=16, do_sample=False, eos_token_id=[]
    )
    assert torch.equal(greedy, expected)
    early = hf_early_exit(model, input_ids, 16, [], pixel_values=pixels, draft_layers=2, draft_len=3)
    assert torch.equal(early, greedy)
    ours = SelfSpeculativeDecoder(model, 2, None, 3).generate(input_ids, 16, [], pixel_values=pixels).sequences
    assert torch.equal(ours, greedy)


def test_early_exit_runs_only_the_first_n_layers_while_drafting():
    model, input_ids, pixels = _llava()
    depths: list[int] = []
    layers = model.model.language_model.layers
    hooks = [layer.register_forward_pre_hook(lambda m, a, i=i: depths.append(i)) for i, layer in enumerate(layers)]
    try:
        hf_early_exit(model, input_ids, 12, [], pixel_values=pixels, draft_layers=1, draft_len=4)
    finally:
        for hook in hooks:
            hook.remove()
    # Draft passes run layer 0 alone: some layer-0 calls are not followed by layer 1
    runs = [depths[i + 1] if i + 1 < len(depths) else None for i, d in enumerate(depths) if d == 0]
    assert any(nxt in (0, None) for nxt in runs), "no draft pass stopped after layer 0: early exit did not happen"
    assert 3 in depths, "verification never ran the full model"


def test_forwarding_is_undone_after_the_call():
    model, _, _ = _llava()
    config_class = type(model.config)
    text_config = model.model.language_model.config
    with _text_depth_follows_composite_config(model):
        model.model.config.num_hidden_layers = 1
        assert text_config.num_hidden_layers == 1
    assert type(model.config) is config_class and text_config.num_hidden_layers == 4


def test_hf_assisted_generation_with_a_language_only_draft_matches_greedy_and_ours():
    """HF's `assistant_model` on LLaVA with a text-only draft (the reference for the language-only draft baseline):
    the greedy tokens, as our engine's separate-draft decoder gives; the draft really proposes d tokens per round."""
    from pipeline.decoding.hf_reference import hf_assisted
    from pipeline.decoding.separate_draft import SeparateDraftDecoder
    from tests.conftest import make_causal_lm

    model, input_ids, pixels = _llava()
    draft = make_causal_lm("llama", num_layers=1, seed=5)
    greedy = hf_greedy(model, input_ids, 16, [], pixel_values=pixels)
    before = draft.generation_config.to_dict()
    calls: list[int] = []
    hook = draft.register_forward_pre_hook(lambda m, a, k: calls.append(k["input_ids"].shape[1]), with_kwargs=True)
    try:
        assisted = hf_assisted(model, draft, input_ids, 16, [], draft_len=3, pixel_values=pixels)
    finally:
        hook.remove()
    assert torch.equal(assisted, greedy) and len(calls) >= 6  # prefill + 3 per round: the draft ran
    assert draft.generation_config.to_dict() == before  # the round length was set for the call only
    ours = SeparateDraftDecoder(model, draft, 3).generate(input_ids, 16, [], pixel_values=pixels).sequences
    assert torch.equal(ours, greedy)
