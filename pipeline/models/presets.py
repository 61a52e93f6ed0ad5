"""Named backbones: what `model.preset` in params.yaml may say.

A preset is either built from a small config of the real Hugging Face classes and trained from scratch (the
`tiny-*` presets, which run anywhere) or loaded from a local Hugging Face directory (`llava`, `blip2`). Kept free
of heavy imports because the config validator consults it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The token layout of a family's prompts: LLaVA puts the image tokens after <bos>, BLIP-2's processor before it,
# and BLIP-2 FlanT5 feeds them to its encoder (its decoder starts from the start token)
Family = Literal["llava", "blip2-opt", "blip2-t5", "blip2"]


@dataclass(frozen=True)
class Preset:
    name: str
    family: Family
    needs_pretrained_path: bool
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "tiny-llava",
            "llava",
            False,
            "LlavaForConditionalGeneration from a small config (CLIP vision tower + Llama/Mistral/Qwen2 decoder)",
        ),
        Preset(
            "tiny-blip2-opt",
            "blip2-opt",
            False,
            "Blip2ForConditionalGeneration from a small config (ViT + Q-Former + OPT decoder)",
        ),
        Preset(
            "tiny-blip2-t5",
            "blip2-t5",
            False,
            "Blip2ForConditionalGeneration from a small config (ViT + Q-Former + T5 encoder–decoder, FlanT5's layout)",
        ),
        Preset("llava", "llava", True, "a local Hugging Face LLaVA directory, e.g. llava-1.5-7b-hf"),
        Preset("blip2", "blip2", True, "a local Hugging Face BLIP-2 directory: blip2-opt-2.7b or blip2-flan-t5-xl"),
    )
}
