"""Turning logits into the distribution a sampler draws from: temperature, then top-k, then top-p.

The order and the tie/keep rules are those of `model.generate(do_sample=True, ...)` (its
TemperatureLogitsWarper → TopKLogitsWarper → TopPLogitsWarper), so "distributed as the full model"
means distributed as `model.generate` samples with the same settings. Unlike `model.generate`, no
top-k of 50 is applied unless asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0 → greedy decoding
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be ≥ 0 (0 = greedy), got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            raise ValueError(f"top_k must be a non-negative integer (0 or None = off), got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax of the warped logits over the last dimension (any leading shape), in float32 at least: as
        `model.generate` upcasts the logits first, so that a half-precision model's probabilities (and the acceptance
        test's uniform draws compared with them) are not rounded to 8 or 11 bits."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return torch.softmax(warp_logits(logits, self.temperature, self.top_k, self.top_p), dim=-1)


def warp_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    scores = logits / temperature if temperature not in (0.0, 1.0) else logits
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -1:] = False  # always keep the most likely token
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        scores = scores.masked_fill(remove, -float("inf"))
    return scores


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `probs` [..., V] → [...]."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
