"""The language-only draft model of Gagrani et al. 2024 ("On Speculative Decoding for Multimodal Large Language
Models"): a small LLaMA-architecture LM trained from scratch on the training split's prompts and targets, with the
backbone's tokenizer. The prompts keep their image placeholder tokens, so the draft reads exactly the VLM's token
sequence (which our engine and Hugging Face's `assistant_model` both rely on), but the pixels never reach it: those
tokens are ordinary embeddings to it, the same for every image."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from pipeline.config import LanguageDraftConfig
from pipeline.data.prepared import SplitData
from pipeline.errors import ModelLoadError
from pipeline.io import atomic_write_json
from pipeline.models.loading import Backbone
from pipeline.tracking import RunRef
from pipeline.training.datamodule import VLMDataModule
from pipeline.training.finetune import FinetuneModule
from pipeline.training.trainer import fit_module

STATUS = "status.json"  # written whether or not a model was trained: the stage's output always exists


def text_only(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A collated VLM training batch without its pixels: the draft's forward inputs."""
    return {key: batch[key] for key in ("input_ids", "attention_mask", "labels")}


def language_draft_config(cfg: LanguageDraftConfig, backbone: Backbone) -> LlamaConfig:
    tokenizer = backbone.tokenizer
    return LlamaConfig(
        vocab_size=int(backbone.adapter.embed_weight.shape[0]),  # the backbone's: drafts are its token ids
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )


@dataclass
class LanguageDraftResult:
    model: LlamaForCausalLM | None  # None: not trained (disabled, or an encoder–decoder backbone)
    metrics: dict[str, Any]


def unsupported_reason(cfg: LanguageDraftConfig, backbone: Backbone) -> str | None:
    if not cfg.enabled:
        return "baselines.language_draft.enabled is false"
    if backbone.adapter.is_encoder_decoder:
        return (
            f"{type(backbone.model).__name__} is an encoder–decoder: a language-only draft mirrors a decoder-only "
            "backbone's token sequence"
        )
    return None


def fit_language_draft(
    backbone: Backbone,
    splits: dict[str, SplitData],
    prompts: Any,
    cfg: LanguageDraftConfig,
    *,
    seed: int,
    tracking_run: RunRef | None = None,
) -> LanguageDraftResult:
    """Train the draft from scratch on the backbone's prompts (`prompts`: params' data.prompts) without images."""
    reason = unsupported_reason(cfg, backbone)
    if reason is not None:
        return LanguageDraftResult(None, {"trained": False, "reason": reason})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(language_draft_config(cfg, backbone))
    model.generation_config.pad_token_id = backbone.tokenizer.pad_token_id
    model.generation_config.eos_token_id = backbone.tokenizer.eos_token_id
    builder = backbone.prompt_builder(prompts)
    module = FinetuneModule(model, cfg, forward_inputs=text_only)
    run = fit_module(
        module, cfg, VLMDataModule(splits, builder, backbone.image_processor, cfg, seed), tracking_run=tracking_run
    )
    model.eval()
    metrics = {
        "trained": True,
        "steps": run.steps,
        "train_seconds": run.seconds,
        "val_loss": run.final_metrics["val_loss"],
        "val_token_accuracy": run.final_metrics["val_token_accuracy"],
        "num_parameters": float(sum(p.numel() for p in model.parameters())),
    }
    return LanguageDraftResult(model, metrics)


def save_language_draft(result: LanguageDraftResult, folder: str | Path) -> None:
    """The model in Hugging Face format (when trained) and `status.json` (what was trained, or why not)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if stale.is_file():
            stale.unlink()
    if result.model is not None:
        result.model.save_pretrained(folder)
    atomic_write_json(folder / STATUS, result.metrics)


def load_language_draft(folder: str | Path, like: torch.nn.Module) -> PreTrainedModel | None:
    """The saved draft in the dtype and on the device of `like` (the backbone), or None when none was trained."""
    import json

    folder = Path(folder)
    status = folder / STATUS
    if not status.exists():
        raise ModelLoadError(f"{folder} has no {STATUS}: run `dvc repro train_baselines`")
    if not json.loads(status.read_text()).get("trained"):
        return None
    weight = next(like.parameters())
    try:
        model = LlamaForCausalLM.from_pretrained(folder, dtype=weight.dtype)
    except OSError as error:
        raise ModelLoadError(f"{folder}: the language-only draft model is incomplete ({error})") from None
    moved: Any = model  # transformers' typed `to` wrapper rejects a device argument in mypy's eyes
    return cast(PreTrainedModel, moved.to(weight.device)).eval()
