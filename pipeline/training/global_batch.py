"""The loss of a global batch when several processes share it.

Every loss in training is a mean over the batch's scored (target) tokens. Under DDP each process computes its own
mean over its slice and DDP averages the gradients, which weighs every slice equally however many tokens it holds:
a slice of short captions would count as much as one of long descriptions. Scaling each process's loss by
`world_size · n_local / n_global` (n: scored tokens) makes the averaged gradient that of the mean over the whole
global batch, the one a single process computes, and the synced logged loss its value.
"""

from __future__ import annotations

import lightning as L
import torch

from pipeline.data.datasets import IGNORE_INDEX


def token_share(module: L.LightningModule, labels: torch.Tensor) -> torch.Tensor | float:
    """`world_size · n_local / n_global` for a batch with `labels` (scored: the next token is not IGNORE_INDEX);
    exactly 1.0, without communication, in a single process."""
    world = module.trainer.world_size
    if world == 1:
        return 1.0
    local = (labels[:, 1:] != IGNORE_INDEX).sum()
    gathered = module.all_gather(local)  # a collective: every process calls this once per training step
    assert isinstance(gathered, torch.Tensor)
    total = gathered.sum()
    # float32: a float64 factor would promote the loss (and its backward) to float64
    return (world * local.double() / total.clamp(min=1).double()).float()
