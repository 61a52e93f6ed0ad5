"""Reader for the long-description file (this project's own format, written by the synthetic generator).

Layout: {"descriptions": [{"image_id": int, "description": str}, ...]}, at most one description per
image; `image_id` is the Karpathy entry's `cocoid`.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import DataFormatError
from pipeline.io import read_json

LAYOUT_HINT = 'expected {"descriptions": [{"image_id": int, "description": str}, ...]}'


def load_descriptions(path: Path) -> dict[int, str]:
    path = Path(path)
    data = read_json(path, what="a descriptions file")
    if not isinstance(data, dict) or not isinstance(data.get("descriptions"), list):
        raise DataFormatError(f"{path}: no 'descriptions' list at the top level; {LAYOUT_HINT}")
    out: dict[int, str] = {}
    for i, entry in enumerate(data["descriptions"]):
        image_id = entry.get("image_id") if isinstance(entry, dict) else None
        text = entry.get("description") if isinstance(entry, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DataFormatError(f"{path}: descriptions[{i}] has no integer 'image_id'; {LAYOUT_HINT}")
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(
                f"{path}: descriptions[{i}] (image_id {image_id}) has no non-empty 'description' string; {LAYOUT_HINT}"
            )
        if image_id in out:
            raise DataFormatError(
                f"{path}: descriptions[{i}] repeats image_id {image_id}; keep one description per image"
            )
        out[image_id] = text.strip()
    return out
