"""Batched decoding: every decoder takes a left-padded batch, each row decodes independently and exactly as
`model.generate` decodes it, alone or in the batch (float64), rows finishing at different times; sampled rows are
each distributed as the full model's."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ImitationArchitecture
from pipeline.decoding import (
    AcceptanceBackoff,
    AutoregressiveDecoder,
    ConfidenceStop,
    DraftAndVerifyDecoder,
    DraftOnlyDecoder,
    GrowingDraftLength,
    HeuristicDraftLength,
    SelfSpeculativeDecoder,
)
from pipeline.models.adapters import adapter_for
from pipeline.models.imitation import ImitationNetwork, as_draft_head
from tests.conftest import IMAGE_TOKEN_ID, VOCAB, make_causal_lm, make_tiny_blip2, make_tiny_llava
from tests.decoding.draft_heads import FullModelHead, RandomHead

NEW_TOKENS = 20
FAMILIES = ["llama", "opt", "llava-qwen2", "blip2-opt", "blip2-t5"]
PAD = 0


class Batch:
    """Three prompts of different lengths, left padded into one batch, with `model.generate`'s references."""

    def __init__(self, family: str) -> None:
        self.family = family
        generator = torch.Generator().manual_seed(7)
        self.vlm = family.startswith(("llava", "blip2"))
        if self.vlm:
            kind, _, language = family.partition("-")
            self.model = (make_tiny_llava if kind == "llava" else make_tiny_blip2)(language, dtype=torch.float64)
            prompts = [
                [1, *[IMAGE_TOKEN_ID] * 4, *torch.randint(5, VOCAB, (n,), generator=generator).tolist()]
                for n in (6, 2, 4)
            ]
            self.pixels = torch.randn(3, 3, 16, 16, generator=generator, dtype=torch.float64)
        else:
            self.model = make_causal_lm(family)
            prompts = [[1, *torch.randint(5, VOCAB, (n,), generator=generator).tolist()] for n in (8, 3, 5)]
            self.pixels = None
        self.adapter = adapter_for(self.model)
        self.prompts = prompts
        width = max(map(len, prompts))
        self.input_ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
        self.mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        self.free = self.reference([])
        # an EOS that stops some row mid-way and the others at other times (or not at all)
        self.eos = next(
            t for tokens in self.new_tokens(self.free) for i, t in enumerate(tokens) if i >= 4 and t not in tokens[:i]
        )
        self.stopped = self.reference(self.eos)

    def inputs(self, rows: list[int] | None = None) -> dict:
        inputs: dict = (
            {} if self.pixels is None else {"pixel_values": self.pixels if rows is None else self.pixels[rows]}
        )
        return inputs

    def reference(self, eos) -> torch.Tensor:
        with torch.no_grad():
            return self.model.generate(
                input_ids=self.input_ids,
                attention_mask=self.mask,
                **self.inputs(),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=PAD,
            )

    def alone(self, row: int, eos) -> list[int]:
        with torch.no_grad():
            out = self.model.generate(
                input_ids=torch.tensor([self.prompts[row]]),
                **self.inputs([row]),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=eos,
            )
        return self.new_tokens(out, torch.tensor([self.prompts[row]]))[0]

    def new_tokens(self, sequences: torch.Tensor, prompt: torch.Tensor | None = None, eos=None) -> list[list[int]]:
        """Each row's new tokens, cut after its first `eos` (the padding after a finished row)."""
        new = self.adapter.new_tokens(sequences, self.input_ids if prompt is None else prompt).tolist()
        return [row[: next((i + 1 for i, t in enumerate(row) if t == eos), len(row))] for row in new]

    def run(self, decoder, eos):
        return decoder.generate(
            self.input_ids, NEW_TOKENS, eos, attention_mask=self.mask, pad_token_id=PAD, **self.inputs()
        )


_BATCHES: dict[str, Batch] = {}


@pytest.fixture(params=FAMILIES)
def batch(request) -> Batch:
    if request.param not in _BATCHES:
        _BATCHES[request.param] = Batch(request.param)
    return _BATCHES[request.param]


def _heads(batch: Batch, n: int) -> dict:
    hidden = batch.adapter.hidden_size
    encoder = None
    if batch.adapter.is_encoder_decoder:
        start = torch.zeros(3, 1, dtype=torch.long)
        with torch.no_grad():
            encoder = batch.adapter.prefix(
                start, encoder_input_ids=batch.input_ids, encoder_attention_mask=batch.mask, **batch.inputs()
            ).encoder
    torch.manual_seed(0)
    attention = ImitationNetwork(hidden, ImitationArchitecture(attention=True, num_heads=2, residual=False))
    return {
        "early-exit": None,
        "random": RandomHead(hidden),
        "attention-imitation": as_draft_head(attention.double().eval()),
        "full-model": FullModelHead(batch.model, n, encoder=encoder),
    }


def test_the_batch_reference_is_each_prompt_alone(batch):
    """`model.generate` on the left-padded batch gives every row what it gives that prompt alone: the property our
    decoders are then held to."""
    assert batch.new_tokens(batch.free) == [batch.alone(row, []) for row in range(3)]
    assert batch.new_tokens(batch.stopped, eos=batch.eos) == [batch.alone(row, batch.eos) for row in range(3)]


def test_autoregressive_and_draft_only_decode_every_row(batch):
    for eos, expected in (([], batch.free), (batch.eos, batch.stopped)):
        out = batch.run(AutoregressiveDecoder(batch.model), eos)
        assert torch.equal(out.sequences, expected), eos
    n = batch.adapter.num_layers // 2
    draft = batch.run(DraftOnlyDecoder(batch.model, n), [])
    for row in range(3):  # the draft alone on the batch is the draft alone on each prompt
        single = DraftOnlyDecoder(batch.model, n).generate(
            torch.tensor([batch.prompts[row]]), NEW_TOKENS, [], **batch.inputs([row])
        )
        assert (
            batch.adapter.new_tokens(draft.sequences, batch.input_ids)[row].tolist()
            == batch.adapter.new_tokens(single.sequences, torch.tensor([batch.prompts[row]]))[0].tolist()
        )


@pytest.mark.parametrize("head_kind", ["early-exit", "random", "attention-imitation", "full-model"])
def test_self_speculative_rows_are_lossless(batch, head_kind):
    for n in range(1, batch.adapter.num_layers):
        head = _heads(batch, n)[head_kind]
        for d in (1, 4):
            decoder = SelfSpeculativeDecoder(batch.model, n, head=head, draft_len=d)
            for eos, expected in (([], batch.free), (batch.eos, batch.stopped)):
                out = batch.run(decoder, eos)
                assert torch.equal(out.sequences, expected), f"n={n} d={d} head={head_kind} eos={eos}"
            assert len(out.row_stats) == 3 and sum(s.new_tokens for s in out.row_stats) == out.stats.new_tokens
        if head_kind == "full-model":  # a head that is always right: every row accepts every draft
            assert all(row.acceptance_rate == 1.0 for row in out.row_stats)


@pytest.mark.parametrize(
    "policy",
    [
        GrowingDraftLength(1, 5, 3),
        HeuristicDraftLength(2),
        ConfidenceStop(0.3, 5),
        # dear drafts: rows back off to plain decoding steps (d = 0) at their own times, and probe again
        AcceptanceBackoff(3, cost_ratio=0.5, probe_every=2),
    ],
    ids=repr,
)
def test_every_policy_drafts_per_row_and_stays_lossless(batch, policy):
    decoder = SelfSpeculativeDecoder(batch.model, batch.adapter.num_layers // 2, draft_len=policy)
    out = batch.run(decoder, batch.eos)
    assert torch.equal(out.sequences, batch.stopped)
    # each row's policy saw its own rounds: the rows' round counts differ when their acceptance does
    assert sum(row.verify_calls for row in out.row_stats) == out.stats.verify_calls


@pytest.mark.parametrize("policy", [1, 4, AcceptanceBackoff(3, cost_ratio=0.5, probe_every=2)], ids=repr)
def test_a_separate_language_only_draft_model_is_lossless(batch, policy):
    """Gagrani et al.'s baseline: a small text-only LM drafts (it reads the image placeholders, never the pixels)."""
    from pipeline.decoding.separate_draft import SeparateDraftDecoder

    draft = make_causal_lm("llama", num_layers=1, seed=5)
    if batch.adapter.is_encoder_decoder:
        with pytest.raises(ValueError, match="needs a decoder-only backbone"):
            SeparateDraftDecoder(batch.model, draft, policy)
        return
    decoder = SeparateDraftDecoder(batch.model, draft, policy)
    for eos, expected in (([], batch.free), (batch.eos, batch.stopped)):
        out = batch.run(decoder, eos)
        assert torch.equal(out.sequences, expected), eos
    assert out.stats.drafted > 0 and len(out.row_stats) == 3


def test_a_separate_draft_identical_to_the_model_is_always_accepted():
    """The draft's cache mirrors the model's slot for slot (rows with different prompt lengths, rejected drafts of
    other rows as dead slots): a draft model equal to the model itself proposes exactly the model's tokens."""
    from pipeline.decoding.separate_draft import SeparateDraftDecoder

    model = make_causal_lm("llama")
    prompts = torch.tensor([[PAD, PAD, 1, 7, 8, 9], [1, 11, 12, 13, 14, 15]])
    mask = (prompts != PAD).long()
    expected = model.generate(prompts, attention_mask=mask, max_new_tokens=17, do_sample=False, eos_token_id=[])
    out = SeparateDraftDecoder(model, model, 4).generate(prompts, 17, [], attention_mask=mask)
    assert torch.equal(out.sequences, expected)
    # prefill gives 1 token, three rounds 5 each; the 17th needs no draft: a round of d = 0
    assert [row.rounds for row in out.row_stats] == [[(4, 4)] * 3 + [(0, 0)]] * 2
    with pytest.raises(ValueError, match=r"draft model's parameters are torch.float32 on cpu .* backbone's dtype"):
        SeparateDraftDecoder(model, make_causal_lm("llama", num_layers=1, dtype=torch.float32))
    with pytest.raises(ValueError, match="vocabulary has 32 entries but the backbone's has 64"):
        SeparateDraftDecoder(model, type(model)(model.config.__class__(**{**model.config.to_dict(), "vocab_size": 32})))


@pytest.mark.parametrize("skip", [[1], [1, 2]], ids=str)
def test_draft_and_verify_rows_are_lossless(batch, skip):
    decoder = DraftAndVerifyDecoder(batch.model, skip_layers=skip, draft_len=ConfidenceStop(0.2, 4))
    assert torch.equal(batch.run(decoder, []).sequences, batch.free)
    assert torch.equal(batch.run(decoder, batch.eos).sequences, batch.stopped)


def test_a_row_that_accepts_more_is_not_held_back():
    """Row 0 drafts with the full model's own layers (always right) in a batch with rows that are not: it still needs
    one verification per d + 1 tokens, as it would alone."""
    model = make_causal_lm("llama")
    prompts = torch.tensor([[1, 7, 8, 9, 10], [1, 11, 12, 13, 14]])
    perfect = FullModelHead(model, 2)
    alone = SelfSpeculativeDecoder(model, 2, head=perfect, draft_len=3).generate(prompts[:1], 16, [])
    both = SelfSpeculativeDecoder(model, 2, head=perfect, draft_len=3).generate(prompts, 16, [])
    assert both.row_stats[0].verify_calls == alone.stats.verify_calls == 4  # 1 + 4 × (3 + 1) ≥ 16 tokens
    assert torch.equal(both.sequences[:1], alone.sequences)


def test_finished_rows_leave_the_batch():
    """A row that finishes early costs nothing afterwards: the cache keeps only unfinished rows."""
    from pipeline.decoding import engine

    batch = _BATCHES.get("llama") or _BATCHES.setdefault("llama", Batch("llama"))
    sizes = []
    original = engine.SlotTable.select

    def recording(self, rows):
        sizes.append(len(rows))
        return original(self, rows)

    engine.SlotTable.select = recording
    try:
        out = batch.run(SelfSpeculativeDecoder(batch.model, 2, draft_len=3), batch.eos)
    finally:
        engine.SlotTable.select = original
    assert torch.equal(out.sequences, batch.stopped)
    lengths = [len(t) for t in batch.new_tokens(batch.stopped, eos=batch.eos)]
    assert len(set(lengths)) > 1 and sizes and sizes[0] < 3  # some row stopped before the others


def test_batched_sliding_window_speculation_is_refused_with_the_reason():
    from tests.decoding.test_sliding_window import hybrid_qwen2

    model = hybrid_qwen2()
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    with pytest.raises(ValueError, match=r"sliding-window attention is not supported.*one at a time"):
        SelfSpeculativeDecoder(model, 2, draft_len=3).generate(ids, 8, [])
    with torch.no_grad():  # the autoregressive decoder has no rejected drafts: it decodes the batch as generate does
        expected = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=[])
    assert torch.equal(AutoregressiveDecoder(model).generate(ids, 8, []).sequences, expected)
