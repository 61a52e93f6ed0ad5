"""The fine-tuned model's "sees" check scores its answers per question type on the real and on blank images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.data.karpathy import CaptionRecord
from pipeline.data.prepared import SplitData
from pipeline.data.vqa import VQARecord
from pipeline.evaluation import greedy_captions


def _split() -> SplitData:
    images = [CaptionRecord(i, Path(f"img{i}.png"), (f"a red circle number {i}",)) for i in range(3)]
    vqa = [
        VQARecord(10, 0, "what colour is the circle ?", ("red",) * 10, "red", "other", "what colour is the"),
        VQARecord(11, 0, "how many shapes are there ?", ("1",) * 10, "1", "number", "how many"),
        VQARecord(12, 1, "what colour is the circle ?", ("red",) * 10, "red", "other", "what colour is the"),
        VQARecord(13, 1, "is there a star ?", (), None, None, "is there"),  # a test question without answers
        VQARecord(20, 2, "what colour is the circle ?", ("red",) * 10, "red", "other", "what colour is the"),
    ]
    return SplitData(images=images, vqa=vqa)


def test_sees_check_scores_answers_by_question_type_against_blank_images(monkeypatch):
    asked: list[tuple[str, bool]] = []

    def fake_generate(model, builder, pixels, examples, *, batch_size, max_new_tokens, blank_images=False, **_):
        # the model reads colours from the pixels and always answers "1" to a count; on a blank image it says "grey"
        texts = []
        for example in examples:
            asked.append((example.question or example.task, blank_images))
            if example.task == "caption":
                texts.append("a grey image" if blank_images else example.text)
            elif "colour" in (example.question or ""):
                texts.append("grey" if blank_images else "red")
            else:
                texts.append("1")
        return texts

    monkeypatch.setattr(greedy_captions, "greedy_generate", fake_generate)
    monkeypatch.setattr(greedy_captions, "PixelStore", lambda paths, processor: SimpleNamespace(paths=paths))
    backbone = SimpleNamespace(model=None, image_processor=None)
    scores = greedy_captions.sees_check(backbone, None, _split(), 2, batch_size=4, max_new_tokens=8, show=0)

    assert scores["test_vqa_accuracy"] == pytest.approx(1.0)
    assert scores["test_vqa_accuracy/what colour is the"] == pytest.approx(1.0)
    assert scores["test_blank_vqa_accuracy/what colour is the"] == pytest.approx(0.0)
    assert scores["test_blank_vqa_accuracy/how many"] == pytest.approx(1.0)
    assert scores["test_blank_vqa_accuracy"] == pytest.approx(1 / 3)
    # only the first `count` images' answered questions, each once with its image and once with a blank one
    questions = [q for q, _ in asked if q != "caption"]
    colour, count = "what colour is the circle ?", "how many shapes are there ?"
    assert sorted(questions) == sorted([colour, count, colour] * 2)
    assert [blank for q, blank in asked if q == count] == [False, True]
    assert scores["test_bleu1"] == pytest.approx(1.0) and scores["test_blank_bleu1"] < 0.5
