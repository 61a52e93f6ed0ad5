"""Shared fixtures: tiny random-init models of the real Hugging Face classes."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import TinyLlavaConfig
from pipeline.models.tiny_llava import build_tiny_llava, tiny_llava_config

IMAGE_TOKEN_ID = 4
VOCAB = 64


@pytest.fixture
def one_thread():
    """One intra-op thread: fastest for tiny models, and immune to a second spinning OpenMP thread stalling
    every small op when other processes load the machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def make_tiny_llava(text_model: str = "llama", *, num_layers: int = 4, num_kv_heads: int = 2, dtype=torch.float32):
    cfg = TinyLlavaConfig(
        text_model=text_model,
        num_layers=num_layers,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        num_kv_heads=num_kv_heads,
        vision_layers=1,
        vision_hidden_size=32,
        vision_intermediate_size=64,
        vision_heads=2,
        patch_size=8,
        image_size=16,
    )
    config = tiny_llava_config(
        cfg, vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, image_token_id=IMAGE_TOKEN_ID
    )
    return build_tiny_llava(config, seed=0).to(dtype).eval()


def make_vlm_inputs(batch: int = 2, text_len: int = 5, seed: int = 0, dtype=torch.float32):
    """input_ids = <bos> <image>x4 text...; pixel values for 16x16 images (4 patches of 8x8)."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(5, VOCAB, (batch, text_len), generator=g)
    ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), torch.full((batch, 4), IMAGE_TOKEN_ID), text], dim=1)
    pixels = torch.randn(batch, 3, 16, 16, generator=g).to(dtype)
    return ids, pixels


@pytest.fixture(params=["llama", "mistral", "qwen2"])
def text_model(request) -> str:
    return request.param
