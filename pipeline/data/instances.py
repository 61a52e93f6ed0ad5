"""Object boxes in COCO's instances format (`instances_<split>.json`: images, annotations with `bbox` and
`category_id`, categories), and the per-patch labels a vision tower's region supervision trains on.

The synthetic source writes one file per split (`annotations/instances_<split>.json`, the boxes of the shapes it
drew, the shape as the category); `finetune.vision_pretraining.region_weight` reads them. Only the fields used here
are required: `images[].id/width/height`, `annotations[].image_id/category_id/bbox`, `categories[].id/name`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import DataFormatError

Box = tuple[float, float, float, float]  # x, y, width, height in pixels of the image file (COCO's bbox)
BACKGROUND_LABEL = 0  # a patch no box is centred in; category i of `Instances.categories` is label i + 1


@dataclass(frozen=True)
class Region:
    category: int  # index into `Instances.categories`
    box: Box


@dataclass(frozen=True)
class Instances:
    categories: tuple[str, ...]
    image_sizes: dict[int, tuple[int, int]]  # image id → (width, height)
    regions: dict[int, list[Region]]  # image id → its boxes (an image without objects has none)

    def patch_labels(self, image_id: int, grid: int) -> list[int]:
        """Labels of the `grid × grid` patches (row by row) the image is cut into."""
        width, height = self.image_sizes[image_id]
        return patch_labels(self.regions.get(image_id, []), width, height, grid)


def patch_labels(regions: Sequence[Region], width: int, height: int, grid: int) -> list[int]:
    """Per patch of a `grid × grid` tiling of a `width × height` image (row-major, as a ViT orders its patch
    tokens): 1 + the category of the box whose centre lies in it, the largest box where several do, else
    `BACKGROUND_LABEL`. Tiling fractions of the image, so resizing the image before the tower changes nothing."""
    labels = [BACKGROUND_LABEL] * (grid * grid)
    areas = [0.0] * (grid * grid)
    for region in regions:
        x, y, w, h = region.box
        column = min(grid - 1, max(0, int((x + w / 2) / width * grid)))
        row = min(grid - 1, max(0, int((y + h / 2) / height * grid)))
        patch = row * grid + column
        if w * h > areas[patch]:
            labels[patch], areas[patch] = region.category + 1, w * h
    return labels


def instances_document(
    categories: Sequence[str], images: Sequence[dict], boxes: Sequence[tuple[int, str, Box]]
) -> dict:
    """A COCO instances document: `images` as COCO writes them (id, file_name, width, height), `boxes` as (image id,
    category name, box)."""
    ids = {name: i + 1 for i, name in enumerate(categories)}
    annotations = [
        {
            "id": k + 1,
            "image_id": image_id,
            "category_id": ids[name],
            "bbox": list(box),
            "area": box[2] * box[3],
            "iscrowd": 0,
        }
        for k, (image_id, name, box) in enumerate(boxes)
    ]
    return {
        "images": list(images),
        "annotations": annotations,
        "categories": [{"id": ids[name], "name": name, "supercategory": "shape"} for name in categories],
    }


def load_instances(path: str | Path) -> Instances:
    """Read and check a COCO instances file; a malformed one stops with a one-line error naming the file and the
    first bad entry."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"instances file {path} does not exist: re-run the prepare stage")
    try:
        document = json.loads(path.read_text())
        categories = sorted(document["categories"], key=lambda c: int(c["id"]))
        names = tuple(str(c["name"]) for c in categories)
        index = {int(c["id"]): i for i, c in enumerate(categories)}
        sizes = {int(im["id"]): (int(im["width"]), int(im["height"])) for im in document["images"]}
        regions: dict[int, list[Region]] = {}
        for k, annotation in enumerate(document["annotations"]):
            where = f"{path}: annotations[{k}]"
            image_id, category = int(annotation["image_id"]), int(annotation["category_id"])
            box = tuple(float(v) for v in annotation["bbox"])
            if image_id not in sizes:
                raise DataFormatError(f"{where} refers to image {image_id}, which the file's images do not list")
            if category not in index:
                raise DataFormatError(f"{where} has category_id {category}, which the file's categories do not list")
            if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
                bbox = annotation["bbox"]
                raise DataFormatError(f"{where} has bbox {bbox!r}; expected [x, y, width > 0, height > 0]")
            regions.setdefault(image_id, []).append(Region(index[category], (box[0], box[1], box[2], box[3])))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:  # DataFormatError is none of these
        raise DataFormatError(
            f"{path} is not a COCO instances file ({type(exc).__name__}: {exc}); re-run the prepare stage"
        ) from None
    return Instances(names, sizes, regions)
