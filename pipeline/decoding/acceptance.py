"""Acceptance rules for speculative decoding, as pure tensor functions (no model, no state).

Both rules take the `k` drafted tokens and the verifier's distributions at the `k + 1` positions
(after the last accepted token and after each draft token) and return `(num_accepted, tokens)`:
`tokens[: num_accepted + 1]` are the tokens to commit — the accepted draft prefix followed by the
verifier's own token (a correction after a rejection, the bonus token after full acceptance).
`num_accepted` is a 0-dim tensor, so nothing here forces a device synchronisation.
"""

from __future__ import annotations

import torch


def greedy_accept(draft_tokens: torch.Tensor, target_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification: accept the longest draft prefix that equals the verifier's argmax tokens.

    draft_tokens [k], target_logits [k+1, V]. Because accepted draft tokens equal the verifier's argmax,
    the committed tokens are exactly the verifier's argmax tokens `[: num_accepted + 1]`.
    """
    _check_shapes(draft_tokens, target_logits)
    target = target_logits.argmax(dim=-1)
    matches = draft_tokens == target[:-1]
    num_accepted = matches.long().cumprod(dim=0).sum()
    return num_accepted, target


def speculative_accept(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor,
    target_probs: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023): the output is distributed as `target_probs`.

    draft_tokens [k] were sampled from draft_probs [k, V]; target_probs [k+1, V]. Draft token i is accepted
    with probability min(1, p_i(x) / q_i(x)); at the first rejection the token is resampled from
    norm(max(p_i − q_i, 0)); after full acceptance a bonus token is drawn from p_k.
    """
    _check_shapes(draft_tokens, target_probs)
    if draft_probs.shape != target_probs[:-1].shape:
        raise ValueError(f"draft_probs {tuple(draft_probs.shape)} must be [k, V] = {tuple(target_probs[:-1].shape)}")
    k = draft_tokens.shape[0]
    index = draft_tokens.unsqueeze(-1)
    p = target_probs[:-1].gather(-1, index).squeeze(-1)
    q = draft_probs.gather(-1, index).squeeze(-1)
    u = torch.rand(k, generator=generator, device=target_probs.device, dtype=target_probs.dtype)
    # u < p/q written without the division: a sampled token has q > 0, and p ≥ q always accepts (u < 1)
    accepted = u * q < p
    num_accepted = accepted.long().cumprod(dim=0).sum()
    # Row k of the residual is p_k itself (q padded with zeros): the bonus distribution after full acceptance
    padded_q = torch.cat([draft_probs, draft_probs.new_zeros(1, draft_probs.shape[-1])])
    p_next = target_probs.index_select(0, num_accepted.view(1))
    residual = (p_next - padded_q.index_select(0, num_accepted.view(1))).clamp_min(0)
    mass = residual.sum(dim=-1, keepdim=True)
    # p == q leaves no residual mass; a rejection is then impossible in exact arithmetic, so p is the right fallback
    residual = torch.where(mass > 0, residual / mass.clamp_min(torch.finfo(mass.dtype).tiny), p_next)
    next_token = torch.multinomial(residual, 1, generator=generator).view(1)
    tokens = torch.cat([draft_tokens, next_token])
    tokens = tokens.index_put((num_accepted.view(1),), next_token)
    return num_accepted, tokens


def residual_distribution(target_probs: torch.Tensor, draft_probs: torch.Tensor) -> torch.Tensor:
    """norm(max(p − q, 0)) over the last dimension; p where p == q (no residual mass)."""
    residual = (target_probs - draft_probs).clamp_min(0)
    mass = residual.sum(dim=-1, keepdim=True)
    return torch.where(mass > 0, residual / mass.clamp_min(torch.finfo(mass.dtype).tiny), target_probs)


def _check_shapes(draft_tokens: torch.Tensor, target: torch.Tensor) -> None:
    if draft_tokens.dim() != 1 or target.dim() != 2 or target.shape[0] != draft_tokens.shape[0] + 1:
        raise ValueError(
            "expected draft tokens [k] and verifier scores [k+1, V], "
            f"got {tuple(draft_tokens.shape)} and {tuple(target.shape)}"
        )
