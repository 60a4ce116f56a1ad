"""The geometry of the synthetic masks (:mod:`maskstudy.faces.masks.drawing`): a face-aligned frame from five landmarks, and
the mask's outline and ear straps in it.

The five landmarks are, in order, left eye, right eye (image-left / image-right), nose tip, left
and right mouth corner, as a ``(5, 2)`` array of ``(x, y)`` pixels. They define a face-aligned
frame with origin at the eye midpoint ``E``::

    point(a, b) = E + a * iod * u + b * (M - E)

where ``u`` is the unit vector from the left to the right eye, ``iod`` the inter-ocular distance
and ``M`` the mouth midpoint. So ``a`` is measured in inter-ocular distances across the face and
``b`` runs down the eye-mouth axis (``b = 0`` on the eye line, ``b = 1`` on the mouth line); the
frame rotates, scales and (for yawed faces) shears with the face. The mask outline
(:func:`mask_polygon`) is built in this frame: its top edge crosses the nose bridge
:data:`TOP_FRAC` of the way from the eye line to the nose tip and falls towards the cheeks, its
sides lie :data:`HALF_WIDTH` inter-ocular distances from the centre line, and a rounded chin
curve reaches :data:`CHIN_DEPTH` eye-mouth distances below the mouth line.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# --- geometry constants (face-frame units: a in inter-ocular distances, b in eye-mouth distances)
TOP_FRAC = 0.40
"""Top edge at the centre line: this fraction of the way from the eye line to the nose tip."""
SIDE_TOP_FRAC = 0.85
"""Upper side corners: this fraction of the way from the eye line to the nose tip."""
HALF_WIDTH = 1.08
"""Half width of the mask at the upper corners, in inter-ocular distances from the centre line."""
HALF_WIDTH_MOUTH = 1.0
"""Half width at the mouth line (the jaw narrows slightly)."""
CHIN_DEPTH = 0.72
"""Lowest point of the chin curve below the mouth line, in eye-mouth distances.

On LFW photos the chin (bottom of the MTCNN box) lies about 0.5-0.85 eye-mouth distances below the
mouth line; the mask wraps a little under it.
"""
CHIN_EXPONENT = 2.4
"""Superellipse exponent of the chin curve (2 = ellipse; larger = squarer)."""
STRAP_REACH = 1.40
"""Ear straps end this many inter-ocular distances from the centre line (about the face edge)."""



@dataclass(frozen=True)
class MaskShape:
    """The outline of a mask in the face frame; the defaults are the module's constants (a surgical mask
    worn over the nose). Styles with another cut (:data:`STYLE_SHAPES`) change some of them."""

    top_frac: float = TOP_FRAC
    side_top_frac: float = SIDE_TOP_FRAC
    half_width: float = HALF_WIDTH
    half_width_mouth: float = HALF_WIDTH_MOUTH
    chin_depth: float = CHIN_DEPTH
    chin_exponent: float = CHIN_EXPONENT


DEFAULT_SHAPE = MaskShape()


@dataclass(frozen=True)
class MaskFrame:
    """The face-aligned frame derived from five landmarks (see the module docstring)."""

    origin: np.ndarray  # eye midpoint E, (2,)
    axis_a: np.ndarray  # iod * u, (2,): one unit of a
    axis_b: np.ndarray  # M - E (possibly regularised), (2,): one unit of b
    iod: float  # inter-ocular distance, px
    eye_mouth: float  # |M - E|, px
    nose_b: float  # b coordinate of the nose tip
    nose_a: float  # a coordinate of the nose tip (non-zero for yawed faces), clipped to +-0.3
    unit_u: np.ndarray  # unit vector along the eye line
    unit_v: np.ndarray  # unit vector perpendicular to it, pointing towards the mouth

    def to_image(self, a, b) -> np.ndarray:
        """Frame coordinates -> image ``(x, y)``; broadcasts, returns ``(..., 2)``."""
        a = np.asarray(a, dtype=np.float64)[..., None]
        b = np.asarray(b, dtype=np.float64)[..., None]
        return self.origin + a * self.axis_a + b * self.axis_b

    def to_frame(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(x, y)`` -> frame ``(a, b)``; broadcasts."""
        m = np.stack([self.axis_a, self.axis_b], axis=1)  # columns
        inv = np.linalg.inv(m)
        dx = np.asarray(x, dtype=np.float64) - self.origin[0]
        dy = np.asarray(y, dtype=np.float64) - self.origin[1]
        return inv[0, 0] * dx + inv[0, 1] * dy, inv[1, 0] * dx + inv[1, 1] * dy


def _as_landmarks(landmarks) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (5, 2):
        raise ValueError(f"landmarks must have shape (5, 2), got {lm.shape}")
    if not np.all(np.isfinite(lm)):
        raise ValueError("landmarks contain non-finite values")
    return lm


def face_frame(landmarks) -> MaskFrame:
    """Build the face-aligned :class:`MaskFrame` from five ``(x, y)`` landmarks."""
    lm = _as_landmarks(landmarks)
    le, re, nose, lmo, rmo = lm
    eye_vec = re - le
    iod = float(np.hypot(*eye_vec))
    if iod < 1e-6:
        raise ValueError("degenerate landmarks: the two eyes coincide")
    u = eye_vec / iod
    v = np.array([-u[1], u[0]])  # u turned 90 degrees; y grows downwards in images
    origin = (le + re) / 2.0
    w = (lmo + rmo) / 2.0 - origin
    if np.dot(w, v) < 0:  # mirrored/odd input: keep v pointing towards the mouth
        v = -v
    # Regularise the eye-mouth axis: positive length along v, bounded shear and length.
    down = float(np.dot(w, v))
    down = min(max(down, 0.6 * iod), 2.0 * iod)
    side = min(max(float(np.dot(w, u)), -0.5 * down), 0.5 * down)
    w = side * u + down * v
    axis_a = iod * u
    m = np.stack([axis_a, w], axis=1)
    na, nb = np.linalg.solve(m, nose - origin)
    nose_b = min(max(float(nb), 0.3), 0.75)
    nose_a = min(max(float(na), -0.3), 0.3)
    return MaskFrame(
        origin=origin,
        axis_a=axis_a,
        axis_b=w,
        iod=iod,
        eye_mouth=float(np.hypot(*w)),
        nose_b=nose_b,
        nose_a=nose_a,
        unit_u=u,
        unit_v=v,
    )


def top_edge_b(frame: MaskFrame, a, shape: MaskShape = DEFAULT_SHAPE):
    """``b`` of the mask's top edge at ``a``: a rounded tent over the nose bridge (shifted towards
    the nose tip on yawed faces), falling towards the cheeks."""
    b_top = shape.top_frac * frame.nose_b
    b_side = shape.side_top_frac * frame.nose_b
    peak = 0.6 * frame.nose_a
    w = shape.half_width
    a = np.clip(np.asarray(a), -w, w)
    # (a - peak) / (w - peak) right of the peak, (peak - a) / (w + peak) left of it
    t = np.abs(a - peak)
    t /= np.where(a >= peak, w - peak, w + peak).astype(t.dtype, copy=False)
    return b_top + (b_side - b_top) * (0.55 * t + 0.45 * t**2)


@lru_cache(maxsize=32)
def _fixed_outline(shape: MaskShape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The parts of the outline that do not depend on the face: ``a`` along the top edge, and ``a``, ``b`` of
    the chin, a superellipse from the right end of the mouth line round to the left (read-only, cached)."""
    a_top = np.linspace(-shape.half_width, shape.half_width, 41)
    th = np.linspace(0.0, np.pi, 49)[1:-1]
    c, s = np.cos(th), np.sin(th)
    k = shape.chin_exponent
    a_c = shape.half_width_mouth * np.sign(c) * np.abs(c) ** (2.0 / k)
    b_c = 1.0 + shape.chin_depth * np.abs(s) ** (2.0 / k)
    for array in (a_top, a_c, b_c):
        array.flags.writeable = False
    return a_top, a_c, b_c


def _outline_frame(frame: MaskFrame, shape: MaskShape = DEFAULT_SHAPE) -> np.ndarray:
    """The mask outline as ``(K, 2)`` frame coordinates ``(a, b)``, clockwise in the image."""
    b_side = shape.side_top_frac * frame.nose_b
    w_top, w_mouth = shape.half_width, shape.half_width_mouth
    a_top, a_c, b_c = _fixed_outline(shape)
    b_top_edge = top_edge_b(frame, a_top, shape)
    # right side: from the upper corner down to the mouth line
    b_r = np.linspace(b_side, 1.0, 8)[1:]
    a_r = w_top + (w_mouth - w_top) * (b_r - b_side) / (1.0 - b_side)
    # left side: back up to the upper-left corner
    b_l = b_r[::-1]
    a_l = -a_r[::-1]
    a = np.concatenate([a_top, a_r, a_c, a_l])
    b = np.concatenate([b_top_edge, b_r, b_c, b_l])
    return np.stack([a, b], axis=1)


def mask_polygon(landmarks, shape: MaskShape = DEFAULT_SHAPE) -> np.ndarray:
    """The mask outline in image coordinates, a ``(K, 2)`` float array of ``(x, y)``.

    Built in the face-aligned frame (module docstring), so it rotates, scales and shears with the
    face; the first vertex is the upper-left corner and the outline runs along the top edge first.
    Coordinates may fall outside the image. ``shape``: the cut (default: the surgical outline).
    """
    return frame_polygon(face_frame(landmarks), shape)


def frame_polygon(frame: MaskFrame, shape: MaskShape = DEFAULT_SHAPE) -> np.ndarray:
    """:func:`mask_polygon` from an already built :class:`MaskFrame`."""
    ab = _outline_frame(frame, shape)
    return frame.to_image(ab[:, 0], ab[:, 1])


def strap_segments(landmarks, shape: MaskShape = DEFAULT_SHAPE) -> list[np.ndarray]:
    """The ear straps as four polylines (each ``(n, 2)`` image ``(x, y)``).

    Upper and lower strap on each side, from the mask's side corners outward to about the face
    edge (:data:`STRAP_REACH` inter-ocular distances from the centre line), converging towards the
    ear, which sits roughly at the level of the nose.
    """
    return frame_straps(face_frame(landmarks), shape)


_STRAP_T = np.linspace(0.0, 1.0, 12)
_STRAP_BOW = 0.04 * np.sin(np.pi * _STRAP_T)  # straps sag a little
_STRAP_T.flags.writeable = _STRAP_BOW.flags.writeable = False


def frame_straps(frame: MaskFrame, shape: MaskShape = DEFAULT_SHAPE) -> list[np.ndarray]:
    """:func:`strap_segments` from an already built :class:`MaskFrame`."""
    b_side = shape.side_top_frac * frame.nose_b
    ear_b = 0.75 * frame.nose_b
    segs = []
    for sgn in (-1.0, 1.0):
        for a0, b0, b1 in (
            (shape.half_width, b_side, ear_b - 0.02),  # upper: slightly upward, to the ear
            (shape.half_width_mouth * 0.97, 0.98, ear_b + 0.30),  # lower: up and out, to below the ear
        ):
            t = _STRAP_T
            a = sgn * (a0 - 0.02 + (STRAP_REACH - a0 + 0.02) * t)
            b = b0 + (b1 - b0) * t + _STRAP_BOW
            segs.append(frame.to_image(a, b))
    return segs
