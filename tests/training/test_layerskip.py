"""LayerSkip training: the loss weights and dropout rates as defined, dropout only in training, and training
changes the backbone (not its vision tower) and lowers the early exit's loss more than plain training does."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import LayerSkipConfig, PromptConfig
from pipeline.training import imitation_losses as losses
from pipeline.training.datamodule import VLMDataModule
from pipeline.training.layerskip import (
    LayerSkipModule,
    early_exit_weights,
    exit_states,
    fit_layerskip,
    layer_dropout_rates,
    sample_kept_layers,
)
from tests.conftest import TINY, TINY_PRESETS, tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dropout_rates_grow_linearly_with_depth_and_exit_weights_sum_to_the_scale():
    assert layer_dropout_rates(5, 0.2) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert layer_dropout_rates(1, 0.2) == [0.0]
    weights = early_exit_weights(5, 2.0)  # exits after layers 1..4, ∝ depth
    assert weights == pytest.approx([2.0 * depth / 10 for depth in (1, 2, 3, 4)]) and sum(weights) == pytest.approx(2.0)
    assert early_exit_weights(4, 0.0) == [0.0, 0.0, 0.0]
    draws = torch.tensor([sample_kept_layers([0.0, 0.5, 0.9], torch.Generator().manual_seed(s)) for s in range(2000)])
    dropped = 1 - draws.float().mean(0)
    assert dropped[0] == 0 and abs(dropped[1] - 0.5) < 0.05 and abs(dropped[2] - 0.9) < 0.03


def _setup(tiny_data, steps: int, preset: str = "tiny-llava", **overrides):
    splits, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer, preset)
    builder = backbone.prompt_builder(PromptConfig())
    settings = {
        "max_steps": steps,
        "batch_size": 8,
        "val_every_steps": steps,
        "val_batches": 1,
        "val_decode_prompts": 2,
        "optimizer": {"warmup_steps": 1, "lr": 3e-3},
    }
    return backbone, builder, LayerSkipConfig(**{**settings, **overrides}), splits


def _val_batch(backbone, builder, splits, cfg):
    data = VLMDataModule(splits, builder, backbone.image_processor, cfg, seed=0)
    data.setup()
    return next(iter(data.val_dataloader()))


def test_layer_dropout_is_on_in_training_and_off_in_eval(tiny_data):
    backbone, builder, cfg, splits = _setup(tiny_data, steps=1, p_max=0.9)
    batch = _val_batch(backbone, builder, splits, cfg)
    module = LayerSkipModule(backbone.model, cfg, draft_layers=1)
    module.eval()
    assert module.kept_layers() == [True] * TINY.num_layers
    with torch.no_grad():
        states = exit_states(module.adapter, batch, module.kept_layers())
        reference = backbone.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert torch.allclose(module.adapter.logits(states[-1]), reference, atol=1e-5)  # eval: the full model
    module.train()
    draws = [module.kept_layers(step) for step in range(40)]
    assert all(d[0] for d in draws)  # the first layer is never dropped
    assert sum(not k for d in draws for k in d) > 0
    assert len({tuple(d) for d in draws}) > 1  # a fresh draw each step
    assert module.kept_layers(7) == module.kept_layers(7)  # reproducible: every rank drops the same layers
    kept = [True, False, False, True]  # a dropped layer leaves the residual stream unchanged
    with torch.no_grad():
        states = exit_states(module.adapter, batch, kept)
    assert (
        torch.equal(states[1], states[0])
        and torch.equal(states[2], states[0])
        and not torch.equal(states[3], states[0])
    )


def _exit_ce(backbone, batch, layer):
    with torch.no_grad():
        states = exit_states(backbone.adapter, batch)
        return float(losses.cross_entropy(backbone.adapter.logits(states[layer - 1]), batch["labels"]))


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_training_changes_the_backbone_and_lowers_the_early_exit_loss(tiny_data, preset):
    steps = 15
    trained, builder, cfg, splits = _setup(
        tiny_data, steps, preset, optimizer={"warmup_steps": 1, "lr": 1e-2}, p_max=0.2, early_exit_scale=4.0
    )
    trained.model.eval()  # as `load_backbone` returns it
    batch = _val_batch(trained, builder, splits, cfg)
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    ce_before = _exit_ce(trained, batch, 1)
    result = fit_layerskip(trained.model, builder, trained.image_processor, splits, cfg, draft_layers=1, seed=0)
    after = trained.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and not any(k.startswith(("model.vision_tower", "vision_model")) for k in changed)
    m = result.metrics
    assert m["steps"] == steps and m["seconds_per_step"] > 0
    assert m["layers_dropped"] > 0  # dropout really ran in training (a loaded model starts in eval mode)
    for key in (
        "val_ce_final",
        "val_ce_exit",
        "val_agreement",
        "val_agreement_layer_1",
        "val_agreement_layer_3",
        "val_acceptance_rate",
        "val_mean_accepted_length",
    ):
        assert key in m, key
    assert m["val_agreement"] == m["val_agreement_layer_1"]
    ce_trained = _exit_ce(trained, batch, 1)
    assert ce_trained < ce_before - 0.5  # measured: 4.40 → 3.60 (LLaVA), → 3.80 (OPT), → 4.00 (T5)
    if preset != "tiny-llava":
        return
    # the same training without early-exit losses or dropout (plain continued fine-tuning) as the control
    plain, builder, plain_cfg, splits = _setup(
        tiny_data, steps, preset, optimizer={"warmup_steps": 1, "lr": 1e-2}, p_max=0.0, early_exit_scale=0.0
    )
    fit_layerskip(plain.model, builder, plain.image_processor, splits, plain_cfg, draft_layers=1, seed=0)
    assert ce_trained < _exit_ce(plain, batch, 1) - 0.1  # measured: 3.60 vs 3.78
