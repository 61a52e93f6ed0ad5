"""Build a backbone from a preset, or load one from a directory, with everything needed to use it.

A backbone directory holds the model (`save_pretrained`), its tokenizer and image processor, and — for pretrained
checkpoints (`llava-1.5-7b-hf`, `blip2-opt-2.7b`, `blip2-flan-t5-xl`) — its processor with the chat template, so
every stage lays prompts out exactly as the checkpoint expects. A directory that is not one of the supported
families, or lacks a part, fails at load with one error naming every missing part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.config import ModelConfig, PromptConfig
from pipeline.data.prepared import read_manifest
from pipeline.data.prompts import Layout, ProcessorPromptBuilder, PromptBuilder, TokenLayoutBuilder
from pipeline.data.tokenizer import load_word_tokenizer
from pipeline.errors import ModelLoadError
from pipeline.io import atomic_directory
from pipeline.models.adapters import BackboneAdapter, adapter_for
from pipeline.models.presets import PRESETS

# config.json's model_type → the transformers class that loads it
SUPPORTED_MODEL_TYPES = {"llava": "LlavaForConditionalGeneration", "blip-2": "Blip2ForConditionalGeneration"}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json")
PROCESSOR_FILE = "processor_config.json"  # present in the hub's LLaVA-1.5 and BLIP-2 repositories
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass
class Backbone:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any
    adapter: BackboneAdapter
    processor: Any = None  # a pretrained checkpoint's processor (tokenizer + image processor + chat template)

    def prompt_builder(self, prompts: PromptConfig) -> PromptBuilder:
        """Prompts for this backbone: its processor's layout for a pretrained checkpoint, else the family's token
        layout with its tokenizer."""
        start = self.adapter.decoder_start_token_id
        if self.processor is not None:
            return ProcessorPromptBuilder(self.processor, prompts, start)
        image_token = self.adapter.image_token_id
        if image_token is None:
            raise ModelLoadError(f"{type(self.model).__name__} takes no images: it cannot caption")
        layout = cast(Layout, self.adapter.prompt_layout)
        return TokenLayoutBuilder(self.tokenizer, prompts, image_token, self.adapter.num_image_tokens, layout, start)


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
    special = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "image_token_id": _special_id(tokenizer, "<image>"),
    }
    model: PreTrainedModel
    if preset.family == "llava":
        from pipeline.models.tiny_llava import build_tiny_llava, tiny_image_processor, tiny_llava_config

        model = build_tiny_llava(tiny_llava_config(cfg.tiny, **special), seed)
        image_processor: Any = tiny_image_processor(cfg.tiny.image_size)
    else:
        from pipeline.models.tiny_blip2 import build_tiny_blip2, tiny_blip2_config, tiny_blip2_image_processor

        model = build_tiny_blip2(
            tiny_blip2_config(cfg.tiny, "opt" if preset.family == "blip2-opt" else "t5", **special), seed
        )
        image_processor = tiny_blip2_image_processor(cfg.tiny.image_size)
    return Backbone(model, tokenizer, image_processor, adapter_for(model))


def initial_backbone(cfg: ModelConfig, data_dir: str | Path, seed: int) -> Backbone:
    """The backbone the fine-tune stage starts from: a preset built from scratch with the prepared data's tokenizer,
    or a pretrained checkpoint."""
    tokenizer = None
    if not PRESETS[cfg.preset].needs_pretrained_path:
        data_dir = Path(data_dir)
        tokenizer = load_word_tokenizer(data_dir / read_manifest(data_dir)["tokenizer_dir"])
    return build_backbone(cfg, tokenizer, seed)


def resolve_device(device: str) -> torch.device:
    """A torch device the machine has; a clear error for one it lacks."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"model.device is {device!r} but no CUDA device is visible; set model.device: cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ModelLoadError(f"model.device is {device!r} but only {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError("model.device is 'mps' but MPS is not available; set model.device: cpu")
    return torch.device(device)


def load_backbone(path: str | Path | None, dtype: str = "float32", device: str = "cpu") -> Backbone:
    """Load a saved or pretrained backbone directory in `dtype` onto `device`, failing loudly on anything that does
    not fit."""
    if path is None:
        raise ModelLoadError("no model directory given (model.pretrained_path is empty)")
    path = Path(path)
    model_class = _check_directory(path)
    import transformers
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    where = resolve_device(device)
    try:
        # mismatched shapes are collected (and reported below, by key) instead of raised with a pointer to a log
        model, info = getattr(transformers, model_class).from_pretrained(
            path, output_loading_info=True, ignore_mismatched_sizes=True, dtype=DTYPES[dtype]
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the model in {path}: {exc}") from None
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys", "unexpected_keys") and v}
    if problems:
        detail = "; ".join(f"{k}: {sorted(map(str, v))[:5]}" for k, v in problems.items())
        raise ModelLoadError(f"the weights in {path} do not match its config ({detail})")
    try:
        processor = AutoProcessor.from_pretrained(path) if (path / PROCESSOR_FILE).exists() else None
        tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(path)
        image_processor = (
            processor.image_processor if processor is not None else AutoImageProcessor.from_pretrained(path)
        )
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"{path} lacks a usable tokenizer, image processor or processor: {exc}") from None
    model = model.to(where).eval()
    return Backbone(model, tokenizer, image_processor, adapter_for(model), processor)


def _check_directory(path: Path) -> str:
    """The transformers class for the directory `path`, after checking it has every part a backbone needs."""
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
    model_type = _json(path / "config.json").get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{path}: model_type {model_type!r} is not supported; supported: {sorted(SUPPORTED_MODEL_TYPES)} "
            "(LLaVA-1.5, BLIP-2 OPT, BLIP-2 FlanT5)"
        )
    missing = []
    if not any((path / name).exists() for name in WEIGHT_FILES):
        missing.append(f"weights (one of {', '.join(WEIGHT_FILES)})")
    if not any((path / name).exists() for name in TOKENIZER_FILES):
        missing.append(f"a tokenizer (one of {', '.join(TOKENIZER_FILES)})")
    if not (path / "preprocessor_config.json").exists() and "image_processor" not in _json(path / PROCESSOR_FILE):
        # the hub's repositories keep it in preprocessor_config.json; transformers 5 saves it inside the processor's
        missing.append(f"an image processor (preprocessor_config.json, or an image_processor in {PROCESSOR_FILE})")
    if missing:
        raise ModelLoadError(
            f"{path} is an incomplete {model_type} checkpoint: missing {'; '.join(missing)}. Copy the whole "
            "repository (e.g. `huggingface-cli download <repo> --local-dir <dir>` on a machine with network)"
        )
    return SUPPORTED_MODEL_TYPES[model_type]


def _json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from None
    return loaded if isinstance(loaded, dict) else {}


def save_backbone(backbone: Backbone, path: str | Path) -> None:
    """Model, tokenizer and image processor (and a pretrained checkpoint's processor) into one directory, atomically."""
    with atomic_directory(path) as tmp:
        backbone.model.save_pretrained(tmp)
        if backbone.processor is not None:
            backbone.processor.save_pretrained(tmp)
        else:
            backbone.tokenizer.save_pretrained(tmp)
            backbone.image_processor.save_pretrained(tmp)
