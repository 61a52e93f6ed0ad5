"""Scenes of the synthetic data set: coloured shapes on a 3×3 grid, and how to sample them.

A scene is the single source of truth for an image: the pixels, the captions, the description
and the questions are all derived from it, so nothing in the text is absent from the picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")
PLURALS: dict[str, str] = {s: s + "es" if s.endswith("s") else s + "s" for s in SHAPES}

# Saturated colours far from each other and from the white background (yellow is the lightest,
# still well below white in blue), so a small model can tell them apart on 64×64 images.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 150, 50),
    "blue": (30, 60, 220),
    "yellow": (230, 190, 0),
    "orange": (245, 130, 20),
    "purple": (130, 40, 180),
    "pink": (250, 110, 190),
    "black": (20, 20, 20),
}
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
BACKGROUND_NAME = "white"

SIZES: tuple[str, ...] = ("small", "large")
# Half-extent of a shape as a fraction of the cell edge: large nearly fills its cell, small is about half of it.
SIZE_FRACTION: dict[str, float] = {"small": 0.24, "large": 0.42}

# Reading order (row by row); the names are what captions and answers use.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_OBJECTS = len(POSITIONS)  # at most one object per cell


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8 in reading order
    offset: tuple[int, int] = (0, 0)  # pixel jitter inside the cell; keeps positions from being pixel-exact

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def row(self) -> str:
        return ROWS[self.cell // 3]


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # sorted by cell, so every text lists them in reading order

    def __len__(self) -> int:
        return len(self.objects)


def half_extent(size: str, image_size: int) -> float:
    return SIZE_FRACTION[size] * image_size / 3


def sample_scene(rng: np.random.Generator, *, image_size: int, min_objects: int, max_objects: int) -> Scene:
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = sorted(int(c) for c in rng.choice(MAX_OBJECTS, size=n, replace=False))
    cell_edge = image_size / 3
    objects = []
    for cell in cells:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        # Jitter only as far as the shape stays inside its cell (with a 1 px margin).
        slack = max(0, int(cell_edge / 2 - half_extent(size, image_size) - 1))
        dx, dy = (int(v) for v in rng.integers(-slack, slack + 1, size=2))
        objects.append(SceneObject(shape, colour, size, cell, (dx, dy)))
    return Scene(tuple(objects))
