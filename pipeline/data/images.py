"""Image loading that turns every way an image can be unusable into an `ImageError` naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import ImageError

# What PIL raises for undecodable data: unknown format, truncated stream, broken PNG chunks
# (SyntaxError), absurd dimensions (DecompressionBombError), bad header values (ValueError).
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(path: Path) -> Image.Image:
    """The decoded image in RGB, fully read now so corruption surfaces here and not in a worker later."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}; check the image root directory and the annotation file")
    try:
        with Image.open(path) as image:
            image.load()  # decoding is lazy: without this a truncated file would only fail on first pixel access
            return image.convert("RGB")
    except PermissionError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror}; check the file's permissions") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(
            f"cannot decode image {path}: {exc or type(exc).__name__}; the file is corrupt or not an image, "
            f"re-download or regenerate it"
        ) from None


def load_image_array(path: Path, size: int | None = None) -> np.ndarray:
    """uint8 H×W×3 array, resized (bicubic) to size×size when `size` is given and differs.

    Non-square images are squashed rather than cropped, so no object leaves the frame.
    """
    image = load_image(path)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)
