"""Acceptance rules for speculative decoding, as pure tensor functions (no model, no state), for a batch of rows.

Both rules take each row's drafted tokens and the verifier's distributions at the `k + 1` positions (after the last
committed token and after each draft token) and return `(num_accepted, tokens)`: row b commits
`tokens[b, : num_accepted[b] + 1]` — its accepted draft prefix followed by the verifier's own token (a correction
after a rejection, the bonus token after full acceptance). Rows may have drafted fewer than `k` tokens (`drafted[b]`):
positions past a row's own drafts are never accepted for it. `num_accepted` stays a tensor, so nothing here forces a
device synchronisation.
"""

from __future__ import annotations

import torch


def greedy_accept(
    draft_tokens: torch.Tensor, target_logits: torch.Tensor, drafted: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification: accept the longest draft prefix that equals the verifier's argmax tokens.

    draft_tokens [B, k], target_logits [B, k+1, V], drafted [B] (default k). Because accepted draft tokens equal the
    verifier's argmax, the committed tokens are exactly the verifier's argmax tokens `[:, : num_accepted + 1]`.
    """
    _check_shapes(draft_tokens, target_logits)
    target = target_logits.argmax(dim=-1)
    matches = (draft_tokens == target[:, :-1]) & _own(draft_tokens, drafted)
    return matches.long().cumprod(dim=-1).sum(dim=-1), target


def speculative_accept(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
    drafted: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): each row is distributed as `target_probs`.

    draft_tokens [B, k] were sampled from draft_probs [B, k, V]; target_probs [B, k+1, V]. Draft token i is accepted
    with probability min(1, p_i(x) / q_i(x)); at the first rejection the token is resampled from
    norm(max(p_i − q_i, 0)); after a row's full acceptance a bonus token is drawn from p at its next position.
    """
    _check_shapes(draft_tokens, target_probs)
    if draft_probs.shape != target_probs[:, :-1].shape:
        raise ValueError(
            f"draft_probs {tuple(draft_probs.shape)} must be [B, k, V] = {tuple(target_probs[:, :-1].shape)}"
        )
    batch, k = draft_tokens.shape
    own = _own(draft_tokens, drafted)
    index = draft_tokens.unsqueeze(-1)
    p = target_probs[:, :-1].gather(-1, index).squeeze(-1)
    q = draft_probs.gather(-1, index).squeeze(-1)
    u = torch.rand(batch, k, generator=generator, device=target_probs.device, dtype=target_probs.dtype)
    # u < p/q written without the division: a sampled token has q > 0, and p ≥ q always accepts (u < 1)
    accepted = (u * q < p) & own
    num_accepted = accepted.long().cumprod(dim=-1).sum(dim=-1)
    # The row's proposal at its stopping position: q there, or nothing past its own drafts (then p itself: the bonus)
    padded_q = torch.cat([draft_probs * own.unsqueeze(-1), draft_probs.new_zeros(batch, 1, draft_probs.shape[-1])], 1)
    at = num_accepted.view(batch, 1, 1).expand(batch, 1, target_probs.shape[-1])
    residual = residual_distribution(target_probs.gather(1, at).squeeze(1), padded_q.gather(1, at).squeeze(1))
    next_token = torch.multinomial(residual, 1, generator=generator)
    tokens = torch.cat([draft_tokens, next_token], dim=1).scatter(1, num_accepted.view(batch, 1), next_token)
    return num_accepted, tokens


def residual_distribution(target_probs: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
    """norm(max(p − q, 0)) over the last dimension; p where p == q (no residual mass: in exact arithmetic a rejection
    is then impossible, so p is the right fallback)."""
    residual = (target_probs - draft_probs).clamp_min(0)
    mass = residual.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp_min(torch.finfo(mass.dtype).tiny), target_probs)


def _own(draft_tokens: torch.Tensor, drafted: torch.Tensor | None) -> torch.Tensor:
    """[B, k]: whether draft position i is one of row b's own drafts (i < drafted[b])."""
    positions = torch.arange(draft_tokens.shape[1], device=draft_tokens.device)
    if drafted is None:
        return torch.ones_like(draft_tokens, dtype=torch.bool)
    return positions.unsqueeze(0) < drafted.to(draft_tokens.device).unsqueeze(1)


def _check_shapes(draft_tokens: torch.Tensor, target: torch.Tensor) -> None:
    if (
        draft_tokens.dim() != 2
        or target.dim() != 3
        or target.shape[:2]
        != (
            draft_tokens.shape[0],
            draft_tokens.shape[1] + 1,
        )
    ):
        raise ValueError(
            "expected draft tokens [B, k] and verifier scores [B, k+1, V], "
            f"got {tuple(draft_tokens.shape)} and {tuple(target.shape)}"
        )
