"""A tiny prepared data set and tokenizer shared by the training tests."""

import pytest

from pipeline.config import TinyLlavaConfig
from pipeline.data.examples import MANIFEST, load_prepared
from pipeline.data.synthetic import generate_synthetic_dataset
from pipeline.data.tokenizer import train_word_tokenizer
from pipeline.io import atomic_write_json

TINY = TinyLlavaConfig(num_layers=4, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=2,
                       vision_layers=1, vision_hidden_size=32, vision_intermediate_size=64, vision_heads=2)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_synthetic_dataset(root, n_train=24, n_val=8, n_test=4, seed=0)
    atomic_write_json(root / MANIFEST, {"karpathy_json": "dataset_coco.json", "image_root": "images",
                                        "descriptions_json": "descriptions.json", "vqa": []})
    splits = load_prepared(root)
    texts = [c for r in splits["train"].images for c in r.captions] + ["caption :", "describe :"]
    texts += [d for s in splits.values() for d in s.descriptions.values()]
    tokenizer = train_word_tokenizer(texts, root / "tok")
    return splits, tokenizer
