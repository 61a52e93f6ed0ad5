"""The prepared data set: what `prepare` writes (manifest, files in the real formats, tokenizer) and how the reader
reports what is missing."""

from __future__ import annotations

import json

import pytest

from pipeline.config import parse_params
from pipeline.data.preparation import prepare_dataset
from pipeline.data.prepared import MANIFEST, load_prepared, read_manifest
from pipeline.data.synthetic import generate_synthetic_dataset
from pipeline.data.tokenizer import load_word_tokenizer
from pipeline.errors import DataFormatError, ImageError
from pipeline.io import atomic_write_json


def test_prepare_writes_a_relocatable_manifest_the_splits_and_a_tokenizer_that_knows_the_prompts(tmp_path):
    params = parse_params({"data": {"synthetic": {"n_train": 6, "n_val": 2, "n_test": 2}}})
    summary = prepare_dataset(params, tmp_path)
    assert summary["train_images"] == 6 and summary["val_images"] == 2 and summary["test_images"] == 2
    assert summary["train_captions"] == 30 and summary["train_descriptions"] == 6 and summary["train_questions"] == 18
    manifest = read_manifest(tmp_path)
    assert manifest["karpathy_json"] == "dataset_coco.json" and not any(
        str(v).startswith("/") for v in (manifest["karpathy_json"], manifest["image_root"], manifest["tokenizer_dir"])
    )
    tokenizer = load_word_tokenizer(tmp_path / manifest["tokenizer_dir"])
    for word in ("caption", "describe", "question", "answer", ":"):
        assert tokenizer.convert_tokens_to_ids(word) != tokenizer.unk_token_id, word
    splits = load_prepared(tmp_path)
    assert len(splits["train"].examples("vqa")) == 18


def test_prepared_data_with_a_missing_image_names_it(tmp_path):
    generate_synthetic_dataset(tmp_path, n_train=3, n_val=2, n_test=2, seed=0)
    atomic_write_json(
        tmp_path / MANIFEST,
        {"karpathy_json": "dataset_coco.json", "image_root": "images", "vqa": [], "descriptions_json": None},
    )
    victim = next((tmp_path / "images" / "val").glob("*.png"))
    victim.unlink()
    with pytest.raises(ImageError, match=victim.name):
        load_prepared(tmp_path)


def test_a_missing_or_corrupt_manifest_says_to_run_prepare(tmp_path):
    with pytest.raises(DataFormatError, match=r"no manifest\.json in .*dvc repro prepare"):
        load_prepared(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(DataFormatError, match=r"manifest\.json is not valid JSON.*re-run the prepare stage"):
        read_manifest(tmp_path)


def test_prepared_instances_that_miss_an_image_of_their_split_name_it(tmp_path):
    params = parse_params({"data": {"synthetic": {"n_train": 4, "n_val": 2, "n_test": 2}}})
    prepare_dataset(params, tmp_path)
    splits = load_prepared(tmp_path)
    assert all(split.instances is not None for split in splits.values())
    path = tmp_path / read_manifest(tmp_path)["instances"]["val"]
    document = json.loads(path.read_text())
    gone = document["images"].pop(0)["id"]
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] != gone]
    path.write_text(json.dumps(document))
    with pytest.raises(
        DataFormatError,
        match=rf"instances_val\.json lists no entry for 1 of the val split's images \(first: image id {gone}\)",
    ):
        load_prepared(tmp_path)
