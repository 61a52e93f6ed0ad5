"""The early-exit drafter with a head that keeps its own attention cache (the imitation network's attention variant):
the prompt and plain decoding steps leave their slots unseen until the head drafts, and then it sees them all in one
call. Its drafts must be exactly those of a head that saw every slot as it came."""

from __future__ import annotations

import torch

from pipeline.config import ImitationArchitecture
from pipeline.decoding.drafters import EarlyExitDrafter
from pipeline.models.adapters import adapter_for
from pipeline.models.imitation import ImitationNetwork, as_draft_head
from tests.conftest import make_causal_lm


def _attention_head(hidden: int) -> torch.nn.Module:
    torch.manual_seed(0)
    network = ImitationNetwork(hidden, ImitationArchitecture(attention=True, num_heads=2, residual=False))
    return as_draft_head(network.double().eval())


def test_slots_left_unseen_by_plain_steps_give_the_drafts_of_a_head_that_saw_each_one():
    model = make_causal_lm("llama")
    adapter = adapter_for(model)
    hidden = adapter.hidden_size
    generator = torch.Generator().manual_seed(0)
    batch, prompt, steps = 3, 5, 6
    states = torch.randn(batch, prompt + steps + 1, hidden, dtype=torch.float64, generator=generator)
    positions = torch.arange(prompt + steps + 1).expand(batch, -1)
    mask = torch.ones(batch, prompt + steps + 1, dtype=torch.long)
    mask[1, :2] = 0  # a left-padded row

    def slot(i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return states[:, i : i + 1], mask[:, : i + 1], positions[:, i : i + 1]

    lazy = EarlyExitDrafter(adapter, 1, _attention_head(hidden))
    calls: list[int] = []
    assert lazy.head is not None
    lazy.head.register_forward_hook(lambda module, args, output: calls.append(output.shape[1]))
    lazy.reset()
    lazy.observe_prompt(states[:, :prompt], mask[:, :prompt], positions[:, :prompt])
    eager = _attention_head(hidden)
    eager.reset()
    eager(states[:, :prompt], attention_mask=mask[:, :prompt], position_ids=positions[:, :prompt])
    for i in range(prompt, prompt + steps):  # plain steps: each kept its round's one slot
        unseen, slot_mask, where = slot(i)
        lazy.after_verify(i + 1, unseen, slot_mask, where)
        eager(unseen, attention_mask=slot_mask, position_ids=where)
    assert calls == []  # neither the prompt nor the plain steps ran the head
    # the batch drops its first row, then drafts from the next slot
    rows = torch.tensor([1, 2])
    lazy.select(rows)
    eager.select(rows)
    unseen, slot_mask, where = (t[rows] for t in slot(prompt + steps))
    drafted = lazy.draft_hidden(unseen, None, where, attention_mask=slot_mask)  # type: ignore[arg-type]
    expected = eager(unseen, attention_mask=slot_mask, position_ids=where)
    torch.testing.assert_close(drafted, expected, rtol=1e-12, atol=1e-12)
    assert calls == [prompt + steps, 1]  # what it had not seen in one call, then the draft
    assert lazy.head.attention.keys.shape == eager.attention.keys.shape  # type: ignore[union-attr]
