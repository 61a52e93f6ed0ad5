"""The sweep's Pareto figure stays readable when many lossless settings share the full model's quality."""

from __future__ import annotations

from pathlib import Path

from pipeline.report.figures import pareto_figure, pareto_plot

# eight lossless settings: one CIDEr (the full model's), speed-ups within 0.2 of each other — the case whose labels
# used to pile up on one line of the scatter
LOSSLESS = [(1.20 + 0.025 * i, 0.60, f"n={1 + i % 2} ce+cs+kd d={2 + i}") for i in range(8)]
DRAFTS = [(6.9, 0.37, "draft n=1 ce"), (5.1, 0.52, "draft n=2 ce")]


def _overlaps(texts) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent()) for t in texts if t.get_text()]
    return [(a, b) for i, (a, box) in enumerate(boxes) for b, other in boxes[i + 1 :] if box.overlaps(other)]


def test_lossless_settings_are_ranked_beside_the_scatter_with_no_overlapping_labels(tmp_path: Path):
    groups = {"SSD (lossless)": LOSSLESS, "draft alone (lossy)": DRAFTS}
    figure = pareto_figure(
        groups, [(1.375, 0.60), (6.9, 0.37)], xlabel="speed-up", ylabel="CIDEr", title="t", ranked="SSD (lossless)"
    )
    figure.canvas.draw()
    scatter, side = figure.axes
    assert _overlaps(scatter.texts) == []  # only the drafts are labelled in the scatter
    assert sorted(t.get_text() for t in scatter.texts) == ["draft n=1 ce", "draft n=2 ce"]
    ticks = [t.get_text() for t in side.get_yticklabels()]
    assert ticks == [label for _, _, label in sorted(LOSSLESS)]  # every setting named, slowest first
    assert _overlaps(side.get_yticklabels()) == []
    unranked = pareto_figure(groups, [], xlabel="speed-up", ylabel="CIDEr", title="t")
    unranked.canvas.draw()
    assert _overlaps(unranked.axes[0].texts)  # the old layout: the eight labels collide
    pareto_plot(tmp_path / "p.png", groups, [], xlabel="x", ylabel="y", title="t", ranked="SSD (lossless)")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
