"""Token layout of every example: `<bos> <image>×K prompt-text | target-text <eos>`.

One builder serves training, evaluation and decoding so that the prompt a model is trained on
is, token for token, the prompt it is later asked to continue.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from pipeline.config import PromptConfig

TASKS = ("caption", "description", "vqa")


@dataclass(frozen=True)
class PromptBuilder:
    tokenizer: PreTrainedTokenizerBase
    prompts: PromptConfig
    image_token_id: int
    num_image_tokens: int

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, task: str, question: str | None = None) -> list[int]:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        template = getattr(self.prompts, task)
        text = template.format(question=question) if task == "vqa" else template
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + [self.image_token_id] * self.num_image_tokens + self._encode(text)

    def target_ids(self, text: str) -> list[int]:
        return [*self._encode(text), self.tokenizer.eos_token_id]
