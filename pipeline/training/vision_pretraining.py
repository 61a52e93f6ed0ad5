"""Contrastive pre-training of a vision tower built from scratch, before the language model learns to read it.

A real VLM starts from a vision tower that already sees (LLaVA-1.5: OpenAI's CLIP ViT-L/14; BLIP-2: EVA-CLIP). The
tiny presets build theirs from random weights; frozen at random init it carries the pixels, but its patch features
are dominated by one shared direction (mean² ≈ 10× the variance on the synthetic images) and the language model of
the fine-tune learns to read counts and brightness, not colours or shapes. This stage of the recipe trains the tower
the way CLIP trains its own — image–text contrastive loss (CLIP's symmetric cross-entropy over a batch) against a
small text encoder (`CLIPTextModel`) — on the training images and their captions/descriptions, then hands the tower
to the fine-tune, which keeps it frozen as LLaVA does.

The image embedding is the mean of the tower's last hidden states over every token, i.e. exactly the states the VLM
reads (LLaVA's `vision_feature_layer: -1` patch tokens, BLIP-2's Q-Former input), so every one of them gets a
gradient; CLIP's CLS pooler would leave the last layer's patch outputs untrained.

With `region_weight > 0` each patch token an object's box is centred in also learns to name that object's category,
through a linear head thrown away with the text encoder: region-level supervision from box annotations, as grounded
pre-training (RegionCLIP, GLIP) adds to CLIP's image-level loss. The contrastive loss alone barely needs shape (a
batch's images differ in colours, counts and places), and its tower leaves shape hard to read (README). Background
patches get no region loss: taught to say "background" too, the ~70 % of patches that are empty collapsed onto one
shared direction and the fine-tune that read them fell to test CIDEr 0.66, colour VQA 0.17 (README).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, cast

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import CLIPTextConfig, CLIPTextModel, PretrainedConfig, PreTrainedTokenizerBase
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from pipeline.config import FinetuneConfig, TrainingConfig, VisionPretrainingConfig
from pipeline.data.datasets import right_padded
from pipeline.data.instances import BACKGROUND_LABEL, Instances
from pipeline.data.pixels import PixelStore
from pipeline.data.prepared import SplitData
from pipeline.data.scene import COLOURS, PLURALS, SHAPES
from pipeline.errors import ConfigError
from pipeline.training.optimizer import adamw_cosine, decay_groups
from pipeline.training.trainer import fit_module

ImageTexts = tuple[tuple[str, ...], str | None]  # an image's captions, and its description if it has one


def image_texts(split: SplitData) -> list[ImageTexts]:
    return [(tuple(record.captions), split.descriptions.get(record.image_id)) for record in split.images]


def scene_word_classes() -> tuple[tuple[str, ...], ...]:
    """The synthetic scenes' interchangeable words: shapes, their plurals, colours."""
    return (SHAPES, tuple(PLURALS.values()), tuple(COLOURS))


WordSwaps = list[tuple[tuple[str, ...], tuple[str, ...]]]  # per word class: its words, those an image lacks


def swapped_text(text: str, swaps: WordSwaps, rng: np.random.Generator) -> str | None:
    """`text` with one of its words replaced by a word of the same class that the image lacks (both drawn by `rng`);
    None when no word of the text has such an alternative."""
    words = text.split(" ")
    options = [(i, absent) for i, word in enumerate(words) for members, absent in swaps if word in members and absent]
    if not options:
        return None
    position, absent = options[int(rng.integers(len(options)))]
    words[position] = absent[int(rng.integers(len(absent)))]
    return " ".join(words)


class ImageTextDataset(Dataset):
    """Item i = (image i, one of its texts): the description with probability `description_share` when the image
    has one, else one of its captions, drawn from a generator seeded by (seed, index, draw) so every process and a
    rerun draw the same text.

    With `word_classes` an item also holds a hard negative (NegCLIP): the same text with one word of a class
    swapped for a word of that class that none of the image's texts uses (a shape or colour it does not have), so
    that telling them apart needs exactly what the swap changed."""

    def __init__(
        self,
        pixels: PixelStore,
        texts: list[ImageTexts],
        tokenizer: PreTrainedTokenizerBase,
        description_share: float,
        seed: int,
        word_classes: Sequence[Sequence[str]] = (),
        patch_labels: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.pixels = pixels
        self.texts = texts
        self.tokenizer = tokenizer
        self.description_share = description_share
        self.seed = seed
        self.word_classes = [tuple(c) for c in word_classes]
        self.patch_labels = patch_labels  # per image, its patches' region labels (`Instances.patch_labels`)

    def swaps(self, index: int) -> WordSwaps:
        """Per word class, the words none of image `index`'s texts uses (what its picture does not show)."""
        captions, description = self.texts[index]
        used = {word for text in (*captions, *filter(None, [description])) for word in text.split(" ")}
        return [(words, tuple(w for w in words if w not in used)) for words in self.word_classes]

    def negative(self, index: int, draw: int) -> str | None:
        if not self.word_classes:
            return None
        rng = np.random.default_rng([self.seed, index, draw, 1])  # its own stream: the text's draw is unchanged
        return swapped_text(self.text(index, draw), self.swaps(index), rng)

    def __len__(self) -> int:
        return len(self.texts)

    def text(self, index: int, draw: int) -> str:
        rng = np.random.default_rng([self.seed, index, draw])
        captions, description = self.texts[index]
        if description is not None and rng.random() < self.description_share:
            return description
        return captions[int(rng.integers(len(captions)))]

    def _ids(self, text: str) -> list[int]:
        return [*self.tokenizer(text, add_special_tokens=False)["input_ids"], self.tokenizer.eos_token_id]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, draw = key
        item = {"pixel_values": self.pixels[index], "input_ids": self._ids(self.text(index, draw))}
        negative = self.negative(index, draw)
        if negative is not None:
            item["negative_ids"] = self._ids(negative)
        if self.patch_labels is not None:
            item["patch_labels"] = torch.tensor(self.patch_labels[index])
        return item


def collate_image_text(items: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Texts padded into `input_ids`/`attention_mask`; with any hard negative, `negative_input_ids`/
    `negative_attention_mask` (an item without one repeats its own text there) and `has_negative`."""
    input_ids, attention_mask = right_padded([item["input_ids"] for item in items], pad_id)
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
    }
    if any("negative_ids" in item for item in items):
        negatives = [item.get("negative_ids", item["input_ids"]) for item in items]
        batch["negative_input_ids"], batch["negative_attention_mask"] = right_padded(negatives, pad_id)
        batch["has_negative"] = torch.tensor(["negative_ids" in item for item in items])
    if "patch_labels" in items[0]:
        batch["patch_labels"] = torch.stack([item["patch_labels"] for item in items])
    return batch


class GlobalImageBatches(Sampler[list[tuple[int, int]]]):
    """Step s's global batch is `batch_size` distinct images drawn by a generator seeded by (seed, s); each process
    takes its contiguous slice. The contrastive loss is computed within a process's slice (negatives: the other
    images of the slice), as CLIP without its all-gather."""

    def __init__(self, num_images: int, batch_size: int, steps: int, seed: int, rank: int, world_size: int) -> None:
        if batch_size > num_images:
            raise ValueError(f"vision pre-training batch of {batch_size} images but the split has {num_images}")
        self.num_images, self.batch_size, self.steps, self.seed = num_images, batch_size, steps, seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.batch_size // self.world_size
        for step in range(self.steps):
            images = np.random.default_rng([self.seed, step]).choice(self.num_images, self.batch_size, replace=False)
            yield [(int(i), step) for i in images[self.rank * share : (self.rank + 1) * share]]


def tower_width(vision: nn.Module) -> int:
    return int(cast(PretrainedConfig, vision.config).hidden_size)  # a Hugging Face vision model's config


def patch_grid(vision: nn.Module) -> int:
    """Patches per side of a ViT tower's input (CLIP's and BLIP-2's configs name image_size and patch_size)."""
    config = cast(PretrainedConfig, vision.config)
    return int(config.image_size) // int(config.patch_size)


def region_instances(data: SplitData, split: str) -> Instances:
    if data.instances is None:
        raise ConfigError(
            f"finetune.vision_pretraining.region_weight > 0 needs object boxes for the {split} split (COCO "
            "instances files, listed under `instances` in the prepared manifest; the synthetic source writes them): "
            "set region_weight: 0 for data without them"
        )
    return data.instances


def text_encoder_config(
    tokenizer: PreTrainedTokenizerBase, hidden_size: int, layers: int, max_length: int
) -> CLIPTextConfig:
    heads = max(1, hidden_size // 32)
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def length_groups(lengths: torch.Tensor) -> list[torch.Tensor]:
    """The rows of a batch in at most two groups by length, split where padding each group only to its own longest
    text costs the fewest positions. Half the pre-training texts are 30–80-word descriptions and half are captions of
    a dozen tokens: one padded batch was half padding, and the text encoder was 70 % of a step. The causal encoder's
    pooled state (the last real token) never reads the padding, so the groups change nothing but the work. A split that
    saves less than a quarter of the positions is not made."""
    order = torch.argsort(lengths, stable=True)
    ordered = lengths[order]
    rows = len(order)
    first = torch.arange(1, rows + 1, device=lengths.device)  # rows in the short group; `rows`: a single group
    cost = first * ordered + (rows - first) * ordered[-1]
    split = int(torch.argmin(cost)) + 1
    if cost[split - 1] > 0.75 * cost[-1]:
        split = rows  # a second pass of the encoder for less than a quarter of the positions is not worth its call
    return [group for group in (order[:split], order[split:]) if len(group)]


class ContrastiveVisionModule(L.LightningModule):
    """The backbone's own vision tower (trained in place) + a CLIP text encoder, each with a linear projection into a
    shared space, and CLIP's learned temperature."""

    def __init__(
        self,
        vision: nn.Module,
        text_config: CLIPTextConfig,
        cfg: TrainingConfig,
        embed_dim: int,
        *,
        region_classes: int = 0,
        region_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.text = CLIPTextModel(text_config)
        self.visual_projection = nn.Linear(tower_width(vision), embed_dim, bias=False)
        self.text_projection = nn.Linear(text_config.hidden_size, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        self.cfg = cfg
        self.region_weight = region_weight
        # one logit per category (label 1 + category); thrown away after pre-training like the text encoder
        self.region_head = nn.Linear(tower_width(vision), region_classes) if region_weight > 0 else None

    def _texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1)
        groups = length_groups(lengths)
        pooled = []
        for rows in groups:
            # right-padded, so a group's texts fit in its own longest: captions are not run at description length
            width = int(lengths[rows].max())
            states = self.text(input_ids=input_ids[rows, :width], attention_mask=attention_mask[rows, :width])
            # the causal text encoder's last real token (the appended EOS) has read the whole text
            pooled.append(states.last_hidden_state[torch.arange(len(rows)), lengths[rows] - 1])
        text = self.text_projection(torch.cat(pooled)[torch.argsort(torch.cat(groups))])
        return text / text.norm(dim=-1, keepdim=True)

    def similarities(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Scaled cosine similarities, texts × images; each image's with its own hard negative ([B], -inf where
        it has none), or None when the batch has no negatives; the region head's logits of every patch token [B, P,
        categories], or None without region supervision."""
        states = self.vision(pixel_values=batch["pixel_values"]).last_hidden_state
        regions = None
        if self.region_head is not None:
            # the patch tokens are the last P (a CLS token, where the tower has one, comes first)
            regions = self.region_head(states[:, -batch["patch_labels"].shape[1] :])
        image = self.visual_projection(states.mean(1))
        image = image / image.norm(dim=-1, keepdim=True)
        text = self._texts(batch["input_ids"], batch["attention_mask"])
        # CLIP clamps the learned scale at 100 so the logits cannot blow up
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        negatives = None
        if "negative_input_ids" in batch:
            negative = self._texts(batch["negative_input_ids"], batch["negative_attention_mask"])
            own = scale * (negative * image).sum(-1)
            negatives = own.masked_fill(~batch["has_negative"], float("-inf"))
        return scale * text @ image.t(), negatives, regions

    @staticmethod
    def loss(logits: torch.Tensor, negatives: torch.Tensor | None) -> torch.Tensor:
        """CLIP's symmetric loss; with hard negatives, an image's choice among the texts also includes its own
        negative (NegCLIP)."""
        if negatives is None:
            return image_text_contrastive_loss(logits)
        target = torch.arange(len(logits), device=logits.device)
        image_to_text = torch.cat([logits.t(), negatives.unsqueeze(1)], dim=1)
        return (F.cross_entropy(logits, target) + F.cross_entropy(image_to_text, target)) / 2

    @staticmethod
    def region_loss(regions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the category over the patches an object is centred in; background patches get none."""
        objects = labels != BACKGROUND_LABEL
        if not objects.any():
            return regions.sum() * 0.0  # a batch of empty images: no gradient, and a loss DDP can still reduce
        return F.cross_entropy(regions[objects], labels[objects] - 1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits, negatives, regions = self.similarities(batch)
        loss = self.loss(logits, negatives)
        size = len(batch["input_ids"])
        if regions is not None:
            region_loss = self.region_loss(regions, batch["patch_labels"])
            self.log("train/region_loss", region_loss, on_step=True, batch_size=size, sync_dist=True)
            loss = loss + self.region_weight * region_loss
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=size, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits, negatives, regions = self.similarities(batch)
        target = torch.arange(len(logits), device=logits.device)
        size = len(logits)
        self.log("val/loss", image_text_contrastive_loss(logits), sync_dist=True, batch_size=size)
        # image → text retrieval among the batch's texts (chance: 1 / batch size)
        self.log("val/retrieval_top1", (logits.t().argmax(1) == target).float().mean(), sync_dist=True, batch_size=size)
        if negatives is not None:
            # the image's own text over the same text with a shape or colour it lacks (chance: 0.5)
            has = batch["has_negative"]
            beats = (logits.diagonal() > negatives)[has].float().mean()
            self.log("val/hard_negative_accuracy", beats, sync_dist=True, batch_size=int(has.sum()))
        if regions is not None:
            labels = batch["patch_labels"]
            objects = labels != BACKGROUND_LABEL
            right = (regions.argmax(-1) + 1 == labels)[objects].float().mean()
            self.log("val/region_accuracy", right, sync_dist=True, batch_size=int(objects.sum()))

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        return adamw_cosine(
            decay_groups(self.parameters(), self.cfg.optimizer.weight_decay), self.cfg.optimizer, self.cfg.max_steps
        )


class ImageTextDataModule(L.LightningDataModule):
    def __init__(
        self,
        splits: dict[str, SplitData],
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        cfg: VisionPretrainingConfig,
        seed: int,
        patch_grid: int,
    ) -> None:
        super().__init__()
        self.splits, self.tokenizer, self.image_processor, self.cfg, self.seed = (
            splits,
            tokenizer,
            image_processor,
            cfg,
            seed,
        )
        self.patch_grid = patch_grid  # the tower's patches per side (region supervision)
        self.datasets: dict[str, ImageTextDataset] = {}

    def _dataset(self, split: str, share: float) -> ImageTextDataset:
        data = self.splits[split]
        pixels = PixelStore([r.image_path for r in data.images], self.image_processor)
        classes = scene_word_classes() if self.cfg.hard_negatives == "scene" else ()
        labels = None
        if self.cfg.region_weight > 0:
            instances = region_instances(data, split)
            labels = [instances.patch_labels(r.image_id, self.patch_grid) for r in data.images]
        return ImageTextDataset(pixels, image_texts(data), self.tokenizer, share, self.seed, classes, labels)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.datasets = {
                "train": self._dataset("train", self.cfg.description_share),
                # validation always matches an image with its description when it has one: the hardest, fixed text
                "val": self._dataset("val", 1.0),
            }

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate_image_text(items, self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        sampler = GlobalImageBatches(
            len(self.datasets["train"]),
            self.cfg.batch_size,
            self.cfg.max_steps,
            self.seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
        )
        return DataLoader(self.datasets["train"], batch_sampler=sampler, collate_fn=self._collate)

    def val_dataloader(self) -> DataLoader:
        count = min(len(self.datasets["val"]), self.cfg.val_batches * self.cfg.batch_size)
        keys = [(i, 0) for i in range(count)]
        return DataLoader(self.datasets["val"], batch_size=self.cfg.batch_size, sampler=keys, collate_fn=self._collate)


def pretrain_vision_tower(
    vision: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    image_processor: Any,
    splits: dict[str, SplitData],
    cfg: FinetuneConfig,
    *,
    seed: int,
) -> dict[str, float]:
    """Train `vision` (in place) contrastively against a fresh text encoder; the text side is thrown away. Returns
    the stage metrics (`vision_pretraining_*`): the final validation loss and image→text retrieval top-1 within
    batches of `batch_size` validation images (each paired with its description, or one of its captions), and that
    top-1's chance level."""
    pre = cfg.vision_pretraining
    settings = TrainingConfig(
        max_steps=pre.max_steps,
        batch_size=pre.batch_size,
        val_every_steps=pre.max_steps,
        val_batches=pre.val_batches,
        optimizer=pre.optimizer,
        # the fine-tune's processes run this phase too, in the phase's own precision
        trainer=cfg.trainer.model_copy(update={"precision": pre.precision}),
    )
    texts = [
        text
        for split in ("train", "val")
        for captions, description in image_texts(splits[split])
        for text in (*captions, *filter(None, [description]))
    ]
    longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) + 1
    vision.requires_grad_(True)
    region_classes = len(region_instances(splits["train"], "train").categories) if pre.region_weight > 0 else 0
    module = ContrastiveVisionModule(
        vision,
        text_encoder_config(tokenizer, tower_width(vision), pre.text_layers, longest),
        settings,
        embed_dim=tower_width(vision),
        region_classes=region_classes,
        region_weight=pre.region_weight,
    )
    data = ImageTextDataModule(splits, tokenizer, image_processor, pre, seed, patch_grid(vision))
    # the tower's own pooler (CLIP's post-layernorm on CLS, BLIP-2's) gets no gradient from the mean of the states
    run = fit_module(module, settings, data, progress_bar=False, unused_parameters=True)
    vision.requires_grad_(False)
    vision.eval()
    metrics = {
        "vision_pretraining_steps": run.steps,
        "vision_pretraining_seconds": run.seconds,
        "vision_pretraining_val_loss": run.final_metrics["val_loss"],
        "vision_pretraining_val_retrieval_top1": run.final_metrics["val_retrieval_top1"],
        "vision_pretraining_chance": 1.0 / min(pre.batch_size, len(splits["val"].images)),
    }
    for name in ("hard_negative_accuracy", "region_accuracy"):
        if f"val_{name}" in run.final_metrics:
            metrics[f"vision_pretraining_val_{name}"] = run.final_metrics[f"val_{name}"]
    return metrics
