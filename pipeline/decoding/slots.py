"""Where each row's tokens sit in the KV cache a batch shares, so that rows advance independently without copying it.

Every forward pass appends the same number of physical slots to every row of the cache (tensor shapes are shared),
but rows accept different numbers of drafts. A slot a row does not keep (a rejected draft, a draft past the row's own
draft length, left padding) is marked dead for that row instead of being cut out: the decoders pass this validity
as the 2-D attention mask of every layer call, and each row's positions count only its live slots (RoPE and OPT's
learned positions; T5 derives its relative positions from the mask). After a verification the physical cache is cut
back to the longest row's kept slots, so a slot every row rejected costs nothing later, and nothing is ever copied;
rows are only compacted out of the batch when they finish. A single prompt never has a dead slot: its masks are None,
the fast path of the unbatched decoder.

This is BASS-PAD's design (Qian et al. 2024, padded batched speculative decoding) with the padding kept as holes in
one cache rather than re-packed every round.
"""

from __future__ import annotations

import torch


class SlotTable:
    def __init__(
        self, prompt_mask: torch.Tensor | None, batch: int, length: int, capacity: int, device: torch.device
    ) -> None:
        # Slots past the current length are "live" until something marks them dead: a forward pass appends live slots
        self.valid = torch.ones(batch, max(capacity, length), dtype=torch.bool, device=device)
        if prompt_mask is not None:
            self.valid[:, :length] = prompt_mask.bool()
        self.holes = prompt_mask is not None and not bool(prompt_mask.bool().all())
        self.length = length
        self.next_position = (
            prompt_mask.long().sum(-1) if prompt_mask is not None else torch.full((batch,), length, device=device)
        )

    def _reserve(self, length: int) -> None:
        # Rows that accept in different rounds each leave dead slots: the physical length can outgrow the longest
        # row's logical one, so the table grows (doubling) instead of assuming a bound
        if length > self.valid.shape[1]:
            more = max(length, 2 * self.valid.shape[1]) - self.valid.shape[1]
            self.valid = torch.cat([self.valid, self.valid.new_ones(self.valid.shape[0], more)], dim=1)

    def mask(self, new: int) -> torch.Tensor | None:
        """The 2-D attention mask of a call appending `new` slots (None when no row has a dead slot)."""
        if not self.holes:
            return None
        self._reserve(self.length + new)
        return self.valid[:, : self.length + new]

    def positions(self, new: int) -> torch.Tensor:
        """[B, new]: the positions of the next `new` tokens of every row."""
        return self.next_position.unsqueeze(1) + torch.arange(new, device=self.valid.device)

    def append(self, count: int, advance: bool = True) -> None:
        """A forward pass appended `count` live slots to every row (`advance`: they hold committed tokens)."""
        self._reserve(self.length + count)
        self.length += count
        if advance:
            self.next_position = self.next_position + count

    def settle(self, base: int, round_length: int, accepted: list[int]) -> int:
        """After a verification over the `round_length` slots from `base`: row b keeps the pending token's slot and its
        `accepted[b]` drafts; the rest of the round is dead for it. Cuts the table to the longest row's kept slots and
        returns that physical length (what the cache must be cropped to)."""
        keep = base + max(accepted) + 1
        kept = torch.tensor(accepted, device=self.valid.device)
        if len(accepted) > 1 and min(accepted) < max(accepted):
            dead = torch.arange(keep - base, device=self.valid.device).unsqueeze(0) > kept.unsqueeze(1)
            self.valid[:, base:keep] &= ~dead
            self.holes = True
        self.valid[:, keep : base + round_length] = True  # cut off: live again for the next appends
        self.length = keep
        self.next_position = self.next_position + kept + 1
        return keep

    def select(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (the others finished)."""
        self.valid = self.valid[rows]
        self.next_position = self.next_position[rows]
        self.holes = not bool(self.valid[:, : self.length].all())
