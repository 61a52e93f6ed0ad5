"""The `tiny-llava` preset: a real `LlavaForConditionalGeneration` built from a small config.

Using the genuine Hugging Face classes (not a look-alike) means everything downstream — the
adapter, the decoder, `model.generate` as the reference — runs the same code paths a real
LLaVA-1.5 would.
"""

from __future__ import annotations

from typing import Any

from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    MistralConfig,
    Qwen2Config,
)

from pipeline.config import TinyBackboneConfig

_TEXT_CONFIGS = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}

# CLIP's normalisation constants; the synthetic images are drawn in the same RGB space as photos.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tiny_llava_config(
    cfg: TinyBackboneConfig,
    *,
    vocab_size: int,
    pad_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
    image_token_id: int,
) -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_intermediate_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden_size,
    )
    text_kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "max_position_embeddings": cfg.max_positions,
        "pad_token_id": pad_token_id,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "tie_word_embeddings": False,
    }
    if cfg.text_model == "mistral":
        text_kwargs["sliding_window"] = None  # full attention: the tiny sequences are far shorter than any window
    text = _TEXT_CONFIGS[cfg.text_model](**text_kwargs)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,  # the field behind the `image_token_id` alias
        vision_feature_select_strategy="default",  # drop CLS: (image/patch)^2 image tokens
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        image_seq_length=(cfg.image_size // cfg.patch_size) ** 2,
    )
    # generate() reads these from the top-level generation config
    config.pad_token_id = pad_token_id
    config.bos_token_id = bos_token_id
    config.eos_token_id = eos_token_id
    return config


def build_tiny_llava(config: LlavaConfig, seed: int) -> LlavaForConditionalGeneration:
    import torch

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    return model


def tiny_image_processor(image_size: int) -> CLIPImageProcessorPil:
    # The PIL backend: the default one needs torchvision, which this project does not install.
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
