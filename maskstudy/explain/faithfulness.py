"""Is a CAM faithful? Deletion and insertion curves against image-independent and face-restricted controls.

Deletion and insertion (V. Petsiuk, A. Das and K. Saenko, "RISE: Randomized Input Sampling for Explanation
of Black-box Models", BMVC 2018): remove (here: blur, as ROAD does, Y. Rong et al., ICML 2022) the pixels a
ranking puts first, in growing fractions, and follow the similarity to the reference; or start from the
blurred crop and put the pixels back. A faithful map makes the deletion curve fall faster (smaller area)
and the insertion curve rise faster (larger area) than rankings that do not look at the image:

* ``cam``: the image's own CAM;
* ``mean_cam``: the model's mean CAM over the data set (image-independent: "faces look like this");
* ``eye_band``: the fixed eye band first, then the rest of the visible face, then the rest (random order
  within each); it answers "does the map know more than that the eyes matter?";
* ``random_face``: random smooth blobs inside the visible face (not on background, borders or the mask).

:func:`deletion_check` is the earlier one-step version (top 10 %, against blobs anywhere), kept for reference.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..faces.preprocess import check_crops
from .cams import _embed, _reference_embeddings
from .geometry import eye_band_mask, visible_face_region

BLUR_RADIUS = 8.0
"""Gaussian blur of :func:`deletion_check`: PIL ``GaussianBlur`` radius (~ standard deviation) in pixels of
the 112x112 crop, about a quarter of the inter-ocular distance: eyes, brows and lips become smudges."""
RANDOM_BLOB_GRID = 7
"""Random regions of :func:`deletion_check` are the top pixels of white noise on a ``7 x 7`` grid upsampled
(bilinear) to the crop: blobs about as coarse as an upsampled CAM of a stride-16 backbone (7x7 at 112)."""


def _n_pixels(shape: tuple[int, int], fraction: float) -> int:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {fraction}")
    return max(1, int(round(fraction * shape[0] * shape[1])))


def _top_pixels(score: np.ndarray, n_pixels: int, rng: np.random.Generator) -> np.ndarray:
    flat = score.ravel()
    order = np.lexsort((rng.random(flat.size), -flat))  # highest first, ties in random order
    region = np.zeros(flat.size, dtype=bool)
    region[order[:n_pixels]] = True
    return region.reshape(score.shape)


def top_cam_region(cam, fraction: float, rng: np.random.Generator | int | None = 0) -> np.ndarray:
    """Bool ``(H, W)``: the ``round(fraction * H * W)`` (at least 1) pixels with the highest CAM values, ties
    broken at random (``rng``: a Generator or seed). NaN counts as lowest."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float64), nan=-np.inf)
    if cam.ndim != 2:
        raise ValueError(f"cam must have shape (H, W), got {cam.shape}")
    return _top_pixels(cam, _n_pixels(cam.shape, fraction), np.random.default_rng(rng))


def random_blob_region(
    shape: tuple[int, int], n_pixels: int, rng: np.random.Generator | int | None = 0
) -> np.ndarray:
    """Bool ``shape``: ``n_pixels`` pixels forming a few random smooth blobs (the top pixels of white noise on a
    :data:`RANDOM_BLOB_GRID` grid, upsampled bilinearly), the control region of :func:`deletion_check`."""
    height, width = int(shape[0]), int(shape[1])
    if not 1 <= n_pixels <= height * width:
        raise ValueError(f"n_pixels must be in 1..{height * width}, got {n_pixels}")
    rng = np.random.default_rng(rng)
    noise = torch.from_numpy(rng.standard_normal((1, 1, RANDOM_BLOB_GRID, RANDOM_BLOB_GRID)))
    field = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()
    return _top_pixels(field, n_pixels, rng)


def blur_region(crop: np.ndarray, region: np.ndarray, radius: float = BLUR_RADIUS) -> np.ndarray:
    """``crop`` (uint8 ``(H, W, 3)``) with the ``region`` pixels replaced by a Gaussian blur of the whole crop."""
    from PIL import Image, ImageFilter

    crop = np.asarray(crop)
    region = np.asarray(region, dtype=bool)
    if crop.ndim != 3 or crop.shape[-1] != 3 or crop.dtype != np.uint8 or region.shape != crop.shape[:2]:
        raise ValueError(f"need a uint8 (H, W, 3) crop and a bool (H, W) region, got {crop.dtype} {crop.shape}, "
                         f"{region.shape}")
    blurred = np.asarray(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(radius=radius)))
    return np.where(region[..., None], blurred, crop)


def deletion_check(
    model: nn.Module,
    crops,
    references,
    cams,
    input_size: int,
    top_fraction: float = 0.1,
    seed: int = 0,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Does blurring the most-attended pixels hurt the match more than blurring random ones?

    For each crop, the top ``top_fraction`` of its CAM's pixels (:func:`top_cam_region`) and, as a control,
    a random region of exactly the same number of pixels made of smooth blobs (:func:`random_blob_region`)
    are blurred (:func:`blur_region`, radius :data:`BLUR_RADIUS`); original and both blurred crops are
    re-embedded (fp32, eval mode, no flip) and compared with the reference (crops or embeddings, as in
    :func:`compute_cams`). Columns: ``sim_original``, ``sim_top_blurred``, ``sim_random_blurred`` (cosine
    similarities) and ``drop_top = sim_original - sim_top_blurred``, ``drop_random`` likewise. A faithful
    CAM gives ``drop_top > drop_random`` on average. Deterministic for a ``seed``.
    """
    crops = check_crops(crops)
    n, height, width = crops.shape[:3]
    cams = np.asarray(cams, dtype=np.float64)
    if cams.shape != (n, height, width):
        raise ValueError(
            f"cams must have shape {(n, height, width)} (one map per crop, at the crop size), got {cams.shape}"
        )
    n_pixels = _n_pixels((height, width), top_fraction)
    columns = ["sim_original", "sim_top_blurred", "sim_random_blurred", "drop_top", "drop_random"]
    if n == 0:
        return pd.DataFrame({c: np.zeros(0) for c in columns})
    refs = _reference_embeddings(model, references, n, input_size, batch_size)
    rng = np.random.default_rng(seed)
    top = np.empty_like(crops)
    rand = np.empty_like(crops)
    for i in range(n):
        top[i] = blur_region(crops[i], _top_pixels(np.nan_to_num(cams[i], nan=-np.inf), n_pixels, rng))
        rand[i] = blur_region(crops[i], random_blob_region((height, width), n_pixels, rng))
    emb = _embed(model, np.concatenate([crops, top, rand]), input_size, batch_size)
    sims = F.cosine_similarity(emb, refs.repeat(3, 1), dim=1, eps=1e-8).double().numpy().reshape(3, n)
    return pd.DataFrame({
        "sim_original": sims[0],
        "sim_top_blurred": sims[1],
        "sim_random_blurred": sims[2],
        "drop_top": sims[0] - sims[1],
        "drop_random": sims[0] - sims[2],
    }, columns=columns)




# ------------------------------------------------------------------------------------------ curves
CONTROL_RANKINGS = ("mean_cam", "eye_band", "random_face")
"""The controls of :func:`control_rankings`, in the order tables show them."""


def curve_fractions(steps: int, max_fraction: float) -> np.ndarray:
    """``steps + 1`` evenly spaced fractions of the crop's pixels, ``0 .. max_fraction``."""
    if isinstance(steps, bool) or int(steps) < 1 or not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"need steps >= 1 and 0 < max_fraction <= 1, got {steps}, {max_fraction}")
    return np.linspace(0.0, float(max_fraction), int(steps) + 1)


def pixel_order(score: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat pixel indices of ``score`` (``(H, W)``), highest first, ties in random order; NaN counts as lowest."""
    flat = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf).ravel()
    return np.lexsort((rng.random(flat.size), -flat))


def _face_blob_score(size: int, rng: np.random.Generator) -> np.ndarray:
    noise = torch.from_numpy(rng.standard_normal((1, 1, RANDOM_BLOB_GRID, RANDOM_BLOB_GRID)))
    field = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.where(visible_face_region(size), 10.0 + field, field - 10.0)  # the visible face first


def control_rankings(mean_cam: np.ndarray, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Scores ``(n, S, S)`` of the image-independent controls (see the module docstring): ``mean_cam`` repeated,
    the eye band (2) over the visible face (1) over the rest (0), and random face-restricted blobs (one draw
    per image, reproducible for ``seed``)."""
    mean_cam = np.asarray(mean_cam, dtype=np.float64)
    size = mean_cam.shape[0]
    if mean_cam.ndim != 2 or mean_cam.shape[1] != size:
        raise ValueError(f"mean_cam must be a square (S, S) map, got {mean_cam.shape}")
    band = 2.0 * eye_band_mask(size) + visible_face_region(size)
    rng = np.random.default_rng(seed)
    return {
        "mean_cam": np.repeat(mean_cam[None], n, axis=0),
        "eye_band": np.repeat(band[None], n, axis=0),
        "random_face": np.stack([_face_blob_score(size, rng) for _ in range(n)]) if n else np.zeros((0, size, size)),
    }


def deletion_insertion_curves(
    model: nn.Module,
    crops,
    references,
    rankings: dict[str, np.ndarray],
    input_size: int,
    fractions,
    seed: int = 0,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Deletion and insertion curves of each ranking: long table ``image, ranking, curve, fraction, similarity``.

    ``rankings``: name -> scores ``(N, H, W)`` at the crop size (higher = earlier). At fraction ``f`` the
    first ``round(f H W)`` pixels of the ranking (:func:`pixel_order`) are blurred (``curve = "deletion"``,
    :func:`blur_region`'s blur) or are the only sharp ones (``"insertion"``, starting from the blurred crop);
    ``similarity`` is the cosine similarity of the re-embedded crop (fp32, eval mode) to the reference.
    """
    crops = check_crops(crops)
    n, height, width = crops.shape[:3]
    fractions = np.asarray(fractions, dtype=np.float64)
    counts = np.rint(fractions * height * width).astype(int)
    for name, scores in rankings.items():
        if np.shape(scores) != (n, height, width):
            raise ValueError(f"ranking {name!r} must have shape {(n, height, width)}, got {np.shape(scores)}")
    rows: list[pd.DataFrame] = []
    if n == 0:
        return pd.DataFrame(columns=["image", "ranking", "curve", "fraction", "similarity"])
    refs = _reference_embeddings(model, references, n, input_size, batch_size)
    rng = np.random.default_rng(seed)
    from PIL import Image, ImageFilter

    for i in range(n):
        blurred = np.asarray(Image.fromarray(crops[i]).filter(ImageFilter.GaussianBlur(radius=BLUR_RADIUS)))
        images, keys, index = [], [], {}  # a ranking-independent image (nothing or everything chosen) is embedded once
        for name, scores in rankings.items():
            order = pixel_order(scores[i], rng)
            for count, fraction in zip(counts, fractions):
                chosen = np.zeros(height * width, dtype=bool)
                chosen[order[:count]] = True
                chosen = chosen.reshape(height, width, 1)
                for curve, image in (("deletion", np.where(chosen, blurred, crops[i])),
                                     ("insertion", np.where(chosen, crops[i], blurred))):
                    shared = (curve, count) if count in (0, height * width) else None
                    if shared not in index or shared is None:
                        index[shared] = len(images)
                        images.append(image)
                    keys.append((name, curve, fraction, index[shared]))
        emb = _embed(model, np.stack(images), input_size, batch_size)
        sims = F.cosine_similarity(emb, refs[i:i + 1].expand(len(emb), -1), dim=1, eps=1e-8).double().numpy()
        table = pd.DataFrame([k[:3] for k in keys], columns=["ranking", "curve", "fraction"])
        sims = sims[[k[3] for k in keys]]
        table.insert(0, "image", i)
        table["similarity"] = sims
        rows.append(table)
    return pd.concat(rows, ignore_index=True)


def curve_areas(curves: pd.DataFrame) -> pd.DataFrame:
    """Area under each image's curve divided by its fraction range (i.e. the curve's mean similarity, trapezoid
    rule): columns ``image, ranking, curve, area``. Deletion: smaller is more faithful; insertion: larger."""
    def area(part: pd.DataFrame) -> float:
        part = part.sort_values("fraction")
        x, y = part["fraction"].to_numpy(), part["similarity"].to_numpy()
        return float(np.sum((y[1:] + y[:-1]) / 2.0 * np.diff(x)) / (x[-1] - x[0]))

    keys = ["image", "ranking", "curve"]
    return curves.groupby(keys, sort=False).apply(area, include_groups=False).rename("area").reset_index()


def rank_correlation(maps_a, maps_b) -> np.ndarray:
    """Per-image Spearman rank correlation of two sets of maps ``(N, H, W)`` (NaN where a map is constant): the
    similarity measure of Adebayo et al.'s randomisation check."""
    from scipy.stats import spearmanr

    a = np.asarray(maps_a, dtype=np.float64).reshape(len(maps_a), -1)
    b = np.asarray(maps_b, dtype=np.float64).reshape(len(maps_b), -1)
    if a.shape != b.shape:
        raise ValueError(f"maps must have equal shapes, got {a.shape} and {b.shape}")
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        if np.ptp(a[i]) > 0 and np.ptp(b[i]) > 0:
            out[i] = spearmanr(a[i], b[i]).statistic
    return out
