"""VQAv2 accuracy: the official normalisation and the leave-one-out 10-annotator formula, worked by hand."""

from __future__ import annotations

import pytest

from pipeline.evaluation.vqa_accuracy import normalize_answer, vqa_accuracy, vqa_scores


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("the dog.", "dog"),
        ("yes!", "yes"),
        ("Yes", "yes"),
        ("isnt", "isn't"),
        ("1,000", "1000"),  # a digit-comma-digit makes the script delete all punctuation
        ("3.5", "3.5"),  # periods before a digit stay
        ("black/white", "black white"),  # punctuation between words separates them
        ("a man, sitting", "man sitting"),  # punctuation before a space is deleted
        ("  An apple\n", "apple"),
    ],
)
def test_normalize_answer_follows_the_official_script(raw, normalised):
    assert normalize_answer(raw) == normalised


def ten(agreeing: int, answer: str = "dog") -> list[str]:
    return [answer] * agreeing + ["cat", "bird", "horse", "cow", "fish", "frog", "ant", "bee", "owl", "fox"][
        : 10 - agreeing
    ]


@pytest.mark.parametrize(
    ("agreeing", "accuracy"),
    # mean over annotators of min(1, other agreeing / 3):
    # k=1 -> 9·(1/3)/10, k=2 -> (8·2/3 + 2·1/3)/10, k=3 -> (7 + 3·2/3)/10
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_vqa_accuracy_hand_worked(agreeing, accuracy):
    assert vqa_accuracy("dog", ten(agreeing)) == pytest.approx(accuracy)


def test_vqa_accuracy_normalises_both_sides():
    assert vqa_accuracy("Two.", ten(4, "2")) == pytest.approx(1.0)
    assert vqa_accuracy("2", ten(2, "two")) == pytest.approx(0.6)


def test_single_answer_is_exact_match_after_normalisation():
    assert vqa_accuracy("The Dog", ["dog"]) == 1.0
    assert vqa_accuracy("cat", ["dog"]) == 0.0
    # fewer than 10 answers: the same leave-one-out mean, e.g. 2 of 3 agree -> (1/3 + 1/3 + 2/3) / 3
    assert vqa_accuracy("dog", ["dog", "dog", "cat"]) == pytest.approx(4 / 9)
    with pytest.raises(ValueError):
        vqa_accuracy("dog", [])


def test_vqa_scores_overall_and_per_answer_type():
    predictions = {1: "yes", 2: "no", 3: "two", 4: "red"}
    answers = {1: ten(10, "yes"), 2: ten(2, "no"), 3: ten(1, "2"), 4: ten(0, "red")}
    types = {1: "yes/no", 2: "yes/no", 3: "number", 4: "other"}
    scores = vqa_scores(predictions, answers, types)
    assert scores == pytest.approx(
        {
            "vqa_accuracy": (1.0 + 0.6 + 0.3 + 0.0) / 4,
            "vqa_accuracy_yes/no": 0.8,
            "vqa_accuracy_number": 0.3,
            "vqa_accuracy_other": 0.0,
        }
    )
    assert vqa_scores(predictions, answers) == {"vqa_accuracy": pytest.approx(0.475)}


def test_vqa_scores_per_question_type_counts_and_leaves_untyped_questions_out():
    predictions = {1: "red", 2: "blue", 3: "2", 4: "yes", 5: "no"}
    answers = {1: ten(10, "red"), 2: ten(0, "blue"), 3: ten(2, "2"), 4: ten(10, "yes"), 5: ten(10, "no")}
    question_types = {1: "what color is the", 2: "what color is the", 3: "how many", 4: "is the", 5: None}
    scores = vqa_scores(predictions, answers, question_types=question_types)
    assert scores["vqa_accuracy"] == pytest.approx((1.0 + 0.0 + 0.6 + 1.0 + 1.0) / 5)
    assert scores["by_question_type"] == {
        "how many": {"accuracy": pytest.approx(0.6), "questions": 1},
        "is the": {"accuracy": 1.0, "questions": 1},
        "what color is the": {"accuracy": 0.5, "questions": 2},
    }
    with pytest.raises(ValueError, match="question_types"):
        vqa_scores(predictions, answers, question_types={1: "how many"})


def test_vqa_scores_rejects_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="same keys"):
        vqa_scores({1: "yes", 2: "no"}, {1: ["yes"]})
    with pytest.raises(ValueError, match="answer_types"):
        vqa_scores({1: "yes"}, {1: ["yes"]}, {2: "yes/no"})
    with pytest.raises(ValueError, match="no answers"):
        vqa_scores({}, {})
