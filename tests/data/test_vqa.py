"""VQAv2 reader: real layout, test splits without annotations, and mismatched files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.data.vqa import find_vqa_files, load_vqa
from pipeline.errors import DataFormatError

VQA_DIR = Path(__file__).parents[1] / "fixtures" / "vqa"
QUESTIONS = VQA_DIR / "v2_OpenEnded_mscoco_val2014_questions.json"
ANNOTATIONS = VQA_DIR / "v2_mscoco_val2014_annotations.json"
TEST_DEV = VQA_DIR / "v2_OpenEnded_mscoco_test-dev2015_questions.json"


def edited(path: Path, tmp_path: Path, edit) -> Path:
    data = json.loads(path.read_text())
    edit(data)
    out = tmp_path / path.name
    out.write_text(json.dumps(data))
    return out


def test_real_layout_loads():
    records = load_vqa(QUESTIONS, ANNOTATIONS)
    assert [r.question_id for r in records] == [262148000, 262148001, 393225001, 393225002]
    first = records[0]
    assert (first.image_id, first.question, first.answer, first.answer_type) == (
        262148,
        "Where is he looking?",
        "down",
        "other",
    )
    assert len(first.answers) == 10 and first.answers[2] == "at table"
    assert records[3].answer == "1" and records[3].answer_type == "number"
    assert [r.question_type for r in records] == ["none of the above", "what are the", "is the", "how many"]


def test_questions_without_annotations_have_no_answers():
    [record] = load_vqa(TEST_DEV, None)
    assert record.answers == () and record.answer is None and record.answer_type is None
    assert record.question_type is None


def test_find_vqa_files_pairs_by_name():
    assert find_vqa_files(VQA_DIR) == [(TEST_DEV, None), (QUESTIONS, ANNOTATIONS)]


def test_find_vqa_files_rejects_annotations_without_questions(tmp_path):
    shutil.copy(ANNOTATIONS, tmp_path)
    shutil.copy(TEST_DEV, tmp_path)
    with pytest.raises(DataFormatError, match=r"v2_mscoco_val2014_annotations\.json: annotation file without"):
        find_vqa_files(tmp_path)


def test_find_vqa_files_missing_dir(tmp_path):
    with pytest.raises(DataFormatError, match="VQA directory not found"):
        find_vqa_files(tmp_path / "vqa")


def test_annotation_for_unknown_question(tmp_path):
    def add(data):
        extra = dict(data["annotations"][0], question_id=999)
        data["annotations"].append(extra)

    annotations = edited(ANNOTATIONS, tmp_path, add)
    expected = r"v2_mscoco_val2014_annotations\.json: 1 annotation\(s\) have no question.*999"
    with pytest.raises(DataFormatError, match=expected):
        load_vqa(QUESTIONS, annotations)


def test_question_without_annotation(tmp_path):
    annotations = edited(ANNOTATIONS, tmp_path, lambda d: d["annotations"].pop(1))
    with pytest.raises(DataFormatError, match=r"questions\.json: 1 question\(s\) have no annotation.*262148001"):
        load_vqa(QUESTIONS, annotations)


def test_image_id_mismatch(tmp_path):
    annotations = edited(ANNOTATIONS, tmp_path, lambda d: d["annotations"][0].update(image_id=1))
    with pytest.raises(DataFormatError, match=r"question_id 262148000 has image_id 1"):
        load_vqa(QUESTIONS, annotations)


def test_missing_questions_list(tmp_path):
    questions = edited(QUESTIONS, tmp_path, lambda d: d.pop("questions"))
    with pytest.raises(DataFormatError, match=r"questions\.json: no 'questions' list.*VQAv2 questions layout"):
        load_vqa(questions, None)


def test_question_missing_field_names_index_and_id(tmp_path):
    questions = edited(QUESTIONS, tmp_path, lambda d: d["questions"][2].pop("question"))
    with pytest.raises(DataFormatError, match=r"questions\[2\] \(question_id 393225001\) has no non-empty 'question'"):
        load_vqa(questions, None)


def test_annotation_missing_answer(tmp_path):
    annotations = edited(ANNOTATIONS, tmp_path, lambda d: d["annotations"][1].pop("multiple_choice_answer"))
    expected = r"annotations\[1\] \(question_id 262148001\) has no 'multiple_choice_answer'"
    with pytest.raises(DataFormatError, match=expected):
        load_vqa(QUESTIONS, annotations)


def test_not_json(tmp_path):
    path = tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json"
    path.write_text("questions: []")
    with pytest.raises(DataFormatError, match=r"questions\.json is not valid JSON.*line 1 column 1"):
        load_vqa(path, None)


def test_annotation_without_question_type_loads_and_a_non_string_one_is_rejected(tmp_path):
    untyped = edited(ANNOTATIONS, tmp_path, lambda d: d["annotations"][0].pop("question_type"))
    assert [r.question_type for r in load_vqa(QUESTIONS, untyped)][:2] == [None, "what are the"]

    def number(data):
        data["annotations"][2]["question_type"] = 7

    expected = r"annotations\[2\] \(question_id 393225001\) has a 'question_type' that is not a string"
    with pytest.raises(DataFormatError, match=expected):
        load_vqa(QUESTIONS, edited(ANNOTATIONS, tmp_path, number))
