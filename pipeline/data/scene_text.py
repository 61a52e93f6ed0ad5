"""Captions and long descriptions of a scene.

Conventions (shared with the questions): lower case, punctuation as separate tokens surrounded by
spaces, so whitespace splitting is the tokenisation and every token counts as a word.

Captions come from templates; the template *choice* is random, the words a template produces are
fully determined by the scene. With one or two objects every template mentions every object; with
more, some templates summarise (count + colours, sizes, shapes or positions), but the templates in
`FULL_TEMPLATES` always list every object's colour and shape, and each image gets at least two of
them. Captions are 5–22 tokens for up to four objects.

A description is 30–80 tokens for up to four objects: the count, one sentence per object (size,
colour, shape, position), then — while they fit in 80 tokens — which shapes share a colour, which
share a row, the sizes, and how many cells are empty. With more than four objects (possible via
`max_objects`) descriptions can exceed 80 tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.data.scene import BACKGROUND_NAME, NUMBER_WORDS, PLURALS, ROWS, Scene, SceneObject

MAX_DESCRIPTION_WORDS = 80
CAPTIONS_PER_IMAGE = 5
MIN_FULL_TEMPLATES = 2  # captions per image that list every object's colour and shape


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a , b and c' (spaced punctuation)."""
    items = list(items)
    if len(items) <= 2:
        return " and ".join(items)
    return " , ".join(items[:-1]) + " and " + items[-1]


def where(position: str) -> str:
    """Natural preposition for a cell: 'in the top left', 'at the top', 'on the left', 'in the center'."""
    if position in ("top", "bottom"):
        return f"at the {position}"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"in the {position}"


def number(n: int) -> str:
    return NUMBER_WORDS[n]


def shapes_word(n: int) -> str:
    return "shape" if n == 1 else "shapes"


def _sized(obj: SceneObject, size_words: dict[str, str] | None = None) -> str:
    size = (size_words or {}).get(obj.size, obj.size)
    return f"{size} {obj.colour} {obj.shape}"


def _plain(obj: SceneObject) -> str:
    return f"{obj.colour} {obj.shape}"


def _distinct(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


# --- caption templates: scene -> caption -------------------------------------------------------


def _sized_list(scene: Scene) -> str:
    if len(scene) <= 2:
        return join([f"{with_article(_sized(o))} {where(o.position)}" for o in scene.objects])
    return join([with_article(_sized(o)) for o in scene.objects])


def _count_colon(scene: Scene) -> str:
    n = len(scene)
    return f"{number(n)} {shapes_word(n)} : " + join([with_article(_plain(o)) for o in scene.objects])


def _picture_of(scene: Scene) -> str:
    listing = "a picture of " + join([with_article(_plain(o)) for o in scene.objects])
    return listing + f" on a {BACKGROUND_NAME} background" if len(scene) <= 2 else listing


def _there_is(scene: Scene) -> str:
    if len(scene) <= 2:
        big = {"large": "big", "small": "little"}
        return "there is " + join([f"{with_article(_sized(o, big))} {where(o.position)}" for o in scene.objects])
    return f"there are {number(len(scene))} shapes in " + join(_distinct([o.colour for o in scene.objects]))


def _the_is(scene: Scene) -> str:
    if len(scene) <= 2:
        return join([f"the {_sized(o)} is {where(o.position)}" for o in scene.objects])
    counts = Counter(o.shape for o in scene.objects)
    parts = [with_article(shape) if k == 1 else f"{number(k)} {PLURALS[shape]}" for shape, k in counts.items()]
    return join(parts) + f" on a {BACKGROUND_NAME} background"


def _white_image(scene: Scene) -> str:
    start = f"a {BACKGROUND_NAME} image with "
    if len(scene) <= 2:
        return start + join([with_article(_sized(o)) for o in scene.objects])
    n = len(scene)
    large = sum(o.size == "large" for o in scene.objects)
    if large in (0, n):
        return start + f"{number(n)} {'large' if large else 'small'} shapes"
    return start + f"{number(n)} shapes , {number(large)} large and {number(n - large)} small"


def _in_the_there(scene: Scene) -> str:
    if len(scene) <= 2:
        return join([f"{where(o.position)} there is {with_article(_sized(o))}" for o in scene.objects])
    return f"{number(len(scene))} shapes placed " + join([where(o.position) for o in scene.objects])


Template = Callable[[Scene], str]
FULL_TEMPLATES: dict[str, Template] = {
    "sized_list": _sized_list,
    "count_colon": _count_colon,
    "picture_of": _picture_of,
}
OTHER_TEMPLATES: dict[str, Template] = {
    "there_is": _there_is,
    "the_is": _the_is,
    "white_image": _white_image,
    "in_the_there": _in_the_there,
}
TEMPLATES: dict[str, Template] = {**FULL_TEMPLATES, **OTHER_TEMPLATES}


def choose_templates(rng: np.random.Generator) -> list[str]:
    """Five distinct template names, at least two of which list every object, in random order."""
    full = list(FULL_TEMPLATES)
    chosen = [full[i] for i in rng.choice(len(full), size=MIN_FULL_TEMPLATES, replace=False)]
    rest = [name for name in TEMPLATES if name not in chosen]
    chosen += [rest[i] for i in rng.choice(len(rest), size=CAPTIONS_PER_IMAGE - MIN_FULL_TEMPLATES, replace=False)]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def render_caption(template: str, scene: Scene) -> str:
    return TEMPLATES[template](scene)


# --- description --------------------------------------------------------------------------------


def refer(obj: SceneObject, among: Sequence[SceneObject]) -> str:
    """The shortest 'the ...' phrase that picks out `obj` among `among`."""
    if sum(_plain(o) == _plain(obj) for o in among) == 1:
        return f"the {_plain(obj)}"
    if sum(_sized(o) == _sized(obj) for o in among) == 1:
        return f"the {_sized(obj)}"
    return f"the {_plain(obj)} {where(obj.position)}"


def _refer_in_group(obj: SceneObject, group: Sequence[SceneObject]) -> str:
    """Within a same-colour group the colour is implied, so name the shape (plus size/position if needed)."""
    if sum(o.shape == obj.shape for o in group) == 1:
        return f"the {obj.shape}"
    if sum((o.size, o.shape) == (obj.size, obj.shape) for o in group) == 1:
        return f"the {obj.size} {obj.shape}"
    return f"the {obj.shape} {where(obj.position)}"


def _colour_sentence(scene: Scene) -> str:
    objs = scene.objects
    if len(objs) == 1:
        return f"the only colour is {objs[0].colour} ."
    groups = {c: [o for o in objs if o.colour == c] for c in _distinct([o.colour for o in objs])}
    if len(groups) == 1:
        colour = objs[0].colour
        return f"both shapes are {colour} ." if len(objs) == 2 else f"all {number(len(objs))} shapes are {colour} ."
    shared = {c: g for c, g in groups.items() if len(g) > 1}
    if not shared:
        return "each shape has a different colour ."
    clauses = [
        f"{join([_refer_in_group(o, g) for o in g])} are {'both' if len(g) == 2 else 'all'} {c}"
        for c, g in shared.items()
    ]
    return " , and ".join(clauses) + " ."


def _row_sentence(scene: Scene) -> str:
    objs = scene.objects
    if len(objs) == 1:
        return f"it is in the {objs[0].row} row ."
    groups = [[o for o in objs if o.row == row] for row in ROWS]
    shared = [g for g in groups if len(g) > 1]
    if not shared:
        return "no two shapes are in the same row ."
    clauses = [f"{join([refer(o, objs) for o in g])} are in the {g[0].row} row" for g in shared]
    return " , and ".join(clauses) + " ."


def _size_sentence(scene: Scene) -> str:
    objs = scene.objects
    n = len(objs)
    large = sum(o.size == "large" for o in objs)
    if n == 1:
        return f"it is a {objs[0].size} shape ."
    if large in (0, n):
        size = "large" if large else "small"
        return f"both shapes are {size} ." if n == 2 else f"all {number(n)} shapes are {size} ."

    def verb(k: int) -> str:
        return "is" if k == 1 else "are"

    return f"{number(large)} of them {verb(large)} large and {number(n - large)} {verb(n - large)} small ."


def _empty_sentence(scene: Scene) -> str:
    empty = 9 - len(scene)
    return f"{number(empty)} of the nine cells {'is' if empty == 1 else 'are'} empty ." if empty else ""


def describe(scene: Scene) -> str:
    """Multi-sentence description; tokens (punctuation included) are counted against the 80 limit."""
    n = len(scene)
    sentences = [f"the image shows {number(n)} {shapes_word(n)} on a {BACKGROUND_NAME} background ."]
    sentences += [f"{with_article(_sized(o))} is {where(o.position)} ." for o in scene.objects]
    words = sum(len(s.split()) for s in sentences)
    # Relations are extras: they are added in order of usefulness while the description stays short.
    for extra in (_colour_sentence, _row_sentence, _size_sentence, _empty_sentence):
        sentence = extra(scene)
        length = len(sentence.split())
        if sentence and words + length <= MAX_DESCRIPTION_WORDS:
            sentences.append(sentence)
            words += length
    return " ".join(sentences)
