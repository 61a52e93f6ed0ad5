"""Caption metrics from pycocoevalcap, with its PTB tokenizer.

The scorers are called exactly as the COCO caption evaluation calls them, so numbers are
comparable to published ones (CIDEr here is CIDEr-D on the 0–10 scale; the paper multiplies by 100).
METEOR and SPICE are opt-in: each starts its own JVM (METEOR ~10 s, SPICE needs jars that are
not shipped with the pycocoevalcap wheel, see `spice_availability`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

JAVA_HINT = "install a Java runtime (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`)"

# The folder pycocoevalcap's SPICE runs from (spice-1.0.jar, with its jars under lib/). Located without
# importing spice.py; a module constant so tests can point the availability check elsewhere (SPICE itself
# always runs from the installed package's folder).
_spec = importlib.util.find_spec("pycocoevalcap.spice")
SPICE_DIR: Path = Path(_spec.origin).parent if _spec and _spec.origin else Path("pycocoevalcap/spice")
# spice-1.0.jar's manifest Class-Path lists lib/*.jar; all ship with the wheel except the two Stanford
# CoreNLP 3.6.0 jars, which pycocoevalcap downloads (~400 MB zip) the first time Spice() is constructed.
SPICE_REQUIRED_FILES = ("spice-1.0.jar", "lib/stanford-corenlp-3.6.0.jar", "lib/stanford-corenlp-3.6.0-models.jar")
CORENLP_HINT = (
    "download http://nlp.stanford.edu/software/stanford-corenlp-full-2015-12-09.zip and copy "
    "stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar from it into {lib} "
    "(or run `python -m pycocoevalcap.spice.get_stanford_models` on a machine with network access)"
)
# METEOR talks to the JVM one line per segment, and empty hypotheses are a reported cause of malformed
# replies (float() errors, or a readline that waits forever) across jar/Java versions. meteor-1.5 on Java 17
# does answer an empty line with zero stats, but a hang in an evaluation stage costs far more than a
# placeholder: empty candidates get a token that matches no reference word, so the segment still scores 0
# (the corpus score counts it as one unmatched hypothesis word, so it can differ slightly from feeding "").
METEOR_EMPTY_PLACEHOLDER = "emptycandidateplaceholder"

CaptionScores = dict[str, float | str]
# A caption's id (an int or str, hashable and sortable). Mapping is invariant in its key type, so `object` would
# accept only dicts declared with object keys.
CaptionKey = Any


def require_java(what: str) -> None:
    if shutil.which("java") is None:
        raise PipelineError(f"{what} needs Java, which is not on PATH: {JAVA_HINT}")


def ptb_tokenize_groups(
    groups: Mapping[Any, Mapping[CaptionKey, Sequence[str]]],
) -> dict[Any, dict[CaptionKey, list[str]]]:
    """Stanford PTB tokenisation, as in the COCO caption evaluation, of several sets of texts in one JVM: each start
    costs ~0.2-0.5 s, and an evaluation scores the same references and ~20 methods' candidates per task (the
    tokenizer works line by line, so one call gives what a call per set would)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_java("the PTB tokenizer")
    keyed = {
        (group, key): [{"caption": text} for text in values]
        for group, texts in groups.items()
        for key, values in texts.items()
    }
    with _quiet_stderr():  # its JVM prints "PTBTokenizer tokenized N tokens at …" on every call
        tokenized = PTBTokenizer().tokenize(keyed) if keyed else {}
    out: dict[Any, dict[CaptionKey, list[str]]] = {group: {} for group in groups}
    for (group, key), values in tokenized.items():
        out[group][key] = values
    return out


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block: what a child process (a JVM) inherits and writes to."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def meteor_session() -> Iterator[Callable[[Mapping[CaptionKey, list[str]], Mapping[CaptionKey, list[str]]], float]]:
    """One METEOR JVM (-Xmx2G, ~10 s to start) for many corpus scores: yields `score(refs, cands)` taking
    PTB-tokenized texts (one candidate per key), and always shuts the JVM down again: pycocoevalcap only
    does that in `Meteor.__del__`, which a lingering reference (a traceback, a test fixture) can postpone."""
    from pycocoevalcap.meteor.meteor import Meteor

    require_java("METEOR")
    scorer = Meteor()

    def score(refs: Mapping[CaptionKey, list[str]], cands: Mapping[CaptionKey, list[str]]) -> float:
        safe = {
            key: [text if text.strip() else METEOR_EMPTY_PLACEHOLDER for text in texts] for key, texts in cands.items()
        }
        return float(scorer.compute_score(dict(refs), safe)[0])

    try:
        yield score
    finally:
        # compute_score takes scorer.lock without try/finally, so after an error this thread may still hold
        # it: take it if free, and release it either way, or Meteor.__del__ would block on it forever.
        scorer.lock.acquire(blocking=False)
        process = scorer.meteor_p
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()
        process.kill()
        process.wait()
        scorer.lock.release()


def meteor_score(refs: Mapping[CaptionKey, list[str]], cands: Mapping[CaptionKey, list[str]]) -> float:
    """Corpus METEOR 1.5 of PTB-tokenized candidates (one per key) against their references (its own JVM)."""
    with meteor_session() as score:
        return score(refs, cands)


def spice_availability(spice_dir: Path | None = None) -> tuple[bool, str]:
    """Whether SPICE can run here without downloading anything: (True, "") or (False, why and how to fix)."""
    folder = SPICE_DIR if spice_dir is None else spice_dir
    missing = [name for name in SPICE_REQUIRED_FILES if not (folder / name).is_file()]
    reasons = []
    if missing:
        reasons.append(f"missing in {folder}: {', '.join(missing)}; " + CORENLP_HINT.format(lib=folder / "lib"))
    if shutil.which("java") is None:
        reasons.append(f"SPICE needs Java, which is not on PATH: {JAVA_HINT}")
    return (not reasons, "; ".join(reasons))


def _spice_score(refs: Mapping[CaptionKey, list[str]], cands: Mapping[CaptionKey, list[str]]) -> float:
    from pycocoevalcap.spice.spice import Spice

    # Spice.__init__ only calls get_stanford_models(), which downloads the CoreNLP zip when the jar is
    # absent; skip it so that no code path here can reach the network (availability is checked first).
    scorer = Spice.__new__(Spice)
    return float(scorer.compute_score(dict(refs), dict(cands))[0])


def caption_scores(
    references: Mapping[CaptionKey, Sequence[str]],
    candidates: Mapping[CaptionKey, str],
    *,
    meteor: bool | Callable = False,
    spice: bool = False,
) -> CaptionScores:
    """BLEU-1..4, ROUGE-L and CIDEr (and optionally METEOR, SPICE) of one candidate per key against its references.

    With `spice=True` on a machine without SPICE's jars the result holds no "spice" number but
    "spice_unavailable": the reason, so a report can say why the column is empty.
    """
    return caption_scores_of_sets(references, {0: candidates}, meteor=meteor, spice=spice)[0]


def caption_scores_of_sets(
    references: Mapping[CaptionKey, Sequence[str]],
    candidate_sets: Mapping[Any, Mapping[CaptionKey, str]],
    *,
    meteor: bool | Callable = False,
    spice: bool = False,
) -> dict[Any, CaptionScores]:
    """`caption_scores` of several sets of candidates (e.g. one per method) against the same references, every text
    PTB-tokenized in one JVM."""
    for candidates in candidate_sets.values():
        missing = set(references) ^ set(candidates)
        if missing:
            raise ValueError(f"references and candidates must have the same keys; differing: {sorted(missing)[:5]}")
        if not candidates:
            raise ValueError("no captions to score")
    groups: dict[Any, Mapping[CaptionKey, Sequence[str]]] = {
        ("candidates", name): {key: [text] for key, text in candidates.items()}
        for name, candidates in candidate_sets.items()
    }
    tokenized = ptb_tokenize_groups({"references": references, **groups})
    refs = tokenized["references"]
    return {
        name: _tokenized_scores(refs, tokenized[("candidates", name)], meteor=meteor, spice=spice)
        for name in candidate_sets
    }


def _tokenized_scores(
    refs: dict[CaptionKey, list[str]],
    cands: dict[CaptionKey, list[str]],
    *,
    meteor: bool | Callable,
    spice: bool,
) -> CaptionScores:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    scores: CaptionScores = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap's BLEU prints debug lines
        bleu, _ = Bleu(4).compute_score(refs, cands)
    scores.update({f"bleu{i + 1}": float(b) for i, b in enumerate(bleu)})
    scores["rouge_l"] = float(Rouge().compute_score(refs, cands)[0])
    scores["cider"] = float(Cider().compute_score(refs, cands)[0])
    if meteor:
        # `meteor` may be a `meteor_session()` scorer: many calls then share one JVM
        scores["meteor"] = meteor(refs, cands) if callable(meteor) else meteor_score(refs, cands)
    if spice:
        available, reason = spice_availability()
        if available:
            scores["spice"] = _spice_score(refs, cands)
        else:
            scores["spice_unavailable"] = reason
    return scores
