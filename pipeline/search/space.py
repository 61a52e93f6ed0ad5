"""Search spaces for Ray Tune, declared in YAML files under `experiments/search_spaces/`.

A file holds `space` (key → constant or one distribution) and optionally `evaluate_first` (configurations
tried before any sampled one). Distributions: `{choice: [...]}`, `{grid: [...]}`, `{uniform: [lo, hi]}`,
`{loguniform: [lo, hi]}`, `{randint: [lo, hi]}` (hi exclusive). Keeping the space declarative lets a user
widen a search for a cluster without touching code; errors name the file and the key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    space: dict[str, Any]  # key → constant or {distribution: arguments}, as written
    evaluate_first: list[dict[str, Any]] = field(default_factory=list)

    def values(self, key: str) -> list[Any]:
        """Every value a grid/choice key can take (a constant: itself)."""
        spec = self.space[key]
        if isinstance(spec, dict):
            kind, arg = next(iter(spec.items()))
            if kind in ("choice", "grid"):
                return list(arg)
            raise ValueError(f"{self.path}: {key} is a {kind} distribution, not a finite set")
        return [spec]

    def with_grid_value(self, key: str, value: Any) -> SearchSpace:
        """This space with `value` among `key`'s grid values (a grid of `value` alone where the file has no `key`)."""
        values = self.values(key) if key in self.space else []
        if value in values:
            return self
        return SearchSpace(self.path, {**self.space, key: {"grid": sorted([*values, value])}}, self.evaluate_first)

    def with_values_first(self, key: str, first: Iterable[Any]) -> SearchSpace:
        """This space with `key`'s grid values reordered: those in `first` before the others, each group in its
        order. Tune's grid varies its first key (alphabetically) fastest, so this decides which trials start first."""
        spec = self.space.get(key)
        if not (isinstance(spec, dict) and "grid" in spec):
            return self
        early = set(first)
        values = list(spec["grid"])
        ordered = [v for v in values if v in early] + [v for v in values if v not in early]
        return SearchSpace(self.path, {**self.space, key: {"grid": ordered}}, self.evaluate_first)

    def without(self, key: str) -> SearchSpace:
        """This space less `key` (a key the trainable handles itself rather than Tune)."""
        return SearchSpace(
            self.path,
            {k: v for k, v in self.space.items() if k != key},
            [{k: v for k, v in point.items() if k != key} for point in self.evaluate_first],
        )

    def grid_size(self) -> int:
        size = 1
        for spec in self.space.values():
            if isinstance(spec, dict) and "grid" in spec:
                size *= len(spec["grid"])
        return size

    def to_tune(self) -> dict[str, Any]:
        """The `param_space` for `tune.Tuner`."""
        from ray import tune

        def convert(spec: Any) -> Any:
            if not isinstance(spec, dict):
                return spec
            kind, arg = next(iter(spec.items()))
            if kind == "grid":
                return tune.grid_search(list(arg))
            if kind == "choice":
                return tune.choice(list(arg))
            return getattr(tune, kind)(*arg)

        return {key: convert(spec) for key, spec in self.space.items()}


def _check_spec(path: Path, key: str, spec: Any) -> list[str]:
    if not isinstance(spec, dict) or not any(k in DISTRIBUTIONS for k in spec):
        return []  # a constant (a dict constant must not look like a distribution)
    if len(spec) != 1:
        return [f"{key}: a distribution has exactly one of {DISTRIBUTIONS}, got {sorted(spec)}"]
    kind, arg = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        if not isinstance(arg, list) or not arg:
            return [f"{key}: {kind} needs a non-empty list, got {arg!r}"]
        return []
    if not (
        isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, int | float) for v in arg) and arg[0] < arg[1]
    ):
        return [f"{key}: {kind} needs [lo, hi] with lo < hi, got {arg!r}"]
    if kind == "loguniform" and arg[0] <= 0:
        return [f"{key}: loguniform needs lo > 0, got {arg!r}"]
    return []


def load_search_space(path: str | Path, allowed_keys: set[str] | None = None) -> SearchSpace:
    """Read and validate a search-space file; `allowed_keys` (if given) are the only keys the trainable knows."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"search space file not found: {path} (set its path in params.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("space"), dict) or not raw["space"]:
        raise ConfigError(f"search space {path}: expected a top-level mapping with a non-empty `space:` section")
    unknown_sections = set(raw) - {"space", "evaluate_first"}
    problems = (
        [f"unknown section(s) {sorted(unknown_sections)} (allowed: space, evaluate_first)"] if unknown_sections else []
    )
    space = raw["space"]
    for key, spec in space.items():
        if allowed_keys is not None and key not in allowed_keys:
            problems.append(f"{key}: unknown key (allowed: {sorted(allowed_keys)})")
        problems += _check_spec(path, key, spec)
    first = raw.get("evaluate_first") or []
    if not isinstance(first, list) or not all(isinstance(p, dict) for p in first):
        problems.append("evaluate_first must be a list of mappings")
        first = []
    for point in first:
        extra = set(point) - set(space)
        if extra:
            problems.append(f"evaluate_first entry {point} names keys outside `space`: {sorted(extra)}")
    if problems:
        raise ConfigError(f"search space {path} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))
    return SearchSpace(path=path, space=dict(space), evaluate_first=list(first))
