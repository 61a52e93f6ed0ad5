"""Named backbones: what `model.preset` in params.yaml may say.

A preset is either built from a small config and trained from scratch (`tiny-llava`, the default
that runs anywhere) or loaded from a local Hugging Face directory (`llava`). Kept free of heavy
imports because the config validator consults it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    family: str  # which backbone adapter serves it
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
        Preset("llava", "llava", True, "any local Hugging Face LLaVA directory, e.g. llava-1.5-7b-hf"),
    )
}
