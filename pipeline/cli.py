"""`python -m pipeline caption IMAGE`: caption one image with a trained model, show the speed and which
tokens the draft wrote (and the full model accepted) — what a user tries first after `make repro`.

    python -m pipeline caption data/prepared/images/test/000000.png
    python -m pipeline caption photo.jpg --method full  # ssd (default) | full | draft | layerskip | draft-verify
    python -m pipeline caption photo.jpg --task vqa --question "how many shapes are there ?"
    python -m pipeline caption images/ more.png --batch-size 16 --out captions.json   # many: one record per image

By default the full model decodes the same prompt too, so the speed-up and the identity check
(self-speculative greedy output must equal the full model's) are printed alongside.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.config import Params
    from pipeline.evaluation.method_runner import DecodingResources
    from pipeline.evaluation.methods import DraftLength, MethodSpec
    from pipeline.models.loading import Backbone

T = TypeVar("T")

METHODS = ("ssd", "full", "draft", "layerskip", "draft-verify")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline caption",
        description="Caption one image (speed, the draft's tokens, the comparison with the full model), or many "
        "(images and directories, decoded in batches, one JSON record per image).",
    )
    parser.add_argument("images", type=Path, nargs="+", metavar="IMAGE_OR_DIR")
    parser.add_argument("--batch-size", type=int, default=8, help="images decoded together (many images)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the records (default: print them)")
    parser.add_argument("--method", choices=METHODS, default="ssd")
    parser.add_argument("--task", choices=("caption", "description", "vqa"), default="caption")
    parser.add_argument("--question", default=None, help="the question (with --task vqa)")
    parser.add_argument("--model", type=Path, default=Path("models/finetuned"))
    parser.add_argument(
        "--imitation",
        type=Path,
        default=Path("models/imitation/ce+cs+kd"),
        help="imitation network for ssd/draft; a missing folder means the plain early-exit draft",
    )
    parser.add_argument("--layerskip", type=Path, default=Path("models/layerskip"))
    parser.add_argument("--draft-verify", type=Path, default=Path("models/draft_verify.json"))
    parser.add_argument(
        "--draft-len",
        default=None,
        help="draft length d, 'growing' or 'auto' (the sweep's; default: params.yaml decoding.draft_len)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16", "float64"),
        default=None,
        help="the model's precision (default: params.yaml model.dtype)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: params.yaml model.device)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--no-compare", action="store_true", help="skip decoding with the full model for comparison")
    args = parser.parse_args(argv)
    if args.task == "vqa" and not args.question:
        parser.error("--task vqa needs --question")
    if args.batch_size < 1:
        parser.error("--batch-size must be ≥ 1")
    return args


def _params(path: Path) -> Params:
    from pipeline.config import Params, load_params

    return load_params(path) if path.exists() else Params()


def _draft_len(args: argparse.Namespace, params: Params, draft_layers: int) -> DraftLength:
    from pipeline.evaluation.draft_choice import resolve_draft_len

    value = args.draft_len if args.draft_len is not None else params.decoding.draft_len
    if str(value) == "growing":
        return "growing"
    if value == "auto":
        try:
            return resolve_draft_len("auto", draft_layers)
        except PipelineError as error:
            raise PipelineError(f"{error} (or pass --draft-len)") from None
    try:
        return int(value)
    except ValueError:
        raise PipelineError(f"--draft-len must be an integer or 'growing', got {value!r}") from None


def _method(args: argparse.Namespace, backbone: Backbone, params: Params) -> tuple[MethodSpec, DecodingResources, str]:
    """The method `--method` names, what it decodes with, and a line saying what it is."""
    from pipeline.evaluation import methods
    from pipeline.evaluation.layer_choice import resolve_draft_layers
    from pipeline.evaluation.method_runner import DecodingResources
    from pipeline.models.imitation import load_draft_head
    from pipeline.models.loading import load_backbone

    resources = DecodingResources.of({methods.FINETUNED: backbone.model}, {}, backbone.tokenizer, params.decoding)
    num_layers = backbone.adapter.num_layers
    if args.method == "full":
        return methods.hf_generate(), resources, "full model (model.generate, greedy)"
    if args.method == "draft-verify":
        if not args.draft_verify.exists():
            raise PipelineError(
                f"{args.draft_verify} not found: run `dvc repro train_baselines` (or pass --draft-verify)"
            )
        found = json.loads(args.draft_verify.read_text())
        spec = methods.draft_verify(found["skip_layers"], found["threshold"], found.get("max_draft_len", 8))
        return spec, resources, f"Draft & Verify, skipping layers {found['skip_layers']}"
    head, n, what = None, None, "early exit (no imitation network)"
    if args.method in ("ssd", "draft") and args.imitation.exists():
        network, extra = load_draft_head(args.imitation, backbone.model)
        head, n, what = args.imitation.name, int(extra["draft_layers"]), f"imitation network {args.imitation}"
        resources.heads = {head: network}
    if n is None:
        n = resolve_draft_layers(
            params.imitation.draft_layers, num_layers, Path("metrics/layer_choice.json"), "imitation.draft_layers"
        )
    if args.method == "draft":
        return methods.draft_only(head, n), resources, f"draft alone: layers 0..{n - 1} + {what}"
    if args.method == "layerskip":
        if not args.layerskip.exists():
            raise PipelineError(f"{args.layerskip} not found: run `dvc repro train_baselines` (or pass --layerskip)")
        resources.models = {methods.LAYERSKIP: load_backbone(args.layerskip, args.dtype, args.device).model}
        return (
            methods.ssd(None, n, _draft_len(args, params, n), backbone=methods.LAYERSKIP),
            resources,
            f"LayerSkip backbone, early exit at layer {n}",
        )
    d = _draft_len(args, params, n)
    return (
        methods.ssd(head, n, d),
        resources,
        f"self-speculative: layers 0..{n - 1} + {what}, verified by all {num_layers}, d = {d}",
    )


def _timed(fn: Callable[[], T], device: torch.device, repeats: int = 3) -> tuple[T, float]:
    """The result and the median wall time of `repeats` calls (one call is at the mercy of the scheduler), the device
    synchronised around each."""
    from pipeline.evaluation.speed import synchronize

    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return result, sorted(times)[len(times) // 2]


def caption(argv: list[str]) -> int:
    from rich.console import Console
    from rich.text import Text

    from pipeline.data.images import load_image
    from pipeline.decoding.hf_reference import hf_greedy
    from pipeline.evaluation.caption_files import image_files
    from pipeline.evaluation.method_runner import build_decoder
    from pipeline.evaluation.prompts import MAX_NEW_TOKENS
    from pipeline.models.loading import load_backbone

    args = parse_args(argv)
    params = _params(args.params)
    args.dtype = args.dtype or params.model.dtype
    args.device = args.device or params.model.device
    files = image_files(args.images)
    if len(files) > 1 or args.out is not None:
        return caption_many(args, params, files)
    image = load_image(files[0])  # a clean ImageError for a missing or corrupt file
    backbone = load_backbone(args.model, args.dtype, args.device)
    tokenizer = backbone.tokenizer
    hidden = backbone.adapter.embed_weight
    input_ids = torch.tensor([backbone.prompt_builder(params.data.prompts).prompt_ids(args.task, args.question)])
    input_ids = input_ids.to(hidden.device)
    pixels = backbone.image_processor(images=[image], return_tensors="pt")["pixel_values"].to(
        hidden.device, hidden.dtype
    )
    budget = args.max_new_tokens or MAX_NEW_TOKENS[args.task]
    eos = tokenizer.eos_token_id
    console = Console(highlight=False)
    spec, resources, what = _method(args, backbone, params)
    model = resources.model(spec)
    with torch.no_grad():
        if spec.kind == "hf_generate":
            sequences, seconds = _timed(
                lambda: hf_greedy(model, input_ids, budget, eos, pixel_values=pixels), hidden.device
            )
            stats = None
        else:
            decoder = build_decoder(spec, resources)
            decoder.generate(input_ids, budget, eos, pixel_values=pixels)  # warm-up: first-call allocations
            out, seconds = _timed(lambda: decoder.generate(input_ids, budget, eos, pixel_values=pixels), hidden.device)
            sequences, stats = out.sequences, out.stats
        new = backbone.adapter.new_tokens(sequences, input_ids)[0].tolist()
        text = tokenizer.decode(new, skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence of ids decodes to one string
        console.print(Text(text.strip(), style="bold"))
        console.print(
            f"{what}\n{len(new)} tokens in {seconds * 1e3:.1f} ms (median of 3): {len(new) / seconds:.1f} tokens/s"
        )
        if stats is not None and stats.verify_calls:
            line = Text("tokens: ")
            for token, source in zip(tokenizer.convert_ids_to_tokens(new), stats.token_sources(), strict=False):
                line.append(
                    ("^" if source == "draft" else "") + token + " ", style="green" if source == "draft" else ""
                )
            console.print(line)
            console.print(
                f"^ / green: drafted and accepted ({stats.accepted} of {stats.drafted} drafted, "
                f"acceptance {stats.acceptance_rate:.2f}); the rest came from {stats.verify_calls} verification passes"
            )
        if not args.no_compare and spec.kind != "hf_generate":

            def reference() -> torch.Tensor:
                return hf_greedy(model, input_ids, budget, eos, pixel_values=pixels)

            reference()
            full, full_seconds = _timed(reference, hidden.device)
            full_new = backbone.adapter.new_tokens(full, input_ids)[0].tolist()
            same = "identical to" if full_new == new else "different from"
            console.print(
                f"full model: {len(full_new) / full_seconds:.1f} tokens/s; speed-up "
                f"{(full_seconds / max(1, len(full_new))) / (seconds / max(1, len(new))):.2f}×; "
                f"output {same} the full model's"
            )
    return 0


def caption_many(args: argparse.Namespace, params: Params, files: list[Path]) -> int:
    """Batch mode: every readable image captioned, the unreadable ones named on stderr and kept as error records."""
    from pipeline.evaluation.caption_files import caption_files
    from pipeline.evaluation.method_runner import batch_runnable
    from pipeline.evaluation.prompts import MAX_NEW_TOKENS
    from pipeline.io import atomic_write_json
    from pipeline.models.loading import load_backbone

    backbone = load_backbone(args.model, args.dtype, args.device)
    hidden = backbone.adapter.embed_weight
    spec, resources, what = _method(args, backbone, params)
    with torch.no_grad():
        records = caption_files(
            files,
            batch_runnable(spec, resources),
            backbone.prompt_builder(params.data.prompts).prompt_ids(args.task, args.question),
            backbone.image_processor,
            backbone.tokenizer,
            max_new_tokens=args.max_new_tokens or MAX_NEW_TOKENS[args.task],
            batch_size=args.batch_size,
            device=hidden.device,
            dtype=hidden.dtype,
        )
    skipped = [r for r in records if r.error is not None]
    for record in skipped:
        print(f"skipped {record.image}: {record.error}", file=sys.stderr)
    rows = [r.to_dict() for r in records]
    if args.out is not None:
        atomic_write_json(args.out, {"method": what, "records": rows})
        print(f"{len(records) - len(skipped)} of {len(records)} images captioned ({what}) → {args.out}")
    else:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    return 0 if len(skipped) < len(records) else 2


def apply_config(argv: list[str]) -> int:
    from pipeline.experiment_config import apply_config as merge

    parser = argparse.ArgumentParser(
        prog="python -m pipeline apply-config", description="Merge an experiment config into params.yaml."
    )
    parser.add_argument("config", type=Path, help="e.g. experiments/configs/llava-1.5-7b.yaml")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    changed = merge(args.config, args.params)
    print(f"{args.params}: {len(changed)} setting(s) from {args.config}: {', '.join(changed)}")
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {"caption": caption, "apply-config": apply_config}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(
            "usage: python -m pipeline caption IMAGE [--method ...]   caption an image (caption --help)\n"
            "       python -m pipeline apply-config CONFIG           merge experiments/configs/CONFIG into params.yaml",
            file=sys.stderr,
        )
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
