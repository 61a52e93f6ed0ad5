"""Training/evaluation examples for the three tasks, read from a prepared data set.

A prepared data set (the `prepare` stage's output) is a manifest pointing at annotation files in
the real formats (Karpathy split JSON, VQAv2 questions/annotations, descriptions), so synthetic
and real data go through exactly this code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

from pipeline.data.descriptions import load_descriptions
from pipeline.data.instances import Instances, load_instances
from pipeline.data.karpathy import CaptionRecord, load_karpathy
from pipeline.data.vqa import VQARecord, load_vqa
from pipeline.errors import DataFormatError

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Example:
    image_index: int  # row in the split's image list
    task: str
    text: str  # the target text (a caption, a description or an answer)
    question: str | None = None
    # the target as token ids, when a model wrote it (its own greedy continuation: the features stage's
    # self-distillation) and re-tokenising its text might not give back the tokens it chose; None: tokenise `text`
    target_ids: tuple[int, ...] | None = None


@dataclass
class SplitData:
    """Everything known about one split: its images (in a fixed order) and the examples on them."""

    images: list[CaptionRecord]
    descriptions: dict[int, str] = field(default_factory=dict)
    vqa: list[VQARecord] = field(default_factory=list)
    instances: Instances | None = None  # object boxes (COCO instances), where the data set has them

    def examples(self, task: str) -> list[Example]:
        index = {record.image_id: i for i, record in enumerate(self.images)}
        if task == "caption":
            return [Example(i, task, c) for i, r in enumerate(self.images) for c in r.captions]
        if task == "description":
            return [Example(index[iid], task, text) for iid, text in sorted(self.descriptions.items()) if iid in index]
        if task == "vqa":
            return [
                Example(index[q.image_id], task, q.answer, q.question)
                for q in self.vqa
                if q.image_id in index and q.answer is not None
            ]
        raise ValueError(f"unknown task {task!r}")


@overload
def _resolve(base: Path, value: str) -> Path: ...
@overload
def _resolve(base: Path, value: str | None) -> Path | None: ...


def _resolve(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    return path if path.is_absolute() else base / path


def read_manifest(data_dir: Path) -> dict:
    path = data_dir / MANIFEST
    if not path.exists():
        raise DataFormatError(f"no {MANIFEST} in {data_dir}: run the prepare stage first (`dvc repro prepare`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path} is not valid JSON ({exc}); re-run the prepare stage") from None


def load_prepared(data_dir: str | Path, *, check_images: bool = True) -> dict[str, SplitData]:
    """All splits of a prepared data set, VQA questions assigned to the split of their image."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    captions = load_karpathy(
        _resolve(data_dir, manifest["karpathy_json"]),
        _resolve(data_dir, manifest["image_root"]),
        check_images=check_images,
    )
    descriptions_path = _resolve(data_dir, manifest.get("descriptions_json"))
    descriptions = load_descriptions(descriptions_path) if descriptions_path else {}
    questions: list[VQARecord] = []
    for pair in manifest.get("vqa", []):
        questions += load_vqa(_resolve(data_dir, pair["questions"]), _resolve(data_dir, pair.get("annotations")))
    splits = {}
    for split, records in captions.items():
        ids = {r.image_id for r in records}
        splits[split] = SplitData(
            images=records,
            descriptions={k: v for k, v in descriptions.items() if k in ids},
            vqa=[q for q in questions if q.image_id in ids],
        )
    for split, path in (manifest.get("instances") or {}).items():
        if split not in splits:
            continue
        instances_path = _resolve(data_dir, path)
        instances = load_instances(instances_path)
        missing = [r.image_id for r in splits[split].images if r.image_id not in instances.image_sizes]
        if missing:
            raise DataFormatError(
                f"{instances_path} lists no entry for {len(missing)} of the {split} split's images "
                f"(first: image id {missing[0]}); re-run the prepare stage"
            )
        splits[split].instances = instances
    return splits
