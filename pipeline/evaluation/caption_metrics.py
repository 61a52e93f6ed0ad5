"""Caption metrics from pycocoevalcap, with its PTB tokenizer.

The scorers are called exactly as the COCO caption evaluation calls them, so numbers are
comparable to published ones (CIDEr here is CIDEr-D on the 0–10 scale; the paper multiplies by 100).
Issue-level extensions (METEOR, SPICE) plug in here.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Mapping, Sequence

from pipeline.errors import PipelineError

JAVA_HINT = "install a Java runtime (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`)"


def require_java(what: str) -> None:
    if shutil.which("java") is None:
        raise PipelineError(f"{what} needs Java, which is not on PATH: {JAVA_HINT}")


def ptb_tokenize(texts: Mapping[object, Sequence[str]]) -> dict[object, list[str]]:
    """Stanford PTB tokenisation, as in the COCO caption evaluation (runs a JVM)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_java("the PTB tokenizer")
    keyed = {key: [{"caption": text} for text in values] for key, values in texts.items()}
    return PTBTokenizer().tokenize(keyed)


def caption_scores(references: Mapping[object, Sequence[str]], candidates: Mapping[object, str]) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr of one candidate per key against its references."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    missing = set(references) ^ set(candidates)
    if missing:
        raise ValueError(f"references and candidates must have the same keys; differing: {sorted(missing)[:5]}")
    if not candidates:
        raise ValueError("no captions to score")
    refs = ptb_tokenize(references)
    cands = ptb_tokenize({key: [text] for key, text in candidates.items()})
    scores: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap's BLEU prints debug lines
        bleu, _ = Bleu(4).compute_score(refs, cands)
    scores.update({f"bleu{i + 1}": float(b) for i, b in enumerate(bleu)})
    scores["rouge_l"] = float(Rouge().compute_score(refs, cands)[0])
    scores["cider"] = float(Cider().compute_score(refs, cands)[0])
    return scores
