"""Imitation training: losses against known values, the frozen schedule leaves the backbone bit-identical,
the mixed schedule trains it and then stops, and training makes the draft agree with the full model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ImitationArchitecture, ImitationConfig, LossWeights, PromptConfig
from pipeline.models.deep_layer_fusion import build_fusion
from pipeline.models.imitation import ImitationNetwork
from pipeline.training import imitation_losses as losses
from pipeline.training.imitation import fit_imitation
from tests.conftest import TINY, TINY_PRESETS, tiny_backbone


def test_losses_against_known_values():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 2, -100, -100]])
    mask = labels[:, 1:] != -100
    expected = F.cross_entropy(logits[:, :-1][mask], labels[:, 1:][mask])
    assert losses.cross_entropy(logits, labels) == pytest.approx(expected.item())
    h = torch.randn(2, 5, 4)
    assert losses.cosine(h, 3 * h, labels) == pytest.approx(0.0, abs=1e-6)  # scale does not matter
    assert losses.cosine(h, -h, labels) == pytest.approx(2.0, abs=1e-6)
    assert losses.distillation(logits, logits, labels, temperature=2.0) == pytest.approx(0.0, abs=1e-6)
    assert losses.distillation(logits, torch.randn(2, 5, 7), labels) > 0
    assert losses.agreement(logits, logits, labels) == 1.0
    assert losses.VARIANTS["ce+cs"] == {"ce": 1.0, "cs": 1.0, "kd": 0.0}
    assert losses.variant_weights("ce+cs", LossWeights(ce=2.0, cs=0.5, kd=3.0)) == {"ce": 2.0, "cs": 0.5, "kd": 0.0}


def _setup(tiny_data, steps: int, preset: str = "tiny-llava", **overrides):
    splits, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer, preset)
    backbone.model.eval()  # as load_backbone returns it (BLIP-2's Q-Former has dropout)
    builder = backbone.prompt_builder(PromptConfig())
    settings = {
        "max_steps": steps,
        "batch_size": 8,
        "val_every_steps": steps,
        "val_batches": 1,
        "val_decode_prompts": 2,
        "optimizer": {"warmup_steps": 1, "lr": 1e-3},
    }
    cfg = ImitationConfig(**{**settings, **overrides})
    torch.manual_seed(0)
    head = ImitationNetwork(TINY.hidden_size)
    fusion = build_fusion("concat", TINY.hidden_size, 2)
    return backbone, builder, cfg, head, fusion, splits


def _greedy(backbone, splits, builder):
    from pipeline.data.pixels import PixelStore

    pixels = PixelStore([splits["test"].images[0].image_path], backbone.image_processor)
    ids = torch.tensor([builder.prompt_ids("caption")])
    return backbone.model.generate(
        input_ids=ids, pixel_values=pixels[0].unsqueeze(0), max_new_tokens=8, do_sample=False
    )


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_frozen_schedule_leaves_the_backbone_bit_identical_and_the_draft_learns(tiny_data, preset):
    backbone, builder, cfg, head, fusion, splits = _setup(tiny_data, steps=30, preset=preset, val_every_steps=10)
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    greedy_before = _greedy(backbone, splits, builder)
    result = fit_imitation(
        backbone.model,
        head,
        fusion,
        builder,
        backbone.image_processor,
        splits,
        cfg,
        draft_layers=2,
        loss_weights={"ce": 0.0, "cs": 0.5, "kd": 1.0},
    )
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "frozen backbone changed"
    assert torch.equal(_greedy(backbone, splits, builder), greedy_before)
    assert any(p.abs().sum() > 0 for p in head.mlp[-1].parameters())  # the zero-initialised layer trained
    m = result.metrics
    assert m["steps"] == 30 and m["joint_steps"] == 0
    for key in ("val_ce", "val_cs", "val_kd", "val_agreement", "val_agreement_early_exit", "val_acceptance_rate"):
        assert key in m
    # The imitation of the deep layers' (fused) states improves: measured 0.022 → 0.017 (LLaVA), 0.040 → 0.030
    # (OPT), 0.083 → 0.060 (T5) cosine distance from step 10 to 30
    assert [row["step"] for row in result.curve] == [10, 20, 30]
    assert result.curve[-1]["cs"] < 0.85 * result.curve[0]["cs"]
    if preset == "tiny-llava":
        # A random-init backbone's tokens are not the data's, so ground-truth CE would pull the draft away from them:
        # distillation (+ cosine) alone must make the draft agree with the full model more than early exit. (The
        # random BLIP-2 models' distributions are near-uniform, their argmax a coin toss: agreement says nothing.)
        assert m["val_agreement"] > m["val_agreement_early_exit"] + 0.1


def test_mixed_schedule_trains_the_backbone_then_freezes_it(tiny_data):
    backbone, builder, cfg, head, fusion, splits = _setup(tiny_data, steps=8, mixed={"joint_epochs": 1.0})
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    snapshots = []

    import lightning as L

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            snapshots.append(module.model.model.language_model.layers[0].mlp.down_proj.weight.detach().clone())

    result = fit_imitation(
        backbone.model,
        head,
        fusion,
        builder,
        backbone.image_processor,
        splits,
        cfg,
        draft_layers=2,
        loss_weights={"ce": 1.0, "cs": 0.0, "kd": 0.0},
        mixed=True,
        callbacks=[Snapshot()],
    )
    joint = int(result.metrics["joint_steps"])
    assert joint == 3  # 24 images / batch 8 = 3 steps per epoch
    after = backbone.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and not any("vision_tower" in k for k in changed)
    assert not torch.equal(snapshots[0], snapshots[joint - 1])  # trained while joint
    assert all(torch.equal(snapshots[joint - 1], s) for s in snapshots[joint:])  # frozen afterwards


def test_attention_head_trains_on_after_validation_decoding(tiny_data):
    # Validation decodes with the head's KV cache; Lightning then restores `training` flags without calling
    # train(), so a cache left switched on broke the next training batch (batch 1 cache vs batch 8 inputs).
    backbone, builder, cfg, _, fusion, splits = _setup(tiny_data, steps=6, val_every_steps=2)
    head = ImitationNetwork(TINY.hidden_size, ImitationArchitecture(attention=True))
    result = fit_imitation(
        backbone.model,
        head,
        fusion,
        builder,
        backbone.image_processor,
        splits,
        cfg,
        draft_layers=2,
        loss_weights={"ce": 1.0, "cs": 0.0, "kd": 1.0},
    )
    assert result.metrics["steps"] == 6
    assert len(result.curve) == 3 and all("acceptance_rate" in row for row in result.curve)


@pytest.mark.parametrize("kind", ["concat", "attention"])
def test_trainable_fusion_fits_a_draft_deeper_than_the_fused_layers(tiny_data, kind):
    # n = 2 of L = 4 leaves two deep layers: a concat fusion sized for fusion_layers = 4 would not fit its input
    from pipeline.models.deep_layer_fusion import fused_layer_count

    backbone, builder, cfg, head, _, splits = _setup(tiny_data, steps=3, val_decode_prompts=0)
    assert cfg.fusion_layers == 4 and fused_layer_count(cfg.fusion_layers, TINY.num_layers, 2) == 2
    fusion = build_fusion(kind, TINY.hidden_size, fused_layer_count(cfg.fusion_layers, TINY.num_layers, 2))
    before = [p.clone() for p in fusion.parameters()]
    result = fit_imitation(
        backbone.model,
        head,
        fusion,
        builder,
        backbone.image_processor,
        splits,
        cfg,
        draft_layers=2,
        loss_weights={"ce": 1.0, "cs": 1.0, "kd": 1.0},
    )
    assert result.metrics["steps"] == 3 and 0 <= result.metrics["val_cs"] <= 2
    # the fusion trains with the head
    assert any(not torch.equal(a, b) for a, b in zip(before, fusion.parameters(), strict=True))
