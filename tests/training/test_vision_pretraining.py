"""Contrastive pre-training of a from-scratch vision tower (the fine-tune's first phase for the tiny presets)."""

import dataclasses

import pytest
import torch

from pipeline.config import FinetuneConfig, PromptConfig, TrainingConfig
from pipeline.errors import ConfigError
from pipeline.training.finetune import fit_finetune
from pipeline.training.vision_pretraining import (
    ContrastiveVisionModule,
    ImageTextDataset,
    collate_image_text,
    image_texts,
    length_groups,
    pretrain_vision_tower,
    scene_word_classes,
    text_encoder_config,
)
from tests.conftest import tiny_backbone

PRETRAINING = {"max_steps": 100, "batch_size": 8, "val_batches": 1, "optimizer": {"lr": 1e-3, "warmup_steps": 5}}


def _states(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_the_tower_learns_to_tell_its_images_apart_by_their_texts_and_nothing_else_changes(tiny_data):
    # (a BLIP-2 tower trains through the same code: tests/stages/test_finetune_stage.py)
    splits, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer, "tiny-llava", num_layers=2)
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
    assert all(description is not None for _, description in texts)
    for share, low, high in [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.4, 0.6)]:
        dataset = ImageTextDataset(None, texts, tokenizer, share, seed=0)  # type: ignore[arg-type]
        drawn = [dataset.text(i, draw) for i in range(len(texts)) for draw in range(20)]
        descriptions = [d == train.descriptions[train.images[i // 20].image_id] for i, d in enumerate(drawn)]
        assert low <= sum(descriptions) / len(drawn) <= high
        captions = [d for i, d in enumerate(drawn) if not descriptions[i]]
        assert all(d in train.images[i // 20].captions for i, d in enumerate(drawn) if not descriptions[i])
        assert share == 1.0 or len(set(captions)) > len(texts)  # several captions of an image get drawn
    again = ImageTextDataset(None, texts, tokenizer, 0.5, seed=0)  # type: ignore[arg-type]
    assert [again.text(3, d) for d in range(5)] == [dataset.text(3, d) for d in range(5)]


def pretrain(backbone, splits, cfg: FinetuneConfig) -> dict[str, float]:
    vision, processor = backbone.adapter.vision_encoder, backbone.image_processor
    return pretrain_vision_tower(
        vision, backbone.prompt_builder(PromptConfig()).tokenizer, processor, splits, cfg, seed=0
    )


def test_the_finetune_reads_the_pretrained_tower_frozen(tiny_data, tmp_path):
    splits, tokenizer = tiny_data
    initial = _states(tiny_backbone(tokenizer, num_layers=2).adapter.vision_encoder)
    backbone = tiny_backbone(tokenizer, num_layers=2)
    cfg = FinetuneConfig(
        max_steps=2,
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
        checkpoint_dir=tmp_path / "ckpt",
        fingerprint="f",
        before_fresh_start=lambda: pretrain(backbone, splits, cfg),
    )
    assert result.metrics["vision_pretraining_steps"] == 5 and result.metrics["steps"] == 2
    assert any(not torch.equal(initial[k], v) for k, v in backbone.adapter.vision_encoder.state_dict().items())
    assert not any(p.requires_grad for p in backbone.adapter.vision_encoder.parameters())


def test_a_hard_negative_swaps_one_shape_or_colour_word_for_one_the_image_lacks(tiny_data):
    splits, tokenizer = tiny_data
    texts = image_texts(splits["train"])
    classes = scene_word_classes()
    dataset = ImageTextDataset(None, texts, tokenizer, 0.5, seed=0, word_classes=classes)  # type: ignore[arg-type]
    swapped = 0
    for index, (captions, description) in enumerate(texts):
        used = {w for text in (*captions, description or "") for w in text.split(" ")}
        for draw in range(10):
            text, negative = dataset.text(index, draw), dataset.negative(index, draw)
            if negative is None:  # only when no word of the text has an alternative the image lacks
                assert not any(w in c and set(c) - used for w in text.split(" ") for c in classes), text
                continue
            pairs = [(a, b) for a, b in zip(text.split(" "), negative.split(" "), strict=True) if a != b]
            assert len(pairs) == 1, (text, negative)
            ((old, new),) = pairs
            assert any(old in c and new in c for c in classes) and new not in used, (old, new, used)
            swapped += 1
    assert swapped > 0.8 * 10 * len(texts)  # nearly every text names a shape or colour
    assert [dataset.negative(2, d) for d in range(5)] == [dataset.negative(2, d) for d in range(5)]
    assert ImageTextDataset(None, texts, tokenizer, 0.5, seed=0).negative(2, 0) is None  # type: ignore[arg-type]


def test_the_loss_counts_an_images_own_negative_among_its_texts_and_only_where_it_has_one():
    logits = torch.tensor([[3.0, 1.0], [0.5, 2.0]])  # texts × images
    without = ContrastiveVisionModule.loss(logits, None)
    assert torch.allclose(ContrastiveVisionModule.loss(logits, torch.full((2,), float("-inf"))), without)
    weak, strong = torch.tensor([-5.0, -5.0]), torch.tensor([2.9, float("-inf")])
    # a negative far below the true text costs ~nothing; one scored near it makes image 0's choice harder
    assert torch.allclose(ContrastiveVisionModule.loss(logits, weak), without, atol=1e-2)
    assert ContrastiveVisionModule.loss(logits, strong) > without + 0.1
    batch = collate_image_text(
        [
            {"pixel_values": torch.zeros(1), "input_ids": [5, 6, 2], "negative_ids": [5, 7, 2]},
            {"pixel_values": torch.zeros(1), "input_ids": [8, 2]},
        ],
        pad_id=0,
    )
    assert batch["has_negative"].tolist() == [True, False]
    assert batch["negative_input_ids"].tolist() == [[5, 7, 2], [8, 2, 0]]  # no negative: its own text, masked out


def test_region_supervision_teaches_each_patch_token_the_shape_centred_in_it(tiny_data):
    splits, tokenizer = tiny_data
    seen = {"train": splits["train"], "val": splits["train"]}  # scored on images it was taught (24 do not generalise)
    towers = {}
    for weight in (1.0, 0.0):
        backbone = tiny_backbone(tokenizer, "tiny-llava", num_layers=2)
        cfg = FinetuneConfig(vision_pretraining={**PRETRAINING, "max_steps": 300, "region_weight": weight})
        metrics = pretrain(backbone, seen, cfg)
        towers[weight] = backbone.adapter.vision_encoder.state_dict()
        if weight:
            # over the patches a shape is centred in, among 6 shapes: the commonest shape is right ≤ 0.35 of the time
            assert metrics["vision_pretraining_val_region_accuracy"] >= 0.85, metrics
        else:
            assert "vision_pretraining_val_region_accuracy" not in metrics
    # the region loss trains the tower itself, not only its throw-away head (same seed, same batches otherwise)
    assert any(not torch.allclose(towers[1.0][k], towers[0.0][k]) for k in towers[0.0])


def test_region_supervision_without_boxes_says_which_split_lacks_them_and_how_to_turn_it_off(tiny_data):
    splits, tokenizer = tiny_data
    bare = {name: dataclasses.replace(split, instances=None) for name, split in splits.items()}
    cfg = FinetuneConfig(vision_pretraining={**PRETRAINING, "region_weight": 0.5})
    with pytest.raises(ConfigError, match=r"needs object boxes for the train split.*region_weight: 0"):
        pretrain(tiny_backbone(tokenizer, "tiny-llava", num_layers=2), bare, cfg)


def test_texts_are_encoded_in_two_length_groups_split_where_padding_costs_least():
    # captions of ~12 tokens beside descriptions of ~80: two groups, split at the gap, in any batch order
    lengths = torch.tensor([80, 12, 11, 75, 13, 12, 70, 9])
    groups = length_groups(lengths)
    assert [sorted(lengths[g].tolist()) for g in groups] == [[9, 11, 12, 12, 13], [70, 75, 80]]
    assert sorted(torch.cat(groups).tolist()) == list(range(8))
    # equal lengths, or a split that would save less than a quarter of the positions (3 of 44 here), stay one group
    assert [len(g) for g in length_groups(torch.tensor([5, 5, 5]))] == [3]
    assert [len(g) for g in length_groups(torch.tensor([10, 10, 10, 11]))] == [4]


def test_grouped_text_embeddings_equal_one_padded_pass(tiny_data):
    # the pooled state (last real token of a causal encoder) never reads padding: the groups change only the work
    _, tokenizer = tiny_data
    backbone = tiny_backbone(tokenizer, "tiny-llava", num_layers=2)
    torch.manual_seed(0)
    module = ContrastiveVisionModule(
        backbone.adapter.vision_encoder,
        text_encoder_config(tokenizer, hidden_size=32, layers=2, max_length=64),
        TrainingConfig(),
        embed_dim=16,
    ).double()
    texts = [[5, 6, 7, 2], [*range(4, 40), 2], [8, 2], [*range(5, 33), 2], [9, 9, 9, 2]]
    batch = collate_image_text([{"pixel_values": torch.zeros(1), "input_ids": ids} for ids in texts], pad_id=0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    grouped = module._texts(ids, mask)
    assert len(length_groups(mask.sum(1))) == 2
    states = module.text(input_ids=ids, attention_mask=mask).last_hidden_state
    single = module.text_projection(states[torch.arange(len(texts)), mask.sum(1) - 1])
    assert torch.allclose(grouped, single / single.norm(dim=-1, keepdim=True), atol=1e-12)
