"""Object boxes in COCO's instances format: what the synthetic source writes, how they are read and checked, and the
per-patch labels a vision tower's region supervision trains on."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.data.instances import BACKGROUND_LABEL, Region, load_instances, patch_labels
from pipeline.data.karpathy import load_karpathy
from pipeline.data.scene import BACKGROUND, SHAPES
from pipeline.data.synthetic import generate_synthetic_dataset, instances_file_name
from pipeline.errors import DataFormatError
from tests.data.test_synthetic import objects_of


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(out, n_train=20, n_val=6, n_test=6, seed=5)
    return out


def test_every_drawn_shape_has_a_box_that_is_exactly_its_pixels_and_its_shape_as_category(synth):
    records = load_karpathy(synth / "dataset_coco.json", synth / "images")["val"]
    instances = load_instances(synth / instances_file_name("val"))
    assert instances.categories == SHAPES
    descriptions = json.loads((synth / "descriptions.json").read_text())["descriptions"]
    described = {d["image_id"]: d["description"] for d in descriptions}
    for record in records:
        pixels = np.asarray(Image.open(record.image_path).convert("RGB"))
        drawn = (pixels != BACKGROUND).any(axis=-1)
        inside = np.zeros_like(drawn)
        regions = instances.regions.get(record.image_id, [])
        assert instances.image_sizes[record.image_id] == (64, 64)
        for region in regions:
            x, y, w, h = (int(v) for v in region.box)
            assert drawn[y : y + h, x : x + w].any()
            # tight: each edge row / column of the box holds a pixel of the shape
            assert drawn[y, x : x + w].any() and drawn[y + h - 1, x : x + w].any(), region
            assert drawn[y : y + h, x].any() and drawn[y : y + h, x + w - 1].any(), region
            inside[y : y + h, x : x + w] = True
            assert SHAPES[region.category] in described[record.image_id]
        assert not (drawn & ~inside).any(), record.image_path  # no drawn pixel outside every box
        assert len(regions) == len(objects_of(described[record.image_id]))  # a box per object the text names


def test_a_patch_is_labelled_with_the_box_centred_in_it_the_largest_winning_and_resizing_changes_nothing():
    regions = [Region(2, (0, 0, 10, 10)), Region(4, (40, 40, 20, 20)), Region(1, (44, 44, 6, 6))]
    labels = patch_labels(regions, 64, 64, grid=3)
    expected = [BACKGROUND_LABEL] * 9
    expected[0], expected[8] = 3, 5  # centre (5, 5) → patch 0; centres (50, 50) and (47, 47) → patch 8, larger wins
    assert labels == expected
    scaled = [Region(r.category, tuple(v * 1.5 for v in r.box)) for r in regions]  # type: ignore[misc]
    assert patch_labels(scaled, 96, 96, grid=3) == expected
    assert patch_labels(regions, 64, 64, grid=2) == [3, BACKGROUND_LABEL, BACKGROUND_LABEL, 5]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["annotations"][0].update(image_id=999), r"annotations\[0\] refers to image 999"),
        (lambda d: d["annotations"][0].update(category_id=77), r"annotations\[0\] has category_id 77"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 4]), r"annotations\[0\] has bbox \[1, 2, 0, 4\]"),
        (lambda d: d.pop("categories"), r"is not a COCO instances file \(KeyError"),
    ],
)
def test_a_malformed_instances_file_is_refused_naming_the_entry(synth, tmp_path, change, message):
    document = json.loads((synth / instances_file_name("train")).read_text())
    change(document)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(document))
    with pytest.raises(DataFormatError, match=message):
        load_instances(path)
    with pytest.raises(DataFormatError, match="does not exist"):
        load_instances(tmp_path / "missing.json")
