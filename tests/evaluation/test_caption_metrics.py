"""Caption metrics: our wrapper against pycocoevalcap's own scorers, METEOR's JVM life cycle, SPICE/Java checks."""

from __future__ import annotations

import contextlib
import io
import shutil

import pytest

from pipeline.errors import PipelineError
from pipeline.evaluation import caption_metrics
from pipeline.evaluation.caption_metrics import (
    SPICE_REQUIRED_FILES,
    caption_scores,
    caption_scores_of_sets,
    meteor_score,
    spice_availability,
)

needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="the PTB tokenizer and METEOR run on Java, which is not on PATH"
)

REFS = {
    1: [
        "A dog runs across the green grass.",
        "A brown dog is running on a lawn.",
        "The dog runs outside on the grass.",
    ],
    2: [
        "Two people ride bicycles down a city street.",
        "Cyclists riding along a busy road.",
        "Two men on bikes in traffic.",
    ],
    3: [
        "A plate of pasta with tomato sauce.",
        "Spaghetti with red sauce on a white plate.",
        "A dish of noodles and sauce.",
    ],
}
CANDS = {1: "a dog running on the grass", 2: "two people riding bikes on a street", 3: "a white plate with spaghetti"}


@pytest.fixture
def meteor_instances(monkeypatch):
    """Records every pycocoevalcap Meteor that our code creates, to check its JVM is gone afterwards."""
    from pycocoevalcap.meteor import meteor as meteor_module

    created = []

    class RecordingMeteor(meteor_module.Meteor):
        def __init__(self):
            super().__init__()
            created.append(self)

    monkeypatch.setattr(meteor_module, "Meteor", RecordingMeteor)
    return created


@needs_java
def test_candidate_identical_to_a_reference_scores_the_maxima():
    refs = dict(REFS)
    scores = caption_scores(refs, {key: refs[0] for key, refs in REFS.items()})
    for n in range(1, 5):
        assert scores[f"bleu{n}"] == pytest.approx(1.0, abs=1e-6)
    assert scores["rouge_l"] == pytest.approx(1.0)
    assert "meteor" not in scores and "spice" not in scores and "spice_unavailable" not in scores


@needs_java
def test_sets_of_candidates_score_as_one_at_a_time_in_one_tokenizer_jvm(monkeypatch):
    from pycocoevalcap.tokenizer import ptbtokenizer

    sets = {
        "a": CANDS,
        "b": {1: "a cat sleeps on a sofa.", 2: "Two people riding bikes, on a street!", 3: ""},
        "c": {key: refs[1] for key, refs in REFS.items()},
    }
    alone = {name: caption_scores(REFS, cands) for name, cands in sets.items()}
    calls = []
    tokenize = ptbtokenizer.PTBTokenizer.tokenize

    def counted(self, captions):
        calls.append(len(captions))
        return tokenize(self, captions)

    monkeypatch.setattr(ptbtokenizer.PTBTokenizer, "tokenize", counted)
    together = caption_scores_of_sets(REFS, sets)
    assert together == alone and len({s["cider"] for s in together.values()}) == 3
    assert calls == [len(REFS) * (1 + len(sets))]  # one JVM for the references and every set's candidates
    with pytest.raises(ValueError, match="same keys"):
        caption_scores_of_sets(REFS, {"a": CANDS, "short": {1: "a dog"}})


@needs_java
def test_scores_equal_pycocoevalcap_scorers_on_the_same_tokens(meteor_instances):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ours = caption_scores(REFS, CANDS, meteor=True)
    assert len(meteor_instances) == 1 and meteor_instances[0].meteor_p.poll() is not None  # JVM shut down

    tokenizer = PTBTokenizer()
    refs = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    cands = tokenizer.tokenize({k: [{"caption": c}] for k, c in CANDS.items()})
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(refs, cands)
    meteor = Meteor()
    expected = {f"bleu{i + 1}": b for i, b in enumerate(bleu)} | {
        "rouge_l": Rouge().compute_score(refs, cands)[0],
        "cider": Cider().compute_score(refs, cands)[0],
        "meteor": meteor.compute_score(refs, cands)[0],
    }
    del meteor  # Meteor.__del__ kills its JVM
    assert ours == pytest.approx(expected)
    assert 0 < ours["meteor"] < 1 and ours["cider"] > 0


@needs_java
def test_meteor_scores_an_empty_candidate_and_closes_its_jvm(meteor_instances):
    refs = {1: ["a dog runs on the grass"], 2: ["a cat sleeps on a sofa"]}
    score = meteor_score(refs, {1: ["a dog runs on the grass"], 2: [""]})
    assert 0 < score < 1  # the empty candidate counts as an unmatched word, not as a crash or hang
    assert meteor_instances[0].meteor_p.poll() is not None


def test_missing_java_names_the_package_to_install(monkeypatch):
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)
    with pytest.raises(PipelineError, match="openjdk-17-jre-headless"):
        caption_scores(REFS, CANDS, meteor=True)
    with pytest.raises(PipelineError, match=r"METEOR.*openjdk-17-jre-headless"):
        meteor_score({1: ["a dog"]}, {1: ["a dog"]})
    available, reason = spice_availability()
    assert not available and "openjdk-17-jre-headless" in reason


def test_spice_available_when_its_jars_are_there(tmp_path, monkeypatch):
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: "/usr/bin/java")
    for name in SPICE_REQUIRED_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"fake jar")
    assert spice_availability(tmp_path) == (True, "")
    monkeypatch.setattr(caption_metrics, "SPICE_DIR", tmp_path)
    assert spice_availability() == (True, "")
    (tmp_path / "lib" / "stanford-corenlp-3.6.0-models.jar").unlink()
    available, reason = spice_availability()
    assert (
        not available and "stanford-corenlp-3.6.0-models.jar" in reason and "stanford-corenlp-3.6.0.jar," not in reason
    )


def test_installed_spice_reports_missing_corenlp_jars():
    if all((caption_metrics.SPICE_DIR / name).is_file() for name in SPICE_REQUIRED_FILES):
        pytest.skip("the Stanford CoreNLP jars are installed here")
    available, reason = spice_availability()
    assert not available
    assert "stanford-corenlp-3.6.0.jar" in reason and "stanford-corenlp-full-2015-12-09.zip" in reason


@needs_java
def test_unavailable_spice_gives_a_reason_not_a_number_and_never_downloads(tmp_path, monkeypatch):
    from pycocoevalcap.spice import get_stanford_models, spice

    def no_network(*args, **kwargs):
        raise AssertionError("SPICE tried to download Stanford CoreNLP")

    monkeypatch.setattr(get_stanford_models, "urlretrieve", no_network)
    monkeypatch.setattr(spice, "get_stanford_models", no_network)
    monkeypatch.setattr(caption_metrics, "SPICE_DIR", tmp_path)  # an empty folder: no jars
    scores = caption_scores(REFS, CANDS, spice=True)
    assert "spice" not in scores
    assert "stanford-corenlp-3.6.0.jar" in scores["spice_unavailable"]
    assert scores["cider"] > 0
