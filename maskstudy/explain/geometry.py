"""Where a CAM's cells lie on the aligned crop, and which parts of the crop are eyes, mask and visible face.

A cell of a feature map is centred where the network's receptive grid puts it, which is not where a
generic resize puts it. Each stride-2 convolution of the IR-ResNet (3x3 with padding 1, or 1x1 without)
maps output index ``j`` to input index ``2j``, so after the four stages cell ``j`` is centred on input pixel
``16j`` (pixel centre ``16j + 0.5``): the grid starts at the top-left pixel and does not reach the bottom
right. ``F.interpolate(..., align_corners=False)`` instead puts cell ``j`` at ``16(j + 0.5)``, half a cell
(about 8 px at 112) towards the bottom right: on a face, from the eyes towards the mask. A ViT patch of ``p``
pixels is centred at ``p j + p / 2`` (where that resize is right); a hybrid's token, a ``p x p`` patch of a
stem map that is ``2**k`` times smaller, at ``2**k (p j + (p - 1) / 2) + 0.5``. :func:`cell_centres` gives
these centres, :func:`grid_to_crop` interpolates linearly between them (constant beyond the outer centres).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from torch import nn

from ..faces.align import CROP_SIZE, template
from ..faces.masks.drawing import mask_alpha

IR_STAGE_STRIDE = 2
"""Stride of each of the IR-ResNet's stage-opening convolutions (3x3 padding 1, shortcut 1x1 padding 0)."""


def _ir_stages(model: nn.Module) -> int:
    return sum(1 for i in range(1, 5) if isinstance(getattr(model, f"layer{i}", None), nn.Module))


def grid_size(model: nn.Module) -> int:
    """Side ``g`` of the explained layer's square grid: the IR-ResNet's last feature map or the ViT's patch grid."""
    for name in ("grid_size", "feature_map_size"):
        value = getattr(model, name, None)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
    raise ValueError(f"{type(model).__name__} has neither `grid_size` (ViT) nor `feature_map_size` (IR-ResNet)")


def receptive_grid(model: nn.Module) -> tuple[float, float]:
    """``(stride, first_centre)`` of the explained grid in input pixels: cell ``j`` is centred at
    ``first_centre + stride * j`` (continuous coordinates, pixel ``i`` covers ``[i, i + 1)``)."""
    declared = getattr(model, "cam_receptive_grid", None)
    if declared is not None:  # a model that states its own geometry
        return float(declared[0]), float(declared[1])
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None:  # FaceViT (maskstudy.models.vit): plain patches, or a CNN stem then patches
        patch = int(model.patch_size)
        stem = getattr(patch_embed, "backbone", None)
        scale = IR_STAGE_STRIDE ** int(stem.num_stages) if stem is not None else 1
        return float(scale * patch), scale * (patch - 1) / 2.0 + 0.5
    stages = _ir_stages(model)
    if stages == 4 and hasattr(model, "feature_map_size"):  # IResNet: stem at stride 1, four stride-2 stages
        return float(IR_STAGE_STRIDE**stages), 0.5
    raise ValueError(f"no receptive-grid geometry for {type(model).__name__}")


def cell_centres(model: nn.Module, crop_size: int = CROP_SIZE) -> np.ndarray:
    """``(g,)`` float64: the centres of the explained grid's cells in crop pixels (the same along rows and
    columns), from :func:`receptive_grid` scaled from the model's ``input_size`` to ``crop_size`` (the input
    is the crop resized with ``align_corners=False``, so continuous coordinates scale linearly)."""
    stride, first = receptive_grid(model)
    scale = crop_size / float(model.input_size)
    return (first + stride * np.arange(grid_size(model))) * scale


def cell_centres_2d(model: nn.Module, crop_size: int = CROP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``(row centres, column centres)`` of the explained grid's cells in crop pixels: a model whose input is warped
    inside it (dlib's chip, :class:`maskstudy.models.dlib_resnet.DlibResNet`) states its own with
    ``cam_crop_centres(crop_size)``; otherwise :func:`cell_centres` along both axes."""
    own = getattr(model, "cam_crop_centres", None)
    if callable(own):
        rows, columns = own(crop_size)
        return np.asarray(rows, dtype=np.float64), np.asarray(columns, dtype=np.float64)
    centres = cell_centres(model, crop_size)
    return centres, centres


def resize_centres(grid: int, crop_size: int = CROP_SIZE) -> np.ndarray:
    """``(grid,)``: the centres a generic resize (``align_corners=False``) assumes, ``(j + 0.5) crop / grid``;
    right for ViT patches, half a cell off for the IR-ResNet. Used for models without known geometry."""
    return (np.arange(grid) + 0.5) * crop_size / float(grid)


def interpolation_matrix(centres, size: int) -> np.ndarray:
    """``(size, g)``: row ``i`` holds the linear-interpolation weights of pixel centre ``i + 0.5`` between the
    cell ``centres`` (increasing); pixels beyond the outer centres take the outer cell's value. Rows sum to 1."""
    centres = np.asarray(centres, dtype=np.float64)
    if centres.ndim != 1 or len(centres) < 1 or np.any(np.diff(centres) <= 0):
        raise ValueError(f"centres must be a non-empty increasing 1-d array, got {centres}")
    pixels = np.arange(size) + 0.5
    identity = np.eye(len(centres))
    return np.stack([np.interp(pixels, centres, identity[k]) for k in range(len(centres))], axis=1)


def grid_to_crop(maps, centres, size: int) -> np.ndarray:
    """Grid maps ``(N, g, g)`` (or one ``(g, g)``) -> ``(N, size, size)`` float32: bilinear between the cells'
    receptive-field ``centres`` (crop pixels, see :func:`cell_centres`; a pair ``(rows, columns)`` when they differ
    between the axes, :func:`cell_centres_2d`). Non-negative maps stay non-negative."""
    maps = np.asarray(maps, dtype=np.float64)
    single = maps.ndim == 2
    maps = maps[None] if single else maps
    rows, columns = centres if isinstance(centres, tuple) else (centres, centres)
    if maps.ndim != 3 or maps.shape[1] != len(rows) or maps.shape[2] != len(columns):
        raise ValueError(f"maps must be (N, {len(rows)}, {len(columns)}) for the given centres, got {maps.shape}")
    out = np.einsum("ik,nkl,jl->nij", interpolation_matrix(rows, size), maps,
                    interpolation_matrix(columns, size)).astype(np.float32)
    return out[0] if single else out


EYE_BAND_ABOVE = 0.45
"""The eye band starts this many inter-ocular distances ``d`` above the eye line (eyebrows included)."""
EYE_BAND_BELOW = 0.35
"""... and ends this many ``d`` below it (lower lids and the top of the cheeks)."""
EYE_BAND_SIDE = 0.6
"""... and reaches this many ``d`` beyond each eye's centre sideways (outer eye corners, temples)."""


def _template_geometry(size: int) -> tuple[np.ndarray, float, float]:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    points = template(int(size))
    left, right = points[0], points[1]
    return points, float(np.hypot(*(right - left))), float((left[1] + right[1]) / 2.0)


@lru_cache(maxsize=8)
def _mask_region(size: int) -> np.ndarray:
    points, _, _ = _template_geometry(size)
    region = mask_alpha((size, size), points) > 0.5
    region.setflags(write=False)
    return region


def mask_region(size: int = CROP_SIZE) -> np.ndarray:
    """Bool ``(size, size)``: the synthetic face mask on the aligned crop, i.e. the pixels the mask of
    :mod:`maskstudy.faces.masks.drawing` covers by more than half when drawn on the ArcFace template landmarks (nose,
    mouth, chin and the lower cheeks)."""
    return _mask_region(int(size)).copy()


@lru_cache(maxsize=8)
def _eye_band(size: int) -> np.ndarray:
    points, d, eye_y = _template_geometry(size)
    top, bottom = eye_y - EYE_BAND_ABOVE * d, eye_y + EYE_BAND_BELOW * d
    left, right = points[0, 0] - EYE_BAND_SIDE * d, points[1, 0] + EYE_BAND_SIDE * d
    centres = np.arange(size) + 0.5  # pixel i covers [i, i + 1), as in maskstudy.faces.masks.drawing
    rows = (centres >= top) & (centres <= bottom)
    cols = (centres >= left) & (centres <= right)
    band = rows[:, None] & cols[None, :] & ~_mask_region(size)
    band.setflags(write=False)
    return band


def eye_band_mask(size: int = CROP_SIZE) -> np.ndarray:
    """Bool ``(size, size)``: the periocular band of the aligned crop, the part of the face a mask leaves visible.

    On the ArcFace template (eye line at ``y = 51.6``, inter-ocular distance ``d = 35.2`` px at 112x112) the
    band spans rows ``eye_y - 0.45 d .. eye_y + 0.35 d`` (``y`` 35.7..63.9: eyebrows to upper cheeks) and
    columns ``x_left_eye - 0.6 d .. x_right_eye + 0.6 d`` (``x`` 17.2..94.7), pixel centres inside; the
    numbers are :data:`EYE_BAND_ABOVE`, :data:`EYE_BAND_BELOW`, :data:`EYE_BAND_SIDE`. The mask's top edge
    rises over the nose bridge to ``y`` ~ 60, into the band's lower rows, so the :func:`mask_region` pixels
    are taken out (about 5% of the rectangle): the two regions never overlap. Scales with ``size``.
    """
    return _eye_band(int(size)).copy()


FACE_ABOVE = 0.9
"""The face ellipse reaches this many inter-ocular distances ``d`` above the eye line (mid-forehead) ..."""
FACE_BELOW = 0.75
"""... this many ``d`` below the mouth line (the chin) ..."""
FACE_SIDE = 1.15
"""... and this many ``d`` sideways from the eyes' midpoint (the cheeks' outline on the ArcFace template)."""


@lru_cache(maxsize=8)
def _face_region(size: int) -> np.ndarray:
    points, d, eye_y = _template_geometry(size)
    mouth_y = float((points[3, 1] + points[4, 1]) / 2.0)
    top, bottom = eye_y - FACE_ABOVE * d, mouth_y + FACE_BELOW * d
    centre_x, centre_y = float((points[0, 0] + points[1, 0]) / 2.0), (top + bottom) / 2.0
    centres = np.arange(size) + 0.5
    inside = (((centres[None, :] - centre_x) / (FACE_SIDE * d)) ** 2
              + ((centres[:, None] - centre_y) / ((bottom - top) / 2.0)) ** 2) <= 1.0
    inside.setflags(write=False)
    return inside


def face_region(size: int = CROP_SIZE) -> np.ndarray:
    """Bool ``(size, size)``: an ellipse around the face on the ArcFace template (forehead to chin, cheek to
    cheek; :data:`FACE_ABOVE`, :data:`FACE_BELOW`, :data:`FACE_SIDE`), pixel centres inside."""
    return _face_region(int(size)).copy()


def visible_face_region(size: int = CROP_SIZE) -> np.ndarray:
    """Bool ``(size, size)``: the part of :func:`face_region` a synthetic mask leaves visible (forehead, brows,
    eyes, upper cheeks), where the random control regions of the faithfulness curves are drawn."""
    return _face_region(int(size)) & ~_mask_region(int(size))


def cam_mass_share(cams, region) -> np.ndarray:
    """Share of each CAM's mass inside ``region``: ``sum(cam[region]) / sum(cam)``, ``(N,)`` float64.

    ``cams`` is ``(N, H, W)`` (or one ``(H, W)`` map) of non-negative values; ``region`` a bool ``(H, W)``.
    A CAM with zero total mass gives NaN.
    """
    cams = np.asarray(cams, dtype=np.float64)
    if cams.ndim == 2:
        cams = cams[None]
    region = np.asarray(region)
    if cams.ndim != 3:
        raise ValueError(f"cams must have shape (N, H, W), got {cams.shape}")
    if region.dtype != bool or region.shape != cams.shape[1:]:
        raise ValueError(f"region must be a bool mask of shape {cams.shape[1:]}, got {region.dtype} {region.shape}")
    if np.any(cams < 0):
        raise ValueError("cams must be non-negative")
    total = cams.sum(axis=(1, 2))
    inside = (cams * region).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def attention_on_regions(cams) -> pd.DataFrame:
    """Per image, the share of CAM mass on the eye band and inside the mask region: columns
    ``eye_share`` and ``mask_share`` (see :func:`eye_band_mask`, :func:`mask_region`); the maps must be
    square aligned crops (any size, regions scaled to it)."""
    cams = np.asarray(cams)
    if cams.ndim == 2:
        cams = cams[None]
    if cams.ndim != 3 or cams.shape[1] != cams.shape[2]:
        raise ValueError(f"cams must be square maps (N, S, S), got {cams.shape}")
    size = int(cams.shape[1])
    return pd.DataFrame({
        "eye_share": cam_mass_share(cams, eye_band_mask(size)),
        "mask_share": cam_mass_share(cams, mask_region(size)),
    })


