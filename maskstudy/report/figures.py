"""Figure helpers shared by the notebooks: image grids, detections drawn on photos and the forest plot of model
differences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..datasets.build import BOX_COLUMNS, row_landmarks
from ..faces.detect import load_image


def _grid(n: int, ncols: int, size: float, suptitle: str | None):
    """An empty grid of image axes (axis lines off) for ``n`` panels."""
    import matplotlib.pyplot as plt

    n = max(n, 1)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig, axes.ravel()


def image_grid(images: Sequence, titles: Sequence[str] | None = None, ncols: int = 8, size: float = 1.6,
               suptitle: str | None = None):
    """A matplotlib figure showing ``images`` (PIL images, arrays or paths) in a grid."""
    fig, axes = _grid(len(images), ncols, size, suptitle)
    for index, ax in zip(range(len(images)), axes):
        image = images[index]
        if isinstance(image, (str, Path)):
            image = Image.open(image)
        ax.imshow(np.asarray(image))
        if titles is not None:
            ax.set_title(str(titles[index]), fontsize=7)
    fig.tight_layout()
    return fig


def draw_detection(ax, image, row, show_centres: bool = True, title: str | None = None) -> None:
    """Draw a photo with its chosen MTCNN box and 5 landmarks; optionally the box centre (+) and eye centre (x)
    used by the side-face rule."""
    from matplotlib.patches import Rectangle

    ax.imshow(np.asarray(image))
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=7)
    box = [row.get(c) for c in BOX_COLUMNS]
    if any(v is None or not np.isfinite(v) for v in box):
        return
    x1, y1, x2, y2 = box
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2, ec="lime"))
    landmarks = row_landmarks(row)
    ax.scatter(landmarks[:, 0], landmarks[:, 1], s=6, c=["cyan", "cyan", "yellow", "magenta", "magenta"])
    if show_centres:
        eye = landmarks[:2].mean(0)
        ax.plot([(x1 + x2) / 2], [(y1 + y2) / 2], "+", c="lime", ms=9, mew=1.5)
        ax.plot([eye[0]], [eye[1]], "x", c="red", ms=7, mew=1.5)


def detection_grid(rows, roots: Mapping[str, str | Path], ncols: int = 6, size: float = 2.0,
                   titles: Sequence[str] | None = None, suptitle: str | None = None):
    """Photos (``roots[row['dataset']] / row['image']``) with their detections, in a grid."""
    rows = list(rows)
    fig, axes = _grid(len(rows), ncols, size, suptitle)
    for index, (ax, row) in enumerate(zip(axes, rows)):
        image = load_image(Path(roots[row["dataset"]]) / row["image"]).image
        if image is None:
            continue
        draw_detection(ax, image, row, title=None if titles is None else titles[index])
    fig.tight_layout()
    return fig


def forest_plot(rows: pd.DataFrame, title: str = "Differences between models on the tests that carry the answer"):
    """One panel per track, the comparisons grouped by test (in the rows' order, each test a bold heading): the
    difference in accuracy points with its 95 % interval, filled when Holm's correction separates it from 0, its
    Holm-adjusted p at the right; the legend sits below the panels. ``rows``: :func:`maskstudy.study.answer.forest_rows`."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tracks = list(dict.fromkeys(rows["track"]))
    lines = [line for test in dict.fromkeys(rows["test"]) for line in
             [(test, None), *[(test, c) for c in dict.fromkeys(rows[rows["test"] == test]["comparison"])]]]
    y = {line: i for i, line in enumerate(lines)}
    fig, axes = plt.subplots(1, max(len(tracks), 1), figsize=(4.9 * max(len(tracks), 1) + 2.4, 0.3 * len(lines) + 1.6),
                             sharey=True, squeeze=False)
    for ax, track in zip(axes[0], tracks):
        part = rows[rows["track"] == track]
        for r in part.itertuples():
            row = y[(r.test, r.comparison)]
            colour = "#b2182b" if r.separated else "#2166ac"
            ax.plot([r.low, r.high], [row, row], color=colour, lw=1.6)
            ax.plot([r.diff], [row], "o", ms=6, color=colour, mfc=colour if r.separated else "white", mew=1.5)
            ax.annotate("p<0.01" if r.p_holm < 0.01 else f"p {r.p_holm:.2f}", (1.0, row), xycoords=("axes fraction", "data"), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=8, color="#555")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(track, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("difference in accuracy, points (first model minus second)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    ax = axes[0, 0]
    ax.set_yticks(range(len(lines)), [test if comparison is None else comparison for test, comparison in lines])
    for tick, (_, comparison) in zip(ax.get_yticklabels(), lines):
        tick.set_fontweight("bold" if comparison is None else "normal")
        tick.set_fontsize(9 if comparison is None else 8.5)
    ax.set_ylim(len(lines) - 0.5, -0.7)
    for axis in axes[0]:
        for i, (_, comparison) in enumerate(lines):
            if comparison is None and i:
                axis.axhline(i - 0.5, color="#bbb", lw=0.8)
    handles = [Line2D([], [], marker="o", color="#b2182b", mfc="#b2182b", lw=1.6, label="separated from 0 after Holm"),
               Line2D([], [], marker="o", color="#2166ac", mfc="white", lw=1.6, label="not separable from 0")]
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8.5, frameon=False,
               title="95 % interval over training seeds (one seed: identity bootstrap); p: Holm-adjusted",
               title_fontsize=8.5)
    return fig
