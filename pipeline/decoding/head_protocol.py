"""The draft head seam: what an imitation network must provide to draft.

A head is any `nn.Module` mapping layer-n hidden states [B, T, H] to hidden states [B, T, H] that the
model's final norm and LM head turn into draft logits. `head=None` is the early-exit draft (LayerSkip,
"draft w/o imitation"): layer-n states go straight to the final norm.

A head may keep state across calls (e.g. its own attention layer with its own KV cache). It then
implements the `StatefulHead` protocol, and the decoder keeps that state aligned with the sequence, slot for slot
with the decoder's own cache (`pipeline.decoding.slots`):

- `reset()` is called at the start of every generation;
- it is called as `head(hidden, attention_mask=..., position_ids=...)`: first on the prompts' layer-n states (one
  call, every prompt slot), then on each drafted position's layer-n states, one slot per call, in order.
  `attention_mask` [B, S] marks which of the S slots it now holds each row may attend to (None: all of them: a
  single prompt never has a dead slot); `position_ids` [B, T] are the new slots' positions;
- `crop(length)` is called after a round whose last slot was rejected by every row: only the first `length` slots
  are still held (counted from the first prompt slot, like the decoder's cache);
- after a round whose last slot some row kept, the head is called on that slot, which it has not yet seen, so that
  its state again covers every slot but the newest pending token's;
- `select(rows)` keeps only the batch rows `rows` (the others finished); needed for batches only.

A stateless head never sees the prompt (it would not need it) and is called as `head(hidden)` only to draft.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class StatefulHead(Protocol):
    def __call__(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = ..., position_ids: torch.Tensor | None = ...
    ) -> torch.Tensor: ...

    def reset(self) -> None: ...

    def crop(self, length: int) -> None: ...


def is_stateful(head: nn.Module | None) -> bool:
    return head is not None and isinstance(head, StatefulHead)
