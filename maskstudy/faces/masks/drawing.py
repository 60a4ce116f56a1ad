"""Landmark-driven synthetic face masks ("masked twins" of face photos).

For every face photo the study synthesises a twin wearing a face mask over nose, mouth and chin,
in the spirit of MaskTheFace (A. Anwar and A. Raychowdhury, "Masked Face Recognition for Secure
Authentication", arXiv:2008.11104, 2020) and of the simulated-mask parts of masked-face-recognition
datasets such as SMFRD (Z. Wang et al., "Masked Face Recognition Dataset and Application",
arXiv:2003.09093, 2020): the mask is placed from facial landmarks, so it follows the position,
size and in-plane rotation of each face. This module is an independent, much simpler
implementation (no code is taken from those projects): it needs only the five MTCNN landmarks and
draws procedural masks with PIL and numpy.

The face frame and the outline are in :mod:`maskstudy.faces.masks.geometry`, the styles in :mod:`maskstudy.faces.masks.styles`;
this module rasterises and draws them, and re-exports both.

Drawing
-------
:func:`draw_mask` renders only the local region around the mask at :data:`SUPERSAMPLE` x
supersampling (less for very large faces) and box-filters it down, so edges are anti-aliased. Each style in
:data:`MASK_STYLES` is a function that colours the supersampled region from the face-frame
coordinates of its pixels (so pleats, seams and patterns turn with the face); ear straps are drawn
from the mask's side corners outward towards the face edge. Small variations (colour jitter, pleat
positions, pattern colours) come from the ``seed``; the same seed gives the same pixels.

Only the supersampled pixels of image pixels that the mask or a strap touches are computed (about half the
region), and only what the style reads of them (:class:`_PixelCanvas`); the blurs behind the rim band and the
depth run on crops that give PIL's numbers (:func:`_blur_near`), and the built-in styles hand over a mix of a
few colours (:class:`~maskstudy.faces.masks.styles.Paint`) whose weights are averaged instead of three channels. The
pixels are those of the straightforward drawing (whole region, three channels) within one grey level: sums in
another order, and float32 where that drawing drifted into float64, round differently (``tests/test_masks.py``
compares with a frozen copy of it).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .geometry import (
    CHIN_DEPTH,
    CHIN_EXPONENT,
    DEFAULT_SHAPE,
    HALF_WIDTH,
    HALF_WIDTH_MOUTH,
    SIDE_TOP_FRAC,
    STRAP_REACH,
    TOP_FRAC,
    MaskFrame,
    MaskShape,
    face_frame,
    frame_polygon,
    frame_straps,
    mask_polygon,
    strap_segments,
)
from .styles import (
    MASK_STYLES,
    PAINTERS,
    STYLE_SHAPES,
    TRAINING_STYLES,
    UNSEEN_STYLES,
    MaskCanvas,
    Paint,
    StyleResult,
    choose_style,
    noise_grid,
    shape_of,
)

__all__ = [
    "CHIN_DEPTH",
    "CHIN_EXPONENT",
    "DEFAULT_SHAPE",
    "HALF_WIDTH",
    "HALF_WIDTH_MOUTH",
    "MASK_STYLES",
    "SIDE_TOP_FRAC",
    "STRAP_REACH",
    "STYLE_SHAPES",
    "SUPERSAMPLE",
    "TOP_FRAC",
    "TRAINING_STYLES",
    "UNSEEN_STYLES",
    "MaskCanvas",
    "MaskFrame",
    "MaskShape",
    "StyleResult",
    "choose_style",
    "draw_mask",
    "face_frame",
    "mask_alpha",
    "mask_polygon",
    "shape_of",
    "strap_segments",
]

_BUILT_IN = dict(MASK_STYLES)  # draw_mask paints these through PAINTERS unless MASK_STYLES[name] is replaced

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


def _stroke(im: Image.Image, points: list[tuple[float, float]], width: int) -> None:
    """``ImageDraw.Draw(im).line(points, fill=255, width=width, joint="curve")``, with less Python per joint.

    The same calls into PIL's drawing core, with the same arguments, as ``ImageDraw.line`` makes (Pillow 10 to
    13; ``tests/test_masks.py`` checks the pixels): the segments, then at each bend a pie slice that rounds the
    joint and, for wide lines, two short strokes that fill the gaps beside it.
    """
    core = ImageDraw.Draw(im).draw
    ink = core.draw_ink(255)
    core.draw_lines(points, ink, width)
    if width <= 4:
        return
    half = width / 2
    for i in range(1, len(points) - 1):
        (xa, ya), (x, y), (xb, yb) = points[i - 1], points[i], points[i + 1]
        a0 = math.degrees(math.atan2(x - xa, ya - y)) % 360
        a1 = math.degrees(math.atan2(xb - x, y - yb)) % 360
        if a0 == a1:
            continue
        flipped = (a1 > a0 and a1 - 180 > a0) or (a1 < a0 and a1 + 180 > a0)
        start, end = (a1 + 90, a0 + 90) if flipped else (a0 - 90, a1 - 90)
        core.draw_pieslice([(x - half + 1, y - half + 1), (x + half - 1, y + half - 1)], start - 90, end - 90, ink, 1)
        if width > 8:
            turn = 90 if flipped else -90
            core.draw_lines([_off(x, y, half - 1, a0 + turn), (x, y), _off(x, y, half - 1, a1 + turn)], ink, 3)


def _off(x: float, y: float, distance: float, angle: float) -> tuple[float, ...]:
    """The point ``distance`` from ``(x, y)`` towards ``angle`` (degrees, 0 = up), rounded towards ``(x, y)``
    (``coord_at_angle`` in ``ImageDraw.line``)."""
    angle -= 90
    return tuple(p + (math.floor(d) if d > 0 else math.ceil(d))
                 for p, d in ((x, distance * math.cos(math.radians(angle))),
                              (y, distance * math.sin(math.radians(angle)))))


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
    sel = (inside > 0.5) & (b < 1.0) & (np.abs(a) < 0.9)
    if np.count_nonzero(sel) < 12:
        return None
    px = region[:, sel]  # channel-first
    y = px[0] * 0.299 + px[1] * 0.587 + px[2] * 0.114
    av, yv = a[sel].astype(np.float64), y.astype(np.float64)
    if np.ptp(av) < 0.3:
        return None
    # the least-squares line y = c0 + c1 * a
    da = av - av.mean()
    c1 = float(da @ (yv - yv.mean()) / (da @ da))
    c0 = max(float(yv.mean() - c1 * av.mean()), 8.0)
    c1 = float(np.clip(c1, -0.6 * c0, 0.6 * c0))
    level = float(np.clip((c0 / _LIGHT_REF) ** 0.2, 0.8, 1.05))

    # level * clip(clip((c0 + c1 * clip(a, -1.2, 1.2)) / c0, 0.35, 1.65) ** 0.6, 0.6, 1.25) in four passes: the
    # clips act on a monotonic function of a, so they fold into one clip of its linear part, as does the level
    # (as level ** (1 / 0.6) inside the power)
    scale = level ** (1 / 0.6)
    ends = sorted(1.0 + c1 / c0 * end for end in (-1.2, 1.2))
    low = max(ends[0], 0.35, 0.6 ** (1 / 0.6)) * scale
    high = min(ends[1], 1.65, 1.25 ** (1 / 0.6)) * scale

    def gain(aa: np.ndarray) -> np.ndarray:
        rel = aa * (c1 / c0 * scale)
        rel += scale
        np.clip(rel, low, high, out=rel)
        rel **= 0.6
        return rel.astype(np.float32, copy=False)

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
    poly = frame_polygon(frame, shape)
    straps = frame_straps(frame, shape)
    strap_w = max(0.8, 0.045 * frame.iod)  # image px
    everything = np.concatenate([poly, *straps])
    box = _local_box(everything, width, height, pad=strap_w + 2.0)
    if box is None:
        return out
    s = _supersample(box)
    canvas, strap_a, blocks, centres = _style_canvas(frame, poly, straps, strap_w, box, s)
    function = MASK_STYLES[style]
    if function is _BUILT_IN.get(style):
        colour, strap_rgb = PAINTERS[style](canvas, rng)
    else:
        colour, strap_rgb = function(canvas, rng)
        colour = np.asarray(colour, dtype=np.float32)
        if colour.shape != canvas.shape + (3,):
            raise ValueError(f"style {style!r} returned shape {colour.shape}, expected {canvas.shape + (3,)}")
    _composite(out, box, blocks, centres, canvas, colour, strap_rgb, strap_a, relight)
    return out


def _style_canvas(frame: MaskFrame, poly: np.ndarray, straps: list[np.ndarray], strap_w: float, box, s: int):
    """The supersampled region ``box`` around outline ``poly``, reduced to the pixels drawing can change.

    The outline is filled and the ear straps (``strap_w`` image px wide) stroked on the whole region as PIL
    rasterises them; only the supersampled pixels of image pixels they touch are kept (all others stay as they
    are), as ``(s, s, N)`` arrays. The soft rim band, the interior depth and the face-frame coordinates are
    computed there when a style first reads them. Returns the :class:`MaskCanvas`, the straps' coverage outside
    the mask, the ``(rows, columns)`` of the ``N`` image pixels in ``box`` and their centres' ``(a, b)``.
    """
    x0, y0, x1, y1 = box
    ch, cw = (y1 - y0) * s, (x1 - x0) * s
    pts = _to_canvas(poly, box, s)
    fill_im = Image.new("L", (cw, ch), 0)
    ImageDraw.Draw(fill_im).polygon(pts, fill=255)
    strap_im = Image.new("L", (cw, ch), 0)
    for seg in straps:
        _stroke(strap_im, _to_canvas(seg, box, s), max(1, int(round(strap_w * s))))

    # image pixels with any supersampled pixel of mask or strap
    fill, strap = np.asarray(fill_im).reshape(-1), np.asarray(strap_im).reshape(-1)
    by, bx = np.nonzero(_any_in_blocks((fill | strap).reshape(ch, cw), s) != 0)
    sub = np.arange(s)[:, None]
    rows = (by * s + sub)[:, None, :]  # (s, 1, N)
    cols = (bx * s + sub)[None, :, :]  # (1, s, N)
    index = rows * cw + cols
    filled = np.take(fill, index)
    inside = _unit(filled)
    strap_a = _unit(np.take(strap, index) & ~filled)  # strap * (1 - inside): fill and straps are 0 or 255

    xy = np.asarray(pts)
    lo, hi = xy.min(axis=0), xy.max(axis=0)

    def edge() -> np.ndarray:  # a soft band along the outline: the stroked outline, blurred
        edge_w = max(1.0, 0.05 * frame.iod) * s
        outline_im = Image.new("L", (cw, ch), 0)
        line_w = max(1, int(round(edge_w)))
        _stroke(outline_im, pts + [pts[0]], line_w)
        blurred = _blur_near(outline_im, max(0.5, 0.3 * edge_w), lo - (line_w / 2 + 2), hi + (line_w / 2 + 2))
        return _unit(np.take(blurred.reshape(-1), index))

    def depth() -> np.ndarray:  # 0 at the outline rising to 1 inside: the fill, blurred
        blurred = _blur_near(fill_im, max(1.0, 0.12 * frame.iod * s), lo - 2, hi + 2)
        depth = _unit(np.take(blurred.reshape(-1), index))
        depth -= 0.5
        depth *= 2.0
        return np.clip(depth, 0.0, 1.0, out=depth)

    # face-frame coordinates of the pixel centres: each an x part plus a y part, as MaskFrame.to_frame sums them
    xs = x0 + (np.arange(cw, dtype=np.float64) + 0.5) / s
    ys = y0 + (np.arange(ch, dtype=np.float64) + 0.5) / s
    dx, dy = xs - frame.origin[0], ys - frame.origin[1]
    inv = np.linalg.inv(np.stack([frame.axis_a, frame.axis_b], axis=1))

    def coordinate(kx: float, ky: float):  # summed in float64, stored as float32
        return lambda: np.add((kx * dx)[cols], (ky * dy)[rows], out=np.empty(index.shape, np.float32),
                              casting="same_kind")

    # the supersampled rows and columns that can be inside the outline (PIL fills within a pixel of it)
    window = (max(0, int(np.floor(lo[1])) - 1), min(ch, int(np.ceil(hi[1])) + 2),
              max(0, int(np.floor(lo[0])) - 1), min(cw, int(np.ceil(hi[0])) + 2))
    canvas = _PixelCanvas(
        {"a": coordinate(*inv[0]), "b": coordinate(*inv[1]), "p": coordinate(*frame.unit_u),
         "q": coordinate(*frame.unit_v), "edge": edge, "depth": depth},
        window,
        inside=inside,
        frame=frame,
        scale=s,
        rows=rows,
        cols=cols,
        region=(ch, cw),
    )
    # and of the image pixels' centres (the mean of their supersampled pixels' coordinates)
    x, y = box[0] + bx + 0.5 - frame.origin[0], box[1] + by + 0.5 - frame.origin[1]
    centres = tuple((inv[k, 0] * x + inv[k, 1] * y).astype(np.float32) for k in (0, 1))
    return canvas, strap_a, (by, bx), centres


class _PixelCanvas(MaskCanvas):
    """A :class:`MaskCanvas` of selected pixels whose fields other than ``inside`` are computed when a style
    first reads them (by the functions in ``lazy``): styles read only some of them. ``window`` (first row, end
    row, first column, end column of the region) bounds the pixels inside the outline, the only ones whose
    colour is used."""

    def __init__(self, lazy: dict, window: tuple[int, int, int, int], **fields):
        super().__init__(**dict.fromkeys(lazy), **fields)
        for name in lazy:
            delattr(self, name)
        self._lazy = lazy
        self._window = window

    def lowres_noise(self, rng: np.random.Generator, cell_px: float, sigma: float = 1.0):
        """:meth:`MaskCanvas.lowres_noise` (the same draws), resampled only over the window: PIL resizes the part
        of the grid under it (the same numbers, but for the box's corners passing through float32); pixels
        outside the window get its border values, which are never used."""
        h, w = self.region
        g = noise_grid(rng, (h, w), cell_px * self.scale, sigma)
        r0, r1, c0, c1 = self._window
        if r1 <= r0 or c1 <= c0:
            return np.zeros(self.shape, dtype=np.float32)
        gh, gw = g.shape
        box = (c0 * gw / w, r0 * gh / h, c1 * gw / w, r1 * gh / h)
        im = Image.fromarray(g, mode="F").resize((c1 - c0, r1 - r0), Image.BICUBIC, box=box)
        at = np.clip(self.rows - r0, 0, r1 - r0 - 1) * (c1 - c0) + np.clip(self.cols - c0, 0, c1 - c0 - 1)
        return np.take(np.asarray(im, dtype=np.float32).reshape(-1), at)

    def __getattr__(self, name: str):
        lazy = self.__dict__.get("_lazy", {})
        if name in lazy:
            value = lazy[name]()
            setattr(self, name, value)
            return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.inside.shape


def _unit(grey: np.ndarray) -> np.ndarray:
    """Grey levels as float32 0..1 (as ``np.asarray(image, np.float32) / 255``)."""
    return np.divide(grey, np.float32(255.0), dtype=np.float32)


def _any_in_blocks(pixels: np.ndarray, s: int) -> np.ndarray:
    """Whether each ``s`` x ``s`` block of the integer array ``pixels`` has a non-zero pixel."""
    h, w = pixels.shape[0] // s, pixels.shape[1] // s
    rows = pixels.reshape(h, s, w * s)
    rows = functools.reduce(np.bitwise_or, [rows[:, j] for j in range(s)]).reshape(h, w, s)
    return functools.reduce(np.bitwise_or, [rows[..., i] for i in range(s)])


def _blur_near(im: Image.Image, radius: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``np.asarray(im.filter(ImageFilter.GaussianBlur(radius)))`` for an image that is 0 outside the box
    ``lo`` .. ``hi`` (x, y), blurring only a crop around that box.

    PIL's Gaussian blur is three box blurs along each axis (Pillow's ``libImaging/BoxBlur.c``; box radius
    after Gwosdek et al., "Theoretical foundations of Gaussian convolution by extended box filtering", SSVM
    2011), each reading ``int(box radius) + 1 <= floor((sqrt(4 radius^2 + 1) - 1) / 2) + 1`` pixels to a side,
    with the image's edge pixels repeated. So nothing spreads farther than three times that from the box, and a
    crop that keeps more zeros than that around it, or ends at the image's edge, gives the same numbers.
    """
    w, h = im.size
    reach = 3 * (int(np.floor((np.sqrt(4.0 * radius * radius + 1.0) - 1.0) / 2.0 + 1e-3)) + 1) + 1
    x0, y0 = (max(0, int(np.floor(v)) - reach) for v in lo)
    x1, y1 = min(w, int(np.ceil(hi[0])) + reach + 1), min(h, int(np.ceil(hi[1])) + reach + 1)
    out = np.zeros((h, w), dtype=np.uint8)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = np.asarray(im.crop((x0, y0, x1, y1)).filter(ImageFilter.GaussianBlur(radius)))
    return out


def _composite(out: Image.Image, box, blocks, centres, canvas: MaskCanvas, colour: Paint | np.ndarray, strap_rgb,
               strap_a: np.ndarray, relight: bool) -> None:
    """Blend the supersampled mask (``colour`` inside the outline, clipped to 0..255) and straps onto ``out`` (in
    place) at the image pixels ``blocks`` of ``box``, relit by the photo's light under the mask when ``relight``
    (fitted at ``centres``, the image pixels' face-frame ``(a, b)``).

    Per image pixel this is the mean over its supersampled pixels of ``colour * inside + strap * strap_a`` (each
    times the gain), blended with coverage ``inside + strap_a``; inside and strap_a are 0 or 1, never both 1.
    """
    s, inside = canvas.scale, canvas.inside
    by, bx = blocks
    n = len(by)
    if n == 0:  # the box's margin reaches into the photo, the mask and straps do not
        return
    local = np.array(out.crop(box))
    pixels = local.reshape(-1, 3)
    at = by * (box[2] - box[0]) + bx
    region = np.take(pixels, at, axis=0).T.astype(np.float32)  # (3, N): channel-first, like all below

    def lowres(x: np.ndarray) -> np.ndarray:  # mean over each image pixel's s x s supersampled pixels
        return x.reshape(*x.shape[:-3], s * s, n).mean(axis=-2)

    inside_lo = lowres(inside)
    gain = None
    if relight:
        light = _light_field(region, inside_lo, *centres)
        if light is not None:
            gain = light(canvas.a)
    # coverage: inside and strap_a are 0 or 1, never both 1; the straps cover few pixels, summed one by one
    strapped = np.flatnonzero(strap_a.reshape(-1) != 0.0)
    strap_block = strapped % n
    alpha_lo = inside_lo + np.bincount(strap_block, minlength=n).astype(np.float32) / (s * s)
    outside = np.flatnonzero(inside.reshape(-1) == 0.0)
    if isinstance(colour, Paint) and float(colour.shade.min()) < 0.0:
        colour = colour.rgb()
    if isinstance(colour, Paint):
        premult_lo = _mixed_lowres(colour, gain, inside, outside, lowres, s * s)
        strap = None if gain is None else gain.reshape(-1)[strapped]
        strap_lo = np.bincount(strap_block, weights=strap, minlength=n).astype(np.float32) / (s * s)
        premult_lo += np.asarray(strap_rgb, dtype=np.float32)[:, None] * strap_lo
    else:  # the colour inside, the strap's on the strap, 0 elsewhere; then relit
        colours = np.ascontiguousarray(np.clip(np.moveaxis(colour, -1, 0), 0.0, 255.0))
        strap_rgb = np.asarray(strap_rgb, dtype=np.float32)[:, None]
        colours.reshape(3, -1)[:, outside] = strap_rgb * strap_a.reshape(-1)[outside]
        if gain is not None:
            colours *= gain
        premult_lo = lowres(colours)
    np.clip(premult_lo, 0.0, 255.0, out=premult_lo)
    region *= 1.0 - alpha_lo
    region += premult_lo
    new = np.clip(np.rint(region, out=region), 0, 255).astype(np.uint8).T.copy()  # (N, 3)
    whole = np.dtype((np.void, 3))  # an RGB pixel as one item: a much faster scatter than pixels[at] = new
    np.put(pixels.view(whole).reshape(-1), at, new.view(whole).reshape(-1))
    out.paste(Image.fromarray(local, mode="RGB"), box[:2])


def _mixed_lowres(paint: Paint, gain: np.ndarray | None, inside: np.ndarray, outside: np.ndarray, lowres,
                  per_block: int) -> np.ndarray:
    """Mean of ``clip(paint.rgb(), 0, 255) * gain * inside`` over each image pixel, ``(3, N)``, from the weights.

    Where no channel can leave 0..255 (the shade is at most 255 / the brightest colour), the mean of the mix is the
    mix of the weights' means; the few other pixels are mixed and clipped one by one.
    """
    n = inside.shape[-1]
    over = np.flatnonzero(paint.shade.reshape(-1) > 255.0 / max(float(paint.colours.max()), 1e-6))
    over = over[inside.reshape(-1)[over] != 0.0]
    means = np.empty((len(paint.weights), n), dtype=np.float32)
    for k, weight in enumerate(paint.weights):
        weight = weight * gain if gain is not None else weight.copy()
        flat = weight.reshape(-1)
        flat[outside] = 0.0
        flat[over] = 0.0
        means[k] = lowres(weight)
    total = paint.colours.T @ means  # (3, N)
    if over.size:
        mix = sum(colour[:, None] * weight.reshape(-1)[over] for colour, weight in zip(paint.colours, paint.weights))
        np.clip(mix, 0.0, 255.0, out=mix)
        if gain is not None:
            mix *= gain.reshape(-1)[over]
        block = over % n
        for c in range(3):
            total[c] += np.bincount(block, weights=mix[c], minlength=n).astype(np.float32) / per_block
    return total
