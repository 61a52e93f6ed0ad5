"""DVC stage `prepare`: the data set in the real formats (Karpathy split, VQAv2) plus its tokenizer.

`data.source: synthetic` generates the data; `data.source: files` points at real COCO/VQAv2 files.
Either way the output directory holds `manifest.json`, which every later stage reads.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.examples import MANIFEST, load_prepared
from pipeline.data.synthetic import generate_synthetic_dataset
from pipeline.data.tokenizer import train_word_tokenizer
from pipeline.data.vqa import find_vqa_files
from pipeline.io import atomic_directory, atomic_write_json
from pipeline.models.presets import PRESETS
from stages._common import run_stage


def _manifest(params: Params, out: Path) -> dict:
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
        # Relative to the data directory, so the output is relocatable (DVC cache, other machines).
        return {
            "karpathy_json": "dataset_coco.json",
            "image_root": "images",
            "descriptions_json": "descriptions.json",
            "vqa": [{"questions": str(q.relative_to(out)), "annotations": str(a.relative_to(out))}
                    for q, a in find_vqa_files(out / "vqa")],
            "tokenizer_dir": "tokenizer",
        }
    vqa = find_vqa_files(Path(data.vqa_dir)) if data.vqa_dir else []
    return {
        "karpathy_json": str(Path(data.karpathy_json).resolve()),
        "image_root": str(Path(data.image_root).resolve()),
        "descriptions_json": str(Path(data.descriptions_json).resolve()) if data.descriptions_json else None,
        "vqa": [{"questions": str(q.resolve()), "annotations": str(a.resolve()) if a else None} for q, a in vqa],
        "tokenizer_dir": "tokenizer",
    }


def main(params: Params) -> None:
    out_dir = Path(params.data.out_dir)
    with tracking.stage_run("prepare", params.tracking.experiment, params.model_dump(include={"seed", "data"})):
        with atomic_directory(out_dir) as tmp:
            manifest = _manifest(params, tmp)
            atomic_write_json(tmp / MANIFEST, manifest)
            splits = load_prepared(tmp)  # validates every file, in the real formats, before anything is kept
            train = splits["train"]
            if not PRESETS[params.model.preset].needs_pretrained_path:
                texts = [c for r in train.images for c in r.captions] + list(train.descriptions.values())
                texts += [f"{q.question} {q.answer}" for q in train.vqa if q.answer]
                # The prompt words must be in the vocabulary too, or every prompt would read as <unk>.
                prompts = params.data.prompts
                texts += [prompts.caption, prompts.description, prompts.vqa.replace("{question}", "")]
                train_word_tokenizer(texts, tmp / "tokenizer", min_frequency=params.data.tokenizer_min_frequency)
            summary = {
                f"{split}_{what}": n
                for split, data in splits.items()
                for what, n in (
                    ("images", len(data.images)),
                    ("captions", sum(len(r.captions) for r in data.images)),
                    ("descriptions", len(data.descriptions)),
                    ("questions", len(data.vqa)),
                )
            }
        atomic_write_json("metrics/prepare.json", summary)
        tracking.log_metrics(summary)
        print(f"prepared {out_dir}: {summary}")


if __name__ == "__main__":
    run_stage(main)
