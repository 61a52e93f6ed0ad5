"""VQA questions about a scene, each with one unambiguous answer.

Answers come from a small vocabulary: colour names, shape names, position names, `yes`/`no`, and
digits for counts (digits, as in real VQAv2 "number" answers). A question only refers to an
object by a description that picks out exactly one object in the scene.

Question kinds (`KINDS`): colour, count, position, yes/no, and shape. Each image's questions come
from as many different kinds as there are questions (round-robin over a shuffled kind order), so
the four required kinds are all well represented across a data set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.scene import COLOURS, PLURALS, POSITIONS, SHAPES, Scene, SceneObject
from pipeline.data.scene_text import where, with_article

MIN_QUESTIONS = 3
MAX_QUESTIONS = 10  # question ids reserve one decimal digit per image


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    kind: str  # one of KINDS
    question_type: str  # VQAv2's question-prefix label
    answer_type: str  # VQAv2's "yes/no" | "number" | "other"


KINDS: tuple[str, ...] = ("colour", "count", "position", "yes/no", "shape")


def _unique(obj: SceneObject, objs: Sequence[SceneObject], key: Callable[[SceneObject], object]) -> bool:
    return sum(key(o) == key(obj) for o in objs) == 1


def _colour_questions(scene: Scene) -> list[QA]:
    objs = scene.objects
    out = []
    for o in objs:
        question = f"what colour is the shape {where(o.position)} ?"
        out.append(QA(question, o.colour, "colour", "what colour is the", "other"))
        if _unique(o, objs, lambda x: x.shape):
            out.append(QA(f"what colour is the {o.shape} ?", o.colour, "colour", "what colour is the", "other"))
    return out


def _count_questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    objs = scene.objects
    out = [QA("how many shapes are there ?", str(len(objs)), "count", "how many", "number")]
    colours = list(dict.fromkeys(o.colour for o in objs))
    absent_colours = [c for c in COLOURS if c not in colours]
    if absent_colours:
        colours.append(absent_colours[int(rng.integers(len(absent_colours)))])  # a "0" answer now and then
    for c in colours:
        k = sum(o.colour == c for o in objs)
        out.append(QA(f"how many {c} shapes are there ?", str(k), "count", "how many", "number"))
    shapes = list(dict.fromkeys(o.shape for o in objs))
    absent_shapes = [s for s in SHAPES if s not in shapes]
    if absent_shapes:
        shapes.append(absent_shapes[int(rng.integers(len(absent_shapes)))])
    for s in shapes:
        k = sum(o.shape == s for o in objs)
        out.append(QA(f"how many {PLURALS[s]} are there ?", str(k), "count", "how many", "number"))
    return out


def _position_questions(scene: Scene) -> list[QA]:
    objs = scene.objects
    out = []
    for o in objs:
        if _unique(o, objs, lambda x: (x.colour, x.shape)):
            name = f"{o.colour} {o.shape}"
        elif _unique(o, objs, lambda x: (x.size, x.colour, x.shape)):
            name = f"{o.size} {o.colour} {o.shape}"
        else:
            continue
        out.append(QA(f"where is the {name} ?", o.position, "position", "where is the", "other"))
    return out


def _yes_no_questions(scene: Scene) -> tuple[list[QA], list[QA]]:
    """(yes questions, no questions), so the caller can balance the answers."""
    objs = scene.objects
    present = {(o.colour, o.shape) for o in objs}
    occupied = {o.position for o in objs}
    yes: list[QA] = []
    no: list[QA] = []
    for colour in COLOURS:
        for shape in SHAPES:
            qa = QA(f"is there {with_article(colour)} {shape} ?", "", "yes/no", "is there", "yes/no")
            (yes if (colour, shape) in present else no).append(qa)
    for position in POSITIONS:
        qa = QA(f"is there a shape {where(position)} ?", "", "yes/no", "is there", "yes/no")
        (yes if position in occupied else no).append(qa)
    return (
        [QA(q.question, "yes", q.kind, q.question_type, q.answer_type) for q in yes],
        [QA(q.question, "no", q.kind, q.question_type, q.answer_type) for q in no],
    )


def _shape_questions(scene: Scene) -> list[QA]:
    return [
        QA(f"what shape is {where(o.position)} ?", o.shape, "shape", "what shape is", "other") for o in scene.objects
    ]


def ask_questions(scene: Scene, rng: np.random.Generator, count: int) -> list[QA]:
    if not MIN_QUESTIONS <= count <= MAX_QUESTIONS:
        raise ValueError(f"questions_per_image must be between {MIN_QUESTIONS} and {MAX_QUESTIONS}, got {count}")
    yes, no = _yes_no_questions(scene)
    pools: dict[str, list[QA]] = {
        "colour": _colour_questions(scene),
        "count": _count_questions(scene, rng),
        "position": _position_questions(scene),
        "yes/no": yes + no,
        "shape": _shape_questions(scene),
    }
    order = [KINDS[i] for i in rng.permutation(len(KINDS))]
    chosen: list[QA] = []
    asked: set[str] = set()
    while len(chosen) < count:
        progress = False
        for kind in order:
            if len(chosen) == count:
                break
            pool = [qa for qa in pools[kind] if qa.question not in asked]
            if kind == "yes/no":
                # Half yes, half no, whatever the ratio of candidates (there are many more "no" ones).
                want = "yes" if rng.random() < 0.5 else "no"
                pool = [qa for qa in pool if qa.answer == want] or pool
            if not pool:
                continue
            qa = pool[int(rng.integers(len(pool)))]
            chosen.append(qa)
            asked.add(qa.question)
            progress = True
        if not progress:
            raise ValueError(f"cannot ask {count} distinct questions about a scene with {len(scene)} objects")
    return chosen
