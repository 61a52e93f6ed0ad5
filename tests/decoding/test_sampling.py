"""Speculative sampling is distributed as the full model: SSD samples vs. the exact distribution by enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.decoding import SelfSpeculativeDecoder
from pipeline.decoding.sampling import SamplingConfig

VOCAB = 5
GENERATED = 3  # tokens whose joint distribution is checked: the prefill's and a full draft round's
SAMPLES = 3000


def peaky_model() -> LlamaForCausalLM:
    """Random init with a sharpened LM head, so that the early-exit draft and the full model disagree clearly."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).double().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)
    return model


def peaky_encoder_decoder():
    """BLIP-2 with a T5 encoder–decoder over a 5-token vocabulary (+ the image token), and an image for it."""
    from pipeline.models.tiny_blip2 import build_tiny_blip2, tiny_blip2_config
    from tests.conftest import TINY

    cfg = TINY.model_copy(update={"num_query_tokens": 2})
    config = tiny_blip2_config(
        cfg, "t5", vocab_size=VOCAB + 1, pad_token_id=0, bos_token_id=0, eos_token_id=2, image_token_id=VOCAB
    )
    model = build_tiny_blip2(config, seed=0).double().eval()
    with torch.no_grad():  # larger blocks: the deep layers change the distribution the one-layer draft proposes
        for name, parameter in model.language_model.decoder.named_parameters():
            if "layer_norm" not in name:
                parameter.mul_(3.0)
    pixels = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    return model, {"pixel_values": pixels.double()}


def exact_joint(model, prompt: torch.Tensor, sampling: SamplingConfig, **inputs) -> dict[tuple[int, ...], float]:
    """P(first GENERATED tokens) under the full model's warped sampling distribution, by enumeration (for an
    encoder–decoder: of its decoder's tokens after the start token, the prompt going to the encoder)."""
    continuations = torch.tensor(list(itertools.product(range(VOCAB), repeat=GENERATED)))
    rows = len(continuations)
    with torch.no_grad():
        if inputs:  # BLIP-2 T5
            start = torch.full((rows, 1), model.generation_config.decoder_start_token_id)
            logits = model(
                input_ids=prompt.expand(rows, -1),
                pixel_values=inputs["pixel_values"].expand(rows, -1, -1, -1),
                decoder_input_ids=torch.cat([start, continuations[:, :-1]], dim=1),
            ).logits
        else:
            ids = torch.cat([prompt.expand(rows, -1), continuations], dim=1)
            logits = model(input_ids=ids).logits[:, prompt.shape[1] - 1 : -1]
    probs = sampling.probabilities(logits).gather(-1, continuations.unsqueeze(-1)).squeeze(-1)
    joint = probs.prod(dim=-1)
    return {tuple(c.tolist()): float(p) for c, p in zip(continuations, joint, strict=True)}


def chi_square_p_value(counts: dict, expected: dict, samples: int) -> float:
    """Pearson's test, pooling outcomes with fewer than 5 expected samples into one bin."""
    from scipy.stats import chi2

    statistic, bins, pooled_obs, pooled_exp = 0.0, 0, 0.0, 0.0
    for outcome, p in expected.items():
        e, o = p * samples, counts.get(outcome, 0)
        if e < 5:
            pooled_obs, pooled_exp = pooled_obs + o, pooled_exp + e
            continue
        statistic += (o - e) ** 2 / e
        bins += 1
    if pooled_exp > 0:
        statistic += (pooled_obs - pooled_exp) ** 2 / pooled_exp
        bins += 1
    return float(chi2.sf(statistic, bins - 1))


@pytest.mark.parametrize("family", ["llama", "blip2-t5"])
def test_ssd_sampling_matches_the_full_model_distribution(family):
    model, inputs = (peaky_model(), {}) if family == "llama" else peaky_encoder_decoder()
    prompt = torch.tensor([[1, 3, 4]]) if family == "llama" else torch.tensor([[VOCAB, VOCAB, 3, 4, 2]])
    start = 1 if inputs else prompt.shape[1]  # where the new tokens begin in the sequences
    sampling = SamplingConfig(temperature=0.9, top_p=0.97)
    expected = exact_joint(model, prompt, sampling, **inputs)
    # Draft 2 tokens in the first round (budget 4 → at most 2 drafts + 1): rejections, residual draws and
    # bonus tokens all shape the first three tokens.
    decoder = SelfSpeculativeDecoder(model, draft_layers=1, draft_len=2)
    generator = torch.Generator().manual_seed(0)
    counts: dict[tuple[int, ...], int] = {}
    drafted = accepted = 0
    samples = SAMPLES if family == "llama" else SAMPLES // 2  # BLIP-2 runs its vision tower and encoder per call
    for _ in range(samples):
        out = decoder.generate(
            prompt,
            max_new_tokens=GENERATED + 1,
            eos_token_id=[],
            temperature=0.9,
            top_p=0.97,
            generator=generator,
            **inputs,
        )
        outcome = tuple(out.sequences[0, start : start + GENERATED].tolist())
        counts[outcome] = counts.get(outcome, 0) + 1
        drafted += out.stats.drafted
        accepted += out.stats.accepted
    # The check has teeth only if drafts are both accepted and rejected often (hundreds of each here)
    assert 0.1 < accepted / drafted < 0.9
    tv = 0.5 * sum(abs(counts.get(k, 0) / samples - p) for k, p in expected.items())
    assert chi_square_p_value(counts, expected, samples) > 1e-3, tv
    assert tv < 0.06


def test_batched_sampling_gives_each_row_its_own_distribution(one_thread):
    """Two prompts of different lengths in one left-padded batch: each row's first tokens are distributed as the full
    model samples that prompt alone (rows accept and reject independently)."""
    model = peaky_model()
    prompts = [torch.tensor([[1, 3, 4]]), torch.tensor([[1, 4]])]
    ids = torch.tensor([[1, 3, 4], [0, 1, 4]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    sampling = SamplingConfig(temperature=0.9, top_p=0.97)
    expected = [exact_joint(model, prompt, sampling) for prompt in prompts]
    decoder = SelfSpeculativeDecoder(model, draft_layers=1, draft_len=2)
    generator = torch.Generator().manual_seed(0)
    samples = SAMPLES // 2
    counts: list[dict[tuple[int, ...], int]] = [{}, {}]
    for _ in range(samples):
        out = decoder.generate(
            ids, GENERATED + 1, [], temperature=0.9, top_p=0.97, generator=generator, attention_mask=mask
        )
        for row in range(2):
            outcome = tuple(out.sequences[row, 3 : 3 + GENERATED].tolist())
            counts[row][outcome] = counts[row].get(outcome, 0) + 1
    assert expected[0] != expected[1]  # the two prompts' distributions differ: mixing rows would show
    for row in range(2):
        tv = 0.5 * sum(abs(counts[row].get(k, 0) / samples - p) for k, p in expected[row].items())
        assert chi_square_p_value(counts[row], expected[row], samples) > 1e-3, (row, tv)
        assert tv < 0.08, (row, tv)
