"""Inputs where the draft is useless: does ours stay at least as fast as the full model? The full model (our engine,
token by token), ours with the acceptance backoff (`decoding.backoff`, evaluate's default) and ours without it, at
batch 1 on the same prompts in one run, methods interleaved per prompt, for each kind of input:

- `real`: test captions of the real images (the draft works);
- `grey`, `black`: the same caption prompts with a uniform grey / black image (the draft's guesses collapse);
- `vqa`: test questions (answers of one to three tokens: a round rarely pays for itself).

    python experiments/benchmark_backoff.py   # after `make repro`: experiments/results/benchmark_backoff_cpu.json

Speed-up = the full model's per-token latency ÷ the method's (both on that input kind); identical = share of outputs
equal to the full model's.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import BackoffConfig, load_params
from pipeline.data.prepared import load_prepared
from pipeline.evaluation import methods
from pipeline.evaluation.draft_choice import resolve_draft_len
from pipeline.evaluation.method_runner import DecodingResources, runnable
from pipeline.evaluation.prompts import caption_prompts, on_device, vqa_prompts
from pipeline.evaluation.speed import identical_share, time_methods
from pipeline.io import atomic_write_json
from pipeline.models.imitation import load_draft_head
from pipeline.models.loading import load_backbone

KINDS = ("real", "grey", "black", "vqa")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/finetuned")
    parser.add_argument("--imitation", default="models/imitation/ce+cs+kd", help="the imitation network of ours")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default=None, help="prepared data (default: params' data.out_dir)")
    parser.add_argument("--prompts", type=int, default=16, help="caption prompts (and VQA questions) per input kind")
    parser.add_argument("--draft-len", type=int, default=None, help="d of ours (default: params' decoding.draft_len)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="experiments/results/benchmark_backoff_cpu.json")
    return parser.parse_args(argv)


def uniform_pixels(
    image_processor: object, like: torch.Tensor, size: int, colour: tuple[int, int, int]
) -> torch.Tensor:
    """A uniform image as the processor gives it, in the shape of a prompt's pixels (`like`)."""
    image = Image.new("RGB", (size, size), colour)
    pixels = image_processor(images=[image], return_tensors="pt")["pixel_values"]  # type: ignore[operator]
    return pixels.reshape(like.shape)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params)
    backbone = load_backbone(args.model)
    hidden = backbone.adapter.embed_weight
    test = load_prepared(Path(args.data or params.data.out_dir))["test"]
    builder = backbone.prompt_builder(params.data.prompts)
    captions = caption_prompts(test, builder, backbone.image_processor, args.prompts, 0)
    size = params.data.synthetic.image_size

    def uniform(prompt: dict, colour: tuple[int, int, int]) -> torch.Tensor:
        return uniform_pixels(backbone.image_processor, prompt["pixel_values"], size, colour)

    inputs = {
        "real": captions,
        "grey": [{**p, "pixel_values": uniform(p, (128, 128, 128))} for p in captions],
        "black": [{**p, "pixel_values": uniform(p, (0, 0, 0))} for p in captions],
        "vqa": vqa_prompts(test, builder, backbone.image_processor, args.prompts),
    }
    head, extra = load_draft_head(args.imitation, backbone.model)
    n = int(extra["draft_layers"])
    d = args.draft_len or resolve_draft_len(params.decoding.draft_len, n)
    ours = methods.ssd("ours", n, d)
    backoff = params.decoding.model_copy(
        update={"backoff": params.decoding.backoff.model_copy(update={"enabled": True})}
    )
    plain = params.decoding.model_copy(update={"backoff": BackoffConfig(enabled=False)})
    models = {methods.FINETUNED: backbone.model}
    decoders = {
        "full model": runnable(methods.autoregressive(), DecodingResources.of(models, {}, backbone.tokenizer, plain)),
        "ours, backoff": runnable(ours, DecodingResources.of(models, {"ours": head}, backbone.tokenizer, backoff)),
        "ours, no backoff": runnable(ours, DecodingResources.of(models, {"ours": head}, backbone.tokenizer, plain)),
    }
    rows = []
    for kind in KINDS:
        if not inputs[kind]:
            Console(stderr=True).print(f"{kind}: the test split has no such prompts, skipped")
            continue
        prompts = on_device(inputs[kind], hidden.device, hidden.dtype)
        with torch.no_grad():
            timings = time_methods(decoders, prompts, repeats=args.repeats, progress=True)
        base = timings["full model"]
        for name, timing in timings.items():
            stats = timing.stats if timing.has_stats else None
            rows.append(
                {
                    "input": kind,
                    "method": name,
                    "speedup": base.latency() / timing.latency(),
                    "ms_per_token": 1e3 * timing.latency(),
                    "acceptance_rate": stats.acceptance_rate if stats else None,
                    "drafted_per_round": stats.drafted / stats.verify_calls if stats and stats.verify_calls else None,
                    "identical_share": identical_share(timing.outputs, base.outputs),
                    "new_tokens": timing.new_tokens(),
                }
            )
    table = Table(title=f"where the draft is useless: batch 1, n = {n}, d = {d}, {args.repeats} repeats")
    for column in ("input", "method", "speed-up", "ms/token", "acceptance", "drafted/round", "identical"):
        table.add_column(column)
    for row in rows:
        acceptance, depth = row["acceptance_rate"], row["drafted_per_round"]
        table.add_row(
            row["input"],
            row["method"],
            f"{row['speedup']:.2f}×",
            f"{row['ms_per_token']:.2f}",
            "–" if acceptance is None else f"{acceptance:.2f}",
            "–" if depth is None else f"{depth:.2f}",
            f"{row['identical_share']:.0%}",
        )
    Console(width=140).print(table)
    result = {
        "command": "python experiments/benchmark_backoff.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "draft_layers": n,
        "draft_len": d,
        "rows": rows,
    }
    atomic_write_json(args.out, result)
    Console(stderr=True).print(f"written {args.out}")
    return result


if __name__ == "__main__":
    main()
