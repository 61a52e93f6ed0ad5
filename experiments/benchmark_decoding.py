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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_params  # noqa: E402
from pipeline.data.examples import load_prepared  # noqa: E402
from pipeline.data.pixels import PixelStore  # noqa: E402
from pipeline.data.prompts import PromptBuilder  # noqa: E402
from pipeline.decoding import (  # noqa: E402
    AutoregressiveDecoder,
    ConfidenceStop,
    DraftAndVerifyDecoder,
    DraftOnlyDecoder,
    GrowingDraftLength,
    SelfSpeculativeDecoder,
)
from pipeline.decoding.hf_reference import hf_early_exit, hf_greedy  # noqa: E402
from pipeline.evaluation.speed import expected_speedup, identical_share, time_methods  # noqa: E402
from pipeline.io import atomic_write_json  # noqa: E402
from pipeline.models.imitation import as_draft_head, load_imitation  # noqa: E402
from pipeline.models.loading import load_backbone  # noqa: E402

REFERENCE = "hf_generate"
LAYERSKIP = "layerskip:"  # methods on the LayerSkip backbone: identity is checked against its own greedy output


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
    parser.add_argument("--imitation", default=None, help="folder of trained imitation networks (models/imitation): adds SSD with each")
    parser.add_argument("--variants", nargs="*", default=None, help="imitation variants to time (default: all but mixed)")
    parser.add_argument("--layerskip", default=None, help="LayerSkip backbone (models/layerskip): SSD with its early exit")
    parser.add_argument("--draft-verify", default=None, help="searched Draft & Verify setting (models/draft_verify.json)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="JSON output (default: experiments/results/benchmark_decoding_<device>.json)")
    return parser.parse_args(argv)


def build_prompts(args, backbone, params) -> list[dict]:
    data_dir = Path(args.data or params.data.out_dir)
    test = load_prepared(data_dir)["test"]
    builder = PromptBuilder(
        backbone.tokenizer, params.data.prompts, backbone.adapter.image_token_id, backbone.adapter.num_image_tokens
    )
    described = [i for i, r in enumerate(test.images) if r.image_id in test.descriptions]
    chosen = [("caption", i) for i in range(args.captions)] + [("description", i) for i in described[: args.descriptions]]
    pixels = PixelStore([test.images[i].image_path for _, i in chosen], backbone.image_processor)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    return [
        {
            "task": task,
            "input_ids": torch.tensor([builder.prompt_ids(task)], device=device),
            "pixel_values": pixels[k].unsqueeze(0).to(device, dtype),
        }
        for k, (task, _) in enumerate(chosen)
    ]


def build_methods(model, num_layers: int, args, eos: int) -> dict:
    budget = args.max_new_tokens
    draft_layers = args.draft_layers or sorted({max(1, num_layers // 4), num_layers // 2})

    def ours(decoder):
        def run(p):
            out = decoder.generate(p["input_ids"], budget, eos, pixel_values=p["pixel_values"])
            return out.sequences[0, p["input_ids"].shape[1] :], out.stats

        return run

    def hf(**kw):
        def run(p):
            fn = hf_early_exit if kw else hf_greedy
            seq = fn(model, p["input_ids"], budget, eos, pixel_values=p["pixel_values"], **kw)
            return seq[0, p["input_ids"].shape[1] :], None

        return run

    methods = {REFERENCE: hf(), "ours_autoregressive": ours(AutoregressiveDecoder(model))}
    growing = GrowingDraftLength(*args.growing)
    for n in draft_layers:
        for d in args.draft_lens:
            methods[f"hf_early_exit n={n} d={d}"] = hf(draft_layers=n, draft_len=d)
            methods[f"ssd n={n} d={d}"] = ours(SelfSpeculativeDecoder(model, n, None, d))
        methods[f"ssd n={n} d=growing"] = ours(SelfSpeculativeDecoder(model, n, None, growing))
        methods[f"draft_only n={n}"] = ours(DraftOnlyDecoder(model, n))
    methods["draft_and_verify"] = ours(DraftAndVerifyDecoder(model))
    if args.draft_verify:
        found = json.loads(Path(args.draft_verify).read_text())
        policy = ConfidenceStop(found["threshold"], found.get("max_draft_len", 8))
        methods["draft_and_verify(searched)"] = ours(DraftAndVerifyDecoder(model, found["skip_layers"], policy))
    for variant, (network, n) in imitation_heads(args, model).items():
        head = as_draft_head(network)
        for d in args.draft_lens:
            methods[f"ssd+imitation({variant}) n={n} d={d}"] = ours(SelfSpeculativeDecoder(model, n, head, d))
        methods[f"ssd+imitation({variant}) n={n} d=growing"] = ours(SelfSpeculativeDecoder(model, n, head, growing))
        methods[f"draft_only+imitation({variant}) n={n}"] = ours(DraftOnlyDecoder(model, n, head))
    return methods


def layerskip_methods(args, layerskip_model, draft_layers: list[int]) -> dict:
    """SSD on the LayerSkip-trained backbone (its own greedy output is its reference: `layerskip:hf_generate`)."""
    budget = args.max_new_tokens
    eos = layerskip_model.generation_config.eos_token_id

    def run_hf(p):
        seq = hf_greedy(layerskip_model, p["input_ids"], budget, eos, pixel_values=p["pixel_values"])
        return seq[0, p["input_ids"].shape[1] :], None

    methods = {f"{LAYERSKIP}hf_generate": run_hf}
    for n in draft_layers:
        for d in args.draft_lens:
            decoder = SelfSpeculativeDecoder(layerskip_model, n, None, d)

            def run(p, decoder=decoder):
                out = decoder.generate(p["input_ids"], budget, eos, pixel_values=p["pixel_values"])
                return out.sequences[0, p["input_ids"].shape[1] :], out.stats

            methods[f"{LAYERSKIP}ssd n={n} d={d}"] = run
    return methods


def imitation_heads(args, model) -> dict:
    """Trained imitation networks on the benchmarked backbone (the mixed schedule's has its own backbone)."""
    if not args.imitation:
        return {}
    heads = {}
    for folder in sorted(Path(args.imitation).iterdir()):
        if not (folder / "config.json").exists():
            continue
        network, extra = load_imitation(folder)
        # The mixed schedule's head drafts for its own backbone: only when asked for (with --model models/mixed_backbone)
        wanted = folder.name in args.variants if args.variants is not None else not extra.get("mixed")
        if not wanted:
            continue
        parameter = next(model.parameters())
        heads[folder.name] = (network.to(parameter.device, parameter.dtype).eval(), int(extra["draft_layers"]))
    return heads


def summarise(timings, prompts, num_layers: int) -> list[dict]:
    reference = timings[REFERENCE]
    tasks = sorted({p["task"] for p in prompts})
    by_task = {t: [i for i, p in enumerate(prompts) if p["task"] == t] for t in tasks}
    rows = []
    for name, t in timings.items():
        latency = t.latency()
        row = {
            "method": name,
            "new_tokens": t.new_tokens(),
            "latency_ms_per_token": latency * 1e3,
            "tokens_per_second": 1.0 / latency,
            "speedup_vs_hf_generate": reference.latency() / latency,
            "identical_to_greedy": identical_share(
                t.outputs, (timings[f"{LAYERSKIP}{REFERENCE}"] if name.startswith(LAYERSKIP) else reference).outputs
            ),
            "speedup_by_task": {task: reference.latency(ix) / t.latency(ix) for task, ix in by_task.items()},
            "seconds_per_repeat": [sum(run) for run in t.seconds],
        }
        if t.has_stats and t.stats.verify_calls:
            stats = t.stats.to_dict()
            row.update({k: stats[k] for k in ("acceptance_rate", "mean_accepted_length", "verify_calls", "drafted", "accepted")})
            row["acceptance_by_position"] = [
                a / d if d else 0.0 for a, d in zip(stats["accepted_by_position"], stats["drafted_by_position"])
            ]
            if name.startswith("ssd n=") and "d=growing" not in name:
                n, d = (int(part.split("=")[1]) for part in name.split()[1:3])
                # Draft cost per token ≈ n / L of a full forward pass (the head-less draft)
                row["expected_speedup_leviathan"] = expected_speedup(t.stats.acceptance_rate, n / num_layers, d)
        rows.append(row)
    return rows


def print_table(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for column in ("method", "tok/s", "ms/token", "speedup", "caption", "description", "accept", "τ", "identical"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in rows:
        by_task = r["speedup_by_task"]
        table.add_row(
            r["method"],
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
    backbone = load_backbone(args.model)
    model = backbone.model.to(args.device, getattr(torch, args.dtype)).eval()
    num_layers = backbone.adapter.num_layers
    prompts = build_prompts(args, backbone, params)
    eos = backbone.tokenizer.eos_token_id
    methods = build_methods(model, num_layers, args, eos)
    if args.layerskip:
        layerskip = load_backbone(args.layerskip).model.to(args.device, getattr(torch, args.dtype)).eval()
        methods.update(layerskip_methods(args, layerskip, args.draft_layers or [max(1, num_layers // 4)]))
    console = Console(stderr=True, markup=False, highlight=False)
    console.print(f"{len(methods)} methods × {len(prompts)} prompts × {args.repeats} repeats, L = {num_layers}")
    timings = time_methods(
        methods, prompts, repeats=args.repeats, device=torch.device(args.device), progress=console.print
    )
    rows = summarise(timings, prompts, num_layers)
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor() or "cpu"
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
    print_table(rows, f"decoding on {device_name} ({args.device}, {args.dtype}), L = {num_layers}; speed-up over model.generate")
    console.print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
