"""The draft head seam: what an imitation network must provide to draft.

A head is any `nn.Module` mapping layer-n hidden states [B, T, H] to hidden states [B, T, H] that the
model's final norm and LM head turn into draft logits. `head=None` is the early-exit draft (LayerSkip,
"draft w/o imitation"): layer-n states go straight to the final norm.

A head may keep state across calls (e.g. its own attention layer with its own KV cache). It then
implements the `StatefulHead` protocol, and the decoder keeps that state aligned with the sequence:

- `reset()` is called at the start of every generation;
- the head is called on the prompt's layer-n states once, after the prompt has been processed, and then on
  each drafted position's layer-n state, one position per call, in sequence order;
- `crop(length)` is called after a rejection: only the first `length` positions are still valid
  (`length` counts positions from the start of the prompt, like the model's cache);
- after a fully accepted round the head is called on the last verified position it has not yet seen, so
  that its state again covers every committed position but the newest.

Every call's input continues the positions already seen: a stateful head can keep its own position
counter. A stateless head never sees the prompt (it would not need it) and is called only to draft.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class StatefulHead(Protocol):
    def reset(self) -> None: ...

    def crop(self, length: int) -> None: ...


def is_stateful(head: nn.Module | None) -> bool:
    return head is not None and isinstance(head, StatefulHead)
