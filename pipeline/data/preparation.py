"""The `prepare` stage's work: a data set in the real formats (Karpathy split, VQAv2) plus its tokenizer, in one
directory whose `manifest.json` every later stage reads.

`data.source: synthetic` generates the data; `data.source: files` points at real COCO/VQAv2 files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.data.prepared import MANIFEST, SplitData, load_prepared
from pipeline.data.synthetic import SPLITS, generate_synthetic_dataset, instances_file_name
from pipeline.data.tokenizer import train_word_tokenizer
from pipeline.data.vqa import find_vqa_files
from pipeline.io import atomic_write_json
from pipeline.models.presets import PRESETS


def write_dataset(params: Params, out: Path) -> dict[str, Any]:
    """Generate the synthetic data set into `out` (or point at the real files); the manifest's content."""
    data = params.data
    if data.source == "synthetic":
        s = data.synthetic
        generate_synthetic_dataset(
            out,
            n_train=s.n_train,
            n_val=s.n_val,
            n_test=s.n_test,
            image_size=s.image_size,
            min_objects=s.min_objects,
            max_objects=s.max_objects,
            questions_per_image=s.questions_per_image,
            seed=params.seed,
        )
        pairs = []
        for q, a in find_vqa_files(out / "vqa"):
            assert a is not None  # generate_synthetic_dataset writes the annotations of every split
            pairs.append({"questions": str(q.relative_to(out)), "annotations": str(a.relative_to(out))})
        # Relative to the data directory, so the output is relocatable (DVC cache, other machines).
        return {
            "karpathy_json": "dataset_coco.json",
            "image_root": "images",
            "descriptions_json": "descriptions.json",
            "vqa": pairs,
            "instances": {split: instances_file_name(split) for split in SPLITS},
            "tokenizer_dir": "tokenizer",
        }
    # DataConfig's validator requires both paths for source "files"
    assert data.karpathy_json is not None and data.image_root is not None
    vqa = find_vqa_files(Path(data.vqa_dir)) if data.vqa_dir else []
    return {
        "karpathy_json": str(Path(data.karpathy_json).resolve()),
        "image_root": str(Path(data.image_root).resolve()),
        "descriptions_json": str(Path(data.descriptions_json).resolve()) if data.descriptions_json else None,
        "vqa": [{"questions": str(q.resolve()), "annotations": str(a.resolve()) if a else None} for q, a in vqa],
        "tokenizer_dir": "tokenizer",
    }


def tokenizer_corpus(train: SplitData, params: Params) -> list[str]:
    """The texts the word tokenizer learns its vocabulary from: every training caption, description and
    question-answer pair, and the prompts (or every prompt would read as <unk>)."""
    texts = [c for r in train.images for c in r.captions] + list(train.descriptions.values())
    texts += [f"{q.question} {q.answer}" for q in train.vqa if q.answer]
    prompts = params.data.prompts
    return [*texts, prompts.caption, prompts.description, prompts.vqa.replace("{question}", "")]


def prepare_dataset(params: Params, out: Path) -> dict[str, int]:
    """Write the data set, its manifest and (for presets trained from scratch) its tokenizer into `out`; every file is
    read back in its real format before anything is kept. Returns the counts per split."""
    atomic_write_json(out / MANIFEST, write_dataset(params, out))
    splits = load_prepared(out)
    if not PRESETS[params.model.preset].needs_pretrained_path:
        train_word_tokenizer(
            tokenizer_corpus(splits["train"], params),
            out / "tokenizer",
            min_frequency=params.data.tokenizer_min_frequency,
        )
    return {
        f"{split}_{what}": n
        for split, data in splits.items()
        for what, n in (
            ("images", len(data.images)),
            ("captions", sum(len(r.captions) for r in data.images)),
            ("descriptions", len(data.descriptions)),
            ("questions", len(data.vqa)),
        )
    }
