"""fit_finetune on a tiny model and data set: it learns, and it resumes only its own checkpoints."""

import json
from pathlib import Path

import pytest
import torch

from pipeline.config import FinetuneConfig, PromptConfig
from pipeline.training.finetune import fit_finetune
from tests.conftest import TINY_PRESETS, tiny_backbone
from tests.training.ddp_script import StepRecorder, example_fingerprints


@pytest.fixture
def setup(tiny_data):
    return tiny_data


def _fit(
    setup,
    tmp: Path,
    steps: int,
    fingerprint: str,
    preset: str = "tiny-llava",
    callbacks=None,
    before_fresh_start=None,
    **overrides,
):
    splits, tokenizer = setup
    backbone = tiny_backbone(tokenizer, preset, num_layers=2)
    builder = backbone.prompt_builder(PromptConfig())
    cfg = FinetuneConfig(
        max_steps=steps,
        batch_size=8,
        val_every_steps=2,
        val_batches=1,
        optimizer={"warmup_steps": 1, "lr": 3e-3},
        task_weights={"caption": 1.0, "description": 0.0, "vqa": 0.0},
        **overrides,
    )
    result = fit_finetune(
        backbone.model,
        builder,
        backbone.image_processor,
        splits,
        cfg,
        seed=0,
        checkpoint_dir=tmp / "ckpt",
        fingerprint=fingerprint,
        callbacks=callbacks,
        before_fresh_start=before_fresh_start,
    )
    return result, backbone


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_training_lowers_the_loss(setup, tmp_path, preset):
    result, _ = _fit(setup, tmp_path, steps=12, fingerprint="a", preset=preset)
    losses = [r["train_loss"] for r in result.loss_curve if "train_loss" in r]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert result.metrics["steps"] == 12 and result.metrics["resumed"] == 0


def test_resumes_its_own_checkpoint_and_ignores_a_foreign_one(setup, tmp_path, recwarn):
    # what runs before a fresh start (the vision pre-training) runs once: its result is in the checkpoint
    prepared: list[str] = []

    def before(name: str):
        return lambda: prepared.append(name) or {"prepared": 1.0}

    first, _ = _fit(setup, tmp_path, steps=50, fingerprint="a", before_fresh_start=before("a"))  # checkpoints at 50
    resumed, _ = _fit(
        setup, tmp_path, steps=52, fingerprint="a", callbacks=[StepRecorder(tmp_path)], before_fresh_start=before("a2")
    )
    assert first.metrics["prepared"] == 1 and "prepared" not in resumed.metrics and prepared == ["a"]
    assert resumed.metrics["resumed"] == 1 and resumed.metrics["steps"] == 52
    assert len([r for r in resumed.loss_curve if "train_loss" in r]) == 2  # only the two new steps ran
    # and they trained on the batches an uninterrupted run trains on at steps 51 and 52 (24 images / batch 8: three
    # batches an epoch, so step 50 ends mid-epoch): the data order is part of the checkpoint
    rows = [json.loads(line) for line in (tmp_path / "steps-rank0.jsonl").read_text().splitlines()]
    assert {row["step"]: row["examples"] for row in rows} == _stream_examples(setup, [51, 52])
    assert not [w for w in recwarn if "not resumable" in str(w.message)]
    fresh, _ = _fit(setup, tmp_path, steps=3, fingerprint="b", before_fresh_start=before("b"))
    assert fresh.metrics["resumed"] == 0 and fresh.metrics["steps"] == 3 and prepared == ["a", "b"]


def _stream_examples(setup, steps: list[int]) -> dict[int, list[str]]:
    """The examples (fingerprints) of the given steps of an uninterrupted one-process run, from its data stream."""
    from pipeline.training.datamodule import VLMDataModule

    splits, tokenizer = setup
    backbone = tiny_backbone(tokenizer, num_layers=2)
    cfg = FinetuneConfig(batch_size=8, task_weights={"caption": 1.0, "description": 0.0, "vqa": 0.0})
    data = VLMDataModule(splits, backbone.prompt_builder(PromptConfig()), backbone.image_processor, cfg, seed=0)
    data.setup()
    loader = data.train_dataloader()
    stream = loader.task_sampler
    found = {}
    for step in steps:
        epoch, index = divmod(step - 1, len(stream))
        indices = list(stream.global_batches(epoch))[index]
        found[step] = example_fingerprints(loader.collate_fn([loader.dataset[i] for i in indices]))
    return found


def _vision_state(backbone) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in backbone.adapter.vision_encoder.state_dict().items()}


@pytest.mark.parametrize("train_vision_tower", [False, True])
def test_vision_tower_is_frozen_unless_asked_to_train(setup, tmp_path, train_vision_tower):
    _splits, tokenizer = setup
    before = _vision_state(tiny_backbone(tokenizer, num_layers=2))
    _, backbone = _fit(setup, tmp_path, steps=3, fingerprint="v", train_vision_tower=train_vision_tower)
    after = _vision_state(backbone)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if train_vision_tower:
        assert changed, "the vision tower did not train"
    else:
        assert not changed, f"frozen vision tower changed: {changed[:3]}"
        # the projector into the language model still trains
        assert any(p.requires_grad for p in backbone.model.model.multi_modal_projector.parameters())


def test_zero_steps_keep_the_weights_as_they_are(setup, tmp_path):
    _splits, tokenizer = setup
    before = {k: v.clone() for k, v in tiny_backbone(tokenizer, num_layers=2).model.state_dict().items()}
    result, backbone = _fit(setup, tmp_path, steps=0, fingerprint="z")
    assert result.metrics["steps"] == 0 and result.loss_curve == []
    assert all(torch.equal(before[k], v) for k, v in backbone.model.state_dict().items())
