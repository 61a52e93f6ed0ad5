"""Build a backbone from a preset, or load one from a directory, with everything needed to use it.

A saved backbone directory holds the model (`save_pretrained`), its tokenizer and its image
processor, so every later stage loads the exact pairing the model was trained with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.config import ModelConfig, PromptConfig
from pipeline.data.prepared import read_manifest
from pipeline.data.prompts import PromptBuilder
from pipeline.data.tokenizer import load_word_tokenizer
from pipeline.errors import ModelLoadError
from pipeline.io import atomic_directory
from pipeline.models.adapter import BackboneAdapter, LlavaAdapter, adapter_for
from pipeline.models.presets import PRESETS

SUPPORTED_MODEL_TYPES = {"llava": "LlavaForConditionalGeneration"}


@dataclass
class Backbone:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any
    adapter: BackboneAdapter

    def prompt_builder(self, prompts: PromptConfig) -> PromptBuilder:
        """Prompts for this backbone: its tokenizer and its image-token layout."""
        adapter = cast(LlavaAdapter, self.adapter)  # backbones are LLaVA models (SUPPORTED_MODEL_TYPES, PRESETS)
        return PromptBuilder(self.tokenizer, prompts, adapter.image_token_id, adapter.num_image_tokens)


def _special_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ModelLoadError(f"the tokenizer has no {token!r} token; re-run the prepare stage to rebuild it")
    # One token in, one id out: the annotation's `list[int]` is for a list of tokens
    return cast(int, token_id)


def build_backbone(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase | None, seed: int) -> Backbone:
    """The backbone a preset names: built from scratch (tiny) or loaded from `pretrained_path`."""
    preset = PRESETS[cfg.preset]
    if preset.needs_pretrained_path:
        return load_backbone(cfg.pretrained_path)
    if tokenizer is None:
        raise ModelLoadError(f"preset {cfg.preset!r} is trained from scratch and needs the prepared tokenizer")
    from pipeline.models.tiny_llava import build_tiny_llava, tiny_image_processor, tiny_llava_config

    config = tiny_llava_config(
        cfg.tiny,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        image_token_id=_special_id(tokenizer, "<image>"),
    )
    model = build_tiny_llava(config, seed)
    return Backbone(model, tokenizer, tiny_image_processor(cfg.tiny.image_size), adapter_for(model))


def initial_backbone(cfg: ModelConfig, data_dir: str | Path, seed: int) -> Backbone:
    """The backbone the fine-tune stage starts from: a preset built from scratch with the prepared data's tokenizer,
    or a pretrained checkpoint."""
    tokenizer = None
    if not PRESETS[cfg.preset].needs_pretrained_path:
        data_dir = Path(data_dir)
        tokenizer = load_word_tokenizer(data_dir / read_manifest(data_dir)["tokenizer_dir"])
    return build_backbone(cfg, tokenizer, seed)


def load_backbone(path: str | Path | None) -> Backbone:
    """Load a saved or pretrained backbone directory, failing loudly on anything that does not fit."""
    if path is None:
        raise ModelLoadError("no model directory given (model.pretrained_path is empty)")
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{path}: model_type {model_type!r} is not supported; supported: {sorted(SUPPORTED_MODEL_TYPES)}"
        )
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    model_class = getattr(transformers, SUPPORTED_MODEL_TYPES[model_type])
    try:
        # mismatched shapes are collected (and reported below, by key) instead of raised with a pointer to a log
        model, info = model_class.from_pretrained(path, output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the model in {path}: {exc}") from None
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys", "unexpected_keys") and v}
    if problems:
        detail = "; ".join(f"{k}: {sorted(map(str, v))[:5]}" for k, v in problems.items())
        raise ModelLoadError(f"the weights in {path} do not match its config ({detail})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        image_processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} lacks a usable tokenizer or image processor: {exc}") from None
    model.eval()
    return Backbone(model, tokenizer, image_processor, adapter_for(model))


def save_backbone(backbone: Backbone, path: str | Path) -> None:
    """Model, tokenizer and image processor into one directory, atomically."""
    with atomic_directory(path) as tmp:
        backbone.model.save_pretrained(tmp)
        backbone.tokenizer.save_pretrained(tmp)
        backbone.image_processor.save_pretrained(tmp)
