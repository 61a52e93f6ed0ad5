"""Reader for the COCO Karpathy split file (`dataset_coco.json`).

Layout (Karpathy & Fei-Fei 2015; the file the captioning literature uses):

    {"images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg",
                 "split": "train" | "restval" | "val" | "test", "cocoid": 391895, "imgid": 0,
                 "sentids": [...], "sentences": [{"raw": "A man ...", "tokens": [...], ...}, ...]}, ...],
     "dataset": "coco"}

The image is `image_root / filepath / filename`. The image id is `cocoid` (falling back to `imgid`
for the Flickr files of the same layout, which have no `cocoid`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import DataFormatError, ImageError
from pipeline.io import read_json

KARPATHY_SPLITS = ("train", "val", "test", "restval")
LAYOUT_HINT = (
    'expected the Karpathy split layout {"images": [{"filepath": "val2014", "filename": "....jpg", '
    '"split": "train|restval|val|test", "cocoid": 123, "sentences": [{"raw": "a caption"}, ...]}, ...]}'
)
_SHOW_MISSING = 5


@dataclass(frozen=True)
class CaptionRecord:
    image_id: int
    image_path: Path
    captions: tuple[str, ...]


def _entry_error(json_path: Path, index: int, entry: Any, problem: str) -> DataFormatError:
    name = entry.get("filename") if isinstance(entry, dict) else None
    where = f"images[{index}]" + (f" ({name})" if isinstance(name, str) else "")
    return DataFormatError(f"{json_path}: {where} {problem}; {LAYOUT_HINT}")


def _parse_entry(json_path: Path, image_root: Path, index: int, entry: Any) -> tuple[str, CaptionRecord]:
    if not isinstance(entry, dict):
        raise _entry_error(json_path, index, entry, f"is a {type(entry).__name__}, not an object")
    for key in ("filename", "split", "sentences"):
        if key not in entry:
            raise _entry_error(json_path, index, entry, f"has no {key!r} key")
    filename, split, sentences = entry["filename"], entry["split"], entry["sentences"]
    filepath = entry.get("filepath", "")
    if not isinstance(filename, str) or not filename or not isinstance(filepath, str):
        raise _entry_error(json_path, index, entry, "has a 'filename' or 'filepath' that is not a non-empty string")
    if split not in KARPATHY_SPLITS:
        raise _entry_error(json_path, index, entry, f"has split {split!r}, not one of {', '.join(KARPATHY_SPLITS)}")
    image_id = entry.get("cocoid", entry.get("imgid"))
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        raise _entry_error(json_path, index, entry, "has no integer 'cocoid' (or 'imgid') to use as the image id")
    if not isinstance(sentences, list) or not sentences:
        raise _entry_error(json_path, index, entry, "has no sentences ('sentences' must be a non-empty list)")
    captions = []
    for k, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str) or not raw.strip():
            raise _entry_error(json_path, index, entry, f"has sentences[{k}] without a non-empty 'raw' string")
        captions.append(raw.strip())
    return split, CaptionRecord(image_id, image_root / filepath / filename, tuple(captions))


def _check_images(records: dict[str, list[CaptionRecord]], json_path: Path, image_root: Path) -> None:
    missing = [r.image_path for split in records.values() for r in split if not r.image_path.exists()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:_SHOW_MISSING])
        more = f" (and {len(missing) - _SHOW_MISSING} more)" if len(missing) > _SHOW_MISSING else ""
        raise ImageError(
            f"{len(missing)} image(s) listed in {json_path} do not exist: {shown}{more}; "
            f"check image_root ({image_root}): it must contain the 'filepath' folders (e.g. train2014/, val2014/)"
        )


def load_karpathy(
    json_path: Path, image_root: Path, *, check_images: bool = True, restval_as_train: bool = True
) -> dict[str, list[CaptionRecord]]:
    """Caption records per split ("train", "val", "test"; plus "restval" unless merged into "train").

    "restval" (the 30k val2014 images outside Karpathy's val/test) joins "train" by default, as in
    the usual 113k-image training set.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    data = read_json(json_path, what="a Karpathy split file (dataset_coco.json)")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        got = f"an object with keys {sorted(data)[:8]}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise DataFormatError(f"{json_path}: no 'images' list at the top level (got {got}); {LAYOUT_HINT}")
    splits = ("train", "val", "test") if restval_as_train else KARPATHY_SPLITS
    records: dict[str, list[CaptionRecord]] = {s: [] for s in splits}
    seen: dict[int, int] = {}
    for index, entry in enumerate(data["images"]):
        split, record = _parse_entry(json_path, image_root, index, entry)
        if record.image_id in seen:
            raise _entry_error(
                json_path, index, entry, f"repeats image id {record.image_id} of images[{seen[record.image_id]}]"
            )
        seen[record.image_id] = index
        records["train" if split == "restval" and restval_as_train else split].append(record)
    if check_images:
        _check_images(records, json_path, image_root)
    return records
