"""DVC stage `features`: the fine-tuned (frozen) backbone run once over a sample of the training split and a
validation slice, storing what the draft trainers need (`pipeline.training.feature_cache`): layer-n outputs for every
n the imitation heads, NAS and the sweep train at, the last `imitation.fusion_layers` layers' outputs (the cosine
target's inputs) and the full model's distributions at the distillation temperature. With `features.targets:
generated` (the default) each example's text is first replaced by the full model's own greedy continuation of its
prompt (`pipeline.training.self_distillation`).

Outputs: `data/features/{train,val}/` (memory-mapped `.npy` + `index.json`; with `features.enabled: false` only a
marker saying so), `metrics/features.json` (examples, tokens, bytes, seconds).
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.pixels import PixelStore
from pipeline.data.prepared import Example, load_prepared
from pipeline.data.prompts import PromptBuilder
from pipeline.evaluation.layer_choice import resolve_draft_layers
from pipeline.evaluation.prompts import MAX_NEW_TOKENS
from pipeline.io import atomic_directory, atomic_write_json
from pipeline.models.loading import Backbone, load_backbone
from pipeline.search.space import load_search_space
from pipeline.training.feature_cache import (
    FeatureLayout,
    bytes_per_token,
    cache_splits,
    cached_examples,
    split_pixels,
)
from pipeline.training.self_distillation import model_written
from stages._common import run_stage

FINETUNED = Path("models/finetuned")
LAYER_CHOICE = Path("metrics/layer_choice.json")
FEATURES = Path("data/features")
METRICS = Path("metrics/features.json")


def generated_targets(
    backbone: Backbone, builder: PromptBuilder, pixels: PixelStore, examples: list[Example], batch_size: int
) -> tuple[list[Example], dict[str, float]]:
    """The examples with the full model's greedy text as targets, and how that text compares with the references."""
    written = model_written(backbone.model, builder, pixels, examples, MAX_NEW_TOKENS, batch_size)
    eos = builder.tokenizer.eos_token_id
    lengths = [len(e.target_ids or ()) for e in written]
    return written, {
        "generated_tokens_per_example": sum(lengths) / len(lengths),
        "reference_tokens_per_example": sum(len(builder.target_ids(e.text)) for e in examples) / len(examples),
        "generated_ending_in_eos": sum(e.target_ids is not None and e.target_ids[-1:] == (eos,) for e in written)
        / len(written),
    }


def main(params: Params) -> None:
    cfg = params.features
    with tracking.stage_run("features", params.tracking.experiment, params.model_dump(include={"features"})):
        if not cfg.enabled:
            with atomic_directory(FEATURES) as folder:
                (folder / "DISABLED").write_text("features.enabled is false: draft trainers run the backbone\n")
            atomic_write_json(METRICS, {"enabled": False})
            return
        started = time.perf_counter()
        backbone = load_backbone(FINETUNED, params.model.dtype, params.model.device)
        adapter = backbone.adapter
        chosen = resolve_draft_layers(
            params.imitation.draft_layers, adapter.num_layers, LAYER_CHOICE, "imitation.draft_layers"
        )
        space = load_search_space(params.sweep.search_space)
        layers = tuple(sorted(int(n) for n in space.with_grid_value("draft_layers", chosen).values("draft_layers")))
        layout = FeatureLayout(
            layers, params.imitation.fusion_layers, cfg.top_k, params.imitation.temperature, cfg.dtype
        )
        splits = load_prepared(params.data.out_dir)
        weights = params.imitation.task_weights.model_dump()
        builder = backbone.prompt_builder(params.data.prompts)
        counts = {"train": cfg.train_examples, "val": cfg.val_examples}
        chosen_examples = {}
        written: dict[str, float] = {}
        generating = time.perf_counter()
        for name, count in counts.items():
            examples = cached_examples(splits[name], weights, count, params.seed)
            # decoded once: the generation and the caching read the same images
            pixels = split_pixels(splits[name], backbone.image_processor)
            if cfg.targets == "generated":
                examples, text = generated_targets(backbone, builder, pixels, examples, cfg.batch_size)
                written |= {f"{name}_{key}": value for key, value in text.items()}
            chosen_examples[name] = (pixels, examples)
        generation_seconds = time.perf_counter() - generating
        summary = cache_splits(
            adapter,
            builder,
            chosen_examples,
            layout,
            FEATURES,
            cfg.batch_size,
            {"targets": cfg.targets},
        )
        disk = sum(f.stat().st_size for f in FEATURES.rglob("*") if f.is_file())
        metrics = {
            "enabled": True,
            "targets": cfg.targets,
            "draft_layers": list(layers),
            "train_examples": summary["train"]["examples"],
            "train_tokens": summary["train"]["tokens"],
            "train_scored_tokens": summary["train"]["scored"],
            "val_examples": summary["val"]["examples"],
            "bytes": disk,
            "bytes_per_token_per_layer": bytes_per_token(adapter.hidden_size, cfg.dtype),
            **written,
            "generation_seconds": generation_seconds if cfg.targets == "generated" else 0.0,
            "seconds": time.perf_counter() - started,
        }
        tracking.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        atomic_write_json(METRICS, metrics)
    print(
        f"features: {metrics['train_examples']} train examples ({metrics['train_tokens']} tokens, {cfg.targets} "
        f"targets), layers {layers}, "
        f"{disk / 2**20:.0f} MiB in {metrics['seconds']:.0f} s"
    )


if __name__ == "__main__":
    run_stage(main)
