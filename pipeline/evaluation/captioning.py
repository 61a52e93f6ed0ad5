"""The full model's captioning quality on the test split: the check that a method which changes the backbone
(mixed schedule, LayerSkip) did not cost the model its captions."""

from __future__ import annotations

from pipeline.data.examples import Example, SplitData
from pipeline.data.pixels import PixelStore
from pipeline.data.prompts import PromptBuilder
from pipeline.evaluation.caption_metrics import caption_scores
from pipeline.evaluation.generation import greedy_generate


def caption_cider(backbone, builder: PromptBuilder, split: SplitData, count: int, *, batch_size: int = 100, max_new_tokens: int = 32) -> float:
    """CIDEr of `backbone`'s greedy captions of the first `count` images of `split` against their references."""
    records = split.images[:count]
    pixels = PixelStore([r.image_path for r in records], backbone.image_processor)
    examples = [Example(i, "caption", r.captions[0]) for i, r in enumerate(records)]
    texts = greedy_generate(backbone.model, builder, pixels, examples, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return caption_scores({i: list(r.captions) for i, r in enumerate(records)}, dict(enumerate(texts)))["cider"]
