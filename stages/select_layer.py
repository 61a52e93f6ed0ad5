"""DVC stage `select_layer`: choose the draft depth n by the paper's confidence-minus-cost reward (A.4).

Writes `metrics/layer_choice.json` (chosen n, per-layer confidence and reward), the curve for
`dvc plots` (`plots/layer_reward.csv`) and a figure (`reports/figures/layer_reward.png`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.datasets import balanced_batches
from pipeline.data.examples import load_prepared
from pipeline.data.pixels import PixelStore
from pipeline.data.prompts import PromptBuilder
from pipeline.evaluation.layer_choice import choose_layer, early_exit_confidence
from pipeline.io import atomic_write_json, atomic_write_text
from pipeline.models.loading import load_backbone
from pipeline.report import line_plot
from stages._common import run_stage

FINETUNED = Path("models/finetuned")
METRICS = Path("metrics/layer_choice.json")
CURVE = Path("plots/layer_reward.csv")
FIGURE = Path("reports/figures/layer_reward.png")


def main(params: Params) -> None:
    cfg = params.layer_choice
    backbone = load_backbone(FINETUNED)
    adapter = backbone.adapter
    val = load_prepared(params.data.out_dir)["val"]
    builder = PromptBuilder(backbone.tokenizer, params.data.prompts, adapter.image_token_id, adapter.num_image_tokens)
    pixels = PixelStore([r.image_path for r in val.images], backbone.image_processor)
    batches = balanced_batches(val, builder, pixels, cfg.val_examples, cfg.batch_size)
    max_layer = max(1, int(cfg.max_layer_fraction * adapter.num_layers))
    cost = cfg.layer_cost if cfg.layer_cost is not None else 1.0 / adapter.num_layers
    with tracking.stage_run("select_layer", params.tracking.experiment, params.model_dump(include={"layer_choice"})):
        choice = choose_layer(early_exit_confidence(adapter, batches, max_layer), cfg.mu, cost)
        for layer, conf, reward in zip(choice.layers, choice.confidence, choice.reward):
            tracking.log_metrics({"layer_confidence": conf, "layer_reward": reward}, step=layer)
        tracking.log_metrics({"chosen_n": choice.chosen})
        result = {**choice.to_dict(), "num_layers": adapter.num_layers, "mu": cfg.mu, "layer_cost": cost}
        atomic_write_json(METRICS, result)
        rows = ["layer,confidence,reward"] + [f"{i},{c:.6f},{r:.6f}" for i, c, r in zip(choice.layers, choice.confidence, choice.reward)]
        atomic_write_text(CURVE, "\n".join(rows) + "\n")
        line_plot(
            FIGURE,
            choice.layers,
            {"confidence": choice.confidence, f"reward (μ={cfg.mu}, c={cost:.3f})": choice.reward},
            xlabel="draft layer i",
            title=f"layer choice: n = {choice.chosen} of {adapter.num_layers}",
            mark_x=choice.chosen,
        )
        tracking.log_artifact(FIGURE)
    print(f"chosen n = {choice.chosen}: " + ", ".join(f"{i}:{r:.3f}" for i, r in zip(choice.layers, choice.reward)))


if __name__ == "__main__":
    run_stage(main)
