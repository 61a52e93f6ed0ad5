"""Karpathy split reader: the real layout loads; each malformed case names the file and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipeline.data.karpathy import load_karpathy
from pipeline.errors import DataFormatError, ImageError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "karpathy_tiny.json"


@pytest.fixture
def image_root(tmp_path) -> Path:
    root = tmp_path / "coco"
    for entry in json.loads(FIXTURE.read_text())["images"]:
        path = root / entry["filepath"] / entry["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(path, format="JPEG")
    return root


def write(tmp_path: Path, data, name: str = "dataset_coco.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def entry(**overrides) -> dict:
    base = {"filepath": "val2014", "filename": "a.jpg", "split": "val", "cocoid": 1, "sentences": [{"raw": "a cat"}]}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_real_layout_loads_with_restval_merged_into_train(image_root):
    splits = load_karpathy(FIXTURE, image_root)
    assert {s: [r.image_id for r in rs] for s, rs in splits.items()} == {
        "train": [522418, 318556],
        "val": [184613],
        "test": [391895],
    }
    test = splits["test"][0]
    assert test.image_path == image_root / "val2014" / "COCO_val2014_000000391895.jpg"
    assert len(test.captions) == 5
    assert test.captions[0] == "A man with a red helmet on a small moped on a dirt road."  # stripped
    assert splits["train"][1].image_path.parent.name == "train2014"


def test_restval_can_stay_separate(image_root):
    splits = load_karpathy(FIXTURE, image_root, restval_as_train=False)
    assert [r.image_id for r in splits["restval"]] == [522418]
    assert [r.image_id for r in splits["train"]] == [318556]


def test_missing_images_raise_image_error_listing_them(tmp_path, image_root):
    (image_root / "val2014" / "COCO_val2014_000000184613.jpg").unlink()
    (image_root / "train2014" / "COCO_train2014_000000318556.jpg").unlink()
    with pytest.raises(ImageError, match=r"2 image\(s\).*COCO_val2014_000000184613.jpg.*image_root"):
        load_karpathy(FIXTURE, image_root)
    assert len(load_karpathy(FIXTURE, image_root, check_images=False)["train"]) == 2


def test_missing_file(tmp_path):
    with pytest.raises(DataFormatError, match=r"not found: .*nope\.json"):
        load_karpathy(tmp_path / "nope.json", tmp_path)


def test_not_json_names_file_and_position(tmp_path):
    path = write(tmp_path, '{"images": [\n  {"filename": oops}]}')
    with pytest.raises(DataFormatError, match=r"dataset_coco\.json is not valid JSON.*line 2 column"):
        load_karpathy(path, tmp_path)


@pytest.mark.parametrize("data", [{"annotations": []}, [1, 2], {"images": {"a": 1}}])
def test_missing_images_list(tmp_path, data):
    with pytest.raises(DataFormatError, match=r"dataset_coco\.json: no 'images' list.*Karpathy split layout"):
        load_karpathy(write(tmp_path, data), tmp_path, check_images=False)


@pytest.mark.parametrize("key", ["sentences", "filename", "split"])
def test_entry_missing_a_key_names_index_filename_and_key(tmp_path, key):
    data = {"images": [entry(), entry(**{"cocoid": 2, "filename": "b.jpg", key: None})]}
    expected = r"images\[1\]" + (r" \(b\.jpg\)" if key != "filename" else "") + rf" has no '{key}' key"
    with pytest.raises(DataFormatError, match=expected + r".*Karpathy split layout"):
        load_karpathy(write(tmp_path, data), tmp_path, check_images=False)


def test_bad_split_value(tmp_path):
    data = {"images": [entry(split="training")]}
    with pytest.raises(DataFormatError, match=r"images\[0\] \(a\.jpg\) has split 'training', not one of train, val"):
        load_karpathy(write(tmp_path, data), tmp_path, check_images=False)


@pytest.mark.parametrize("sentences", [[], [{"tokens": ["a"]}], [{"raw": "  "}]])
def test_empty_or_rawless_sentences(tmp_path, sentences):
    data = {"images": [entry(sentences=sentences)]}
    with pytest.raises(DataFormatError, match=r"images\[0\] \(a\.jpg\) has (no sentences|sentences\[0\] without)"):
        load_karpathy(write(tmp_path, data), tmp_path, check_images=False)


def test_duplicate_image_id(tmp_path):
    data = {"images": [entry(), entry(filename="b.jpg")]}
    with pytest.raises(DataFormatError, match=r"images\[1\] \(b\.jpg\) repeats image id 1"):
        load_karpathy(write(tmp_path, data), tmp_path, check_images=False)


def test_imgid_is_the_id_when_there_is_no_cocoid(tmp_path):
    data = {"images": [entry(cocoid=None, imgid=7, filepath=None)]}
    record = load_karpathy(write(tmp_path, data), tmp_path, check_images=False)["val"][0]
    assert record.image_id == 7 and record.image_path == tmp_path / "a.jpg"
