"""The attention kernel a training run uses, chosen for the device and precision it trains in.

On CPU under bf16 autocast, torch's scaled-dot-product flash kernel is slow to differentiate for the short sequences
these stages train on: in a fine-tune step of the tiny backbone (batch 32, 26-93 tokens) its backward took 16 ms a
layer, 27 % of the step, where eager attention's batched products take ~3 ms. Interleaved per batch in one process
(`bf16-mixed`, 22 batches each) eager steps took 0.80x the time of SDPA ones. So a bf16 run on CPU trains every
Hugging Face model of the module with eager attention and puts the model's own choice back afterwards: what is saved,
cached and decoded keeps `sdpa`, whose inference speed on CPU matched eager's here. In float32 the flash backward is
not the slow part (the vision tower's pre-training step: eager 1.04x SDPA's time), and in float64 the eager kernels
of transformers would compute the softmax in float32: both keep SDPA, as does any accelerator (flash and
memory-efficient kernels are the fast ones there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import PreTrainedModel

from pipeline.training.precision import runs_on_cuda

EAGER = "eager"
SDPA = "sdpa"
BF16 = ("bf16-mixed", "bf16-true")


def outermost_pretrained(module: torch.nn.Module) -> list[PreTrainedModel]:
    """The Hugging Face models inside `module` that no other one contains (a composite model sets its parts)."""
    found: list[PreTrainedModel] = []

    def visit(node: torch.nn.Module) -> None:
        if isinstance(node, PreTrainedModel):
            found.append(node)
            return
        for child in node.children():
            visit(child)

    visit(module)
    return found


def training_attention(accelerator: str, precision: str) -> str | None:
    """The attention a run on `accelerator` in (resolved) `precision` trains with; None: the models' own."""
    on_cpu = accelerator in ("cpu", "auto") and not runs_on_cuda(accelerator)
    return EAGER if on_cpu and precision in BF16 else None


@contextlib.contextmanager
def attention_for_training(module: torch.nn.Module, accelerator: str, precision: str) -> Iterator[str | None]:
    """Inside the block, the SDPA models of `module` attend with the kernel `training_attention` picks; yields it
    (None where nothing changed)."""
    wanted = training_attention(accelerator, precision)
    switched: list[tuple[PreTrainedModel, str]] = []
    if wanted is not None:
        for model in outermost_pretrained(module):
            own = model.config._attn_implementation
            # models that resolve attention at build time only (not through the attention interface) keep theirs
            if own == SDPA and model._can_set_attn_implementation():
                model.set_attn_implementation(wanted)
                switched.append((model, own))
    try:
        yield wanted if switched else None
    finally:
        for model, own in switched:
            model.set_attn_implementation(own)
