"""The token layout of every example: a prompt (image tokens + task text) and a target (text + EOS).

One builder serves training, evaluation and decoding so that the prompt a model is trained on is, token for token,
the prompt it is later asked to continue. Two kinds:

- `TokenLayoutBuilder`, for the presets trained from scratch with the word tokenizer: the layout each family's own
  processor would produce — LLaVA `<bos> <image>×K text`, BLIP-2 OPT `<image>×K <bos> text`, BLIP-2 T5
  `<image>×K text <eos>` (the encoder's input; its decoder starts from `decoder_start_id`).
- `ProcessorPromptBuilder`, for pretrained checkpoints: the checkpoint's own processor lays the prompt out, through
  its chat template when it has one (LLaVA-1.5: `USER: <image>\\n… ASSISTANT:`), never a hand-made layout.

For an encoder–decoder backbone the prompt is the encoder's input and the target what its decoder produces.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image
from transformers import PreTrainedTokenizerBase

from pipeline.config import PromptConfig

TASKS = ("caption", "description", "vqa")
Layout = Literal["llava", "blip2-opt", "blip2-t5"]


def prompt_text(prompts: PromptConfig, task: str, question: str | None = None) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    template = getattr(prompts, task)
    return template.format(question=question) if task == "vqa" else template


class PromptBuilder(ABC):
    tokenizer: PreTrainedTokenizerBase
    prompts: PromptConfig
    decoder_start_id: int | None  # the decoder's first token for an encoder–decoder; None for decoder-only models

    @property
    def encoder_decoder(self) -> bool:
        return self.decoder_start_id is not None

    @abstractmethod
    def prompt_ids(self, task: str, question: str | None = None) -> list[int]:
        """The prompt of `task` (image tokens included): what `model.generate` takes as `input_ids`."""

    def target_ids(self, text: str) -> list[int]:
        return [*self.tokenizer.encode(text, add_special_tokens=False), self.tokenizer.eos_token_id]


@dataclass(frozen=True)
class TokenLayoutBuilder(PromptBuilder):
    tokenizer: PreTrainedTokenizerBase
    prompts: PromptConfig
    image_token_id: int
    num_image_tokens: int
    layout: Layout = "llava"
    decoder_start_id: int | None = None

    def prompt_ids(self, task: str, question: str | None = None) -> list[int]:
        text = self.tokenizer.encode(prompt_text(self.prompts, task, question), add_special_tokens=False)
        images = [self.image_token_id] * self.num_image_tokens
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        if self.layout == "llava":
            return bos + images + text
        if self.layout == "blip2-opt":
            return images + bos + text
        return [*images, *text, self.tokenizer.eos_token_id]


@dataclass(frozen=True)
class ProcessorPromptBuilder(PromptBuilder):
    """Prompts from a pretrained checkpoint's processor (and chat template); prompt ids are cached per text."""

    processor: Any
    prompts: PromptConfig
    decoder_start_id: int | None = None
    _cache: dict[str, list[int]] = field(default_factory=dict, compare=False, repr=False)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:  # type: ignore[override]
        return self.processor.tokenizer

    def prompt_ids(self, task: str, question: str | None = None) -> list[int]:
        text = prompt_text(self.prompts, task, question)
        if text not in self._cache:
            self._cache[text] = self._encode(text)
        return list(self._cache[text])

    def _encode(self, text: str) -> list[int]:
        if getattr(self.processor, "chat_template", None):
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            text = self.processor.apply_chat_template(conversation, add_generation_prompt=True)
        # The processor expands the image placeholder into as many image tokens as its model takes per image; a
        # blank image of the processor's size gives the ids (they do not depend on the pixels)
        encoded = self.processor(images=blank_image(self.processor.image_processor), text=text)
        ids = encoded["input_ids"]
        return list(ids[0] if ids and isinstance(ids[0], list) else ids)


def blank_image(image_processor: Any) -> Image.Image:
    size = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None) or {}
    height = size.get("height") or size.get("shortest_edge") or 224
    width = size.get("width") or size.get("shortest_edge") or 224
    return Image.new("RGB", (int(width), int(height)), (128, 128, 128))
