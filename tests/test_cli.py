"""`python -m pipeline caption IMAGE`: the caption, the speed, which tokens the draft wrote; clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.models.imitation import ImitationNetwork, save_imitation
from tests.conftest import ROOT, TINY


@pytest.fixture
def repo(tiny_repo, monkeypatch):
    monkeypatch.chdir(tiny_repo)
    torch.manual_seed(0)
    save_imitation(
        ImitationNetwork(TINY.hidden_size),
        tiny_repo / "models/imitation/ce+cs+kd",
        {"draft_layers": 1, "variant": "ce+cs+kd"},
    )
    (tiny_repo / "metrics").mkdir(exist_ok=True)
    (tiny_repo / "metrics/sweep.json").write_text(json.dumps({"draft_len_by_layers": {"1": 2}}))
    return tiny_repo


def _image(repo: Path) -> Path:
    return sorted((repo / "data/prepared/images").rglob("*.png"))[0]


def test_ssd_prints_caption_speed_draft_tokens_and_identity(repo, capsys):
    assert main(["caption", str(_image(repo)), "--draft-len", "2"]) == 0
    out = capsys.readouterr().out
    assert "self-speculative: layers 0..0 + imitation network" in out and "tokens/s" in out
    assert "tokens: " in out and "drafted and accepted" in out
    assert "identical to the full model's" in out  # greedy SSD is lossless


@pytest.mark.parametrize("method, expected", [("full", "full model (model.generate"), ("draft", "draft alone")])
def test_other_methods(repo, capsys, method, expected):
    assert main(["caption", str(_image(repo)), "--method", method, "--no-compare"]) == 0
    assert expected in capsys.readouterr().out


def test_vqa_needs_a_question(repo, capsys):
    with pytest.raises(SystemExit) as info:
        main(["caption", str(_image(repo)), "--task", "vqa"])
    assert info.value.code == 2 and "error: --task vqa needs --question" in capsys.readouterr().err


def test_missing_and_corrupt_images_are_clean_errors(repo, capsys):
    assert main(["caption", "nowhere.png"]) == 2
    assert "image file not found: nowhere.png" in capsys.readouterr().err
    (repo / "broken.png").write_bytes(b"not a png")
    assert main(["caption", str(repo / "broken.png")]) == 2
    assert "cannot decode image" in capsys.readouterr().err
    assert main(["caption", str(_image(repo)), "--method", "layerskip", "--layerskip", "none"]) == 2
    assert "run `dvc repro train_baselines`" in capsys.readouterr().err


def test_d_defaults_to_the_sweeps_choice_and_its_absence_is_a_clean_error(repo, capsys):
    assert main(["caption", str(_image(repo)), "--no-compare"]) == 0
    assert ", d = 2" in " ".join(capsys.readouterr().out.split())  # rich wraps lines
    (repo / "metrics/sweep.json").unlink()
    assert main(["caption", str(_image(repo)), "--no-compare"]) == 2
    err = capsys.readouterr().err
    assert "metrics/sweep.json is missing: run `dvc repro sweep`" in err and "--draft-len" in err


def test_module_entry_point(repo):
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "caption", str(_image(repo)), "--no-compare"],
        capture_output=True,
        text=True,
        cwd=repo,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tokens/s" in done.stdout


def test_many_images_are_captioned_in_batches_and_bad_files_are_skipped_by_name(repo, capsys, tmp_path):
    import json

    images = sorted((repo / "data/prepared/images").rglob("*.png"))[:5]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "captions.json"
    argv = ["caption", str(folder), str(tmp_path / "missing.png"), "--batch-size", "2", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"skipped {folder / 'broken.png'}: cannot decode image" in captured.err
    assert f"skipped {tmp_path / 'missing.png'}: image file not found" in captured.err
    records = json.loads(out.read_text())["records"]
    expected = [*sorted(["broken.png", *(i.name for i in images)]), "missing.png"]
    assert [Path(r["image"]).name for r in records] == expected
    good = [r for r in records if r["error"] is None]
    assert len(good) == 5 and all(r["caption"] is not None and r["new_tokens"] == len(r["tokens"]) for r in good)
    # each image's caption in the batch is the caption the full model writes for it alone (SSD is lossless)
    for record in good[:2]:
        assert main(["caption", record["image"], "--method", "full", "--no-compare"]) == 0
        assert capsys.readouterr().out.splitlines()[0] == record["caption"]
    assert main(["caption", str(folder / "broken.png"), str(tmp_path / "missing.png"), "--out", str(out)]) == 2
