"""Reader for VQAv2 question and annotation files.

Layouts (https://visualqa.org/download.html):

    v2_OpenEnded_mscoco_{subtype}_questions.json
        {"info": ..., "task_type": "Open-Ended", "data_type": "mscoco", "license": ..., "data_subtype": ...,
         "questions": [{"image_id": 458752, "question": "What is ...?", "question_id": 458752000}, ...]}
    v2_mscoco_{subtype}_annotations.json
        {"info": ..., "license": ..., "data_subtype": ...,
         "annotations": [{"question_id": ..., "image_id": ..., "question_type": "what is this",
                          "answer_type": "yes/no" | "number" | "other", "multiple_choice_answer": "net",
                          "answers": [{"answer": "net", "answer_confidence": "yes", "answer_id": 1}, ×10]}, ...]}

Test splits ship questions only; their records have no answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import DataFormatError
from pipeline.io import read_json

QUESTIONS_HINT = (
    'expected the VQAv2 questions layout {"questions": [{"image_id": int, "question": str, "question_id": int}, ...]}'
)
ANNOTATIONS_HINT = (
    'expected the VQAv2 annotations layout {"annotations": [{"question_id": int, "image_id": int, '
    '"multiple_choice_answer": str, "answer_type": str, "answers": [{"answer": str, ...}, ...]}, ...]}'
)
# v2 names; the v1 names differ only by the missing "v2_" prefix.
_QUESTIONS_NAME = re.compile(r"^(?P<v2>v2_)?OpenEnded_mscoco_(?P<subtype>.+)_questions\.json$")
_ANNOTATIONS_NAME = re.compile(r"^(?P<v2>v2_)?mscoco_(?P<subtype>.+)_annotations\.json$")


@dataclass(frozen=True)
class VQARecord:
    question_id: int
    image_id: int
    question: str
    answers: tuple[str, ...]  # the raw annotator answers (10 in VQAv2); empty without annotations
    answer: str | None  # multiple_choice_answer: the most common annotator answer
    answer_type: str | None
    question_type: str | None = None  # VQAv2's question-prefix label ("what color is the", "how many", ...)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _list_field(path: Path, data: Any, key: str, hint: str) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        got = f"an object with keys {sorted(data)[:8]}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
        raise DataFormatError(f"{path}: no {key!r} list at the top level (got {got}); {hint}")
    return data[key]


def _entry_error(path: Path, key: str, index: int, entry: Any, problem: str, hint: str) -> DataFormatError:
    qid = entry.get("question_id") if isinstance(entry, dict) else None
    where = f"{key}[{index}]" + (f" (question_id {qid})" if _is_int(qid) else "")
    return DataFormatError(f"{path}: {where} {problem}; {hint}")


def _read_questions(path: Path) -> list[tuple[int, int, str]]:
    entries = _list_field(path, read_json(path, what="a VQAv2 questions file"), "questions", QUESTIONS_HINT)
    out = []
    seen: set[int] = set()
    for i, q in enumerate(entries):
        if not isinstance(q, dict):
            raise _entry_error(path, "questions", i, q, "is not an object", QUESTIONS_HINT)
        for key in ("question_id", "image_id"):
            if not _is_int(q.get(key)):
                raise _entry_error(path, "questions", i, q, f"has no integer {key!r}", QUESTIONS_HINT)
        if not isinstance(q.get("question"), str) or not q["question"].strip():
            raise _entry_error(path, "questions", i, q, "has no non-empty 'question' string", QUESTIONS_HINT)
        if q["question_id"] in seen:
            raise _entry_error(path, "questions", i, q, "repeats a question_id", QUESTIONS_HINT)
        seen.add(q["question_id"])
        out.append((q["question_id"], q["image_id"], q["question"].strip()))
    return out


def _read_annotations(path: Path) -> dict[int, tuple[int, tuple[str, ...], str, str | None, str | None]]:
    """question_id -> (image_id, answers, multiple_choice_answer, answer_type, question_type)."""
    entries = _list_field(path, read_json(path, what="a VQAv2 annotations file"), "annotations", ANNOTATIONS_HINT)
    out = {}
    for i, a in enumerate(entries):
        if not isinstance(a, dict):
            raise _entry_error(path, "annotations", i, a, "is not an object", ANNOTATIONS_HINT)
        for key in ("question_id", "image_id"):
            if not _is_int(a.get(key)):
                raise _entry_error(path, "annotations", i, a, f"has no integer {key!r}", ANNOTATIONS_HINT)
        if not isinstance(a.get("multiple_choice_answer"), str):
            raise _entry_error(path, "annotations", i, a, "has no 'multiple_choice_answer' string", ANNOTATIONS_HINT)
        answers = a.get("answers")
        if not isinstance(answers, list) or not all(
            isinstance(x, dict) and isinstance(x.get("answer"), str) for x in answers
        ):
            raise _entry_error(
                path, "annotations", i, a, "has no 'answers' list of {\"answer\": str} objects", ANNOTATIONS_HINT
            )
        for key in ("answer_type", "question_type"):
            if a.get(key) is not None and not isinstance(a[key], str):
                raise _entry_error(path, "annotations", i, a, f"has a {key!r} that is not a string", ANNOTATIONS_HINT)
        if a["question_id"] in out:
            raise _entry_error(path, "annotations", i, a, "repeats a question_id", ANNOTATIONS_HINT)
        out[a["question_id"]] = (
            a["image_id"],
            tuple(x["answer"] for x in answers),
            a["multiple_choice_answer"],
            a.get("answer_type"),
            a.get("question_type"),
        )
    return out


def load_vqa(questions_path: Path, annotations_path: Path | None) -> list[VQARecord]:
    """Records in the questions file's order; with annotations, every question must have exactly one."""
    questions_path = Path(questions_path)
    questions = _read_questions(questions_path)
    if annotations_path is None:
        return [VQARecord(qid, iid, text, (), None, None) for qid, iid, text in questions]
    annotations_path = Path(annotations_path)
    annotations = _read_annotations(annotations_path)
    question_ids = {qid for qid, _, _ in questions}
    orphans = sorted(set(annotations) - question_ids)
    if orphans:
        raise DataFormatError(
            f"{annotations_path}: {len(orphans)} annotation(s) have no question in {questions_path} "
            f"(question_id {', '.join(map(str, orphans[:5]))}); the two files must come from the same subtype "
            f"(e.g. v2_OpenEnded_mscoco_val2014_questions.json with v2_mscoco_val2014_annotations.json)"
        )
    unanswered = [qid for qid, _, _ in questions if qid not in annotations]
    if unanswered:
        raise DataFormatError(
            f"{questions_path}: {len(unanswered)} question(s) have no annotation in {annotations_path} "
            f"(question_id {', '.join(map(str, unanswered[:5]))}); use the annotation file of the same subtype, "
            f"or none for a test split"
        )
    records = []
    for qid, iid, text in questions:
        ann_image, answers, answer, answer_type, question_type = annotations[qid]
        if ann_image != iid:
            raise DataFormatError(
                f"{annotations_path}: question_id {qid} has image_id {ann_image}, but {questions_path} "
                f"gives image_id {iid}; the files do not belong together"
            )
        records.append(VQARecord(qid, iid, text, answers, answer, answer_type, question_type))
    return records


def find_vqa_files(vqa_dir: Path) -> list[tuple[Path, Path | None]]:
    """(questions, annotations or None) pairs in a directory, matched by VQA file naming, sorted by name."""
    vqa_dir = Path(vqa_dir)
    if not vqa_dir.is_dir():
        raise DataFormatError(
            f"VQA directory not found: {vqa_dir}; set data.vqa_dir to the folder holding the VQAv2 JSON files"
        )
    pairs = []
    matched_annotations: set[Path] = set()
    for path in sorted(vqa_dir.glob("*_questions.json")):
        m = _QUESTIONS_NAME.match(path.name)
        if not m:
            raise DataFormatError(
                f"{path}: unexpected VQA questions file name; expected v2_OpenEnded_mscoco_<subtype>_questions.json"
            )
        annotations = vqa_dir / f"{m['v2'] or ''}mscoco_{m['subtype']}_annotations.json"
        if annotations.exists():
            matched_annotations.add(annotations)
        pairs.append((path, annotations if annotations.exists() else None))
    for path in sorted(vqa_dir.glob("*_annotations.json")):
        if _ANNOTATIONS_NAME.match(path.name) and path not in matched_annotations:
            raise DataFormatError(
                f"{path}: annotation file without its questions file "
                f"(expected {vqa_dir}/v2_OpenEnded_mscoco_<subtype>_questions.json beside it)"
            )
    if not pairs:
        raise DataFormatError(f"no VQA questions files (*_questions.json) in {vqa_dir}")
    return pairs
