"""A tiny repository for search tests: prepared synthetic data, a saved tiny backbone, a layer choice, and
small search spaces — what the nas / sweep stages read, in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import ModelConfig, parse_params
from pipeline.data.examples import MANIFEST, load_prepared
from pipeline.data.synthetic import generate_synthetic_dataset
from pipeline.data.tokenizer import train_word_tokenizer
from pipeline.io import atomic_write_json
from pipeline.models.loading import build_backbone, save_backbone
from tests.training.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]

TINY_PARAMS = {
    "model": {"tiny": TINY.model_dump()},
    "imitation": {"max_steps": 4, "batch_size": 8, "val_every_steps": 2, "val_batches": 1, "val_decode_prompts": 1,
                  "warmup_steps": 1, "variants": ["ce"]},
    "ray": {"num_cpus": 2, "max_failures": 1, "cluster_gpus_per_trial": 0},  # the loopback head has no GPU
    "nas": {"num_samples": 2, "max_steps": 4, "report_every_steps": 2, "val_batches": 1, "val_decode_prompts": 1},
    "sweep": {"train_steps": 4, "captions": 2, "descriptions": 1},
    "decoding": {"growing": {"d_min": 1, "d_max": 3, "step": 4}},
}
NAS_SPACE = "space:\n  num_linear: {choice: [1, 2]}\n  activation: {choice: [gelu, relu]}\n"
SWEEP_SPACE = "space:\n  draft_layers: {grid: [1, 2]}\n  loss: {grid: [ce]}\n  draft_len: {grid: [2, growing]}\n"


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    (root / "dvc.yaml").write_text("stages: {}\n")  # marks the repository root (tracking.repo_root)
    data = root / "data/prepared"
    generate_synthetic_dataset(data, n_train=24, n_val=8, n_test=4, seed=0)
    atomic_write_json(data / MANIFEST, {"karpathy_json": "dataset_coco.json", "image_root": "images",
                                        "descriptions_json": "descriptions.json", "vqa": []})
    splits = load_prepared(data)
    texts = [c for s in splits.values() for r in s.images for c in r.captions] + ["caption :", "describe :"]
    texts += [d for s in splits.values() for d in s.descriptions.values()]
    tokenizer = train_word_tokenizer(texts, root / "tok")
    save_backbone(build_backbone(ModelConfig(tiny=TINY), tokenizer, seed=0), root / "models/finetuned")
    (root / "metrics").mkdir()
    (root / "metrics/layer_choice.json").write_text(json.dumps({"chosen_n": 1}))
    spaces = root / "experiments/search_spaces"
    spaces.mkdir(parents=True)
    (spaces / "nas.yaml").write_text(NAS_SPACE)
    (spaces / "sweep.yaml").write_text(SWEEP_SPACE)
    return root


def tiny_params(**overrides):
    raw = json.loads(json.dumps(TINY_PARAMS))
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return parse_params(raw)
