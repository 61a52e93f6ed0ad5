"""DVC stage `finetune`: train the backbone (paper eq. 1), save it in HF format, and check that it sees.

The "sees" check: greedy captions of the test images score a CIDEr far above the same model
given blank images, i.e. the captions come from the pixels, not only from the language prior.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.examples import Example, load_prepared, read_manifest
from pipeline.data.pixels import PixelStore
from pipeline.data.prompts import PromptBuilder
from pipeline.data.tokenizer import load_word_tokenizer
from pipeline.evaluation.caption_metrics import caption_scores
from pipeline.evaluation.generation import greedy_generate
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.models.loading import build_backbone, save_backbone
from pipeline.models.presets import PRESETS
from pipeline.training.finetune import fit_finetune, run_fingerprint
from stages._common import run_stage

MODEL_DIR = Path("models/finetuned")
CHECKPOINTS = Path("checkpoints/finetune")


def _sees_check(backbone, builder: PromptBuilder, params: Params, test) -> dict[str, float]:
    cfg = params.finetune
    records = test.images[: cfg.eval_samples]
    pixels = PixelStore([r.image_path for r in records], backbone.image_processor)
    examples = [Example(i, "caption", r.captions[0]) for i, r in enumerate(records)]
    kwargs = dict(batch_size=cfg.eval_batch_size, max_new_tokens=cfg.eval_max_new_tokens)
    references = {i: list(r.captions) for i, r in enumerate(records)}
    seen = greedy_generate(backbone.model, builder, pixels, examples, **kwargs)
    blank = greedy_generate(backbone.model, builder, pixels, examples, blank_images=True, **kwargs)
    scores = {f"test_{k}": v for k, v in caption_scores(references, dict(enumerate(seen))).items()}
    scores.update({f"test_blank_{k}": v for k, v in caption_scores(references, dict(enumerate(blank))).items()})
    for i in range(3):
        print(f"  test image {records[i].image_path.name}: {seen[i]!r} (blank: {blank[i]!r}) ref: {records[i].captions[0]!r}")
    return scores


def _curve_csv(rows: list[dict[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["step", "train_loss"])
    writer.writeheader()
    writer.writerows({"step": r["step"], "train_loss": r["train_loss"]} for r in rows if "train_loss" in r)
    return buffer.getvalue()


def main(params: Params) -> None:
    data_dir = Path(params.data.out_dir)
    splits = load_prepared(data_dir)
    tokenizer = None
    if not PRESETS[params.model.preset].needs_pretrained_path:
        tokenizer = load_word_tokenizer(data_dir / read_manifest(data_dir)["tokenizer_dir"])
    backbone = build_backbone(params.model, tokenizer, params.seed)
    builder = PromptBuilder(
        backbone.tokenizer, params.data.prompts, backbone.adapter.image_token_id, backbone.adapter.num_image_tokens
    )
    section = params.model_dump(include={"seed", "model", "finetune", "data"})
    with tracking.stage_run("finetune", params.tracking.experiment, section) as run:
        result = fit_finetune(
            backbone.model,
            builder,
            backbone.image_processor,
            splits,
            params.finetune,
            seed=params.seed,
            checkpoint_dir=CHECKPOINTS,
            fingerprint=run_fingerprint(section, read_manifest(data_dir)),
            mlflow_uri=tracking.tracking_uri(),
            mlflow_run_id=run.info.run_id if run is not None else None,
        )
        if not tracking.is_rank_zero():
            return
        torch.set_grad_enabled(False)
        metrics = {**result.metrics, **_sees_check(backbone, builder, params, splits["test"])}
        metrics["num_parameters"] = float(sum(p.numel() for p in backbone.model.parameters()))
        save_backbone(backbone, MODEL_DIR)
        atomic_write_json("metrics/finetune.json", metrics)
        atomic_write_text("metrics/finetune_loss.csv", _curve_csv(result.loss_curve))
        tracking.log_metrics({k: v for k, v in metrics.items() if k.startswith("test_")})
        print({k: round(v, 4) for k, v in metrics.items()})


if __name__ == "__main__":
    run_stage(main)
