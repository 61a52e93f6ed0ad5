"""Deterministic synthetic captioning / description / VQA data set, written in the real formats.

Each image shows 1–4 coloured shapes on a white background, one per cell of a 3×3 grid (see
`pipeline.data.scene`). The files are laid out exactly like the real data, so the same readers
(`load_karpathy`, `load_vqa`, `load_descriptions`) load synthetic and real data:

    out_dir/images/{split}/synth_{split}_{index:06d}.png
    out_dir/dataset_coco.json                        Karpathy split layout (5 captions per image)
    out_dir/descriptions.json                        {"descriptions": [{"image_id": cocoid, "description": str}]}
    out_dir/vqa/v2_OpenEnded_mscoco_{split}_questions.json
    out_dir/vqa/v2_mscoco_{split}_annotations.json   VQAv2 layout (all 10 annotators agree)
    out_dir/annotations/instances_{split}.json       COCO instances layout: each shape's box, its shape the category
    out_dir/summary.json                             what `generate_synthetic_dataset` returns

`descriptions.json` is this project's own format: one long (30–80 token) description per image,
keyed by the Karpathy entry's `cocoid`. Text is lower case with punctuation as separate tokens.

Determinism: image `index` of `split` uses its own random generator seeded by (seed, split,
index), so the same seed gives byte-identical files, and an image does not depend on `n_*`.
Ids are stable too: cocoid = split_code × 1,000,000 + index, question_id = cocoid × 10 + k.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.data.instances import Box, instances_document
from pipeline.data.scene import MAX_OBJECTS, SHAPES, sample_scene
from pipeline.data.scene_questions import MAX_QUESTIONS, MIN_QUESTIONS, ask_questions
from pipeline.data.scene_render import object_box, render_scene
from pipeline.data.scene_text import choose_templates, describe, render_caption
from pipeline.io import atomic_save_png, atomic_write_json

SPLITS: tuple[str, ...] = ("train", "val", "test")
_SPLIT_CODE = {"train": 1, "val": 2, "test": 3}
_IDS_PER_SPLIT = 1_000_000


@dataclass(frozen=True)
class SyntheticSummary:
    images: dict[str, int]
    captions: dict[str, int]
    questions: dict[str, int]
    shapes: int  # distinct values used across the data set
    colours: int
    sizes: int
    positions: int
    templates: int
    object_counts: list[int]  # distinct numbers of objects per image
    question_kinds: dict[str, int]
    answer_types: dict[str, int]
    vocabulary_size: int  # distinct whitespace tokens over captions, descriptions, questions and answers
    description_words: tuple[int, int]  # (min, max)

    def to_dict(self) -> dict:
        return asdict(self)


def instances_file_name(split: str) -> str:
    """Where a split's COCO instances file goes, relative to the data set's directory."""
    return f"annotations/instances_{split}.json"


def vqa_file_names(split: str) -> tuple[str, str]:
    """(questions, annotations) file names of a VQAv2 subtype."""
    return f"v2_OpenEnded_mscoco_{split}_questions.json", f"v2_mscoco_{split}_annotations.json"


def _validate(
    counts: dict[str, int], image_size: int, min_objects: int, max_objects: int, questions: int, seed: int
) -> None:
    for split, n in counts.items():
        if not 0 <= n < _IDS_PER_SPLIT:
            raise ValueError(f"n_{split} must be between 0 and {_IDS_PER_SPLIT - 1}, got {n}")
    if image_size < 24:
        raise ValueError(f"image_size must be at least 24 pixels so small shapes stay recognisable, got {image_size}")
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {min_objects}..{max_objects}")
    if not MIN_QUESTIONS <= questions <= MAX_QUESTIONS:
        raise ValueError(f"questions_per_image must be between {MIN_QUESTIONS} and {MAX_QUESTIONS}, got {questions}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")


def _info(split: str) -> tuple[dict, dict]:
    # Fixed strings (no dates), so the files stay byte-identical across runs.
    info = {
        "description": f"fastvlm-ssd synthetic shapes VQA ({split})",
        "url": "",
        "version": "1.0",
        "year": 2024,
        "contributor": "pipeline.data.synthetic",
        "date_created": "",
    }
    return info, {"name": "generated data, no licence restrictions", "url": ""}


def generate_synthetic_dataset(
    out_dir: Path,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    image_size: int = 64,
    min_objects: int = 1,
    max_objects: int = 4,
    questions_per_image: int = 3,
    seed: int = 0,
) -> SyntheticSummary:
    out_dir = Path(out_dir)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    _validate(counts, image_size, min_objects, max_objects, questions_per_image, seed)

    karpathy_images: list[dict] = []
    descriptions: list[dict] = []
    vqa_questions: dict[str, list[dict]] = {s: [] for s in SPLITS}
    vqa_annotations: dict[str, list[dict]] = {s: [] for s in SPLITS}
    instance_images: dict[str, list[dict]] = {s: [] for s in SPLITS}
    instance_boxes: dict[str, list[tuple[int, str, Box]]] = {s: [] for s in SPLITS}
    used: dict[str, Counter] = {
        k: Counter() for k in ("shape", "colour", "size", "cell", "template", "n", "kind", "atype")
    }
    vocabulary: set[str] = set()
    description_words: list[int] = []
    sentid = 0

    for split in SPLITS:
        for index in range(counts[split]):
            rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
            scene = sample_scene(rng, image_size=image_size, min_objects=min_objects, max_objects=max_objects)
            templates = choose_templates(rng)
            qas = ask_questions(scene, rng, questions_per_image)
            cocoid = _SPLIT_CODE[split] * _IDS_PER_SPLIT + index
            filename = f"synth_{split}_{index:06d}.png"
            atomic_save_png(out_dir / "images" / split / filename, render_scene(scene, image_size))

            captions = [render_caption(t, scene) for t in templates]
            imgid = len(karpathy_images)
            sentences = [
                {"tokens": c.split(), "raw": c, "imgid": imgid, "sentid": sentid + k} for k, c in enumerate(captions)
            ]
            karpathy_images.append(
                {
                    "filepath": split,
                    "sentids": [s["sentid"] for s in sentences],
                    "filename": filename,
                    "imgid": imgid,
                    "split": split,
                    "sentences": sentences,
                    "cocoid": cocoid,
                }
            )
            sentid += len(sentences)
            instance_images[split].append(
                {"id": cocoid, "file_name": filename, "width": image_size, "height": image_size}
            )
            instance_boxes[split] += [(cocoid, o.shape, object_box(o, image_size)) for o in scene.objects]
            description = describe(scene)
            descriptions.append({"image_id": cocoid, "description": description})

            for k, qa in enumerate(qas):
                question_id = cocoid * 10 + k
                vqa_questions[split].append({"image_id": cocoid, "question": qa.question, "question_id": question_id})
                vqa_annotations[split].append(
                    {
                        "question_type": qa.question_type,
                        "multiple_choice_answer": qa.answer,
                        "answers": [
                            {"answer": qa.answer, "answer_confidence": "yes", "answer_id": a} for a in range(1, 11)
                        ],
                        "image_id": cocoid,
                        "answer_type": qa.answer_type,
                        "question_id": question_id,
                    }
                )

            for o in scene.objects:
                used["shape"][o.shape] += 1
                used["colour"][o.colour] += 1
                used["size"][o.size] += 1
                used["cell"][o.cell] += 1
            used["template"].update(templates)
            used["n"][len(scene)] += 1
            used["kind"].update(qa.kind for qa in qas)
            used["atype"].update(qa.answer_type for qa in qas)
            for text in [*captions, description, *(f"{qa.question} {qa.answer}" for qa in qas)]:
                vocabulary.update(text.split())
            description_words.append(len(description.split()))

    # Annotation files last: a reader never sees captions for images that were not written.
    atomic_write_json(out_dir / "dataset_coco.json", {"images": karpathy_images, "dataset": "coco"}, indent=None)
    atomic_write_json(out_dir / "descriptions.json", {"descriptions": descriptions}, indent=None)
    for split in SPLITS:
        info, licence = _info(split)
        questions_name, annotations_name = vqa_file_names(split)
        questions_doc = {
            "info": info,
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "license": licence,
            "data_subtype": split,
            "questions": vqa_questions[split],
        }
        annotations_doc = {
            "info": info,
            "license": licence,
            "data_subtype": split,
            "annotations": vqa_annotations[split],
        }
        atomic_write_json(out_dir / "vqa" / questions_name, questions_doc, indent=None)
        atomic_write_json(out_dir / "vqa" / annotations_name, annotations_doc, indent=None)
        atomic_write_json(
            out_dir / instances_file_name(split),
            instances_document(SHAPES, instance_images[split], instance_boxes[split]),
            indent=None,
        )

    summary = SyntheticSummary(
        images=dict(counts),
        captions={s: sum(len(e["sentences"]) for e in karpathy_images if e["split"] == s) for s in SPLITS},
        questions={s: len(vqa_questions[s]) for s in SPLITS},
        shapes=len(used["shape"]),
        colours=len(used["colour"]),
        sizes=len(used["size"]),
        positions=len(used["cell"]),
        templates=len(used["template"]),
        object_counts=sorted(used["n"]),
        question_kinds=dict(sorted(used["kind"].items())),
        answer_types=dict(sorted(used["atype"].items())),
        vocabulary_size=len(vocabulary),
        description_words=(min(description_words, default=0), max(description_words, default=0)),
    )
    atomic_write_json(out_dir / "summary.json", summary.to_dict())
    return summary
