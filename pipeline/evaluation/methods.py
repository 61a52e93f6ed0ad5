"""Decoding methods evaluated side by side: speed against the full model and the quality of what they wrote.

A *method* decodes one prompt (`pipeline.evaluation.speed.Method`). `evaluate_methods` times all of them on
the same prompts in one process, then scores each: speed-up = the reference's per-token latency ÷ the
method's (DESIGN.md), tokens/s, acceptance counts, the share of outputs identical to the reference's, and
caption metrics (pycocoevalcap) of its captions against the references.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pipeline.data.examples import SplitData
from pipeline.data.pixels import PixelStore
from pipeline.data.prompts import PromptBuilder
from pipeline.decoding.engine import Decoder
from pipeline.decoding.hf_reference import hf_greedy
from pipeline.evaluation.caption_metrics import caption_scores
from pipeline.evaluation.speed import Method, identical_share, time_methods

MAX_NEW_TOKENS = {"caption": 32, "description": 96, "vqa": 8}


def decoder_method(decoder: Decoder, eos_token_id: int | None) -> Method:
    def run(prompt: dict):
        out = decoder.generate(prompt["input_ids"], prompt["max_new_tokens"], eos_token_id, pixel_values=prompt["pixel_values"])
        return out.sequences[0, prompt["input_ids"].shape[1] :], out.stats

    return run


def generate_method(model: torch.nn.Module, eos_token_id: int | None) -> Method:
    """`model.generate` greedy: the full model, the reference for speed and losslessness."""

    def run(prompt: dict):
        sequences = hf_greedy(model, prompt["input_ids"], prompt["max_new_tokens"], eos_token_id, pixel_values=prompt["pixel_values"])
        return sequences[0, prompt["input_ids"].shape[1] :], None

    return run


def caption_prompts(split: SplitData, builder: PromptBuilder, image_processor, captions: int, descriptions: int = 0) -> list[dict]:
    """The first `captions` images as caption prompts (with their references) and `descriptions` described
    images as description prompts (with the description as reference)."""
    described = [i for i, r in enumerate(split.images) if r.image_id in split.descriptions]
    chosen = [("caption", i) for i in range(min(captions, len(split.images)))]
    chosen += [("description", i) for i in described[:descriptions]]
    pixels = PixelStore([split.images[i].image_path for _, i in chosen], image_processor)
    prompts = []
    for k, (task, i) in enumerate(chosen):
        record = split.images[i]
        references = list(record.captions) if task == "caption" else [split.descriptions[record.image_id]]
        prompts.append({
            "task": task,
            "key": f"{task}:{record.image_id}",
            "references": references,
            "input_ids": torch.tensor([builder.prompt_ids(task)]),
            "pixel_values": pixels[k].unsqueeze(0),
            "max_new_tokens": MAX_NEW_TOKENS[task],
        })
    return prompts


def evaluate_methods(
    methods: dict[str, Method],
    prompts: Sequence[dict],
    tokenizer,
    *,
    reference: str,
    repeats: int = 1,
    warmup_prompts: int = 1,
    caption_metrics: bool = True,
) -> dict[str, dict[str, Any]]:
    """Time every method on `prompts` and score it; `reference` names the full model among `methods`."""
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} is not among {sorted(methods)}")
    timings = time_methods(methods, prompts, repeats=repeats, warmup_prompts=warmup_prompts)
    base = timings[reference]
    captions = [i for i, p in enumerate(prompts) if p["task"] == "caption"]
    results: dict[str, dict[str, Any]] = {}
    for name, timing in timings.items():
        latency = timing.latency()
        row: dict[str, Any] = {
            "speedup": base.latency() / latency,
            "tokens_per_second": 1.0 / latency,
            "ms_per_token": 1e3 * latency,
            "new_tokens": float(timing.new_tokens()),
            "identical_share": identical_share(timing.outputs, base.outputs),
        }
        if timing.has_stats and timing.stats.verify_calls:
            row.update({
                "acceptance_rate": timing.stats.acceptance_rate,
                "mean_accepted_length": timing.stats.mean_accepted_length,
                "verify_calls": float(timing.stats.verify_calls),
            })
        if caption_metrics and captions:
            texts = tokenizer.batch_decode([timing.outputs[i] for i in captions], skip_special_tokens=True)
            scores = caption_scores({i: prompts[i]["references"] for i in captions}, {i: t.strip() for i, t in zip(captions, texts)})
            row.update({"cider": scores["cider"], "bleu4": scores["bleu4"]})
        results[name] = row
    return results
