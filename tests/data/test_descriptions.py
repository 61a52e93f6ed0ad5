from __future__ import annotations

import json

import pytest

from pipeline.data.descriptions import load_descriptions
from pipeline.errors import DataFormatError


def write(tmp_path, data):
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps(data))
    return path


def test_loads_and_strips(tmp_path):
    path = write(tmp_path, {"descriptions": [{"image_id": 3, "description": " a red circle . "}]})
    assert load_descriptions(path) == {3: "a red circle ."}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"items": []}, r"no 'descriptions' list"),
        ({"descriptions": [{"description": "x"}]}, r"descriptions\[0\] has no integer 'image_id'"),
        ({"descriptions": [{"image_id": 5, "description": ""}]}, r"descriptions\[0\] \(image_id 5\) has no non-empty"),
        (
            {"descriptions": [{"image_id": 5, "description": "a"}, {"image_id": 5, "description": "b"}]},
            r"descriptions\[1\] repeats image_id 5",
        ),
    ],
)
def test_malformed(tmp_path, data, message):
    with pytest.raises(DataFormatError, match=r"descriptions\.json: " + message):
        load_descriptions(write(tmp_path, data))
