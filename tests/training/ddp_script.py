"""A library call under the trainer settings a test names, as a program of its own: Lightning's DDP launcher re-runs
`python -m tests.training.ddp_script SPEC.json` once per device, which pytest's own process cannot be.

Scenarios (SPEC's `scenario`):
- `finetune`: `fit_finetune` on the tiny data; every process appends each step's examples (a fingerprint per example)
  and the step's loss to `steps-rank<r>.jsonl` as it goes, so a run killed part-way (`kill_at`: rank zero kills the
  whole process group after that step, as a preempted job dies) leaves its record behind;
- `heads`: the frozen and the mixed imitation schedules and LayerSkip (with layer dropout), one after the other in
  the same processes, with the backbone's fingerprint before and after each;
- `shards`: select_layer's confidences and evaluate's decoding of every method, shared out over the processes.
Rank zero writes `result.json` at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pipeline.config import (
    FinetuneConfig,
    ImitationConfig,
    LayerChoiceConfig,
    LayerSkipConfig,
    PromptConfig,
    TrainerConfig,
)
from pipeline.data.prepared import load_prepared
from pipeline.data.tokenizer import load_word_tokenizer
from pipeline.distributed import is_rank_zero
from pipeline.io import atomic_write_json
from tests.conftest import tiny_backbone


def example_fingerprints(batch: dict[str, torch.Tensor]) -> list[str]:
    """One short hash per example of a collated batch: its unpadded tokens and its pixels."""
    prints = []
    for row in range(batch["input_ids"].shape[0]):
        kept = batch["attention_mask"][row].bool()
        digest = hashlib.sha1(batch["input_ids"][row][kept].numpy().tobytes())
        digest.update(batch["pixel_values"][row].numpy().tobytes())
        prints.append(digest.hexdigest()[:12])
    return prints


class StepRecorder(L.Callback):
    """Appends {step, rank, examples, loss} per training step to `steps-rank<r>.jsonl` in `folder` (flushed: a killed
    run keeps what it wrote); with `kill_at`, rank zero SIGKILLs its process group after that step."""

    def __init__(self, folder: Path, kill_at: int | None = None) -> None:
        self.folder = folder
        self.kill_at = kill_at
        self.examples: list[str] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.examples = example_fingerprints(batch)

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        row = {
            "step": trainer.global_step,
            "rank": trainer.global_rank,
            "examples": self.examples,
            "loss": float(trainer.callback_metrics["train/loss"]),
        }
        with (self.folder / f"steps-rank{trainer.global_rank}.jsonl").open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.kill_at is not None and trainer.global_step == self.kill_at:
            trainer.strategy.barrier("recorded")  # every rank's record of the step is written
            if trainer.is_global_zero:
                os.killpg(os.getpgid(0), signal.SIGKILL)


def load_tiny(data_dir: Path) -> tuple[dict, Any]:
    return load_prepared(data_dir), load_word_tokenizer(data_dir / "tok")


def finetune(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    from pipeline.training.finetune import fit_finetune

    splits, tokenizer = load_tiny(Path(spec["data"]))
    backbone = tiny_backbone(tokenizer, num_layers=2)
    cfg = FinetuneConfig.model_validate(spec["config"])
    result = fit_finetune(
        backbone.model,
        backbone.prompt_builder(PromptConfig()),
        backbone.image_processor,
        splits,
        cfg,
        seed=0,
        checkpoint_dir=out / "ckpt",
        fingerprint="ddp-test",
        callbacks=[StepRecorder(out, spec.get("kill_at"))],
    )
    return {"metrics": result.metrics, "curve": result.loss_curve}


class BackbonePrints(L.Callback):
    """The backbone's weights fingerprint after every training step."""

    def __init__(self) -> None:
        self.prints: list[str] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        from pipeline.training.imitation_heads import weights_fingerprint

        self.prints.append(weights_fingerprint(module.model))


def heads(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    from pipeline.models.deep_layer_fusion import build_fusion
    from pipeline.models.imitation import ImitationNetwork
    from pipeline.training.imitation import fit_imitation
    from pipeline.training.imitation_heads import weights_fingerprint
    from pipeline.training.layerskip import fit_layerskip

    splits, tokenizer = load_tiny(Path(spec["data"]))
    trainer = spec["trainer"]
    found: dict[str, Any] = {}
    for schedule in ("frozen", "mixed"):
        backbone = tiny_backbone(tokenizer)
        builder = backbone.prompt_builder(PromptConfig())
        cfg = ImitationConfig.model_validate({**spec["imitation"], "trainer": trainer})
        torch.manual_seed(0)
        head = ImitationNetwork(backbone.adapter.hidden_size)
        before = weights_fingerprint(backbone.model)
        prints = BackbonePrints()
        result = fit_imitation(
            backbone.model,
            head,
            build_fusion("concat", backbone.adapter.hidden_size, 2),
            builder,
            backbone.image_processor,
            splits,
            cfg,
            draft_layers=2,
            loss_weights={"ce": 1.0, "cs": 1.0, "kd": 1.0},
            mixed=schedule == "mixed",
            callbacks=[prints],
        )
        found[schedule] = {
            "metrics": result.metrics,
            "backbone_unchanged": weights_fingerprint(backbone.model) == before,
            "backbone_after_step": prints.prints,
            "head": hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in head.parameters())).hexdigest(),
        }
    backbone = tiny_backbone(tokenizer)
    before = weights_fingerprint(backbone.model)
    cfg = LayerSkipConfig.model_validate({**spec["layerskip"], "trainer": trainer})
    result = fit_layerskip(
        backbone.model,
        backbone.prompt_builder(PromptConfig()),
        backbone.image_processor,
        splits,
        cfg,
        draft_layers=1,
    )
    found["layerskip"] = {"metrics": result.metrics, "backbone_changed": weights_fingerprint(backbone.model) != before}
    return found


def shards(spec: dict[str, Any], out: Path) -> dict[str, Any] | None:
    from tests.training.sharded_evaluation import layer_choice, method_rows

    splits, tokenizer = load_tiny(Path(spec["data"]))
    trainer = TrainerConfig.model_validate(spec["trainer"])
    choice = layer_choice(splits, tokenizer, LayerChoiceConfig(val_examples=12, batch_size=4, trainer=trainer))
    rows = method_rows(splits, tokenizer, trainer)
    if choice is None or rows is None:
        return None
    return {"layer_choice": choice, "methods": rows}


SCENARIOS = {"finetune": finetune, "heads": heads, "shards": shards}


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    result = SCENARIOS[spec["scenario"]](spec, out)
    if is_rank_zero() and result is not None:
        # the process group's size (Lightning removes WORLD_SIZE from the environment when a trainer tears down)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        atomic_write_json(out / "result.json", {**result, "world_size": world})


if __name__ == "__main__":
    main(sys.argv[1])
