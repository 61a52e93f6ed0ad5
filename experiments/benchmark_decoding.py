"""Decoding speed benchmark: our decoders against Hugging Face's, on the fine-tuned model.

    python experiments/benchmark_decoding.py                      # after `dvc repro` (models/finetuned)
    python experiments/benchmark_decoding.py --captions 4 --descriptions 4 --repeats 1   # a quick look

Decodes synthetic test prompts (short captions and long descriptions) with `model.generate` greedy,
`model.generate(assistant_early_exit=n)`, our autoregressive decoder, our self-speculative decoder
(early-exit draft, n ∈ {L/4, L/2}, d ∈ {3, 5, 8} and the growing schedule), Draft & Verify and the
draft alone. All methods run in one process on the same prompts; each is timed `--repeats` times after
warm-up and the median per-token latency is reported, with the speed-up over `model.generate`, the
acceptance counts and the share of outputs identical to greedy decoding (100 % for lossless methods).
Writes JSON (atomically) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import GrowingScheduleConfig, Params, load_params
from pipeline.data.prepared import load_prepared
from pipeline.decoding.baselines import default_skip_layers
from pipeline.evaluation import methods
from pipeline.evaluation.method_runner import DecodingResources, runnables
from pipeline.evaluation.methods import MethodSpec
from pipeline.evaluation.prompts import caption_prompts, on_device
from pipeline.evaluation.speed import MethodTiming, expected_speedup, identical_share, time_methods
from pipeline.io import atomic_write_json
from pipeline.models.imitation import load_draft_head
from pipeline.models.loading import Backbone, load_backbone

REFERENCE = methods.hf_generate(label="model.generate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/finetuned", help="HF model directory (the finetune stage's output)")
    parser.add_argument("--data", default=None, help="prepared data directory (default: data.out_dir of params.yaml)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--captions", type=int, default=12, help="caption prompts (short outputs)")
    parser.add_argument("--descriptions", type=int, default=12, help="description prompts (long outputs)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--draft-layers", type=int, nargs="*", default=None, help="default: L/4 and L/2")
    parser.add_argument("--draft-lens", type=int, nargs="*", default=[3, 5, 8])
    parser.add_argument("--growing", type=int, nargs=3, default=[2, 8, 8], metavar=("D_MIN", "D_MAX", "STEP"))
    parser.add_argument(
        "--imitation", default=None, help="folder of trained imitation networks (models/imitation): adds SSD with each"
    )
    parser.add_argument(
        "--variants", nargs="*", default=None, help="imitation variants to time (default: all but mixed)"
    )
    parser.add_argument(
        "--layerskip", default=None, help="LayerSkip backbone (models/layerskip): SSD with its early exit"
    )
    parser.add_argument(
        "--draft-verify", default=None, help="searched Draft & Verify setting (models/draft_verify.json)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--out", default=None, help="JSON output (default: experiments/results/benchmark_decoding_<device>.json)"
    )
    return parser.parse_args(argv)


def build_prompts(args: argparse.Namespace, backbone: Backbone, params: Params) -> list[dict]:
    """evaluate's caption and description prompts on the benchmark's device and dtype, all with one token budget."""
    test = load_prepared(Path(args.data or params.data.out_dir))["test"]
    prompts = caption_prompts(
        test, backbone.prompt_builder(params.data.prompts), backbone.image_processor, args.captions, args.descriptions
    )
    moved = on_device(prompts, torch.device(args.device), getattr(torch, args.dtype))
    return [{**prompt, "max_new_tokens": args.max_new_tokens} for prompt in moved]


def method_specs(num_layers: int, args: argparse.Namespace, heads: dict[str, int], layerskip: bool) -> list[MethodSpec]:
    """Every method timed, from the method registry: Hugging Face's greedy and early-exit generate, our decoders on the
    fine-tuned backbone (and on LayerSkip's), with each trained imitation network in `heads` (name → n)."""
    draft_layers = args.draft_layers or sorted({max(1, num_layers // 4), num_layers // 2})
    specs = [REFERENCE, methods.autoregressive(label="ours, autoregressive")]
    for n in draft_layers:
        for d in args.draft_lens:
            specs += [
                methods.hf_early_exit(n, d, f"HF assistant_early_exit n={n} d={d}"),
                methods.ssd(None, n, d, f"SSD n={n} d={d}"),
            ]
        specs += [
            methods.ssd(None, n, "growing", f"SSD n={n} growing d"),
            methods.draft_only(None, n, f"draft alone n={n}"),
        ]
    specs.append(methods.draft_verify(default_skip_layers(num_layers), 0.6, 8, "Draft & Verify (default skip set)"))
    if args.draft_verify:
        found = json.loads(Path(args.draft_verify).read_text())
        specs.append(
            methods.draft_verify(
                found["skip_layers"], found["threshold"], found.get("max_draft_len", 8), "Draft & Verify (searched)"
            )
        )
    for name, n in heads.items():
        specs += [methods.ssd(name, n, d, f"SSD + imitation ({name}) n={n} d={d}") for d in args.draft_lens]
        specs += [
            methods.ssd(name, n, "growing", f"SSD + imitation ({name}) n={n} growing d"),
            methods.draft_only(name, n, f"draft alone + imitation ({name}) n={n}"),
        ]
    if layerskip:
        specs.append(methods.hf_generate(methods.LAYERSKIP, "LayerSkip: model.generate"))
        for n in args.draft_layers or [max(1, num_layers // 4)]:
            specs += [
                methods.ssd(None, n, d, f"LayerSkip SSD n={n} d={d}", backbone=methods.LAYERSKIP)
                for d in args.draft_lens
            ]
    return methods.dedupe(specs)


def imitation_heads(args: argparse.Namespace, model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, int]]:
    """Trained imitation networks on the benchmarked backbone (the mixed schedule's has its own backbone): draft heads
    and their n."""
    if not args.imitation:
        return {}, {}
    heads, depth = {}, {}
    for folder in sorted(Path(args.imitation).iterdir()):
        if not (folder / "config.json").exists():
            continue
        head, extra = load_draft_head(folder, model)
        # The mixed schedule's head drafts for its own backbone: only when asked for
        # (with --model models/mixed_backbone)
        if folder.name in args.variants if args.variants is not None else not extra.get("mixed"):
            heads[folder.name] = head
            depth[folder.name] = int(extra["draft_layers"])
    return heads, depth


def summarise(
    timings: dict[str, MethodTiming], prompts: list[dict], specs: list[MethodSpec], num_layers: int
) -> list[dict]:
    reference = timings[REFERENCE.key]
    tasks = sorted({p["task"] for p in prompts})
    by_task = {t: [i for i, p in enumerate(prompts) if p["task"] == t] for t in tasks}
    rows = []
    for spec in specs:
        t = timings[spec.key]
        latency = t.latency()
        greedy = timings[methods.hf_generate(spec.backbone).key]  # the backbone's own greedy output
        row = {
            "method": spec.key,
            "label": spec.label,
            "new_tokens": t.new_tokens(),
            "latency_ms_per_token": latency * 1e3,
            "tokens_per_second": 1.0 / latency,
            "speedup_vs_hf_generate": reference.latency() / latency,
            "identical_to_greedy": identical_share(t.outputs, greedy.outputs),
            "speedup_by_task": {task: reference.latency(ix) / t.latency(ix) for task, ix in by_task.items()},
            "seconds_per_repeat": [sum(run) for run in t.seconds],
        }
        if t.has_stats and t.stats.verify_calls:
            stats = t.stats.to_dict()
            row.update(
                {
                    k: stats[k]
                    for k in ("acceptance_rate", "mean_accepted_length", "verify_calls", "drafted", "accepted")
                }
            )
            row["acceptance_by_position"] = [
                a / d if d else 0.0
                for a, d in zip(stats["accepted_by_position"], stats["drafted_by_position"], strict=True)
            ]
            if spec.kind == "ssd" and spec.head is None and isinstance(spec.draft_len, int):
                # Draft cost per token ≈ n / L of a full forward pass (the head-less draft)
                row["expected_speedup_leviathan"] = expected_speedup(
                    t.stats.acceptance_rate, (spec.draft_layers or 0) / num_layers, spec.draft_len
                )
        rows.append(row)
    return rows


def print_table(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for column in ("method", "tok/s", "ms/token", "speedup", "caption", "description", "accept", "τ", "identical"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in rows:
        by_task = r["speedup_by_task"]
        table.add_row(
            r["label"],
            f"{r['tokens_per_second']:.1f}",
            f"{r['latency_ms_per_token']:.2f}",
            f"{r['speedup_vs_hf_generate']:.2f}×",
            f"{by_task.get('caption', float('nan')):.2f}×",
            f"{by_task.get('description', float('nan')):.2f}×",
            f"{r['acceptance_rate']:.2f}" if "acceptance_rate" in r else "–",
            f"{r['mean_accepted_length']:.2f}" if "mean_accepted_length" in r else "–",
            f"{100 * r['identical_to_greedy']:.0f}%",
        )
    Console(width=max(160, Console().width)).print(table)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    backbone = load_backbone(args.model, args.dtype, args.device)
    model = backbone.model
    num_layers = backbone.adapter.num_layers
    prompts = build_prompts(args, backbone, params)
    models = {methods.FINETUNED: model}
    if args.layerskip:
        models[methods.LAYERSKIP] = load_backbone(args.layerskip, args.dtype, args.device).model
    heads, depth = imitation_heads(args, model)
    specs = method_specs(num_layers, args, depth, bool(args.layerskip))
    growing = GrowingScheduleConfig(d_min=args.growing[0], d_max=args.growing[1], step=args.growing[2])
    resources = DecodingResources(models, heads, backbone.tokenizer.eos_token_id, growing)
    console = Console(stderr=True, markup=False, highlight=False)
    console.print(f"{len(specs)} methods × {len(prompts)} prompts × {args.repeats} repeats, L = {num_layers}")
    timings = time_methods(
        runnables(specs, resources),
        prompts,
        repeats=args.repeats,
        device=torch.device(args.device),
        progress=console.print,
    )
    rows = summarise(timings, prompts, specs, num_layers)
    device_name = (
        torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor() or "cpu"
    )
    result = {
        "command": "python experiments/benchmark_decoding.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": str(args.model),
        "num_layers": num_layers,
        "device": args.device,
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "prompts": {"caption": args.captions, "description": sum(p["task"] == "description" for p in prompts)},
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "methods": rows,
    }
    out = Path(args.out or f"experiments/results/benchmark_decoding_{args.device.split(':')[0]}.json")
    atomic_write_json(out, result)
    print_table(
        rows, f"decoding on {device_name} ({args.device}, {args.dtype}), L = {num_layers}; speed-up over model.generate"
    )
    console.print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
