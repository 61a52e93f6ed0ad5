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


def vqa_prompts(split: SplitData, builder: PromptBuilder, image_processor, count: int) -> list[dict]:
    """The first `count` questions with answers, one prompt each (references: the annotators' answers)."""
    by_id = {r.image_id: r for r in split.images}
    records = [q for q in split.vqa if q.answers and q.image_id in by_id][:count]
    pixels = PixelStore([by_id[q.image_id].image_path for q in records], image_processor)
    return [
        {
            "task": "vqa",
            "key": f"vqa:{q.question_id}",
            "references": list(q.answers),
            "answer_type": q.answer_type or "all",
            "input_ids": torch.tensor([builder.prompt_ids("vqa", q.question)]),
            "pixel_values": pixels[k].unsqueeze(0),
            "max_new_tokens": MAX_NEW_TOKENS["vqa"],
        }
        for k, q in enumerate(records)
    ]


def task_scores(prompts: Sequence[dict], texts: Sequence[str], *, meteor=False, spice: bool = False) -> dict[str, dict[str, Any]]:
    """Quality per task: caption metrics for captions and descriptions (pycocoevalcap), VQA accuracy for answers."""
    from pipeline.evaluation.vqa_accuracy import vqa_scores

    scores: dict[str, dict[str, Any]] = {}
    for task in sorted({p["task"] for p in prompts}):
        index = [i for i, p in enumerate(prompts) if p["task"] == task]
        if task == "vqa":
            scores[task] = vqa_scores({i: texts[i] for i in index}, {i: prompts[i]["references"] for i in index},
                                      {i: prompts[i]["answer_type"] for i in index})
        else:
            scores[task] = caption_scores({i: prompts[i]["references"] for i in index}, {i: texts[i] for i in index},
                                          meteor=meteor, spice=spice and task == "caption")
    return scores


def evaluate_methods(
    methods: dict[str, Method],
    prompts: Sequence[dict],
    tokenizer,
    *,
    reference: str,
    identity_references: dict[str, str] | None = None,
    repeats: int = 1,
    warmup_prompts: int = 1,
    caption_metrics: bool = True,
    meteor=False,
    spice: bool = False,
) -> dict[str, dict[str, Any]]:
    """Time every method on `prompts` and score it.

    `reference` names the full model: every speed-up is relative to its latency. A method that decodes with
    another backbone (LayerSkip, the mixed schedule) is checked for losslessness against its own backbone's
    greedy output: `identity_references` maps it to that method's name.
    """
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} is not among {sorted(methods)}")
    identity_references = identity_references or {}
    timings = time_methods(methods, prompts, repeats=repeats, warmup_prompts=warmup_prompts)
    base = timings[reference]
    tasks = {t: [i for i, p in enumerate(prompts) if p["task"] == t] for t in sorted({p["task"] for p in prompts})}
    results: dict[str, dict[str, Any]] = {}
    for name, timing in timings.items():
        latency = timing.latency()
        identity = timings[identity_references.get(name, reference)]
        row: dict[str, Any] = {
            "speedup": base.latency() / latency,
            "tokens_per_second": 1.0 / latency,
            "ms_per_token": 1e3 * latency,
            "new_tokens": float(timing.new_tokens()),
            "identical_share": identical_share(timing.outputs, identity.outputs),
            "speedup_by_task": {t: base.latency(ix) / timing.latency(ix) for t, ix in tasks.items()},
        }
        if timing.has_stats and timing.stats.verify_calls:
            stats = timing.stats
            row.update({
                "acceptance_rate": stats.acceptance_rate,
                "mean_accepted_length": stats.mean_accepted_length,
                "verify_calls": float(stats.verify_calls),
                "acceptance_by_position": [a / d if d else 0.0 for a, d in zip(stats.accepted_by_position, stats.drafted_by_position)],
            })
        if caption_metrics:
            texts = [t.strip() for t in tokenizer.batch_decode(timing.outputs, skip_special_tokens=True)]
            row["tasks"] = task_scores(prompts, texts, meteor=meteor, spice=spice)
            if "caption" in row["tasks"]:
                row.update({"cider": row["tasks"]["caption"]["cider"], "bleu4": row["tasks"]["caption"]["bleu4"]})
        results[name] = row
    return results
