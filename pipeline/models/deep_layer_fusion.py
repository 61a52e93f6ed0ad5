"""Fusion of the last layers' hidden states: the target the imitation network's output is pulled towards
(the cosine-similarity loss, paper eq. 3).

- `average`: the mean of the last `k` layers' states (no parameters);
- `concat`: their concatenation projected back to the hidden size (trainable);
- `attention`: attention pooling over the `k` states with the last layer's state as the query (trainable).

All take a list of `k` tensors [B, T, H] (shallowest first) and return [B, T, H].
"""

from __future__ import annotations

import torch
from torch import nn

FUSIONS = ("average", "concat", "attention")


class AverageFusion(nn.Module):
    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(states).mean(dim=0)


class ConcatFusion(nn.Module):
    def __init__(self, hidden_size: int, num_states: int) -> None:
        super().__init__()
        self.project = nn.Linear(hidden_size * num_states, hidden_size)
        with torch.no_grad():  # start at the average, so the target is meaningful from step one
            self.project.weight.copy_(torch.eye(hidden_size).repeat(1, num_states) / num_states)
            self.project.bias.zero_()

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        return self.project(torch.cat(states, dim=-1))


class AttentionPoolFusion(nn.Module):
    """Per position, a softmax over the `k` layers' states, scored against the last layer's state."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.key = nn.Linear(hidden_size, hidden_size, bias=False)
        self.scale = hidden_size**-0.5

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(states, dim=-2)  # [B, T, k, H]
        query = self.query(states[-1]).unsqueeze(-2)  # [B, T, 1, H]
        scores = (query * self.key(stacked)).sum(-1) * self.scale  # [B, T, k]
        weights = scores.softmax(dim=-1).unsqueeze(-1)
        return (weights * stacked).sum(dim=-2)


def fused_layer_count(fusion_layers: int, num_layers: int, draft_layers: int) -> int:
    """How many states the fusion receives: the last `fusion_layers` outputs of the deep layers n..L-1, so at
    most L − n (a trainable fusion's shape depends on it)."""
    return max(1, min(fusion_layers, num_layers - draft_layers))


def build_fusion(kind: str, hidden_size: int, num_states: int = 4) -> nn.Module:
    if kind == "average":
        return AverageFusion()
    if kind == "concat":
        return ConcatFusion(hidden_size, num_states)
    if kind == "attention":
        return AttentionPoolFusion(hidden_size)
    raise ValueError(f"unknown fusion {kind!r}; expected one of {FUSIONS}")
