"""The report's figures as SVG text: accuracy vs bit width per method, and a gallery per generator.

Figures are drawn with matplotlib's object API (no pyplot, so no global backend or figure state)
and saved with a fixed hash salt and no date, so the same records give byte-identical SVG.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib
from matplotlib.figure import Figure

from reports.gallery import GalleryRow

SVG_SETTINGS = {"svg.hashsalt": "dfq-harness-report", "svg.fonttype": "path"}


@dataclass(frozen=True)
class Series:
    """One method's line: values per bit width (None where not run), with std and published figures."""

    label: str
    means: list[float | None]
    stds: list[float | None]
    published: list[float | None]


def accuracy_svg(title: str, metric: str, bits: list[str], series: list[Series], fp: float | None) -> str:
    """Mean ± std per method over bit widths (lowest precision on the left); hollow markers: published."""
    figure = Figure(figsize=(6.4, 3.6))
    axes = figure.add_subplot()
    positions = range(len(bits))
    colors = matplotlib.colormaps["tab10"]
    for index, line in enumerate(series):
        color = colors(index % 10)
        points = [(x, m, s) for x, m, s in zip(positions, line.means, line.stds) if m is not None]
        axes.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] or 0.0 for p in points],
                      color=color, marker="o", capsize=3, label=line.label)
        published = [(x, p) for x, p in zip(positions, line.published) if p is not None]
        if published:
            axes.scatter([p[0] for p in published], [p[1] for p in published], s=70, facecolors="none",
                         edgecolors=[color], linewidths=1.5, zorder=3)
    if fp is not None:
        axes.axhline(fp, color="0.4", linestyle="--", linewidth=1, label=f"FP {fp:.2f}")
    if any(p is not None for line in series for p in line.published):
        axes.scatter([], [], s=70, facecolors="none", edgecolors="0.3", label="published")
    axes.set_xticks(list(positions), bits)
    axes.set_xlabel("bit width")
    axes.set_ylabel(metric)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    return _svg(figure)


def gallery_svg(title: str, rows: list[GalleryRow]) -> str:
    """One row of de-normalized images per model; a one-channel prior is shown in grey."""
    columns = max(len(row.images) for row in rows)
    figure = Figure(figsize=(1.0 * columns + 1.6, 1.0 * len(rows) + 0.5))
    grid = figure.subplots(len(rows), columns, squeeze=False)
    for row, axes_row in zip(rows, grid):
        for column, axes in enumerate(axes_row):
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_frame_on(False)
            if column < len(row.images):
                image = row.images[column]
                if image.shape[-1] == 1:
                    axes.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
                else:
                    axes.imshow(image)
        axes_row[0].set_ylabel(f"{row.model}\nseed {row.seed}", rotation=0, ha="right", va="center", fontsize=7)
    figure.suptitle(title)
    return _svg(figure, dpi=100)


def _svg(figure: Figure, dpi: int = 72) -> str:
    """SVG text without the XML prologue, ready to inline in HTML or to write to a file."""
    buffer = io.StringIO()
    with matplotlib.rc_context(SVG_SETTINGS):
        figure.savefig(buffer, format="svg", bbox_inches="tight", dpi=dpi, metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]
