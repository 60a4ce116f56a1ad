"""A frozen copy of the mask drawing as of commit 5a82a59 (before it was made faster), the reference that
``tests/test_masks.py`` and ``bench/bench_masks.py`` compare :func:`maskstudy.faces.masks.drawing.draw_mask` with.

Geometry (:mod:`maskstudy.faces.masks.geometry`), styles (:mod:`maskstudy.faces.masks.styles`) and drawing
(:mod:`maskstudy.faces.masks.drawing`) are copied verbatim into one module; do not edit it to follow
later changes of the package: it is the old output the new drawing must reproduce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

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
    down = float(np.clip(down, 0.6 * iod, 2.0 * iod))
    side = float(np.clip(np.dot(w, u), -0.5 * down, 0.5 * down))
    w = side * u + down * v
    axis_a = iod * u
    m = np.stack([axis_a, w], axis=1)
    na, nb = np.linalg.solve(m, nose - origin)
    nose_b = float(np.clip(nb, 0.3, 0.75))
    nose_a = float(np.clip(na, -0.3, 0.3))
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
    t = np.where(a >= peak, (a - peak) / (w - peak), (peak - a) / (w + peak))
    return b_top + (b_side - b_top) * (0.55 * t + 0.45 * t**2)


def _outline_frame(frame: MaskFrame, shape: MaskShape = DEFAULT_SHAPE) -> np.ndarray:
    """The mask outline as ``(K, 2)`` frame coordinates ``(a, b)``, clockwise in the image."""
    b_side = shape.side_top_frac * frame.nose_b
    w_top, w_mouth = shape.half_width, shape.half_width_mouth
    a_top = np.linspace(-w_top, w_top, 41)
    b_top_edge = top_edge_b(frame, a_top, shape)
    # right side: from the upper corner down to the mouth line
    b_r = np.linspace(b_side, 1.0, 8)[1:]
    a_r = w_top + (w_mouth - w_top) * (b_r - b_side) / (1.0 - b_side)
    # chin: superellipse from the right end of the mouth line round to the left
    th = np.linspace(0.0, np.pi, 49)[1:-1]
    c, s = np.cos(th), np.sin(th)
    k = shape.chin_exponent
    a_c = w_mouth * np.sign(c) * np.abs(c) ** (2.0 / k)
    b_c = 1.0 + shape.chin_depth * np.abs(s) ** (2.0 / k)
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
    frame = face_frame(landmarks)
    ab = _outline_frame(frame, shape)
    return frame.to_image(ab[:, 0], ab[:, 1])


def strap_segments(landmarks, shape: MaskShape = DEFAULT_SHAPE) -> list[np.ndarray]:
    """The ear straps as four polylines (each ``(n, 2)`` image ``(x, y)``).

    Upper and lower strap on each side, from the mask's side corners outward to about the face
    edge (:data:`STRAP_REACH` inter-ocular distances from the centre line), converging towards the
    ear, which sits roughly at the level of the nose.
    """
    frame = face_frame(landmarks)
    b_side = shape.side_top_frac * frame.nose_b
    ear_b = 0.75 * frame.nose_b
    segs = []
    for sgn in (-1.0, 1.0):
        for a0, b0, b1 in (
            (shape.half_width, b_side, ear_b - 0.02),  # upper: slightly upward, to the ear
            (shape.half_width_mouth * 0.97, 0.98, ear_b + 0.30),  # lower: up and out, to below the ear
        ):
            t = np.linspace(0.0, 1.0, 12)
            a = sgn * (a0 - 0.02 + (STRAP_REACH - a0 + 0.02) * t)
            bow = 0.04 * np.sin(np.pi * t)  # straps sag a little
            b = b0 + (b1 - b0) * t + bow
            segs.append(frame.to_image(a, b))
    return segs


@dataclass
class MaskCanvas:
    """What a style function sees: the supersampled local region around the mask.

    All arrays have the canvas shape ``(H, W)`` (supersampled pixels).
    """

    a: np.ndarray  # face-frame a (inter-ocular units across the face)
    b: np.ndarray  # face-frame b (0 = eye line, 1 = mouth line)
    p: np.ndarray  # px along the eye line from the eye midpoint (isotropic, for patterns)
    q: np.ndarray  # px perpendicular to it, towards the mouth
    inside: np.ndarray  # polygon fill, 0/1
    edge: np.ndarray  # soft band along the outline, 0..1
    depth: np.ndarray  # 0 at the outline rising to 1 inside (soft), for rim shading
    frame: MaskFrame
    scale: int  # supersampling factor: canvas pixels per image pixel

    @property
    def shape(self) -> tuple[int, int]:
        return self.a.shape

    def lowres_noise(self, rng: np.random.Generator, cell_px: float, sigma: float = 1.0):
        """Smooth seeded noise (mean 0, std ~``sigma``) with features about ``cell_px`` image px."""
        h, w = self.shape
        gh = max(2, int(np.ceil(h / (cell_px * self.scale))) + 1)
        gw = max(2, int(np.ceil(w / (cell_px * self.scale))) + 1)
        g = rng.normal(0.0, sigma, size=(gh, gw)).astype(np.float32)
        im = Image.fromarray(g, mode="F").resize((w, h), Image.BICUBIC)
        return np.asarray(im, dtype=np.float32)


StyleResult = tuple[np.ndarray, tuple[float, float, float]]
"""A style returns the mask colour ``(H, W, 3)`` floats in 0..255 and the strap colour."""


def _jitter(rng: np.random.Generator, rgb, amount: float = 0.012, bright: float = 0.05, warm: float = 0.025):
    """Seeded colour variation: overall brightness, a warm/cool (white-balance) shift and a small
    per-channel tint; each draw is clipped at two standard deviations so no hue runs away."""
    rgb = np.asarray(rgb, dtype=np.float64)
    z = np.clip(rng.normal(0.0, 1.0, 5), -2.0, 2.0)
    factor = (1.0 + z[:3] * amount) * (1.0 + z[3] * bright) * (1.0 + z[4] * warm * np.array([1.0, 0.2, -1.0]))
    return np.clip(rgb * factor, 0, 255)


def _paint(rgb, shade: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32)[None, None, :] * shade[..., None]


def _cheek_shade(canvas: MaskCanvas, strength: float) -> np.ndarray:
    """Cylindrical shading: the mask turns away from the camera towards the cheeks."""
    x = np.clip(np.abs(canvas.a) / HALF_WIDTH, 0.0, 1.2)
    return (1.0 - strength * x**2.2).astype(np.float32)


def _surgical_blue(canvas: MaskCanvas, rng: np.random.Generator) -> StyleResult:
    base = _jitter(rng, (150, 196, 226))
    edge_col = base * np.array([0.76, 0.82, 0.88])  # the bound edge: a slightly darker blue
    shade = _cheek_shade(canvas, 0.22) * (0.9 + 0.1 * canvas.depth)
    shade = shade + 0.012 * canvas.lowres_noise(rng, 1.5)
    # three horizontal pleats between the nose bridge and the chin, slightly bowed
    f = canvas.frame
    top = TOP_FRAC * f.nose_b
    span = 1.0 + CHIN_DEPTH * 0.75 - top
    pleat_b = top + span * (np.array([0.30, 0.52, 0.74]) + rng.uniform(-0.035, 0.035, 3))
    px_per_b = float(abs(np.dot(f.axis_b, f.unit_v)))  # vertical px per unit b
    sig = max(0.6, 0.022 * f.iod)  # pleat softness in px
    off = max(0.8, 0.03 * f.iod)
    bow = (canvas.b - 0.06 * (canvas.a / HALF_WIDTH) ** 2) * np.float32(px_per_b)
    for pb in pleat_b:
        curve = float(pb + rng.uniform(-0.01, 0.01)) * px_per_b
        d = bow - np.float32(curve)  # px below the fold line
        shade = shade - 0.20 * np.exp(-(((d - 0.3 * off) / sig) ** 2))  # fold shadow
        shade = shade + 0.09 * np.exp(-(((d + off) / (1.6 * sig)) ** 2))  # highlight above
        shade = shade - 0.05 * np.exp(-(((d - 2.5 * off) / (3.0 * sig)) ** 2))  # soft under-fold
    # nose wire: a faint ridge just below the top edge over the nose bridge
    d = (canvas.b - top_edge_b(f, canvas.a)) * px_per_b
    near = np.exp(-(((canvas.a - 0.6 * f.nose_a) / 0.28) ** 4))
    wire = np.exp(-(((d - 0.09 * f.iod) / max(0.6, 0.025 * f.iod)) ** 2))
    dip = np.exp(-(((d - 0.14 * f.iod) / max(0.6, 0.03 * f.iod)) ** 2))
    shade = shade + near * (0.07 * wire - 0.06 * dip)
    rgb = _paint(base, shade)
    e = canvas.edge[..., None]
    rgb = rgb * (1 - e) + np.asarray(edge_col, np.float32) * shade[..., None] * e
    return rgb, (232.0, 236.0, 240.0)


def _n95_white(canvas: MaskCanvas, rng: np.random.Generator) -> StyleResult:
    base = _jitter(rng, (238, 236, 230), amount=0.006, bright=0.025, warm=0.02)
    f = canvas.frame
    # cup shading: brightest a little left of centre at nose level, darker towards the rim
    cx = -0.12 + rng.uniform(-0.05, 0.05)
    cb = 0.75 + rng.uniform(-0.05, 0.05)
    r2 = ((canvas.a - cx) / 1.15) ** 2 + ((canvas.b - cb) / 0.95) ** 2
    shade = 1.0 - 0.20 * np.clip(r2, 0, 1.6) ** 1.2
    shade = shade * (0.86 + 0.14 * canvas.depth)
    shade = shade + 0.015 * canvas.lowres_noise(rng, 0.8)  # fibrous texture
    # vertical centre seam from the nose-bridge peak to the chin, with a ridge highlight beside it
    top = TOP_FRAC * f.nose_b
    seam_a = 0.6 * f.nose_a * np.clip(1.0 - (canvas.b - top) / (1.0 + CHIN_DEPTH - top), 0.0, 1.0)
    d = (canvas.a - seam_a) * f.iod
    sig = max(0.5, 0.018 * f.iod)
    shade = shade - 0.16 * np.exp(-(d / sig) ** 2) + 0.05 * np.exp(-((d + 2.2 * sig) / sig) ** 2)
    rgb = _paint(base, shade)
    edge_col = np.asarray(base, np.float32) * 0.86
    e = canvas.edge[..., None]
    rgb = rgb * (1 - e) + edge_col * shade[..., None] * e
    return rgb, (245.0, 243.0, 238.0) if rng.random() < 0.5 else (226.0, 214.0, 170.0)


def _black_cloth(canvas: MaskCanvas, rng: np.random.Generator) -> StyleResult:
    base = _jitter(rng, (34, 34, 38), amount=0.04, bright=0.12, warm=0.05)
    shade = _cheek_shade(canvas, 0.30) * (0.80 + 0.20 * canvas.depth)
    # subtle weave: fine cross-hatch in the face frame plus smooth blotches
    per = max(1.2, 0.045 * canvas.frame.iod)
    phase = rng.uniform(0, 2 * np.pi, 2)
    weave = np.sin(2 * np.pi * canvas.p / per + phase[0]) * np.sin(2 * np.pi * canvas.q / per + phase[1])
    shade = shade * (1.0 + 0.08 * weave + 0.06 * canvas.lowres_noise(rng, 0.12 * canvas.frame.iod))
    # a soft fold highlight across the nose
    f = canvas.frame
    nb = f.nose_b + rng.uniform(-0.03, 0.03)
    shade = shade + 0.25 * np.exp(-(((canvas.b - nb) / 0.10) ** 2) - (canvas.a / 0.5) ** 2)
    rgb = _paint(base, shade)
    return rgb, (22.0, 22.0, 24.0)


_CLOTH_PAIRS = [
    ((196, 48, 60), (246, 238, 226)),  # red / cream
    ((32, 64, 138), (250, 250, 250)),  # navy / white
    ((40, 120, 84), (240, 226, 170)),  # green / sand
    ((120, 60, 150), (250, 206, 120)),  # purple / amber
    ((236, 130, 160), (255, 255, 255)),  # pink / white
    ((40, 40, 40), (226, 186, 60)),  # charcoal / mustard
    ((70, 150, 190), (250, 236, 90)),  # sky / yellow
]


def _patterned_cloth(canvas: MaskCanvas, rng: np.random.Generator) -> StyleResult:
    ground, figure = _CLOTH_PAIRS[int(rng.integers(len(_CLOTH_PAIRS)))]
    if rng.random() < 0.5:
        ground, figure = figure, ground
    ground = _jitter(rng, ground, amount=0.02, bright=0.06)
    figure = _jitter(rng, figure, amount=0.02, bright=0.06)
    f = canvas.frame
    cell = f.iod * rng.uniform(0.20, 0.30)  # pattern cell, image px
    ox, oy = rng.uniform(0, cell, 2)
    p, q = canvas.p + ox, canvas.q + oy
    aa = 0.7 / canvas.scale  # anti-alias width in px
    if rng.random() < 0.5:  # polka dots on a staggered grid
        row = np.floor(q / cell)
        pp = p + 0.5 * cell * (row % 2)
        dx = (pp % cell) - cell / 2
        dy = (q % cell) - cell / 2
        r = np.hypot(dx, dy)
        rad = cell * rng.uniform(0.20, 0.28)
        m = np.clip((rad - r) / aa + 0.5, 0.0, 1.0)
    else:  # gingham checks: half-tone stripes both ways
        sx = np.clip((np.abs((p % cell) - cell / 2) - cell / 4) / aa + 0.5, 0, 1)
        sy = np.clip((np.abs((q % cell) - cell / 2) - cell / 4) / aa + 0.5, 0, 1)
        m = 0.5 * sx + 0.5 * sy
    rgb = (1 - m[..., None]) * np.asarray(ground, np.float32) + m[..., None] * np.asarray(figure, np.float32)
    shade = _cheek_shade(canvas, 0.25) * (0.85 + 0.15 * canvas.depth)
    shade = shade + 0.02 * canvas.lowres_noise(rng, 0.10 * f.iod)
    rgb = rgb * shade[..., None]
    e = canvas.edge[..., None]  # a stitched hem in the ground colour, a bit darker
    rgb = rgb * (1 - e) + np.asarray(ground, np.float32) * 0.75 * shade[..., None] * e
    strap = tuple(float(v) for v in np.asarray(ground) * 0.9)
    return rgb, strap


def _kn95_flaps(canvas: MaskCanvas, rng: np.random.Generator) -> StyleResult:
    """A fold-flat KN95: pale grey, a sharp vertical centre seam, and two horizontal flap seams with
    welded dots at the sides (drawn on :data:`STYLE_SHAPES`' pointed, taller outline)."""
    base = _jitter(rng, (222, 222, 218), amount=0.008, bright=0.03)
    f = canvas.frame
    shade = _cheek_shade(canvas, 0.30) * (0.85 + 0.15 * canvas.depth)
    shade = shade + 0.01 * canvas.lowres_noise(rng, 0.6)
    d = (canvas.a - 0.6 * f.nose_a) * f.iod
    sig = max(0.5, 0.015 * f.iod)
    shade = shade - 0.28 * np.exp(-(d / sig) ** 2) + 0.08 * np.exp(-((d - 2.0 * sig) / (1.5 * sig)) ** 2)
    px_per_b = float(abs(np.dot(f.axis_b, f.unit_v)))
    for flap_b in (f.nose_b + rng.uniform(0.05, 0.12), 1.0 + rng.uniform(0.18, 0.26)):
        dd = (canvas.b - flap_b) * px_per_b
        shade = shade - 0.14 * np.exp(-(dd / sig) ** 2)
    side = np.abs(canvas.a) > 0.8  # welded dot rows near the ear loops
    dots = (np.sin(canvas.q / max(1.0, 0.05 * f.iod)) > 0.6) & side
    shade = shade - 0.06 * dots
    rgb = _paint(base, shade)
    return rgb, (236.0, 236.0, 232.0)


def _below_nose(canvas: MaskCanvas, rng: np.random.Generator) -> StyleResult:
    """A pale-green surgical mask pulled down below the nose (the nose stays visible), one soft pleat."""
    base = _jitter(rng, (168, 214, 196))
    f = canvas.frame
    shade = _cheek_shade(canvas, 0.22) * (0.9 + 0.1 * canvas.depth)
    px_per_b = float(abs(np.dot(f.axis_b, f.unit_v)))
    sig = max(0.6, 0.03 * f.iod)
    for pleat_b in (1.05 + rng.uniform(-0.04, 0.04), 1.35 + rng.uniform(-0.04, 0.04)):
        dd = (canvas.b - pleat_b) * px_per_b
        shade = shade - 0.16 * np.exp(-(dd / sig) ** 2) + 0.06 * np.exp(-((dd + 1.5 * sig) / sig) ** 2)
    rgb = _paint(base, shade)
    e = canvas.edge[..., None]
    rgb = rgb * (1 - e) + np.asarray(base, np.float32) * 0.8 * shade[..., None] * e
    return rgb, (236.0, 240.0, 238.0)


MASK_STYLES: dict[str, Callable[[MaskCanvas, np.random.Generator], StyleResult]] = {
    "surgical_blue": _surgical_blue,
    "n95_white": _n95_white,
    "black_cloth": _black_cloth,
    "patterned_cloth": _patterned_cloth,
    "kn95_flaps": _kn95_flaps,
    "below_nose": _below_nose,
}
"""Registry of mask styles: name -> ``style(canvas, rng) -> (rgb, strap_rgb)``.

A style colours the supersampled :class:`MaskCanvas` (``rgb``: ``(H, W, 3)`` floats in 0..255;
only pixels inside the outline are used) and names the colour of its ear straps. New styles can be
registered by adding to this dict (and to :data:`STYLE_SHAPES` when their cut differs).
"""

STYLE_SHAPES: dict[str, MaskShape] = {
    # a fold-flat KN95 rises higher on the nose, is narrower at the jaw and ends in a pointed chin
    "kn95_flaps": MaskShape(top_frac=0.25, side_top_frac=0.75, half_width=1.0, half_width_mouth=0.9,
                            chin_depth=0.85, chin_exponent=1.5),
    # worn below the nose: the top edge sits between the nose tip and the mouth
    "below_nose": MaskShape(top_frac=1.18, side_top_frac=1.25, half_width=1.05, chin_depth=0.7),
}
"""Outlines of styles whose cut differs from the default surgical one."""


def shape_of(style: str) -> MaskShape:
    return STYLE_SHAPES.get(style, DEFAULT_SHAPE)


SUPERSAMPLE = 3
"""Supersampling factor (per axis) for drawing and for :func:`mask_alpha` coverage."""
# Above this many supersampled pixels in the local canvas the factor is lowered (huge faces).
_MAX_CANVAS_PIXELS = 4_000_000


def _image_size(size) -> tuple[int, int]:
    if isinstance(size, Image.Image):
        return size.size
    w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive (width, height), got {size!r}")
    return w, h


def _local_box(points: np.ndarray, width: int, height: int, pad: float):
    """Integer bounding box of ``points`` (+pad), clipped to the image; None if empty."""
    x0 = max(0, int(np.floor(points[:, 0].min() - pad)))
    y0 = max(0, int(np.floor(points[:, 1].min() - pad)))
    x1 = min(width, int(np.ceil(points[:, 0].max() + pad)))
    y1 = min(height, int(np.ceil(points[:, 1].max() + pad)))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


def _supersample(box, factor: int = SUPERSAMPLE) -> int:
    bw, bh = box[2] - box[0], box[3] - box[1]
    s = factor
    while s > 1 and bw * bh * s * s > _MAX_CANVAS_PIXELS:
        s -= 1
    return s


def _to_canvas(points: np.ndarray, box, s: int) -> list[tuple[float, float]]:
    # supersampled pixel i has its centre at image x = x0 + (i + 0.5) / s; PIL puts pixel
    # centres at integer coordinates, hence the -0.5.
    pts = (points - np.array([box[0], box[1]], dtype=np.float64)) * s - 0.5
    return [tuple(p) for p in pts.tolist()]


def _fill_polygon(points: np.ndarray, box, s: int) -> np.ndarray:
    """Binary (0/1 float) fill of a polygon on the supersampled local canvas."""
    w, h = (box[2] - box[0]) * s, (box[3] - box[1]) * s
    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).polygon(_to_canvas(points, box, s), fill=255)
    return np.asarray(im, dtype=np.float32) / 255.0


def _downsample(arr: np.ndarray, s: int) -> np.ndarray:
    if s == 1:
        return arr
    h, w = arr.shape[0] // s, arr.shape[1] // s
    return arr.reshape(h, s, w, s, *arr.shape[2:]).mean(axis=(1, 3))


def mask_alpha(size, landmarks, shape: MaskShape = DEFAULT_SHAPE) -> np.ndarray:
    """Coverage (0..1 float32, shape ``(H, W)``) of the mask polygon on an image.

    ``size`` is ``(width, height)`` as in PIL (or a PIL image). Edge pixels get fractional
    coverage (:data:`SUPERSAMPLE` x supersampling). Ear straps are not included: this is the
    region the mask hides (e.g. for measuring attention inside the mask). ``shape``: the cut.
    """
    width, height = _image_size(size)
    out = np.zeros((height, width), dtype=np.float32)
    poly = mask_polygon(landmarks, shape)
    box = _local_box(poly, width, height, pad=1.0)
    if box is None:
        return out
    s = _supersample(box)
    cov = _downsample(_fill_polygon(poly, box, s), s)
    out[box[1] : box[3], box[0] : box[2]] = cov
    return out



_LIGHT_REF = 150.0  # luminance at which the overall level is left unchanged


def _light_field(region: np.ndarray, inside: np.ndarray, a: np.ndarray, b: np.ndarray):
    """Fit the photo's lighting under the upper mask (nose and cheeks, not the neck).

    Returns ``gain(a) -> array`` or None when too little of the face is in the image. The gain
    follows the fitted left-right gradient strongly (``(L(a) / L(0)) ** 0.6``) but the overall
    level only weakly (``(L(0) / 150) ** 0.2``, within 0.8..1.05), so that skin tone changes the
    mask little while side light and dim photos show on it.
    """
    y = region[..., 0] * 0.299 + region[..., 1] * 0.587 + region[..., 2] * 0.114
    sel = (inside > 0.5) & (b < 1.0) & (np.abs(a) < 0.9)
    if int(sel.sum()) < 12:
        return None
    av, yv = a[sel].astype(np.float64), y[sel].astype(np.float64)
    if np.ptp(av) < 0.3:
        return None
    design = np.stack([np.ones_like(av), av], axis=1)
    (c0, c1), *_ = np.linalg.lstsq(design, yv, rcond=None)
    c0 = max(float(c0), 8.0)
    c1 = float(np.clip(c1, -0.6 * c0, 0.6 * c0))
    level = float(np.clip((c0 / _LIGHT_REF) ** 0.2, 0.8, 1.05))

    def gain(aa: np.ndarray) -> np.ndarray:
        rel = np.clip((c0 + c1 * np.clip(aa, -1.2, 1.2)) / c0, 0.35, 1.65) ** 0.6
        return (level * np.clip(rel, 0.6, 1.25)).astype(np.float32)

    return gain


def draw_mask(
    image: Image.Image,
    landmarks,
    style: str,
    seed: int | np.random.Generator = 0,
    *,
    relight: bool = True,
) -> Image.Image:
    """Return a new RGB copy of ``image`` with a ``style`` face mask drawn from ``landmarks``.

    ``landmarks`` are the five MTCNN points (``(5, 2)`` ``(x, y)`` in this image's pixels). The
    input image is not modified. Landmarks near or beyond the border are fine: the mask is
    clipped. ``seed`` (an int or a numpy Generator) drives the small variations of each style.

    With ``relight`` (default) the mask takes on the photo's lighting, mildly: a left-right
    brightness gradient fitted to the face under the mask, and a weak overall level (see
    :func:`_light_field`), so masks are not glaringly flat on dim or side-lit photos.
    """
    if style not in MASK_STYLES:
        raise ValueError(f"unknown mask style {style!r}; known styles: {', '.join(MASK_STYLES)}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = image.convert("RGB")  # a copy, also when the image is already RGB
    width, height = out.size
    frame = face_frame(landmarks)
    shape = shape_of(style)
    poly = mask_polygon(landmarks, shape)
    straps = strap_segments(landmarks, shape)
    strap_w = max(0.8, 0.045 * frame.iod)  # image px
    everything = np.concatenate([poly, *straps])
    box = _local_box(everything, width, height, pad=strap_w + 2.0)
    if box is None:
        return out
    s = _supersample(box)
    canvas = _style_canvas(frame, poly, box, s)
    ch, cw = canvas.shape
    rgb, strap_rgb = MASK_STYLES[style](canvas, rng)
    rgb = np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 255.0)
    if rgb.shape != (ch, cw, 3):
        raise ValueError(f"style {style!r} returned shape {rgb.shape}, expected {(ch, cw, 3)}")

    # ear straps: drawn under the mask (they attach behind its corners)
    strap_im = Image.new("L", (cw, ch), 0)
    sd = ImageDraw.Draw(strap_im)
    for seg in straps:
        sd.line(_to_canvas(seg, box, s), fill=255, width=max(1, int(round(strap_w * s))), joint="curve")
    strap_a = np.asarray(strap_im, dtype=np.float32) / 255.0 * (1.0 - canvas.inside)
    strap_layer = np.broadcast_to(np.asarray(strap_rgb, dtype=np.float32), (ch, cw, 3))
    return _composite(out, box, canvas, rgb, strap_layer, strap_a, relight)


def _style_canvas(frame: MaskFrame, poly: np.ndarray, box, s: int) -> MaskCanvas:
    """The supersampled region ``box`` around outline ``poly``: fill, soft rim band, interior depth and the
    face-frame coordinates of every pixel centre."""
    x0, y0, x1, y1 = box
    ch, cw = (y1 - y0) * s, (x1 - x0) * s
    inside = _fill_polygon(poly, box, s)
    # soft rim band and interior depth from blurred versions of the fill / outline
    edge_w = max(1.0, 0.05 * frame.iod) * s
    outline_im = Image.new("L", (cw, ch), 0)
    pts = _to_canvas(poly, box, s)
    ImageDraw.Draw(outline_im).line(pts + [pts[0]], fill=255, width=max(1, int(round(edge_w))), joint="curve")
    outline_im = outline_im.filter(ImageFilter.GaussianBlur(radius=max(0.5, 0.3 * edge_w)))
    edge = np.asarray(outline_im, dtype=np.float32) / 255.0
    fill_im = Image.fromarray((inside * 255).astype(np.uint8), mode="L")
    depth_im = fill_im.filter(ImageFilter.GaussianBlur(radius=max(1.0, 0.12 * frame.iod * s)))
    depth = np.clip((np.asarray(depth_im, dtype=np.float32) / 255.0 - 0.5) * 2.0, 0.0, 1.0)

    # face-frame coordinates of every supersampled pixel centre
    xs = x0 + (np.arange(cw, dtype=np.float64) + 0.5) / s
    ys = y0 + (np.arange(ch, dtype=np.float64) + 0.5) / s
    gx, gy = np.meshgrid(xs, ys)
    a, b = frame.to_frame(gx, gy)
    dx, dy = gx - frame.origin[0], gy - frame.origin[1]
    p = dx * frame.unit_u[0] + dy * frame.unit_u[1]
    q = dx * frame.unit_v[0] + dy * frame.unit_v[1]
    return MaskCanvas(
        a=a.astype(np.float32),
        b=b.astype(np.float32),
        p=p.astype(np.float32),
        q=q.astype(np.float32),
        inside=inside,
        edge=edge,
        depth=depth,
        frame=frame,
        scale=s,
    )


def _composite(out: Image.Image, box, canvas: MaskCanvas, rgb: np.ndarray, strap_layer: np.ndarray,
               strap_a: np.ndarray, relight: bool) -> Image.Image:
    """Blend the supersampled mask (``rgb`` inside the outline) and straps onto ``out`` within ``box``, relit
    by the photo's light under the mask when ``relight``."""
    x0, y0, x1, y1 = box
    s, inside = canvas.scale, canvas.inside
    arr = np.asarray(out, dtype=np.float32).copy()
    region = arr[y0:y1, x0:x1]
    if relight:
        lo = [_downsample(x, s) for x in (inside, canvas.a, canvas.b)]
        light = _light_field(region, *lo)
        if light is not None:
            gain = light(canvas.a)[..., None]
            rgb = rgb * gain
            strap_layer = strap_layer * gain

    alpha = np.clip(inside + strap_a, 0.0, 1.0)
    premult = rgb * inside[..., None] + strap_layer * strap_a[..., None]
    alpha_lo = _downsample(alpha, s)[..., None]
    premult_lo = np.clip(_downsample(premult, s), 0.0, 255.0)

    arr[y0:y1, x0:x1] = region * (1.0 - alpha_lo) + premult_lo
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="RGB")
