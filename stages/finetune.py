"""DVC stage `finetune`: train the backbone (paper eq. 1), save it in HF format, and check that it sees.

The "sees" check: greedy captions of the test images score a CIDEr far above the same model
given blank images, i.e. the captions come from the pixels, not only from the language prior.

`finetune.trainer` with devices × num_nodes > 1 trains with DDP (Lightning re-runs this script once per device);
rank zero alone checks, saves and writes the outputs and the MLflow run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.prepared import SplitData, load_prepared, read_manifest
from pipeline.errors import ConfigError
from pipeline.evaluation.greedy_captions import sees_check
from pipeline.io import atomic_write_csv, atomic_write_json
from pipeline.models.loading import Backbone, initial_backbone, save_backbone
from pipeline.models.presets import PRESETS
from pipeline.training.finetune import fit_finetune, run_fingerprint
from pipeline.training.launch import check_launch, planned_processes
from pipeline.training.vision_pretraining import pretrain_vision_tower
from stages._common import run_stage

MODEL_DIR = Path("models/finetuned")
CHECKPOINTS = Path("checkpoints/finetune")
METRICS = Path("metrics/finetune.json")
LOSS_CURVE = Path("metrics/finetune_loss.csv")


def vision_pretraining(backbone: Backbone, splits: dict[str, SplitData], params: Params) -> Callable[[], dict] | None:
    """A preset built from scratch first pre-trains its vision tower (contrastive, CLIP-style); a checkpoint brings
    its own pretrained one."""
    cfg = params.finetune
    vision = backbone.adapter.vision_encoder
    pre = cfg.vision_pretraining
    if PRESETS[params.model.preset].needs_pretrained_path or pre.max_steps == 0 or vision is None:
        return None
    images = len(splits["train"].images)
    if pre.batch_size > images:
        raise ConfigError(
            f"finetune.vision_pretraining.batch_size is {pre.batch_size} but the training split has {images} images; "
            f"set it to at most {images} (an image's negatives are the rest of its batch)"
        )
    processes = planned_processes(cfg.trainer)  # main() has checked the launch itself
    if pre.batch_size % processes:
        raise ConfigError(
            f"finetune.vision_pretraining.batch_size {pre.batch_size} does not divide among the {processes} processes "
            f"of finetune.trainer; make it a multiple of {processes}"
        )
    tokenizer = backbone.prompt_builder(params.data.prompts).tokenizer
    return lambda: pretrain_vision_tower(vision, tokenizer, backbone.image_processor, splits, cfg, seed=params.seed)


def main(params: Params) -> None:
    cfg = params.finetune
    check_launch(cfg.trainer, "finetune.trainer", cfg.batch_size)
    splits = load_prepared(params.data.out_dir)
    backbone = initial_backbone(params.model, params.data.out_dir, params.seed)
    builder = backbone.prompt_builder(params.data.prompts)
    section = params.model_dump(include={"seed", "model", "finetune", "data"})
    with tracking.stage_run("finetune", params.tracking.experiment, section):
        result = fit_finetune(
            backbone.model,
            builder,
            backbone.image_processor,
            splits,
            cfg,
            seed=params.seed,
            checkpoint_dir=CHECKPOINTS,
            fingerprint=run_fingerprint(section, read_manifest(Path(params.data.out_dir))),
            tracking_run=tracking.run_ref(),
            before_fresh_start=vision_pretraining(backbone, splits, params),
        )
        if not tracking.is_rank_zero():
            return
        torch.set_grad_enabled(False)
        metrics = {
            **result.metrics,
            **sees_check(
                backbone,
                builder,
                splits["test"],
                cfg.eval_samples,
                batch_size=cfg.eval_batch_size,
                max_new_tokens=cfg.eval_max_new_tokens,
            ),
        }
        metrics["num_parameters"] = float(sum(p.numel() for p in backbone.model.parameters()))
        save_backbone(backbone, MODEL_DIR)
        atomic_write_json(METRICS, metrics)
        atomic_write_csv(LOSS_CURVE, result.loss_curve)
        tracking.log_metrics({k: v for k, v in metrics.items() if k.startswith(("test_", "vision_pretraining_"))})
        print({k: round(v, 4) for k, v in metrics.items()})


if __name__ == "__main__":
    run_stage(main)
