"""The mask styles of :mod:`maskstudy.faces.masks.drawing`: how each style colours the supersampled pixels around the mask.

A style is a function ``style(canvas, rng) -> (rgb, strap_rgb)`` over a :class:`MaskCanvas`, whose face-frame
coordinates (:mod:`maskstudy.faces.masks.geometry`) make pleats, seams and patterns turn with the face. Small
variations (colour jitter, pleat positions, pattern colours) come from ``rng``.

Styles compute pixel by pixel (the canvas holds only the pixels that are drawn, see :class:`MaskCanvas`). The
built-in ones are painters (:data:`PAINTERS`): they return a :class:`Paint`, a per-pixel mix of a few colours,
which :func:`maskstudy.faces.masks.drawing.draw_mask` averages without forming the three colour channels.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .geometry import CHIN_DEPTH, DEFAULT_SHAPE, HALF_WIDTH, TOP_FRAC, MaskFrame, MaskShape, top_edge_b


@dataclass
class MaskCanvas:
    """What a style function sees: supersampled pixels of the local region around the mask.

    All arrays have one shape. Without ``rows`` and ``cols`` they are the whole supersampled region ``(H, W)``.
    :func:`maskstudy.faces.masks.drawing.draw_mask` passes only the supersampled pixels of the image pixels that the mask or
    its straps touch, as an ``(s, s, N)`` stack (``s`` = ``scale``) that is not a picture: ``rows`` and ``cols``
    (broadcasting to the arrays) place each pixel in the region of shape ``region``. So a style computes pixel by
    pixel, and takes smooth spatial noise from :meth:`lowres_noise`.
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
    rows: np.ndarray | None = None  # supersampled row of each pixel in the region; None: the arrays are the region
    cols: np.ndarray | None = None  # supersampled column of each pixel in the region
    region: tuple[int, int] | None = None  # (H, W) of the supersampled region; None: the arrays' shape

    @property
    def shape(self) -> tuple[int, ...]:
        return self.a.shape

    def lowres_noise(self, rng: np.random.Generator, cell_px: float, sigma: float = 1.0):
        """Smooth seeded noise (mean 0, std ~``sigma``) with features about ``cell_px`` image px: a grid of
        normal draws spanning the region, upsampled bicubically (PIL) to its pixels."""
        h, w = self.region or self.shape
        g = noise_grid(rng, (h, w), cell_px * self.scale, sigma)
        im = Image.fromarray(g, mode="F").resize((w, h), Image.BICUBIC)
        if self.rows is None:
            return np.asarray(im, dtype=np.float32)
        return np.take(np.asarray(im, dtype=np.float32).reshape(-1), self.rows * w + self.cols)


def noise_grid(rng: np.random.Generator, size: tuple[int, int], cell: float, sigma: float = 1.0) -> np.ndarray:
    """The normal draws behind :meth:`MaskCanvas.lowres_noise`: a float32 grid spanning ``size`` (H, W) pixels
    with one draw per ``cell`` pixels, one more on each axis."""
    h, w = size
    gh = max(2, int(np.ceil(h / cell)) + 1)
    gw = max(2, int(np.ceil(w / cell)) + 1)
    return rng.normal(0.0, sigma, size=(gh, gw)).astype(np.float32)


StyleResult = tuple[np.ndarray, tuple[float, float, float]]
"""A style returns the mask colour (the canvas shape plus a last axis of 3, floats in 0..255) and the strap colour."""


def _jitter(rng: np.random.Generator, rgb, amount: float = 0.012, bright: float = 0.05, warm: float = 0.025):
    """Seeded colour variation: overall brightness, a warm/cool (white-balance) shift and a small
    per-channel tint; each draw is clipped at two standard deviations so no hue runs away."""
    rgb = np.asarray(rgb, dtype=np.float64)
    z = np.clip(rng.normal(0.0, 1.0, 5), -2.0, 2.0)
    factor = (1.0 + z[:3] * amount) * (1.0 + z[3] * bright) * (1.0 + z[4] * warm * np.array([1.0, 0.2, -1.0]))
    return np.clip(rgb * factor, 0, 255)


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """``rng.uniform(low, high)`` as a Python float, so that arithmetic with float32 pixels stays float32."""
    return float(rng.uniform(low, high))


@dataclass
class Paint:
    """A mask colour as a per-pixel mix of a few colours: ``rgb = sum_k weights[k] * colours[k]``.

    Each weight is a fraction (0..1) of ``shade`` at every pixel, so the weights add up to ``shade``. The built-in
    styles paint (:data:`PAINTERS`), so that :func:`maskstudy.faces.masks.drawing.draw_mask` averages a weight or two per image
    pixel instead of three colour channels; their functions in :data:`MASK_STYLES` return :meth:`rgb`.
    """

    colours: np.ndarray  # (K, 3) float32, 0..255
    weights: list[np.ndarray]  # K arrays of the canvas's shape
    shade: np.ndarray  # their sum

    def rgb(self) -> np.ndarray:
        """The colour, ``(..., 3)`` (stored channel-first)."""
        total = None
        for colour, weight in zip(self.colours, self.weights):
            term = colour.reshape((3,) + (1,) * weight.ndim) * weight
            total = term if total is None else np.add(total, term, out=total)
        return np.moveaxis(total, 0, -1)


def _paint(colours, weights, shade: np.ndarray) -> Paint:
    return Paint(np.asarray(colours, dtype=np.float32).reshape(-1, 3), list(weights), shade)


def _hem(shade: np.ndarray, edge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the body colour and of a band along the outline: ``shade * (1 - edge)``, ``shade * edge``."""
    return shade * (1 - edge), shade * edge


def _bump(x: np.ndarray, centre, width, height=1.0) -> np.ndarray:
    """``height * exp(-((x - centre) / width) ** 2)``, as ``exp(log(height) - ...)``, in one temporary."""
    t = np.subtract(x, centre)
    if width != 1.0:
        t *= 1.0 / width
    np.square(t, out=t)
    np.subtract(math.log(height), t, out=t)
    return np.exp(t, out=t)


def _cheek_shade(canvas: MaskCanvas, strength: float, rim: float = 0.0) -> np.ndarray:
    """Cylindrical shading: the mask turns away from the camera towards the cheeks; with ``rim``, times
    ``1 - rim + rim * depth`` (darker towards the outline)."""
    x = np.abs(canvas.a) / HALF_WIDTH
    np.clip(x, 0.0, 1.2, out=x)
    x **= 2.2
    x *= strength
    shade = np.subtract(1.0, x, out=x).astype(np.float32, copy=False)
    if rim:
        darker = canvas.depth * rim
        darker += 1.0 - rim
        shade *= darker
    return shade


def _paint_surgical_blue(canvas: MaskCanvas, rng: np.random.Generator) -> tuple[Paint, tuple]:
    """A light-blue surgical mask: three bowed pleats, a nose wire, a darker bound edge."""
    base = _jitter(rng, (150, 196, 226))
    edge_col = base * np.array([0.76, 0.82, 0.88])  # the bound edge: a slightly darker blue
    shade = _cheek_shade(canvas, 0.22, rim=0.1)
    shade += 0.012 * canvas.lowres_noise(rng, 1.5)
    # three horizontal pleats between the nose bridge and the chin, slightly bowed
    f = canvas.frame
    top = TOP_FRAC * f.nose_b
    span = 1.0 + CHIN_DEPTH * 0.75 - top
    pleat_b = top + span * (np.array([0.30, 0.52, 0.74]) + rng.uniform(-0.035, 0.035, 3))
    px_per_b = float(abs(np.dot(f.axis_b, f.unit_v)))  # vertical px per unit b
    sig = max(0.6, 0.022 * f.iod)  # pleat softness in px
    off = max(0.8, 0.03 * f.iod)
    bow = (canvas.b - 0.06 * (canvas.a / HALF_WIDTH) ** 2) * np.float32(px_per_b)
    # per pleat, d = bow - curve px below the fold line: a fold shadow, a highlight above, a soft under-fold;
    # each bump is exp(-((d - centre) / width) ** 2), with bow / width computed once per width
    folds = [(0.3 * off, sig, -0.20), (-off, 1.6 * sig, 0.09), (2.5 * off, 3.0 * sig, -0.05)]
    scaled = [bow * np.float32(1.0 / width) for _, width, _ in folds]
    for pb in pleat_b:
        curve = float(np.float32(float(pb + rng.uniform(-0.01, 0.01)) * px_per_b))
        for (centre, width, height), z in zip(folds, scaled):
            bump = _bump(z, (curve + centre) / width, 1.0, abs(height))
            if height < 0:
                shade -= bump
            else:
                shade += bump
    # nose wire: a faint ridge just below the top edge over the nose bridge
    d = (canvas.b - top_edge_b(f, canvas.a)) * px_per_b
    near = (canvas.a - 0.6 * f.nose_a) / 0.28
    np.square(near, out=near)
    near = np.exp(-np.square(near, out=near), out=near)  # exp(-x ** 4); x ** 4 as a power is very slow in float32
    wire = _bump(d, 0.09 * f.iod, max(0.6, 0.025 * f.iod))
    dip = _bump(d, 0.14 * f.iod, max(0.6, 0.03 * f.iod))
    shade += near * (0.07 * wire - 0.06 * dip)
    return _paint([base, edge_col], _hem(shade, canvas.edge), shade), (232.0, 236.0, 240.0)


def _paint_n95_white(canvas: MaskCanvas, rng: np.random.Generator) -> tuple[Paint, tuple]:
    """A white N95 cup: shaded towards the rim, a vertical centre seam, a darker rim."""
    base = _jitter(rng, (238, 236, 230), amount=0.006, bright=0.025, warm=0.02)
    f = canvas.frame
    # cup shading: brightest a little left of centre at nose level, darker towards the rim
    cx = -0.12 + _uniform(rng, -0.05, 0.05)
    cb = 0.75 + _uniform(rng, -0.05, 0.05)
    r2 = np.square((canvas.a - cx) * (1 / 1.15))
    r2 += np.square((canvas.b - cb) * (1 / 0.95))
    np.clip(r2, 0, 1.6, out=r2)
    r2 **= 1.2
    r2 *= -0.20
    shade = np.add(r2, 1.0, out=r2)
    darker = canvas.depth * 0.14
    darker += 0.86
    shade *= darker
    shade += 0.015 * canvas.lowres_noise(rng, 0.8)  # fibrous texture
    # vertical centre seam from the nose-bridge peak to the chin, with a ridge highlight beside it
    top = TOP_FRAC * f.nose_b
    seam_a = 0.6 * f.nose_a * np.clip(1.0 - (canvas.b - top) / (1.0 + CHIN_DEPTH - top), 0.0, 1.0)
    d = (canvas.a - seam_a) * f.iod
    sig = max(0.5, 0.018 * f.iod)
    shade -= _bump(d, 0.0, sig, 0.16)
    shade += _bump(d, -2.2 * sig, sig, 0.05)
    edge_col = np.asarray(base, np.float32) * 0.86
    paint = _paint([base, edge_col], _hem(shade, canvas.edge), shade)
    return paint, (245.0, 243.0, 238.0) if rng.random() < 0.5 else (226.0, 214.0, 170.0)


def _paint_black_cloth(canvas: MaskCanvas, rng: np.random.Generator) -> tuple[Paint, tuple]:
    """A black cloth mask: a fine weave, smooth blotches, a soft fold highlight across the nose."""
    base = _jitter(rng, (34, 34, 38), amount=0.04, bright=0.12, warm=0.05)
    shade = _cheek_shade(canvas, 0.30, rim=0.2)
    # subtle weave: fine cross-hatch in the face frame plus smooth blotches
    per = max(1.2, 0.045 * canvas.frame.iod)
    phase = rng.uniform(0, 2 * np.pi, 2).astype(np.float32)  # float32 sines: 20x faster than float64 ones
    weave = np.sin(2 * np.pi * canvas.p / per + phase[0])
    weave *= np.sin(2 * np.pi * canvas.q / per + phase[1])
    weave *= 0.08
    weave += 1.0
    weave += 0.06 * canvas.lowres_noise(rng, 0.12 * canvas.frame.iod)
    shade *= weave
    # a soft fold highlight across the nose
    f = canvas.frame
    nb = f.nose_b + _uniform(rng, -0.03, 0.03)
    fold = np.square((canvas.b - nb) * 10.0)  # 0.25 * exp(-((b - nb) / 0.1) ** 2 - (a / 0.5) ** 2)
    fold += np.square(canvas.a * 2.0)
    shade += np.exp(np.subtract(math.log(0.25), fold, out=fold), out=fold)
    return _paint([base], [shade], shade), (22.0, 22.0, 24.0)


_CLOTH_PAIRS = [
    ((196, 48, 60), (246, 238, 226)),  # red / cream
    ((32, 64, 138), (250, 250, 250)),  # navy / white
    ((40, 120, 84), (240, 226, 170)),  # green / sand
    ((120, 60, 150), (250, 206, 120)),  # purple / amber
    ((236, 130, 160), (255, 255, 255)),  # pink / white
    ((40, 40, 40), (226, 186, 60)),  # charcoal / mustard
    ((70, 150, 190), (250, 236, 90)),  # sky / yellow
]


def _wrap(x: np.ndarray, period: float) -> np.ndarray:
    """``x % period`` (to rounding), many times faster than numpy's floating-point remainder. Where the two
    disagree by a whole period (``x`` on a multiple of it), the patterns below take the same value."""
    k = x / period
    np.floor(k, out=k)
    k *= period
    return np.subtract(x, k, out=k)


def _stripe(x: np.ndarray, cell: float, aa: float) -> np.ndarray:
    """``clip((|x % cell - cell / 2| - cell / 4) / aa + 0.5, 0, 1)``: half-tone stripes, anti-aliased."""
    t = _wrap(x, cell)
    t -= cell / 2
    np.abs(t, out=t)
    t -= cell / 4
    t /= aa
    t += 0.5
    return np.clip(t, 0, 1, out=t)


def _paint_patterned_cloth(canvas: MaskCanvas, rng: np.random.Generator) -> tuple[Paint, tuple]:
    """A cloth mask in two colours, polka dots or gingham checks, with a stitched hem."""
    ground, figure = _CLOTH_PAIRS[int(rng.integers(len(_CLOTH_PAIRS)))]
    if rng.random() < 0.5:
        ground, figure = figure, ground
    ground = _jitter(rng, ground, amount=0.02, bright=0.06)
    figure = _jitter(rng, figure, amount=0.02, bright=0.06)
    f = canvas.frame
    cell = f.iod * _uniform(rng, 0.20, 0.30)  # pattern cell, image px
    ox, oy = (float(v) for v in rng.uniform(0, cell, 2))
    p, q = canvas.p + ox, canvas.q + oy
    aa = 0.7 / canvas.scale  # anti-alias width in px
    if rng.random() < 0.5:  # polka dots on a staggered grid
        row = np.floor(q / cell)
        odd = np.floor(row / 2.0)
        odd *= -2.0
        odd += row  # row % 2
        odd *= 0.5 * cell
        p += odd
        dx = _wrap(p, cell)
        dx -= cell / 2
        dy = _wrap(q, cell)
        dy -= cell / 2
        np.square(dx, out=dx)
        dx += np.square(dy, out=dy)
        r = np.sqrt(dx, out=dx)  # np.hypot is many times slower
        rad = cell * _uniform(rng, 0.20, 0.28)
        m = np.subtract(rad, r, out=r)
        m /= aa
        m += 0.5
        np.clip(m, 0.0, 1.0, out=m)
    else:  # gingham checks: half-tone stripes both ways
        m = _stripe(p, cell, aa)
        m *= 0.5
        m += 0.5 * _stripe(q, cell, aa)
    shade = _cheek_shade(canvas, 0.25, rim=0.15)
    shade += 0.02 * canvas.lowres_noise(rng, 0.10 * f.iod)
    cloth, hem = _hem(shade, canvas.edge)  # a stitched hem in the ground colour, a bit darker
    figured = cloth * m
    cloth -= figured
    strap = tuple(float(v) for v in np.asarray(ground) * 0.9)
    colours = [ground, figure, np.asarray(ground, np.float32) * 0.75]
    return _paint(colours, [cloth, figured, hem], shade), strap


def _paint_kn95_flaps(canvas: MaskCanvas, rng: np.random.Generator) -> tuple[Paint, tuple]:
    """A fold-flat KN95: pale grey, a sharp vertical centre seam, and two horizontal flap seams with
    welded dots at the sides (drawn on :data:`STYLE_SHAPES`' pointed, taller outline)."""
    base = _jitter(rng, (222, 222, 218), amount=0.008, bright=0.03)
    f = canvas.frame
    shade = _cheek_shade(canvas, 0.30, rim=0.15)
    shade += 0.01 * canvas.lowres_noise(rng, 0.6)
    d = (canvas.a - 0.6 * f.nose_a) * f.iod
    sig = max(0.5, 0.015 * f.iod)
    shade -= _bump(d, 0.0, sig, 0.28)
    shade += _bump(d, 2.0 * sig, 1.5 * sig, 0.08)
    px_per_b = float(abs(np.dot(f.axis_b, f.unit_v)))
    for flap_b in (f.nose_b + _uniform(rng, 0.05, 0.12), 1.0 + _uniform(rng, 0.18, 0.26)):
        dd = (canvas.b - flap_b) * px_per_b
        shade -= _bump(dd, 0.0, sig, 0.14)
    side = np.abs(canvas.a) > 0.8  # welded dot rows near the ear loops
    dots = (np.sin(canvas.q / max(1.0, 0.05 * f.iod)) > 0.6) & side
    shade[dots] -= 0.06
    return _paint([base], [shade], shade), (236.0, 236.0, 232.0)


def _paint_below_nose(canvas: MaskCanvas, rng: np.random.Generator) -> tuple[Paint, tuple]:
    """A pale-green surgical mask pulled down below the nose (the nose stays visible), one soft pleat."""
    base = _jitter(rng, (168, 214, 196))
    f = canvas.frame
    shade = _cheek_shade(canvas, 0.22, rim=0.1)
    px_per_b = float(abs(np.dot(f.axis_b, f.unit_v)))
    sig = max(0.6, 0.03 * f.iod)
    for pleat_b in (1.05 + _uniform(rng, -0.04, 0.04), 1.35 + _uniform(rng, -0.04, 0.04)):
        dd = (canvas.b - pleat_b) * px_per_b
        shade -= _bump(dd, 0.0, sig, 0.16)
        shade += _bump(dd, -1.5 * sig, sig, 0.06)
    colours = [base, np.asarray(base, np.float32) * 0.8]
    return _paint(colours, _hem(shade, canvas.edge), shade), (236.0, 240.0, 238.0)


PAINTERS: dict[str, Callable[[MaskCanvas, np.random.Generator], tuple[Paint, tuple]]] = {
    "surgical_blue": _paint_surgical_blue,
    "n95_white": _paint_n95_white,
    "black_cloth": _paint_black_cloth,
    "patterned_cloth": _paint_patterned_cloth,
    "kn95_flaps": _paint_kn95_flaps,
    "below_nose": _paint_below_nose,
}
"""The built-in styles as :class:`Paint`: name -> ``painter(canvas, rng) -> (paint, strap_rgb)``."""


def _style(painter: Callable[[MaskCanvas, np.random.Generator], tuple[Paint, tuple]]):
    def style(canvas: MaskCanvas, rng: np.random.Generator) -> StyleResult:
        paint, strap_rgb = painter(canvas, rng)
        return paint.rgb(), strap_rgb

    style.__name__ = style.__qualname__ = painter.__name__.replace("_paint", "", 1)
    style.__doc__ = painter.__doc__
    return style


MASK_STYLES: dict[str, Callable[[MaskCanvas, np.random.Generator], StyleResult]] = {
    name: _style(painter) for name, painter in PAINTERS.items()
}
"""Registry of mask styles: name -> ``style(canvas, rng) -> (rgb, strap_rgb)``.

A style colours the supersampled :class:`MaskCanvas` (``rgb``: the canvas's shape plus a last axis of 3,
floats in 0..255; only pixels inside the outline are used) and names the colour of its ear straps. New styles can
be registered by adding to this dict (and to :data:`STYLE_SHAPES` when their cut differs). A built-in style that
is still in place is drawn through its painter (:data:`PAINTERS`), with the same pixels.
"""

STYLE_SHAPES: dict[str, MaskShape] = {
    # a fold-flat KN95 rises higher on the nose, is narrower at the jaw and ends in a pointed chin
    "kn95_flaps": MaskShape(top_frac=0.25, side_top_frac=0.75, half_width=1.0, half_width_mouth=0.9,
                            chin_depth=0.85, chin_exponent=1.5),
    # worn below the nose: the top edge sits between the nose tip and the mouth
    "below_nose": MaskShape(top_frac=1.18, side_top_frac=1.25, half_width=1.05, chin_depth=0.7),
}
"""Outlines of styles whose cut differs from the default surgical one."""

TRAINING_STYLES: tuple[str, ...] = ("surgical_blue", "n95_white", "black_cloth", "patterned_cloth")
"""Styles drawn on the training twins (and on the evaluation twins of the 'seen' scenarios)."""
UNSEEN_STYLES: tuple[str, ...] = ("kn95_flaps", "below_nose")
"""Styles never used in training: drawn only on evaluation photos, to test masks the models never saw."""


def shape_of(style: str) -> MaskShape:
    """The outline of ``style``."""
    return STYLE_SHAPES.get(style, DEFAULT_SHAPE)


def choose_style(key: str, seed: int, styles: tuple[str, ...] | list[str] = TRAINING_STYLES) -> str:
    """A deterministic, roughly uniform choice among ``styles`` for an image ``key`` (e.g. its relative path).

    Uses SHA-256 of ``"{seed}:{key}"`` (stable across processes, unlike ``hash()``).
    """
    names = list(styles)
    unknown = [n for n in names if n not in MASK_STYLES]
    if not names or unknown:
        raise ValueError(f"unknown or no mask styles {unknown or names}; known styles: {', '.join(MASK_STYLES)}")
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    return names[int.from_bytes(digest[:8], "big") % len(names)]
