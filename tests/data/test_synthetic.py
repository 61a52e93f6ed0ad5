"""The synthetic generator: determinism, coverage, text constraints, consistency with the pixels."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.descriptions import load_descriptions
from pipeline.data.karpathy import load_karpathy
from pipeline.data.scene import BACKGROUND, COLOURS, POSITIONS, SHAPES
from pipeline.data.synthetic import generate_synthetic_dataset
from pipeline.data.vqa import find_vqa_files, load_vqa

COUNTS = {"train": 240, "val": 30, "test": 30}
OBJECT_SENTENCE = re.compile(r"(?:a|an) (small|large) (\w+) (\w+) is (?:in|at|on) the ([a-z ]+?) \.")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_synthetic_dataset(out, n_train=COUNTS["train"], n_val=COUNTS["val"], n_test=COUNTS["test"], seed=7)
    return out


@pytest.fixture(scope="module")
def loaded(synth):
    captions = load_karpathy(synth / "dataset_coco.json", synth / "images")
    descriptions = load_descriptions(synth / "descriptions.json")
    vqa = {q.name.split("_")[3]: load_vqa(q, a) for q, a in find_vqa_files(synth / "vqa")}
    return captions, descriptions, vqa


def objects_of(description: str) -> list[tuple[str, str, str, str]]:
    """(size, colour, shape, position) of every object, read back from the description."""
    return OBJECT_SENTENCE.findall(description)


def _small(out: Path, seed: int, n_train: int = 12) -> Path:
    generate_synthetic_dataset(out, n_train=n_train, n_val=3, n_test=3, seed=seed)
    return out


def _json_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.json"))}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_same_seed_gives_identical_files_and_pixels(tmp_path):
    a, b = _small(tmp_path / "a", seed=3), _small(tmp_path / "b", seed=3)
    assert _json_bytes(a) == _json_bytes(b)
    pngs = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(pngs) == 18
    for rel in pngs:
        assert np.array_equal(_pixels(a / rel), _pixels(b / rel))


def test_different_seed_gives_different_data(tmp_path):
    a, b = _small(tmp_path / "a", seed=3), _small(tmp_path / "b", seed=4)
    assert _json_bytes(a)["dataset_coco.json"] != _json_bytes(b)["dataset_coco.json"]
    differing = [p for p in a.rglob("*.png") if not np.array_equal(_pixels(p), _pixels(b / p.relative_to(a)))]
    assert len(differing) > 10


def test_an_image_does_not_depend_on_the_split_sizes(tmp_path):
    a, b = _small(tmp_path / "a", seed=3, n_train=5), _small(tmp_path / "b", seed=3, n_train=12)
    for name in ("train/synth_train_000004.png", "val/synth_val_000002.png"):
        assert np.array_equal(_pixels(a / "images" / name), _pixels(b / "images" / name))


def test_summary_counts_per_split(tmp_path):
    summary = generate_synthetic_dataset(tmp_path, n_train=20, n_val=4, n_test=6, questions_per_image=4)
    assert summary.images == {"train": 20, "val": 4, "test": 6}
    assert summary.captions == {"train": 100, "val": 20, "test": 30}
    assert summary.questions == {"train": 80, "val": 16, "test": 24}
    assert json.loads((tmp_path / "summary.json").read_text())["images"] == summary.images
    assert len(list((tmp_path / "images" / "test").glob("*.png"))) == 6


@pytest.mark.parametrize("bad", [{"questions_per_image": 2}, {"min_objects": 3, "max_objects": 2}, {"image_size": 8}])
def test_invalid_arguments_are_rejected(tmp_path, bad):
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path, n_train=1, n_val=1, n_test=1, **bad)


def test_round_trip_through_the_real_format_readers(synth, loaded):
    captions, descriptions, vqa = loaded
    assert {s: len(r) for s, r in captions.items()} == COUNTS
    ids = {r.image_id for records in captions.values() for r in records}
    assert len(ids) == sum(COUNTS.values())
    assert set(descriptions) == ids
    assert set(vqa) == {"train", "val", "test"}
    for split, records in vqa.items():
        split_ids = {r.image_id for r in captions[split]}
        assert {q.image_id for q in records} == split_ids
        assert all(len(q.answers) == 10 and set(q.answers) == {q.answer} for q in records)
    assert captions["train"][0].image_path == synth / "images" / "train" / "synth_train_000000.png"


def test_images_are_rgb_of_the_requested_size(synth):
    image = Image.open(synth / "images" / "val" / "synth_val_000000.png")
    assert image.mode == "RGB" and image.size == (64, 64)


def test_every_image_has_five_distinct_short_lowercase_captions(loaded):
    for records in loaded[0].values():
        for record in records:
            assert len(record.captions) == 5
            assert len(set(record.captions)) == 5
            for caption in record.captions:
                assert caption == caption.lower()
                assert 5 <= len(caption.split()) <= 22, caption
                assert not re.search(r"\w[.,:?]", caption), "punctuation must be a separate token"


def test_descriptions_are_30_to_80_words_and_mention_every_object(loaded):
    captions, descriptions, _ = loaded
    for records in captions.values():
        for record in records:
            text = descriptions[record.image_id]
            assert 30 <= len(text.split()) <= 80, text
            objects = objects_of(text)
            assert 1 <= len(objects) <= 4
            n = ["one", "two", "three", "four"][len(objects) - 1]
            assert f"shows {n} shape" in text


def test_at_least_two_captions_list_every_objects_colour_and_shape(loaded):
    captions, descriptions, _ = loaded
    for records in captions.values():
        for record in records:
            objects = objects_of(descriptions[record.image_id])
            full = [c for c in record.captions if all(f"{colour} {shape}" in c for _, colour, shape, _ in objects)]
            assert len(full) >= 2, (record.captions, objects)
            if len(objects) <= 2:
                assert len(full) == 5, record.captions


def test_captions_use_varied_templates(loaded):
    first_two_words = Counter(" ".join(c.split()[:2]) for r in loaded[0]["train"] for c in r.captions)
    assert len(first_two_words) >= 7


def test_the_data_set_covers_shapes_colours_sizes_positions_and_counts(loaded):
    _captions, descriptions, _ = loaded
    objects = [o for text in descriptions.values() for o in objects_of(text)]
    assert {size for size, *_ in objects} == {"small", "large"}
    assert {colour for _, colour, _, _ in objects} == set(COLOURS) and len(COLOURS) >= 8
    assert {shape for _, _, shape, _ in objects} == set(SHAPES) and len(SHAPES) >= 5
    assert {position for *_, position in objects} == set(POSITIONS) and len(POSITIONS) == 9
    assert {len(objects_of(text)) for text in descriptions.values()} == {1, 2, 3, 4}


def test_objects_are_drawn_where_and_in_the_colour_the_text_says(synth, loaded):
    captions, descriptions, _ = loaded
    for record in captions["val"]:
        pixels = _pixels(record.image_path).astype(int)
        cells = {position: (i // 3, i % 3) for i, position in enumerate(POSITIONS)}
        described = {position: colour for _, colour, _, position in objects_of(descriptions[record.image_id])}
        for position, (row, col) in cells.items():
            cell = pixels[row * 64 // 3 : (row + 1) * 64 // 3, col * 64 // 3 : (col + 1) * 64 // 3].reshape(-1, 3)
            if position in described:
                matches = (np.abs(cell - COLOURS[described[position]]).sum(axis=1) == 0).sum()
                assert matches >= 20, (record.image_path, position)
            else:
                assert (cell == BACKGROUND).all(), (record.image_path, position)


def test_questions_cover_all_types_and_are_consistent(loaded):
    _captions, descriptions, vqa = loaded
    records = [q for split in vqa.values() for q in split]
    per_image = Counter(q.image_id for q in records)
    assert min(per_image.values()) >= 3
    assert {q.answer_type for q in records} == {"yes/no", "number", "other"}
    kinds = Counter(q.question.split()[0] + " " + q.question.split()[1] for q in records)
    for prefix in ("what colour", "how many", "where is", "is there"):
        assert kinds[prefix] >= 10, kinds
    assert {q.answer for q in records if q.answer_type == "yes/no"} == {"yes", "no"}
    assert {q.answer for q in records if q.question == "how many shapes are there ?"} == {"1", "2", "3", "4"}
    for q in records:
        objects = objects_of(descriptions[q.image_id])
        if q.question == "how many shapes are there ?":
            assert q.answer == str(len(objects))
        match = re.fullmatch(r"where is the (\w+) (\w+) \?", q.question)
        if match:  # asked only when exactly one object has that colour and shape
            hits = [o for o in objects if (o[1], o[2]) == match.groups()]
            assert len(hits) == 1 and hits[0][3] == q.answer
        match = re.fullmatch(r"what colour is the (\w+) \?", q.question)
        if match and match[1] != "shape":
            hits = [o for o in objects if o[2] == match[1]]
            assert len(hits) == 1 and hits[0][1] == q.answer


def test_questions_of_an_image_are_distinct(loaded):
    by_image: dict[int, list[str]] = {}
    for split in loaded[2].values():
        for q in split:
            by_image.setdefault(q.image_id, []).append(q.question)
    assert all(len(qs) == len(set(qs)) for qs in by_image.values())
