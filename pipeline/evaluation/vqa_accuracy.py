"""VQAv2 accuracy with the official answer normalisation.

A port of `processPunctuation` / `processDigitArticle` and the leave-one-out accuracy of the official
evaluation script (GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py), so numbers are
comparable with published VQAv2 results (here as fractions in [0, 1]; the script reports ×100).

One deliberate difference: the official script normalises the ground-truth answers only by punctuation,
and only when the annotators disagree, because VQAv2's annotation files already hold normalised answers.
Here both sides always get the full normalisation, so raw answers (synthetic data, other datasets) are
compared on the same footing; on VQAv2's own annotations this changes nothing.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

# fmt: off
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
              "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# fmt: on
# Kept verbatim, typo included: "(?!<=\d)" is a no-op lookahead, so any period not followed by a digit goes.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
# The official script calls periodStrip.sub("", text, re.UNICODE): the flag lands in `count` (= 32).
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def _process_punctuation(text: str) -> str:
    out = text
    for p in PUNCT:
        # Punctuation next to a space, or anywhere in an answer holding a digit-comma-digit ("1,000"),
        # is deleted; otherwise it separates words ("black/white" -> "black white").
        if (p + " " in text or " " + p in text) or COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    words = [MANUAL_MAP.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def normalize_answer(text: str) -> str:
    """The official VQA answer normalisation: whitespace, punctuation, lower case, number words, articles,
    contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one predicted answer against the annotators' answers.

    The mean over annotators j of min(1, #other annotators agreeing with the prediction / 3): with 10
    answers of which k match, 0 -> 0, 1 -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1. The same formula is used
    for 2..9 answers. With a single answer leave-one-out would leave nobody to agree, so every prediction
    would score 0; there accuracy is defined as exact match after normalisation (synthetic data).
    """
    if isinstance(answers, str) or not answers:
        raise ValueError("answers must be a non-empty sequence of strings")
    predicted = normalize_answer(prediction)
    matches = [normalize_answer(answer) == predicted for answer in answers]
    if len(matches) == 1:
        return float(matches[0])
    agreeing = sum(matches)
    return sum(min(1.0, (agreeing - match) / 3) for match in matches) / len(matches)


def vqa_scores(
    predictions: Mapping[Hashable, str],
    answers: Mapping[Hashable, Sequence[str]],
    answer_types: Mapping[Hashable, str] | None = None,
    question_types: Mapping[Hashable, str | None] | None = None,
) -> dict[str, Any]:
    """Mean VQAv2 accuracy ("vqa_accuracy"); given answer types, one mean per type ("vqa_accuracy_yes/no", ...); given
    question types (VQAv2's question-prefix labels: "what color is the", "how many", ...), "by_question_type":
    {type: {"accuracy", "questions"}} over the questions that have one, as VQAv2's evaluation reports them."""
    differing = set(predictions) ^ set(answers)
    if differing:
        raise ValueError(
            f"predictions and answers must have the same keys; differing: {sorted(map(str, differing))[:5]}"
        )
    if not predictions:
        raise ValueError("no answers to score")
    for name, labels in (("answer_types", answer_types), ("question_types", question_types)):
        if labels is not None and set(labels) != set(predictions):
            differing = set(labels) ^ set(predictions)
            raise ValueError(f"{name} must have the predictions' keys; differing: {sorted(map(str, differing))[:5]}")
    per_question = {key: vqa_accuracy(predictions[key], answers[key]) for key in predictions}
    scores: dict[str, Any] = {"vqa_accuracy": sum(per_question.values()) / len(per_question)}
    if answer_types is not None:
        scores.update({f"vqa_accuracy_{kind}": mean for kind, (mean, _) in _group_means(per_question, answer_types)})
    if question_types is not None:
        grouped = _group_means(per_question, question_types)
        scores["by_question_type"] = {kind: {"accuracy": mean, "questions": n} for kind, (mean, n) in grouped}
    return scores


def _group_means(
    per_question: Mapping[Hashable, float], labels: Mapping[Hashable, str | None]
) -> list[tuple[str, tuple[float, int]]]:
    """(label, (mean accuracy, questions)) per label, sorted by label; questions without a label are left out."""
    groups: dict[str, list[float]] = defaultdict(list)
    for key, accuracy in per_question.items():
        if labels[key] is not None:
            groups[str(labels[key])].append(accuracy)
    return [(label, (sum(accs) / len(accs), len(accs))) for label, accs in sorted(groups.items())]
