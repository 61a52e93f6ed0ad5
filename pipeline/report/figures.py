"""Figures from metrics: PNGs written atomically, headless (Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def line_plot(
    path: str | Path,
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    title: str,
    ylabel: str = "",
    mark_x: float | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for label, values in series.items():
        axis.plot(list(x), list(values), marker="o", label=label)
    if mark_x is not None:
        axis.axvline(mark_x, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def pareto_plot(path: str | Path, *args: Any, **kwargs: Any) -> None:
    """`pareto_figure(*args, **kwargs)` saved as a PNG at `path`."""
    import matplotlib.pyplot as plt

    figure = pareto_figure(*args, **kwargs)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def pareto_figure(
    groups: Mapping[str, Sequence[tuple[float, float, str]]],
    front: Sequence[tuple[float, float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    ranked: str | None = None,
) -> Figure:
    """Scatter of (x, y, label) points per group, with the Pareto front drawn as a step line.

    `ranked` names a group drawn unlabelled in the scatter and, beside it, as bars sorted by x, one per label: lossless
    settings all sit at the full model's quality, so in a scatter their labels pile up on one horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = sorted(groups.get(ranked, []) if ranked else [], key=lambda p: p[0])
    if bars:
        figure, (axis, side) = plt.subplots(
            1, 2, figsize=(12, max(4.5, 0.28 * len(bars) + 1.5)), dpi=120, gridspec_kw={"width_ratios": [3, 2]}
        )
    else:
        figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, points in groups.items():
        axis.scatter([p[0] for p in points], [p[1] for p in points], label=name, alpha=0.8)
        if name != ranked:
            for x, y, label in points:
                axis.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if front:
        xs, ys = zip(*sorted(front), strict=True)
        axis.step(xs, ys, where="post", color="black", linewidth=1, label="Pareto front")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    if bars:
        positions = range(len(bars))
        side.barh(list(positions), [p[0] for p in bars], color="C0", alpha=0.8)
        side.set_yticks(list(positions), [p[2] for p in bars], fontsize=7)
        for y, (x, _, _) in zip(positions, bars, strict=True):
            side.annotate(f"{x:.2f}×", (x, y), fontsize=6, xytext=(2, -2), textcoords="offset points")
        side.axvline(1.0, color="grey", linestyle="--", linewidth=1)
        side.set_xlabel(xlabel)
        side.set_title(f"{ranked}, by speed-up", fontsize=9)
        side.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    return figure
