"""Named experiment configs (`experiments/configs/*.yaml`): partial params files merged into params.yaml.

DVC reads one params file; an experiment config names only what differs from the defaults (a real checkpoint, its
prompts, precision, the paper's budgets). Applying one merges it key by key into params.yaml — keeping that file's
comments, which document every knob — validates the result as every stage would, and writes it atomically, so a bad
value never reaches params.yaml.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from pipeline.config import parse_params
from pipeline.errors import ConfigError
from pipeline.io import atomic_write_text


def _merge(base: Any, update: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Update `base` in place with `update`, section by section; returns the dotted keys set."""
    changed = []
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            changed += _merge(base[key], value, f"{prefix}{key}.")
        else:
            base[key] = value
            changed.append(f"{prefix}{key}")
    return changed


def _load(yaml: YAML, path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"{path} not found")
    try:
        loaded = yaml.load(path.read_text())
    except YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path} must hold a mapping of params.yaml sections (data, model, ...)")
    return loaded


def apply_config(config: str | Path, params: str | Path = "params.yaml") -> list[str]:
    """Merge the experiment config `config` into `params`; returns the keys it set. Nothing is written if the merged
    params are invalid (the error lists every bad field)."""
    yaml = YAML()  # round-trip: params.yaml's comments and key order survive
    yaml.width = 120
    yaml.representer.add_representer(  # `null` as params.yaml writes it, not an empty value
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    merged = _load(yaml, Path(params))
    changed = _merge(merged, _load(yaml, Path(config)))
    plain = YAML(typ="safe", pure=True)
    buffer = io.StringIO()
    yaml.dump(merged, buffer)
    parse_params(plain.load(buffer.getvalue()), source=f"{params} with {config}")
    atomic_write_text(params, buffer.getvalue())
    return changed
