"""Contrastive pre-training of a from-scratch vision tower (the fine-tune's first phase for the tiny presets)."""

from pathlib import Path

import pytest
import torch

from pipeline.config import FinetuneConfig, PromptConfig
from pipeline.training.finetune import fit_finetune
from pipeline.training.vision_pretraining import ImageTextDataset, image_texts, pretrain_vision_tower
from tests.conftest import tiny_backbone

PRETRAINING = {"max_steps": 100, "batch_size": 8, "val_batches": 1, "optimizer": {"lr": 1e-3, "warmup_steps": 5}}


def _states(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("preset", ["tiny-llava", "tiny-blip2-opt"])  # both BLIP-2 presets share one tower class
def test_the_tower_learns_to_tell_its_images_apart_by_their_texts_and_nothing_else_changes(tiny_data, preset):
    splits, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer, preset, num_layers=2)
    vision = backbone.adapter.vision_encoder
    before = _states(backbone.model)
    # validated on the training images with their descriptions: the matching it was taught (8 images: chance 1/8)
    seen = {"train": splits["train"], "val": splits["train"]}
    cfg = FinetuneConfig(vision_pretraining=PRETRAINING)
    metrics = pretrain_vision_tower(vision, tokenizer, backbone.image_processor, seen, cfg, seed=0)
    assert metrics["vision_pretraining_chance"] == 1 / 8
    # at random initialisation: loss ln 8 = 2.08, top-1 at chance
    assert metrics["vision_pretraining_val_retrieval_top1"] >= 0.5, metrics
    assert metrics["vision_pretraining_val_loss"] < 1.6, metrics
    after = backbone.model.state_dict()
    prefix = next(name for name, module in backbone.model.named_modules() if module is vision) + "."
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(prefix) for k in changed), sorted(changed)[:5]
    assert not any(p.requires_grad for p in vision.parameters())  # handed back frozen, as the fine-tune keeps it


def test_an_image_is_paired_with_its_description_at_the_asked_share_and_otherwise_one_of_its_captions(tiny_data):
    splits, tokenizer = tiny_data
    train = splits["train"]
    texts = image_texts(train)
    has = [r.image_id in train.descriptions for r in train.images]
    assert all(has)
    for share, low, high in [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.4, 0.6)]:
        dataset = ImageTextDataset(None, texts, tokenizer, share, seed=0, has_description=has)  # type: ignore[arg-type]
        drawn = [dataset.text(i, draw) for i in range(len(texts)) for draw in range(20)]
        descriptions = [d == train.descriptions[train.images[i // 20].image_id] for i, d in enumerate(drawn)]
        assert low <= sum(descriptions) / len(drawn) <= high
        captions = [d for i, d in enumerate(drawn) if not descriptions[i]]
        assert all(d in train.images[i // 20].captions for i, d in enumerate(drawn) if not descriptions[i])
        assert share == 1.0 or len(set(captions)) > len(texts)  # several captions of an image get drawn
    again = ImageTextDataset(None, texts, tokenizer, 0.5, seed=0, has_description=has)  # type: ignore[arg-type]
    assert [again.text(3, d) for d in range(5)] == [dataset.text(3, d) for d in range(5)]


def pretrain(backbone, splits, cfg: FinetuneConfig) -> dict[str, float]:
    vision, processor = backbone.adapter.vision_encoder, backbone.image_processor
    return pretrain_vision_tower(
        vision, backbone.prompt_builder(PromptConfig()).tokenizer, processor, splits, cfg, seed=0
    )


def _finetune(tiny_data, tmp: Path, steps: int, pretrain_vision: bool):
    splits, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer, num_layers=2)
    cfg = FinetuneConfig(
        max_steps=steps,
        batch_size=8,
        val_every_steps=2,
        val_batches=1,
        optimizer={"warmup_steps": 1, "lr": 3e-3},
        task_weights={"caption": 1.0, "description": 0.0, "vqa": 0.0},
        vision_pretraining={**PRETRAINING, "max_steps": 5},
    )
    result = fit_finetune(
        backbone.model,
        backbone.prompt_builder(PromptConfig()),
        backbone.image_processor,
        splits,
        cfg,
        seed=0,
        checkpoint_dir=tmp / "ckpt",
        fingerprint="f",
        before_fresh_start=(lambda: pretrain(backbone, splits, cfg)) if pretrain_vision else None,
    )
    return result, backbone


def test_the_finetune_reads_the_pretrained_tower_frozen_and_a_resumed_run_does_not_pretrain_again(tiny_data, tmp_path):
    _splits, tokenizer = tiny_data
    initial = _states(tiny_backbone(tokenizer, num_layers=2).adapter.vision_encoder)
    plain, backbone = _finetune(tiny_data, tmp_path / "plain", steps=2, pretrain_vision=False)
    assert "vision_pretraining_steps" not in plain.metrics
    assert all(torch.equal(initial[k], v) for k, v in backbone.adapter.vision_encoder.state_dict().items())

    first, backbone = _finetune(tiny_data, tmp_path / "pre", steps=50, pretrain_vision=True)
    assert first.metrics["vision_pretraining_steps"] == 5
    tower = _states(backbone.adapter.vision_encoder)
    assert any(not torch.equal(initial[k], v) for k, v in tower.items())
    # resumed from the step-50 checkpoint: the tower comes from it, not from a second pre-training
    resumed, backbone = _finetune(tiny_data, tmp_path / "pre", steps=51, pretrain_vision=True)
    assert resumed.metrics["resumed"] == 1 and "vision_pretraining_steps" not in resumed.metrics
    assert all(torch.equal(tower[k], v) for k, v in backbone.adapter.vision_encoder.state_dict().items())


@pytest.mark.parametrize(
    ("preset", "steps", "pretrains"),
    [("tiny-llava", 3, True), ("tiny-blip2-t5", 3, True), ("tiny-llava", 0, False), ("llava", 3, False)],
)
def test_the_stage_pretrains_only_a_tower_built_from_scratch(tiny_data, preset, steps, pretrains):
    from pipeline.config import parse_params
    from stages.finetune import vision_pretraining

    splits, tokenizer = tiny_data
    raw = {"model": {"preset": preset}, "finetune": {"vision_pretraining": {"max_steps": steps, "batch_size": 8}}}
    if preset == "llava":  # a checkpoint brings its own pretrained CLIP; a tiny stand-in of the same class here
        raw["model"]["pretrained_path"] = "/checkpoint"
    backbone = tiny_backbone(tokenizer, "tiny-llava" if preset == "llava" else preset, num_layers=2)
    before = _states(backbone.adapter.vision_encoder)
    run = vision_pretraining(backbone, splits, parse_params(raw))
    assert (run is not None) == pretrains
    if run is not None:
        assert run()["vision_pretraining_steps"] == steps
        after = backbone.adapter.vision_encoder.state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
