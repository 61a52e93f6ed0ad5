"""Tiny random-init text-only models of the real Hugging Face classes, for the decoder tests."""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 64
EOS = 2

_COMMON = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=EOS, tie_word_embeddings=False)


def make_causal_lm(arch: str = "llama", *, num_layers: int = 4, dtype=torch.float64, seed: int = 0):
    """`arch`: llama (GQA: 4 query heads, 2 key/value heads), mistral, qwen2, opt (with in/out projections)."""
    rope = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)
    if arch == "llama":
        model_class, config = LlamaForCausalLM, LlamaConfig(**rope, **_COMMON)
    elif arch == "mistral":
        model_class, config = MistralForCausalLM, MistralConfig(**rope, sliding_window=None, **_COMMON)
    elif arch == "qwen2":
        model_class, config = Qwen2ForCausalLM, Qwen2Config(**rope, **_COMMON)
    elif arch == "opt":
        model_class = OPTForCausalLM
        config = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=num_layers, num_attention_heads=4,
                           word_embed_proj_dim=16, max_position_embeddings=256, dropout=0.0, **_COMMON)
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = model_class(config).to(dtype).eval()
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = 0
    return model


def make_text_prompt(length: int = 6, seed: int = 0) -> torch.LongTensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.ones(1, 1, dtype=torch.long), torch.randint(5, VOCAB, (1, length - 1), generator=g)], dim=1)


class FullModelHead(torch.nn.Module):
    """A stateful head that runs layers n..L-1 with its own KV cache: its drafts are the full model's.

    Acceptance is then 100 %, but only if the decoder keeps the head's state aligned with the sequence
    (reset, prompt, crop after rejections, catch-up after full acceptance), so it tests that protocol too.
    """

    def __init__(self, model, draft_layers: int) -> None:
        super().__init__()
        from pipeline.models.adapter import adapter_for

        self._model = [model]  # not a submodule: the head must not own the model's parameters
        self.adapter = adapter_for(model)
        self.n = draft_layers
        self.calls = 0
        self.reset()

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self._model[0].config)

    def crop(self, length: int) -> None:
        from pipeline.decoding.cache import crop_to

        crop_to(self.cache, length)

    @property
    def length(self) -> int:
        return self.cache.get_seq_length(self.n)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.adapter.run_layers(hidden, self.n, self.adapter.num_layers, self.cache)


class RandomHead(torch.nn.Module):
    """A random linear map: drafts that (almost) never match."""

    def __init__(self, hidden_size: int, seed: int = 1, dtype=torch.float64) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(hidden_size, hidden_size, bias=False, dtype=dtype)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(hidden_size, hidden_size, generator=g, dtype=dtype) * 3)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)
