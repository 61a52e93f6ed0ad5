"""DVC stage `features`: the fine-tuned (frozen) backbone run once over a sample of the training split and a
validation slice, storing what the draft trainers need (`pipeline.training.feature_cache`): layer-n outputs for every
n the imitation heads, NAS and the sweep train at, the last `imitation.fusion_layers` layers' outputs (the cosine
target's inputs) and the full model's distributions at the distillation temperature.

Outputs: `data/features/{train,val}/` (memory-mapped `.npy` + `index.json`; with `features.enabled: false` only a
marker saying so), `metrics/features.json` (examples, tokens, bytes, seconds).
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.prepared import load_prepared
from pipeline.evaluation.layer_choice import resolve_draft_layers
from pipeline.io import atomic_directory, atomic_write_json
from pipeline.models.loading import load_backbone
from pipeline.search.space import load_search_space
from pipeline.training.feature_cache import FeatureLayout, bytes_per_token, cache_splits, cached_examples
from stages._common import run_stage

FINETUNED = Path("models/finetuned")
LAYER_CHOICE = Path("metrics/layer_choice.json")
FEATURES = Path("data/features")
METRICS = Path("metrics/features.json")


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
        chosen_examples = {
            "train": (splits["train"], cached_examples(splits["train"], weights, cfg.train_examples, params.seed)),
            "val": (splits["val"], cached_examples(splits["val"], weights, cfg.val_examples, params.seed)),
        }
        builder = backbone.prompt_builder(params.data.prompts)
        summary = cache_splits(
            adapter, builder, backbone.image_processor, chosen_examples, layout, FEATURES, cfg.batch_size
        )
        disk = sum(f.stat().st_size for f in FEATURES.rglob("*") if f.is_file())
        metrics = {
            "enabled": True,
            "draft_layers": list(layers),
            "train_examples": summary["train"]["examples"],
            "train_tokens": summary["train"]["tokens"],
            "train_scored_tokens": summary["train"]["scored"],
            "val_examples": summary["val"]["examples"],
            "bytes": disk,
            "bytes_per_token_per_layer": bytes_per_token(adapter.hidden_size, cfg.dtype),
            "seconds": time.perf_counter() - started,
        }
        tracking.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        atomic_write_json(METRICS, metrics)
    print(
        f"features: {metrics['train_examples']} train examples ({metrics['train_tokens']} tokens), layers {layers}, "
        f"{disk / 2**20:.0f} MiB in {metrics['seconds']:.0f} s"
    )


if __name__ == "__main__":
    run_stage(main)
