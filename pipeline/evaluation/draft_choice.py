"""The draft length d `evaluate` (and the CLI, the benchmarks) use: `decoding.draft_len` as given, or, when it is
`auto`, the sweep's fastest fixed d at the draft layers n being evaluated (the paper picks d by its sweep, Fig. 9)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pipeline.errors import ConfigError

SWEEP_METRICS = Path("metrics/sweep.json")


def resolve_draft_len(chosen: int | Literal["auto"], draft_layers: int, sweep_file: str | Path = SWEEP_METRICS) -> int:
    """`chosen` when it is an int; for "auto", `draft_len_by_layers[n]` of the sweep stage's metrics."""
    if not isinstance(chosen, str):
        return chosen
    path = Path(sweep_file)
    if not path.exists():
        raise ConfigError(
            f"decoding.draft_len is auto but {path} is missing: run `dvc repro sweep`, or set decoding.draft_len to a d"
        )
    by_layers = json.loads(path.read_text()).get("draft_len_by_layers", {})
    if str(draft_layers) not in by_layers:
        tried = sorted(int(n) for n in by_layers)
        raise ConfigError(
            f"decoding.draft_len is auto but the sweep ({path}) timed no fixed d at n = {draft_layers} (its n with a "
            f"fixed d: {tried}); add n = {draft_layers} and fixed d values to the sweep's search space, or set "
            "decoding.draft_len to a d"
        )
    return int(by_layers[str(draft_layers)])
