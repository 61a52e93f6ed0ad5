"""The `tiny-blip2-opt` and `tiny-blip2-t5` presets: a real `Blip2ForConditionalGeneration` from a small config.

The genuine classes (ViT, Q-Former, OPT or T5) mean that the adapters, the decoder and `model.generate` as the
reference run the code paths `blip2-opt-2.7b` and `blip2-flan-t5-xl` run. The T5 variant has FlanT5's layout:
gated-GELU feed-forward blocks and untied input/output embeddings (so no decoder-output scaling).
"""

from __future__ import annotations

from typing import Any, Literal

from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessorPil,
    OPTConfig,
    T5Config,
)

from pipeline.config import TinyBackboneConfig
from pipeline.models.tiny_llava import CLIP_MEAN, CLIP_STD


def tiny_blip2_config(
    cfg: TinyBackboneConfig,
    language: Literal["opt", "t5"],
    *,
    vocab_size: int,
    pad_token_id: int,
    bos_token_id: int,
    eos_token_id: int,
    image_token_id: int,
) -> Blip2Config:
    vision = Blip2VisionConfig(
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_intermediate_size,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        # transformers' default is 1e-10 (BLIP-2 always loads a pretrained ViT): from scratch that ViT's output is
        # constant, and frozen (finetune.train_vision_tower: false) it stays so — the default-size tiny-blip2-opt and
        # -t5 runs captioned every image as its blank one (test CIDEr 0.218 / 0.445 both). A random ViT of the usual
        # scale, frozen, is the random-feature tower tiny-llava's CLIP is.
        initializer_range=0.02,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=cfg.qformer_hidden_size,
        num_hidden_layers=cfg.qformer_layers,
        num_attention_heads=cfg.vision_heads,
        intermediate_size=2 * cfg.qformer_hidden_size,
        encoder_hidden_size=cfg.vision_hidden_size,
        vocab_size=vocab_size,
        pad_token_id=pad_token_id,
        # BLIP-2 always loads a Q-Former pre-trained (stage 1) to pass on what is in the image. From scratch at the
        # usual 0.02, its queries' outputs are the query embeddings plus a faint cross-attention term: over synthetic
        # scenes they deviate from their mean by 0.4 % — trained, tiny-blip2-t5 drove that to nothing and captioned
        # every image as its blank one (test CIDEr 0.438 = 0.438; shuffling the images moved its loss by < 1e-4).
        # At 0.1 they differ by ~10 % and the T5 model reads them within 100 steps. No dropout, like the text models.
        initializer_range=0.1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    special: dict[str, Any] = {"pad_token_id": pad_token_id, "bos_token_id": bos_token_id, "eos_token_id": eos_token_id}
    text: Any
    if language == "opt":
        text = OPTConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.hidden_size,
            ffn_dim=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            word_embed_proj_dim=cfg.hidden_size,
            max_position_embeddings=cfg.max_positions,
            dropout=0.0,
            attention_dropout=0.0,
            tie_word_embeddings=False,
            **special,
        )
    else:
        text = T5Config(  # type: ignore[call-arg]  # T5Config reads tie_word_embeddings, decoder_start_token_id from kwargs
            vocab_size=vocab_size,
            d_model=cfg.hidden_size,
            d_kv=cfg.hidden_size // cfg.num_heads,
            d_ff=cfg.intermediate_size,
            # FlanT5's encoder is as deep as its decoder; so must this one be: `model.generate` sizes the decoder's
            # cache by the encoder's depth (transformers 5.23), and a shallower encoder crashes it
            num_layers=cfg.num_layers,
            num_decoder_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            decoder_start_token_id=pad_token_id,  # T5's convention: the decoder starts from <pad>
            **special,
        )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=cfg.num_query_tokens,
        image_token_index=image_token_id,
    )
    for key, value in special.items():  # generate() reads these from the top-level config
        setattr(config, key, value)
    if language == "t5":
        config.decoder_start_token_id = pad_token_id
    return config


def build_tiny_blip2(config: Blip2Config, seed: int) -> Blip2ForConditionalGeneration:
    import torch

    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        # transformers zero-initialises the queries (a checkpoint overwrites them): trained from scratch, identical
        # queries get identical gradients and stay identical — every image token the same pooled feature, and the
        # model learned to caption without looking (test CIDEr = blank-image CIDEr). BLIP-2's own code (LAVIS) draws
        # them from N(0, 0.02), as here.
        model.query_tokens.normal_(0.0, 0.02)
    text: Any = config.text_config
    if not config.use_decoder_only_language_model:
        # transformers ties T5's LM head to its unit-variance input embeddings; without T5 v1.0's output scaling
        # (FlanT5 has none) an untrained model's logits are ~sqrt(d_model) too large (cross-entropy ≈ 20 at step 0).
        # Embeddings of std d_model^-1/2 start it at O(1) logits, as the scaling would.
        with torch.no_grad():
            model.language_model.shared.weight.normal_(0.0, text.d_model**-0.5)
    generation = model.generation_config
    generation.pad_token_id, generation.bos_token_id = config.pad_token_id, config.bos_token_id
    generation.eos_token_id = config.eos_token_id
    if not config.use_decoder_only_language_model:
        generation.decoder_start_token_id = text.decoder_start_token_id
    return model


def tiny_blip2_image_processor(image_size: int) -> BlipImageProcessorPil:
    # The PIL backend: the default one needs torchvision, which this project does not install.
    return BlipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
