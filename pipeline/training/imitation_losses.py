"""The imitation network's losses (paper eqs. 1–4), as pure functions of tensors.

- `cross_entropy`: the draft's logits (imitation → frozen final norm → frozen LM head) against the
  ground-truth next tokens (eq. 2);
- `cosine`: 1 − cos(imitation output, fused deep target), per scored position (eq. 3);
- `distillation`: KL(full ‖ draft) on temperature-softened distributions, scaled by T² (eq. 4).

The total is λ_ce·CE + λ_cs·CS + λ_kd·KD; "ce", "ce+cs" and "ce+cs+kd" are named weightings.
Every loss averages over the positions where `labels != IGNORE_INDEX`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.config import LossWeights
from pipeline.data.datasets import IGNORE_INDEX

VARIANTS = {
    "ce": {"ce": 1.0, "cs": 0.0, "kd": 0.0},
    "ce+cs": {"ce": 1.0, "cs": 1.0, "kd": 0.0},
    "ce+cs+kd": {"ce": 1.0, "cs": 1.0, "kd": 1.0},
}


def variant_weights(variant: str, weights: LossWeights) -> dict[str, float]:
    """λ of each term for a named variant, scaled by `weights` (imitation.weights: ce, cs, kd)."""
    return {k: v * getattr(weights, k) for k, v in VARIANTS[variant].items()}


def shifted_mask(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions t whose next token labels[t + 1] is scored, and those next tokens."""
    targets = labels[:, 1:]
    return targets != IGNORE_INDEX, targets


def cross_entropy(draft_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    mask, targets = shifted_mask(labels)
    return F.cross_entropy(draft_logits[:, :-1][mask], targets[mask])


def cosine(imitation: torch.Tensor, target: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    mask, _ = shifted_mask(labels)
    return (1 - F.cosine_similarity(imitation[:, :-1][mask], target[:, :-1][mask], dim=-1)).mean()


def distillation(
    draft_logits: torch.Tensor, full_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    mask, _ = shifted_mask(labels)
    student = F.log_softmax(draft_logits[:, :-1][mask] / temperature, dim=-1)
    teacher = F.log_softmax(full_logits[:, :-1][mask] / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def agreement(draft_logits: torch.Tensor, full_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of scored positions where the draft's top-1 token is the full model's: greedy acceptance per token."""
    mask, _ = shifted_mask(labels)
    return (draft_logits[:, :-1][mask].argmax(-1) == full_logits[:, :-1][mask].argmax(-1)).float().mean()
