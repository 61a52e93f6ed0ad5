from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.data.images import load_image, load_image_array
from pipeline.errors import ImageError


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def noisy(size=(32, 24), mode="RGB") -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(), mode=mode)


def test_loads_rgb_from_other_modes(tmp_path):
    path = tmp_path / "rgba.png"
    noisy(mode="RGBA").save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (32, 24)


def test_missing_image(tmp_path):
    path = tmp_path / "missing.png"
    with pytest.raises(ImageError, match=r"image file not found: .*missing\.png"):
        load_image(path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match=r"cannot decode image .*garbage\.png: .*corrupt or not an image"):
        load_image(path)


def test_truncated_png(tmp_path):
    data = png_bytes(noisy((64, 64)))
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cannot decode image .*truncated\.png"):
        load_image(path)


def test_array_keeps_or_resizes(tmp_path):
    path = tmp_path / "a.png"
    noisy().save(path)
    original = load_image_array(path)
    assert original.shape == (24, 32, 3) and original.dtype == np.uint8
    assert load_image_array(path, 16).shape == (16, 16, 3)
    square = tmp_path / "square.png"
    noisy((16, 16)).save(square)
    assert np.array_equal(load_image_array(square, 16), np.asarray(Image.open(square).convert("RGB")))
