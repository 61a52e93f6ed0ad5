"""`python -m pipeline caption IMAGE`: caption one image with a trained model, show the speed and which
tokens the draft wrote (and the full model accepted) — what a user tries first after `make repro`.

    python -m pipeline caption data/prepared/images/test/000000.png
    python -m pipeline caption photo.jpg --method full           # ssd (default) | full | draft | layerskip | draft-verify
    python -m pipeline caption photo.jpg --task vqa --question "how many shapes are there ?"

By default the full model decodes the same prompt too, so the speed-up and the identity check
(self-speculative greedy output must equal the full model's) are printed alongside.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pipeline.errors import PipelineError

METHODS = ("ssd", "full", "draft", "layerskip", "draft-verify")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline caption", description="Caption one image.")
    parser.add_argument("image", type=Path)
    parser.add_argument("--method", choices=METHODS, default="ssd")
    parser.add_argument("--task", choices=("caption", "description", "vqa"), default="caption")
    parser.add_argument("--question", default=None, help="the question (with --task vqa)")
    parser.add_argument("--model", type=Path, default=Path("models/finetuned"))
    parser.add_argument("--imitation", type=Path, default=Path("models/imitation/ce+cs+kd"),
                        help="imitation network for ssd/draft; a missing folder means the plain early-exit draft")
    parser.add_argument("--layerskip", type=Path, default=Path("models/layerskip"))
    parser.add_argument("--draft-verify", type=Path, default=Path("models/draft_verify.json"))
    parser.add_argument("--draft-len", default=None, help="draft length d or 'growing' (default: params.yaml decoding.draft_len)")
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--no-compare", action="store_true", help="skip decoding with the full model for comparison")
    args = parser.parse_args(argv)
    if args.task == "vqa" and not args.question:
        parser.error("--task vqa needs --question")
    return args


def _params(path: Path):
    from pipeline.config import Params, load_params

    return load_params(path) if path.exists() else Params()


def _policy(args, params):
    from pipeline.decoding import GrowingDraftLength

    value = args.draft_len if args.draft_len is not None else params.decoding.draft_len
    if str(value) == "growing":
        return GrowingDraftLength(**params.decoding.growing.model_dump())
    try:
        return int(value)
    except ValueError:
        raise PipelineError(f"--draft-len must be an integer or 'growing', got {value!r}") from None


def _decoder(args, backbone, params):
    """The method's decoder, the model it decodes with, and a line saying what it is."""
    from pipeline.decoding import ConfidenceStop, DraftAndVerifyDecoder, DraftOnlyDecoder, SelfSpeculativeDecoder
    from pipeline.evaluation.layer_choice import resolve_draft_layers
    from pipeline.models.imitation import as_draft_head, load_imitation
    from pipeline.models.loading import load_backbone

    model = backbone.model
    num_layers = backbone.adapter.num_layers
    if args.method == "draft-verify":
        if not args.draft_verify.exists():
            raise PipelineError(f"{args.draft_verify} not found: run `dvc repro train_baselines` (or pass --draft-verify)")
        found = json.loads(args.draft_verify.read_text())
        policy = ConfidenceStop(found["threshold"], found.get("max_draft_len", 8))
        return DraftAndVerifyDecoder(model, found["skip_layers"], policy), model, f"Draft & Verify, skipping layers {found['skip_layers']}"
    head, n, what = None, None, "early exit (no imitation network)"
    if args.method in ("ssd", "draft") and args.imitation.exists():
        network, extra = load_imitation(args.imitation)
        head, n, what = as_draft_head(network.eval()), int(extra["draft_layers"]), f"imitation network {args.imitation}"
    if n is None:
        n = resolve_draft_layers(params.imitation.draft_layers, num_layers, Path("metrics/layer_choice.json"), "imitation.draft_layers")
    if args.method == "draft":
        return DraftOnlyDecoder(model, n, head), model, f"draft alone: layers 0..{n - 1} + {what}"
    if args.method == "layerskip":
        if not args.layerskip.exists():
            raise PipelineError(f"{args.layerskip} not found: run `dvc repro train_baselines` (or pass --layerskip)")
        model = load_backbone(args.layerskip).model.eval()
        return SelfSpeculativeDecoder(model, n, None, _policy(args, params)), model, f"LayerSkip backbone, early exit at layer {n}"
    return SelfSpeculativeDecoder(model, n, head, _policy(args, params)), model, f"self-speculative: layers 0..{n - 1} + {what}, verified by all {num_layers}"


def _timed(fn, repeats: int = 3):
    """The result and the median wall time of `repeats` calls (one call is at the mercy of the scheduler)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, sorted(times)[len(times) // 2]


def caption(argv: list[str]) -> int:
    from rich.console import Console
    from rich.text import Text

    from pipeline.data.images import load_image
    from pipeline.data.prompts import PromptBuilder
    from pipeline.decoding.hf_reference import hf_greedy
    from pipeline.evaluation.methods import MAX_NEW_TOKENS
    from pipeline.models.loading import load_backbone

    args = parse_args(argv)
    params = _params(args.params)
    image = load_image(args.image)  # a clean ImageError for a missing or corrupt file
    backbone = load_backbone(args.model)
    backbone.model.eval()
    adapter, tokenizer = backbone.adapter, backbone.tokenizer
    builder = PromptBuilder(tokenizer, params.data.prompts, adapter.image_token_id, adapter.num_image_tokens)
    input_ids = torch.tensor([builder.prompt_ids(args.task, args.question)])
    pixels = backbone.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    budget = args.max_new_tokens or MAX_NEW_TOKENS[args.task]
    eos = tokenizer.eos_token_id
    console = Console(highlight=False)
    with torch.no_grad():
        if args.method == "full":
            sequences, seconds = _timed(lambda: hf_greedy(backbone.model, input_ids, budget, eos, pixel_values=pixels))
            stats, what, model = None, "full model (model.generate, greedy)", backbone.model
        else:
            decoder, model, what = _decoder(args, backbone, params)
            decoder.generate(input_ids, budget, eos, pixel_values=pixels)  # warm-up: first-call allocations
            out, seconds = _timed(lambda: decoder.generate(input_ids, budget, eos, pixel_values=pixels))
            sequences, stats = out.sequences, out.stats
        new = sequences[0, input_ids.shape[1]:].tolist()
        console.print(Text(tokenizer.decode(new, skip_special_tokens=True).strip(), style="bold"))
        console.print(f"{what}\n{len(new)} tokens in {seconds * 1e3:.1f} ms (median of 3): {len(new) / seconds:.1f} tokens/s")
        if stats is not None and stats.verify_calls:
            line = Text("tokens: ")
            for token, source in zip(tokenizer.convert_ids_to_tokens(new), stats.token_sources()):
                line.append(("^" if source == "draft" else "") + token + " ", style="green" if source == "draft" else "")
            console.print(line)
            console.print(f"^ / green: drafted and accepted ({stats.accepted} of {stats.drafted} drafted, "
                          f"acceptance {stats.acceptance_rate:.2f}); the rest came from {stats.verify_calls} verification passes")
        if not args.no_compare and args.method != "full":
            reference = lambda: hf_greedy(model, input_ids, budget, eos, pixel_values=pixels)  # noqa: E731
            reference()
            full, full_seconds = _timed(reference)
            full_new = full[0, input_ids.shape[1]:].tolist()
            same = "identical to" if full_new == new else "different from"
            console.print(f"full model: {len(full_new) / full_seconds:.1f} tokens/s; speed-up "
                          f"{(full_seconds / max(1, len(full_new))) / (seconds / max(1, len(new))):.2f}×; output {same} the full model's")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "caption":
        print("usage: python -m pipeline caption IMAGE [--method ...]  (python -m pipeline caption --help)", file=sys.stderr)
        return 2
    try:
        return caption(argv[1:])
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
