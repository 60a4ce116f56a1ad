"""Figure helpers shared by the notebooks: image grids and detections drawn on photos."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .data import BOX_COLUMNS, row_landmarks
from .detect import load_image


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
