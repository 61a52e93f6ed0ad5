"""DVC stage `select_layer`: choose the draft depth n by the paper's confidence-minus-cost reward (A.4).

Writes `metrics/layer_choice.json` (chosen n, per-layer confidence and reward), the curve for
`dvc plots` (`plots/layer_reward.csv`) and a figure (`reports/figures/layer_reward.png`). With `layer_choice.trainer`
naming several processes the validation batches are shared out; rank zero writes.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.prepared import load_prepared
from pipeline.evaluation.layer_choice import choose_draft_layers, layer_cost
from pipeline.io import atomic_write_csv, atomic_write_json
from pipeline.models.loading import load_backbone
from pipeline.report.figures import line_plot
from pipeline.training.launch import check_launch
from stages._common import run_stage

FINETUNED = Path("models/finetuned")
METRICS = Path("metrics/layer_choice.json")
CURVE = Path("plots/layer_reward.csv")
FIGURE = Path("reports/figures/layer_reward.png")


def main(params: Params) -> None:
    cfg = params.layer_choice
    check_launch(cfg.trainer, "layer_choice.trainer")
    backbone = load_backbone(FINETUNED, params.model.dtype, params.model.device)
    num_layers = backbone.adapter.num_layers
    cost = layer_cost(cfg, num_layers)
    with tracking.stage_run("select_layer", params.tracking.experiment, params.model_dump(include={"layer_choice"})):
        choice = choose_draft_layers(cfg, backbone, load_prepared(params.data.out_dir)["val"], params.data.prompts)
        if choice is None:  # another process of a shared-out run: rank zero writes
            return
        for layer, conf, reward in zip(choice.layers, choice.confidence, choice.reward, strict=True):
            tracking.log_metrics({"layer_confidence": conf, "layer_reward": reward}, step=layer)
        tracking.log_metrics({"chosen_n": choice.chosen})
        atomic_write_json(METRICS, {**choice.to_dict(), "num_layers": num_layers, "mu": cfg.mu, "layer_cost": cost})
        atomic_write_csv(CURVE, choice.rows())
        line_plot(
            FIGURE,
            choice.layers,
            {"confidence": choice.confidence, f"reward (μ={cfg.mu}, c={cost:.3f})": choice.reward},
            xlabel="draft layer i",
            title=f"layer choice: n = {choice.chosen} of {num_layers}",
            mark_x=choice.chosen,
        )
        tracking.log_artifact(FIGURE)
    print(
        f"chosen n = {choice.chosen}: "
        + ", ".join(f"{i}:{r:.3f}" for i, r in zip(choice.layers, choice.reward, strict=True))
    )


if __name__ == "__main__":
    run_stage(main)
