"""A data module small enough for tests that check what `fit_module` does around training, not what it learns."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class FourFeatureData(L.LightningDataModule):
    """Eight random 4-feature rows to train on (two batches of 4), four to validate on."""

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=4)
