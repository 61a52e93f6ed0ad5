"""Methods decoded side by side on the same prompts: the quality of what each wrote over a whole test split
(decoded in batches), and its speed against a reference method at batch 1 on a sample of it.

`evaluate_methods` decodes the split with every method's batched form (`pipeline.evaluation.speed.BatchMethod`) and
times every method's single-prompt form (`Method`) on the sample in one process: speed-up = the reference's per-token
latency ÷ the method's (DESIGN.md), tokens/s at batch 1 and at the batch size, acceptance counts, the share of
outputs identical to its identity reference's, and caption metrics (pycocoevalcap) or VQA accuracy. When the split
was decoded by several processes (`pipeline.evaluation.sharded`), `score_methods` takes the merged decoding and the
timings rank zero measured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pipeline.evaluation.caption_metrics import caption_scores_of_sets
from pipeline.evaluation.prompts import Prompt
from pipeline.evaluation.speed import (
    BatchMethod,
    Method,
    MethodTiming,
    SplitRun,
    decode_split,
    identical_share,
    time_methods,
)


def methods_task_scores(
    prompts: Sequence[Prompt], texts_by_method: Mapping[str, Sequence[str]], *, meteor: Any = False, spice: bool = False
) -> dict[str, dict[str, dict[str, Any]]]:
    """Quality per task of every method's texts for the same prompts: caption metrics for captions and descriptions
    (pycocoevalcap), VQA accuracy for answers. Each task's captions are PTB-tokenized in one JVM for all methods (a
    start per method and task cost an evaluation of 21 methods 84 JVM starts)."""
    from pipeline.evaluation.vqa_accuracy import vqa_scores

    scores: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in texts_by_method}
    for task in sorted({p["task"] for p in prompts}):
        index = [i for i, p in enumerate(prompts) if p["task"] == task]
        if task == "vqa":
            for name, texts in texts_by_method.items():
                scores[name][task] = vqa_scores(
                    {i: texts[i] for i in index},
                    {i: prompts[i]["references"] for i in index},
                    {i: prompts[i]["answer_type"] for i in index},
                    {i: prompts[i].get("question_type") for i in index},
                )
            continue
        by_method = caption_scores_of_sets(
            {i: prompts[i]["references"] for i in index},
            {name: {i: texts[i] for i in index} for name, texts in texts_by_method.items()},
            meteor=meteor,
            spice=spice and task == "caption",
        )
        for name, task_result in by_method.items():
            scores[name][task] = task_result
    return scores


def evaluate_methods(
    methods: dict[str, Method],
    batched: dict[str, BatchMethod],
    split: Sequence[Prompt],
    sample: Sequence[Prompt],
    tokenizer: Any,
    *,
    reference: str,
    identity_references: dict[str, str] | None = None,
    batch_size: int = 16,
    repeats: int = 1,
    warmup_prompts: int = 1,
    caption_metrics: bool = True,
    meteor: Any = False,
    spice: bool = False,
    device: torch.device | None = None,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Score every method on the whole `split`, decoded in batches of `batch_size`, and time it on the `sample`, in
    this one process (`score_methods` says what each row holds)."""
    if reference not in methods:
        raise ValueError(f"reference method {reference!r} is not among {sorted(methods)}")
    device = device or torch.device("cpu")
    runs = decode_split(batched, split, batch_size, device=device, progress=progress)
    timings = time_methods(
        methods, sample, repeats=repeats, warmup_prompts=warmup_prompts, device=device, progress=progress
    )
    return score_methods(
        runs,
        split,
        timings,
        sample,
        tokenizer,
        reference=reference,
        identity_references=identity_references,
        caption_metrics=caption_metrics,
        meteor=meteor,
        spice=spice,
    )


def score_methods(
    runs: dict[str, SplitRun],
    split: Sequence[Prompt],
    timings: dict[str, MethodTiming],
    sample: Sequence[Prompt],
    tokenizer: Any,
    *,
    reference: str,
    identity_references: dict[str, str] | None = None,
    caption_metrics: bool = True,
    meteor: Any = False,
    spice: bool = False,
    prefill: Mapping[str, MethodTiming] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each method's row from its decoding of the whole split (`runs`, possibly decoded by several processes) and its
    batch-1 timings on the sample (`timings`, measured in one process).

    Quality, losslessness and acceptance come from the split: caption metrics (pycocoevalcap) or VQA accuracy of what
    each method wrote, the share of its outputs identical to its identity reference's (`identity_references`: a
    method on another backbone (LayerSkip, the mixed schedule) against that backbone's own greedy output; the others
    against `reference`), and the throughput at the split's batch size. Speed is the paper's per-token latency at
    batch 1 on the sample, every method interleaved per prompt: speed-up = the `reference`'s latency ÷ the method's.

    `prefill` maps a method to the timing of the first-token-only pass that stands for its prefill (its own, or one
    whose prefill is the same computation); with the reference's among them, those methods' rows also hold the
    decode phase alone: latency per token after the first and its speed-up (what Leviathan et al.'s formula models),
    and the prefill's share of the wall time.
    """
    if reference not in runs or reference not in timings:
        raise ValueError(f"reference method {reference!r} is not among {sorted(runs)}")
    identity_references = identity_references or {}
    base = timings[reference]
    tasks = {t: [i for i, p in enumerate(sample) if p["task"] == t] for t in sorted({p["task"] for p in sample})}
    results: dict[str, dict[str, Any]] = {}
    for name, timing in timings.items():
        latency, run = timing.latency(), runs[name]
        identity = identity_references.get(name, reference)
        row: dict[str, Any] = {
            "speedup": base.latency() / latency,
            "tokens_per_second": 1.0 / latency,
            "ms_per_token": 1e3 * latency,
            "new_tokens": float(timing.new_tokens()),
            "speedup_by_task": {t: base.latency(ix) / timing.latency(ix) for t, ix in tasks.items()},
            # each repeat is one interleaved pass over the sample: how far the speed-up moves between passes
            "speedup_by_repeat": [
                a / b for a, b in zip(base.latency_by_repeat(), timing.latency_by_repeat(), strict=True)
            ],
            "batch_size": float(run.batch_size),
            "throughput_tokens_per_second": run.throughput,
            "split_prompts": float(len(split)),
            "split_new_tokens": float(run.new_tokens),
            "identical_share": identical_share(run.outputs, runs[identity].outputs),
            "identical_share_batch_1": identical_share(timing.outputs, timings[identity].outputs),
        }
        if prefill and name in prefill and reference in prefill:
            decode = timing.decode_latency(prefill[name])
            first = sum(map(sum, prefill[name].seconds))
            row.update(
                {
                    "decode_ms_per_token": 1e3 * decode,
                    "decode_speedup": base.decode_latency(prefill[reference]) / decode,
                    "prefill_share": first / max(sum(map(sum, timing.seconds)), 1e-12),
                }
            )
        if timing.has_stats and timing.stats.verify_calls:
            # the rounds behind the speed-up (batch 1, the timed sample): Leviathan's expected speed-up is built on them
            rounds = timing.stats
            row["timed_mean_accepted_length"] = rounds.accepted / rounds.verify_calls
            row["timed_mean_draft_length"] = rounds.drafted / rounds.verify_calls
        stats = run.merged_stats()
        if stats is not None and stats.verify_calls:
            row.update(
                {
                    "acceptance_rate": stats.acceptance_rate,
                    "mean_accepted_length": stats.mean_accepted_length,
                    "verify_calls": float(stats.verify_calls),
                    "acceptance_by_position": [
                        a / d if d else 0.0
                        for a, d in zip(stats.accepted_by_position, stats.drafted_by_position, strict=True)
                    ],
                    # [context length, drafted, accepted]: counts, so any binning of Fig. 5 weights rounds right
                    "acceptance_by_context": [list(entry) for entry in stats.by_context()],
                }
            )
        results[name] = row
    if caption_metrics:
        texts = {
            name: [t.strip() for t in tokenizer.batch_decode(runs[name].outputs, skip_special_tokens=True)]
            for name in results
        }
        for name, tasks_of_method in methods_task_scores(split, texts, meteor=meteor, spice=spice).items():
            row = results[name]
            row["tasks"] = tasks_of_method
            if "caption" in tasks_of_method:
                row.update({"cider": tasks_of_method["caption"]["cider"], "bleu4": tasks_of_method["caption"]["bleu4"]})
    return results
