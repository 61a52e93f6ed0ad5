"""Greedy losslessness: every verified method returns `model.generate(do_sample=False)`'s sequences, token for token.

Tiny random-init models of each supported architecture in float64 (so that no argmax tie is decided by
rounding), every draft depth n, several draft lengths, three kinds of draft head (the early exit itself,
a random head that is never right, the full model as a head that is always right), with and without an
EOS stop that falls in the middle of the generation.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.decoding import (
    AutoregressiveDecoder,
    ConfidenceStop,
    DraftAndVerifyDecoder,
    GrowingDraftLength,
    HeuristicDraftLength,
    SelfSpeculativeDecoder,
)
from pipeline.models.adapters import adapter_for
from tests.conftest import make_causal_lm, make_text_prompt, make_tiny_blip2, make_tiny_llava, make_vlm_inputs
from tests.decoding.draft_heads import FullModelHead, RandomHead

NEW_TOKENS = 24
ARCHS = ["llama", "mistral", "qwen2", "opt", "llava-llama", "llava-mistral", "llava-qwen2", "blip2-opt", "blip2-t5"]


class Case:
    """A model, its prompt and its `model.generate` references (computed once per module)."""

    def __init__(self, arch: str) -> None:
        if arch.startswith(("llava-", "blip2-")):
            family, _, language = arch.partition("-")
            make = make_tiny_llava if family == "llava" else make_tiny_blip2
            self.model = make(language, dtype=torch.float64)
            self.input_ids, pixels = make_vlm_inputs(batch=1, text_len=5, dtype=torch.float64)
            self.inputs = {"pixel_values": pixels}
        else:
            self.model = make_causal_lm(arch)
            self.input_ids = make_text_prompt(8)
            self.inputs = {}
        adapter = adapter_for(self.model)
        self.num_layers = adapter.num_layers
        # An encoder–decoder's sequences are its decoder's: the start token, then the new tokens
        self.prompt_length = 1 if adapter.is_encoder_decoder else self.input_ids.shape[1]
        self.encoder = None
        if adapter.is_encoder_decoder:
            start = torch.tensor([[adapter.decoder_start_token_id]])
            with torch.no_grad():
                self.encoder = adapter.prefix(start, encoder_input_ids=self.input_ids, **self.inputs).encoder
        self.free = self.reference(eos=[])
        self.eos = _mid_sequence_token(self.free[0, self.prompt_length :].tolist())
        self.stopped = self.reference(eos=self.eos)
        assert self.stopped.shape[1] < self.free.shape[1], "the EOS case must stop early"

    def reference(self, eos, max_new_tokens: int = NEW_TOKENS) -> torch.Tensor:
        with torch.no_grad():
            return self.model.generate(
                input_ids=self.input_ids,
                **self.inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
            )

    def run(self, decoder, eos, max_new_tokens: int = NEW_TOKENS):
        return decoder.generate(self.input_ids, max_new_tokens=max_new_tokens, eos_token_id=eos, **self.inputs)


def _mid_sequence_token(tokens: list[int]) -> int:
    """A token whose first occurrence is well inside the generation: the EOS that stops it mid-way."""
    for i in range(10, len(tokens) - 2):
        if tokens[i] not in tokens[:i]:
            return tokens[i]
    raise AssertionError(f"no token first appears mid-sequence in {tokens}")


_CASES: dict[str, Case] = {}


@pytest.fixture(params=ARCHS)
def case(request) -> Case:
    if request.param not in _CASES:
        _CASES[request.param] = Case(request.param)
    return _CASES[request.param]


def _heads(case: Case, n: int):
    hidden = case.model.config.get_text_config().hidden_size
    return {
        "early-exit": None,
        "random": RandomHead(hidden),
        "full-model": FullModelHead(case.model, n, encoder=case.encoder),
    }


def test_autoregressive_matches_generate(case):
    assert torch.equal(case.run(AutoregressiveDecoder(case.model), []).sequences, case.free)
    assert torch.equal(case.run(AutoregressiveDecoder(case.model), case.eos).sequences, case.stopped)


@pytest.mark.parametrize("head_kind", ["early-exit", "random", "full-model"])
def test_self_speculative_is_lossless(case, head_kind):
    for n in range(1, case.num_layers):
        head = _heads(case, n)[head_kind]
        for d in (1, 3, 8):
            decoder = SelfSpeculativeDecoder(case.model, draft_layers=n, head=head, draft_len=d)
            for eos, expected in (([], case.free), (case.eos, case.stopped)):
                out = case.run(decoder, eos)
                assert torch.equal(out.sequences, expected), f"n={n} d={d} head={head_kind} eos={eos}"
                assert out.stats.verify_calls > 1
                assert out.stats.new_tokens == expected.shape[1] - case.prompt_length


@pytest.mark.parametrize(
    "policy", [GrowingDraftLength(1, 6, 4), HeuristicDraftLength(3), ConfidenceStop(0.3, 6)], ids=repr
)
def test_every_policy_is_lossless(case, policy):
    decoder = SelfSpeculativeDecoder(case.model, draft_layers=case.num_layers // 2, draft_len=policy)
    assert torch.equal(case.run(decoder, []).sequences, case.free)
    assert torch.equal(case.run(decoder, case.eos).sequences, case.stopped)


@pytest.mark.parametrize("skip", [[1], [2], [1, 2], [1, 3], [3]], ids=str)
def test_draft_and_verify_is_lossless(case, skip):
    for policy in (ConfidenceStop(0.2, 5), 3):
        decoder = DraftAndVerifyDecoder(case.model, skip_layers=skip, draft_len=policy)
        out = case.run(decoder, [])
        assert torch.equal(out.sequences, case.free), f"skip={skip} policy={policy}"
        assert torch.equal(case.run(decoder, case.eos).sequences, case.stopped)
        assert out.stats.drafted > 0


def test_perfect_head_is_always_accepted_and_random_head_rarely(case):
    n = case.num_layers // 2
    perfect_head = FullModelHead(case.model, n, encoder=case.encoder)
    perfect = case.run(SelfSpeculativeDecoder(case.model, n, head=perfect_head, draft_len=4), [])
    assert perfect.stats.acceptance_rate == 1.0
    assert perfect.stats.accepted_by_position == perfect.stats.drafted_by_position
    hidden = case.model.config.get_text_config().hidden_size
    random = case.run(SelfSpeculativeDecoder(case.model, n, head=RandomHead(hidden), draft_len=4), [])
    assert random.stats.acceptance_rate < 0.25
    assert random.stats.drafted > 0


def test_a_drafted_eos_is_left_to_the_verifier(case):
    """With a draft that is always right, a round that drafts the EOS stops before it and verifies what precedes it:
    every round commits its accepted drafts plus the verifier's token, the last round's being the EOS. Drafting on
    past the EOS, or verifying the drafted EOS, would commit fewer tokens than the rounds paid for."""
    n = case.num_layers // 2
    head = FullModelHead(case.model, n, encoder=case.encoder)
    for d in (1, 3, 8):
        out = case.run(SelfSpeculativeDecoder(case.model, n, head=head, draft_len=d), case.eos)
        assert torch.equal(out.sequences, case.stopped), f"d={d}"
        rounds = out.stats.rounds
        assert all(accepted == drafted for drafted, accepted in rounds), rounds
        # the prefill's token, then each round's drafts and the verifier's own token
        assert out.stats.new_tokens == 1 + sum(drafted + 1 for drafted, _ in rounds), (d, rounds)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 7])
def test_short_budgets_stop_where_generate_stops(max_new_tokens):
    case = _CASES.get("llama") or _CASES.setdefault("llama", Case("llama"))
    expected = case.reference([], max_new_tokens)
    for d in (1, 4):
        out = case.run(SelfSpeculativeDecoder(case.model, 2, draft_len=d), [], max_new_tokens)
        assert torch.equal(out.sequences, expected)
        assert torch.equal(case.run(AutoregressiveDecoder(case.model), [], max_new_tokens).sequences, expected)


def test_zero_new_tokens_returns_the_prompt():
    model = make_causal_lm("llama")
    ids = make_text_prompt(5)
    assert torch.equal(SelfSpeculativeDecoder(model, 2).generate(ids, max_new_tokens=0).sequences, ids)


def test_default_eos_is_the_generation_config_one():
    case = _CASES.get("llama") or _CASES.setdefault("llama", Case("llama"))
    model = case.model
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = case.eos
    try:
        out = case.run(SelfSpeculativeDecoder(model, 2, draft_len=3), None)
        assert torch.equal(out.sequences, case.stopped)
    finally:
        model.generation_config.eos_token_id = saved


def test_left_padding_is_kept_in_the_layout_of_generate():
    case = _CASES.get("llava-llama") or _CASES.setdefault("llava-llama", Case("llava-llama"))
    pad = torch.zeros(1, 3, dtype=torch.long)
    ids = torch.cat([pad, case.input_ids], dim=1)
    mask = torch.cat([pad, torch.ones_like(case.input_ids)], dim=1)
    with torch.no_grad():
        expected = case.model.generate(
            input_ids=ids, attention_mask=mask, **case.inputs, max_new_tokens=12, do_sample=False, eos_token_id=[]
        )
    out = SelfSpeculativeDecoder(case.model, 2, draft_len=3).generate(ids, 12, [], attention_mask=mask, **case.inputs)
    assert torch.equal(out.sequences, expected)


def test_sliding_window_layers_roll_back():
    """Mistral with a window shorter than the sequence: rollback must restore evicted states."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=6,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = MistralForCausalLM(config).double().eval()
    ids = make_text_prompt(8)
    with torch.no_grad():
        expected = model.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=[])
    for d in (1, 3, 5):
        assert torch.equal(SelfSpeculativeDecoder(model, 2, draft_len=d).generate(ids, 20, []).sequences, expected)
    assert torch.equal(AutoregressiveDecoder(model).generate(ids, 20, []).sequences, expected)
