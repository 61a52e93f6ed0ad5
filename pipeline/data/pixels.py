"""Model-ready pixel tensors for the images of one split.

Small data sets (the synthetic one: 6,000 64×64 images ≈ 300 MB) are decoded and normalised once
and kept in memory, which removes image decoding from the training loop; large ones (COCO) are
processed per item so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from pipeline.data.images import load_image

PRELOAD_LIMIT_BYTES = 2 * 1024**3


def _processed_shape(image_processor: Any) -> tuple[int, int]:
    crop = getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None) or {}
    if "height" in crop:
        return crop["height"], crop["width"]
    edge = crop.get("shortest_edge", 224)
    return edge, edge


class PixelStore:
    def __init__(self, paths: list[Path], image_processor: Any, preload_limit_bytes: int = PRELOAD_LIMIT_BYTES) -> None:
        self.paths = list(paths)
        self.image_processor = image_processor
        height, width = _processed_shape(image_processor)
        self._cache: torch.Tensor | None = None
        if len(self.paths) * 3 * height * width * 4 <= preload_limit_bytes:
            self._cache = self._process(range(len(self.paths)))

    def _process(self, indices: Iterable[int]) -> torch.Tensor:
        chunks = []
        indices = list(indices)
        for start in range(0, len(indices), 512):
            images = [load_image(self.paths[i]) for i in indices[start : start + 512]]
            chunks.append(self.image_processor(images=images, return_tensors="pt")["pixel_values"])
        return torch.cat(chunks) if chunks else torch.empty(0)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._cache is not None:
            return self._cache[index]
        return self._process([index])[0]

    def blank_like(self, index: int) -> torch.Tensor:
        """A blank (mid-grey) image in the same normalisation: the "does the model look?" control."""
        from PIL import Image

        height, width = _processed_shape(self.image_processor)
        grey = Image.new("RGB", (width, height), (128, 128, 128))
        return self.image_processor(images=[grey], return_tensors="pt")["pixel_values"][0]
