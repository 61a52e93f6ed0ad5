"""Methods decoded side by side on the same prompts: speed against a reference method and the quality of what
each wrote.

`evaluate_methods` times every method (`pipeline.evaluation.speed.Method`: prompt → new tokens, stats) on the
same prompts in one process, then scores each (`score_methods`): speed-up = the reference's per-token latency ÷
the method's (DESIGN.md), tokens/s, acceptance counts, the share of outputs identical to its identity reference's,
and caption metrics (pycocoevalcap) or VQA accuracy of what it wrote. When the prompts were decoded by several
processes (`pipeline.evaluation.sharded`), `score_methods` takes the outputs of all prompts and the timings of the
share one process timed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.evaluation.caption_metrics import caption_scores
from pipeline.evaluation.prompts import Prompt
from pipeline.evaluation.speed import Method, MethodTiming, identical_share, time_methods


def task_scores(
    prompts: Sequence[Prompt], texts: Sequence[str], *, meteor: Any = False, spice: bool = False
) -> dict[str, dict[str, Any]]:
    """Quality per task: caption metrics for captions and descriptions (pycocoevalcap), VQA accuracy for answers."""
    from pipeline.evaluation.vqa_accuracy import vqa_scores

    scores: dict[str, dict[str, Any]] = {}
    for task in sorted({p["task"] for p in prompts}):
        index = [i for i, p in enumerate(prompts) if p["task"] == task]
        if task == "vqa":
            scores[task] = vqa_scores(
                {i: texts[i] for i in index},
                {i: prompts[i]["references"] for i in index},
                {i: prompts[i]["answer_type"] for i in index},
            )
        else:
            scores[task] = caption_scores(
                {i: prompts[i]["references"] for i in index},
                {i: texts[i] for i in index},
                meteor=meteor,
                spice=spice and task == "caption",
            )
    return scores


def evaluate_methods(
    methods: dict[str, Method],
    prompts: Sequence[Prompt],
    tokenizer: Any,
    *,
    reference: str,
    identity_references: dict[str, str] | None = None,
    repeats: int = 1,
    warmup_prompts: int = 1,
    caption_metrics: bool = True,
    meteor: Any = False,
    spice: bool = False,
) -> dict[str, dict[str, Any]]:
    """Time every method on `prompts` and score it.

    `reference` names the full model: every speed-up is relative to its latency. A method that decodes with
    another backbone (LayerSkip, the mixed schedule) is checked for losslessness against its own backbone's
    greedy output: `identity_references` maps it to that method's name.
    """
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} is not among {sorted(methods)}")
    timings = time_methods(methods, prompts, repeats=repeats, warmup_prompts=warmup_prompts)
    return score_methods(
        timings,
        prompts,
        tokenizer,
        reference=reference,
        identity_references=identity_references,
        caption_metrics=caption_metrics,
        meteor=meteor,
        spice=spice,
    )


def score_methods(
    timings: dict[str, MethodTiming],
    prompts: Sequence[Prompt],
    tokenizer: Any,
    *,
    reference: str,
    identity_references: dict[str, str] | None = None,
    speed: dict[str, MethodTiming] | None = None,
    speed_prompts: Sequence[Prompt] | None = None,
    caption_metrics: bool = True,
    meteor: Any = False,
    spice: bool = False,
) -> dict[str, dict[str, Any]]:
    """Rows of `evaluate_methods` from decoded `timings` (outputs and counts of every prompt of `prompts`). Speed comes
    from `speed` (timings of `speed_prompts`, measured in one process), by default from `timings` themselves."""
    if reference not in timings:
        raise ValueError(f"reference method {reference!r} is not among {sorted(timings)}")
    identity_references = identity_references or {}
    speed, speed_prompts = (timings, prompts) if speed is None else (speed, speed_prompts or [])
    base = speed[reference]
    tasks = {
        t: [i for i, p in enumerate(speed_prompts) if p["task"] == t]
        for t in sorted({p["task"] for p in speed_prompts})
    }
    results: dict[str, dict[str, Any]] = {}
    for name, timing in timings.items():
        timed = speed[name]
        latency = timed.latency()
        identity = timings[identity_references.get(name, reference)]
        row: dict[str, Any] = {
            "speedup": base.latency() / latency,
            "tokens_per_second": 1.0 / latency,
            "ms_per_token": 1e3 * latency,
            "new_tokens": float(timing.new_tokens()),
            "identical_share": identical_share(timing.outputs, identity.outputs),
            "speedup_by_task": {t: base.latency(ix) / timed.latency(ix) for t, ix in tasks.items()},
        }
        if timing.has_stats and timing.stats.verify_calls:
            stats = timing.stats
            row.update(
                {
                    "acceptance_rate": stats.acceptance_rate,
                    "mean_accepted_length": stats.mean_accepted_length,
                    "verify_calls": float(stats.verify_calls),
                    "acceptance_by_position": [
                        a / d if d else 0.0
                        for a, d in zip(stats.accepted_by_position, stats.drafted_by_position, strict=True)
                    ],
                }
            )
        if caption_metrics:
            texts = [t.strip() for t in tokenizer.batch_decode(timing.outputs, skip_special_tokens=True)]
            row["tasks"] = task_scores(prompts, texts, meteor=meteor, spice=spice)
            if "caption" in row["tasks"]:
                row.update({"cider": row["tasks"]["caption"]["cider"], "bleu4": row["tasks"]["caption"]["bleu4"]})
        results[name] = row
    return results
