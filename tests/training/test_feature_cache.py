"""The feature cache: its losses equal the end-to-end ones on the same examples (the cache changes the cost of
training, not what is trained), half-precision storage, the errors a broken cache gives, and a head trained from it
learns to agree with the full model while the backbone stays bit-identical."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.config import ImitationConfig, PromptConfig
from pipeline.data.datasets import ExampleDataset, collate_for_training
from pipeline.data.pixels import PixelStore
from pipeline.errors import PipelineError
from pipeline.models.deep_layer_fusion import build_fusion
from pipeline.models.imitation import ImitationNetwork
from pipeline.training.feature_cache import (
    CachedFeatures,
    FeatureLayout,
    cache_splits,
    cached_examples,
    collate_cached,
    split_pixels,
    write_feature_cache,
)
from pipeline.training.imitation import ImitationModule, draft_pass, fit_imitation
from pipeline.training.imitation_cached import cached_losses
from tests.conftest import TINY, TINY_PRESETS, tiny_backbone

WEIGHTS = {"ce": 1.0, "cs": 1.0, "kd": 1.0}


def _batch(backbone, builder, split, count: int = 6):
    examples = cached_examples(split, {"caption": 0.5, "description": 0.25, "vqa": 0.25}, count, seed=0)
    pixels = PixelStore([r.image_path for r in split.images], backbone.image_processor)
    items = [ExampleDataset(examples, pixels, builder)[i] for i in range(len(examples))]
    return examples, collate_for_training(items, builder.tokenizer.pad_token_id, builder.decoder_start_id)


@pytest.mark.parametrize("preset", TINY_PRESETS)
def test_losses_from_the_cache_equal_the_end_to_end_losses(tiny_data, tmp_path, preset, one_thread):
    splits, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer, preset)
    backbone.model.eval()
    builder = backbone.prompt_builder(PromptConfig())
    _, batch = _batch(backbone, builder, splits["train"])
    n, temperature = 2, 2.0
    layout = FeatureLayout(draft_layers=(1, n), deep_layers=2, top_k=0, temperature=temperature, dtype="float32")
    write_feature_cache(backbone.adapter, [batch], layout, tmp_path / "cache")
    cache = CachedFeatures(tmp_path / "cache", n)
    assert len(cache) == batch["labels"].shape[0]
    torch.manual_seed(0)
    head = ImitationNetwork(TINY.hidden_size)
    torch.nn.init.normal_(head.mlp[-1].weight, std=0.02)  # not the zero init: the draft must differ from early exit
    fusion = build_fusion("concat", TINY.hidden_size, 2)
    cfg = ImitationConfig(temperature=temperature, fusion_layers=2)
    module = ImitationModule(backbone.model, head, fusion, cfg, draft_layers=n, loss_weights=WEIGHTS)
    with torch.no_grad():
        expected = module._losses(batch, draft_pass(backbone.adapter, head, fusion, batch, n, 2, False))
        # the examples in another order and split over two batches: the same per-example tensors
        items = [cache[i] for i in range(len(cache))]
        got, _ = cached_losses(backbone.adapter, head, fusion, collate_cached(items), WEIGHTS, temperature, 2)
    for term in ("ce", "cs", "kd"):
        assert got[term].item() == pytest.approx(expected[term].item(), rel=1e-5, abs=1e-7), term


def test_half_precision_storage_and_top_k(tiny_data, tmp_path, one_thread):
    splits, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer)
    backbone.model.eval()
    builder = backbone.prompt_builder(PromptConfig())
    _, batch = _batch(backbone, builder, splits["train"], count=4)
    full = FeatureLayout(draft_layers=(2,), deep_layers=2, top_k=0, temperature=1.0, dtype="float32")
    half = FeatureLayout(draft_layers=(2,), deep_layers=2, top_k=5, temperature=1.0, dtype="bfloat16")
    index = write_feature_cache(backbone.adapter, [batch], full, tmp_path / "f32")
    write_feature_cache(backbone.adapter, [batch], half, tmp_path / "bf16")
    exact, rounded = CachedFeatures(tmp_path / "f32", 2)[0], CachedFeatures(tmp_path / "bf16", 2)[0]
    assert torch.equal(rounded["hidden"], exact["hidden"].to(torch.bfloat16).float())  # bf16 bits, read back
    assert not torch.equal(rounded["hidden"], exact["hidden"])
    assert rounded["teacher_ids"].shape[1] == 5 and exact["teacher_ids"].shape[1] == index["vocab_size"]
    # the kept entries are the exact log-probabilities of the 5 best tokens
    assert torch.equal(rounded["teacher_ids"], exact["teacher_ids"][:, :5])
    assert torch.allclose(rounded["teacher_logp"], exact["teacher_logp"][:, :5])
    assert (np.load(tmp_path / "bf16" / "layer_2.npy", mmap_mode="r").nbytes * 2) == np.load(
        tmp_path / "f32" / "layer_2.npy", mmap_mode="r"
    ).nbytes


def test_a_broken_cache_is_refused_with_the_fix(tiny_data, tmp_path, one_thread):
    splits, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer)
    backbone.model.eval()
    builder = backbone.prompt_builder(PromptConfig())
    _, batch = _batch(backbone, builder, splits["train"], count=3)
    layout = FeatureLayout(draft_layers=(1,), deep_layers=2, top_k=4, temperature=1.0, dtype="float16")
    folder = tmp_path / "cache"
    write_feature_cache(backbone.adapter, [batch], layout, folder)
    with pytest.raises(PipelineError, match=r"holds layers \[1\], not n = 2: .*run it again \(dvc repro features\)"):
        CachedFeatures(folder, 2)
    with pytest.raises(PipelineError, match=r"outside 1..3"):
        write_feature_cache(backbone.adapter, [batch], FeatureLayout((4,), 2, 4, 1.0, "float16"), tmp_path / "x")
    assert not list(tmp_path.glob("*x*"))  # nothing half-written left behind
    np.save(folder / "deep.npy", np.zeros((1, 2, TINY.hidden_size), dtype=np.float16))  # truncated
    with pytest.raises(PipelineError, match=r"does not match its index.json: run the `features` stage again"):
        CachedFeatures(folder, 1)
    (folder / "labels.npy").write_bytes(b"not numpy")
    with pytest.raises(PipelineError, match=r"labels.npy is missing or corrupt"):
        CachedFeatures(folder, 1)
    (folder / "index.json").write_text("{")
    with pytest.raises(PipelineError, match=r"index.json is corrupt"):
        CachedFeatures(folder, 1)
    with pytest.raises(PipelineError, match=r"has no index.json: run the `features` stage \(dvc repro features\)"):
        CachedFeatures(tmp_path / "missing", 1)


def test_a_head_trained_from_the_cache_learns_and_leaves_the_backbone_alone(tiny_data, tmp_path, one_thread):
    splits, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer)
    backbone.model.eval()
    builder = backbone.prompt_builder(PromptConfig())
    weights = {"caption": 0.6, "description": 0.3, "vqa": 0.1}
    chosen = {
        name: (split_pixels(splits[name], backbone.image_processor), cached_examples(splits[name], weights, n, seed=0))
        for name, n in (("train", None), ("val", 16))
    }
    layout = FeatureLayout(draft_layers=(2,), deep_layers=2, top_k=0, temperature=1.0, dtype="float32")
    summary = cache_splits(backbone.adapter, builder, chosen, layout, tmp_path / "f", 16)
    assert summary["train"]["examples"] == len(chosen["train"][1]) and json.loads(
        (tmp_path / "f" / "val" / "index.json").read_text()
    )["examples"] == len(chosen["val"][1])
    # the cache knows each example's task: training batches hold one task each, as end to end
    assert CachedFeatures(tmp_path / "f" / "train", 2).tasks == [e.task for e in chosen["train"][1]]
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    cfg = ImitationConfig(
        max_steps=40,
        batch_size=8,
        val_every_steps=20,
        val_batches=2,
        val_decode_prompts=2,
        fusion_layers=2,
        optimizer={"warmup_steps": 2, "lr": 3e-3},
    )
    torch.manual_seed(0)
    head = ImitationNetwork(TINY.hidden_size)
    result = fit_imitation(
        backbone.model,
        head,
        build_fusion("average", TINY.hidden_size, 2),
        builder,
        backbone.image_processor,
        splits,
        cfg,
        draft_layers=2,
        loss_weights={"ce": 0.0, "cs": 0.5, "kd": 1.0},
        features=tmp_path / "f",
    )
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "frozen backbone changed"
    m = result.metrics
    assert m["from_feature_cache"] == 1.0 and m["steps"] == 40
    assert [row["step"] for row in result.curve] == [20, 40] and "acceptance_rate" in result.curve[-1]
    assert result.curve[-1]["kd"] < result.curve[0]["kd"]
    # distillation from the cached distributions makes the draft agree with the full model beyond early exit
    assert m["val_agreement"] > m["val_agreement_early_exit"] + 0.1
