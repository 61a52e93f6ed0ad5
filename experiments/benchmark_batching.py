"""Throughput against batch size: batched `model.generate` (greedy), our autoregressive decoder and ours
(self-speculative decoding with the trained imitation network) on the same test prompts, in one run.

    python experiments/benchmark_batching.py   # after `make repro`: experiments/results/benchmark_batching_cpu.json

For every batch size the three methods decode every prompt (batches of one task, methods interleaved batch by batch
so that machine drift falls on all three alike); tokens/s = new tokens ÷ wall time. Besides speed it reports why the
speculative gain changes with the batch: each row's acceptance (mean, lowest, highest over the rows) and how many
positions verification computed per committed token (a rejected draft is computed and thrown away: free while a
decoding step costs the same for 1 or d + 1 positions, paid for once the batch makes the step compute-bound).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_params
from pipeline.data.prepared import load_prepared
from pipeline.decoding.stats import DecodingStats
from pipeline.evaluation import methods
from pipeline.evaluation.batching import task_batches
from pipeline.evaluation.draft_choice import resolve_draft_len
from pipeline.evaluation.method_runner import DecodingResources, batch_runnables
from pipeline.evaluation.prompts import caption_prompts, on_device
from pipeline.evaluation.speed import identical_share, synchronize
from pipeline.io import atomic_write_json
from pipeline.models.imitation import load_draft_head
from pipeline.models.loading import load_backbone


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/finetuned")
    parser.add_argument("--imitation", default="models/imitation/ce+cs+kd", help="the imitation network of ours")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default=None, help="prepared data (default: params' data.out_dir)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--captions", type=int, default=48)
    parser.add_argument("--descriptions", type=int, default=16)
    parser.add_argument(
        "--draft-len", type=int, default=None, help="d of ours (default: params' decoding.draft_len; auto: the sweep's)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


def waste(stats: list[DecodingStats]) -> dict[str, float]:
    """Verification positions per committed token, and each row's acceptance (mean / lowest / highest)."""
    rows = [s for s in stats if s.drafted]
    verified = sum(drafted + 1 for s in rows for drafted, _ in s.rounds)
    committed = sum(accepted + 1 for s in rows for _, accepted in s.rounds)
    rates = [s.acceptance_rate for s in rows] or [0.0]
    return {
        "verified_per_committed": verified / committed if committed else 0.0,
        "acceptance_mean": statistics.fmean(rates),
        "acceptance_min": min(rates),
        "acceptance_max": max(rates),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    backbone = load_backbone(args.model, args.dtype, args.device)
    hidden = backbone.adapter.embed_weight
    test = load_prepared(Path(args.data or params.data.out_dir))["test"]
    builder = backbone.prompt_builder(params.data.prompts)
    prompts = caption_prompts(test, builder, backbone.image_processor, args.captions, args.descriptions)
    prompts = on_device(prompts, hidden.device, hidden.dtype)
    head, extra = load_draft_head(args.imitation, backbone.model)
    d = args.draft_len or resolve_draft_len(params.decoding.draft_len, int(extra["draft_layers"]))
    specs = [
        methods.hf_generate(label="model.generate (batched, greedy)"),
        methods.autoregressive(label="ours, autoregressive"),
        methods.ssd("ours", int(extra["draft_layers"]), d, f"ours (SSD + imitation, n={extra['draft_layers']}, d={d})"),
    ]
    tokenizer = backbone.tokenizer
    resources = DecodingResources.of({methods.FINETUNED: backbone.model}, {"ours": head}, tokenizer, params.decoding)
    runners = batch_runnables(specs, resources)
    console = Console(stderr=True, highlight=False)
    with torch.no_grad():  # warm-up: every method on one batch of each task at the largest size
        for index in task_batches(prompts, max(args.batch_sizes)):
            for runner in runners.values():
                runner([prompts[i] for i in index])
    rows = []
    total = len(args.batch_sizes) * args.repeats * len(specs) * len(prompts)
    bar = tqdm(total=total, desc="benchmark", unit="prompt", file=sys.stderr)
    for batch_size in args.batch_sizes:
        seconds = {spec.key: [0.0] * args.repeats for spec in specs}
        outputs: dict[str, list[list[int]]] = {spec.key: [[] for _ in prompts] for spec in specs}
        stats: dict[str, list[DecodingStats]] = {spec.key: [] for spec in specs}
        for repeat in range(args.repeats):
            for turn, index in enumerate(task_batches(prompts, batch_size)):
                batch = [prompts[i] for i in index]
                order = specs if turn % 2 == 0 else specs[::-1]  # alternate who goes first
                for spec in order:
                    synchronize(hidden.device)
                    start = time.perf_counter()
                    with torch.no_grad():
                        decoded = runners[spec.key](batch)
                    synchronize(hidden.device)
                    seconds[spec.key][repeat] += time.perf_counter() - start
                    if repeat == 0:
                        for i, (tokens, row_stats) in zip(index, decoded, strict=True):
                            outputs[spec.key][i] = tokens
                            if row_stats is not None:
                                stats[spec.key].append(row_stats)
                    bar.update(len(batch))
        reference = outputs[specs[0].key]
        new_tokens = sum(map(len, reference))
        base = new_tokens / statistics.median(seconds[specs[0].key])
        for spec in specs:
            throughput = sum(map(len, outputs[spec.key])) / statistics.median(seconds[spec.key])
            rows.append(
                {
                    "batch_size": batch_size,
                    "method": spec.key,
                    "label": spec.label,
                    "tokens_per_second": throughput,
                    "speedup_vs_generate": throughput / base,
                    "identical_to_generate": identical_share(outputs[spec.key], reference),
                    "new_tokens": sum(map(len, outputs[spec.key])),
                    **(waste(stats[spec.key]) if spec.kind == "ssd" else {}),
                }
            )
    bar.close()
    table = Table(title="throughput by batch size (same prompts, one run)")
    for column in (
        "batch",
        "method",
        "tok/s",
        "× generate",
        "identical",
        "acceptance mean [min, max]",
        "verified/committed",
    ):
        table.add_column(column)
    for row in rows:
        acceptance = (
            f"{row['acceptance_mean']:.2f} [{row['acceptance_min']:.2f}, {row['acceptance_max']:.2f}]"
            if "acceptance_mean" in row
            else "–"
        )
        table.add_row(
            str(row["batch_size"]),
            row["label"],
            f"{row['tokens_per_second']:.0f}",
            f"{row['speedup_vs_generate']:.2f}×",
            f"{row['identical_to_generate']:.0%}",
            acceptance,
            f"{row['verified_per_committed']:.2f}" if "verified_per_committed" in row else "–",
        )
    Console(width=160).print(table)
    device_name = platform.processor() or platform.machine() if args.device == "cpu" else args.device
    result = {
        "command": "python experiments/benchmark_batching.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": device_name,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "prompts": {"caption": args.captions, "description": args.descriptions},
        "rows": rows,
    }
    out = Path(args.out or f"experiments/results/benchmark_batching_{args.device.split(':')[0]}.json")
    atomic_write_json(out, result)
    console.print(f"written {out}")
    return result


if __name__ == "__main__":
    main()
