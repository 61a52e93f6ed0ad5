from __future__ import annotations

import json

import pytest
from PIL import Image

from pipeline.errors import DataFormatError
from pipeline.io import atomic_save_png, atomic_write_json, atomic_write_text, read_json


def test_writes_atomically_without_leftovers(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_json(path, {"a": [1, 2]})
    atomic_write_json(path, {"b": "é"}, indent=None)
    assert json.loads(path.read_text(encoding="utf-8")) == {"b": "é"}
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]
    assert path.stat().st_mode & 0o044  # readable by others, not mkstemp's owner-only mode


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_json(path, {"x": object()})
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_png(tmp_path):
    atomic_save_png(tmp_path / "x.png", Image.new("RGB", (3, 2), (1, 2, 3)))
    assert Image.open(tmp_path / "x.png").getpixel((0, 0)) == (1, 2, 3)


def test_read_json_errors(tmp_path):
    with pytest.raises(DataFormatError, match="a thing not found"):
        read_json(tmp_path / "no.json", what="a thing")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(DataFormatError, match="not UTF-8"):
        read_json(bad, what="a thing")
