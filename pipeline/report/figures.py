"""Figures from metrics: PNGs written atomically, headless (Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.io import atomic_write_bytes


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


def pareto_plot(
    path: str | Path,
    groups: Mapping[str, Sequence[tuple[float, float, str]]],
    front: Sequence[tuple[float, float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
) -> None:
    """Scatter of (x, y, label) points per group, with the Pareto front drawn as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, points in groups.items():
        axis.scatter([p[0] for p in points], [p[1] for p in points], label=name, alpha=0.8)
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
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
