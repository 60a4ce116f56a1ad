"""Tests for maskstudy.faces.masks.drawing: geometry, coverage, determinism, robustness of the synthetic masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from maskstudy.faces.masks import drawing as masks
from maskstudy.faces.masks.drawing import (
    MASK_STYLES,
    TRAINING_STYLES,
    UNSEEN_STYLES,
    choose_style,
    draw_mask,
    mask_alpha,
    mask_polygon,
)
from tests import masks_reference

STYLES = sorted(MASK_STYLES)
MASK_STYLES_BUILT_IN = dict(MASK_STYLES)
MASK_STYLES_PAINTERS = dict(masks.PAINTERS)

# ArcFace 112x112 template: left eye, right eye, nose tip, left / right mouth corner (x, y)
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
CHIN = np.array([56.1, 108.0])  # below the mouth line, on the chin


def transform(points, deg=20.0, scale=2.0, offset=(50.0, 30.0)):
    """Rotate by ``deg`` about the template centre, scale, and shift (image coordinates)."""
    c = TEMPLATE.mean(axis=0)
    th = np.deg2rad(deg)
    r = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return (np.asarray(points, float) - c) @ r.T * scale + c * scale + np.asarray(offset)


def noise_image(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")


def grey_image(w, h):
    return Image.new("RGB", (w, h), (128, 128, 128))


def window(arr, xy, r):
    x, y = int(round(xy[0])), int(round(xy[1]))
    return arr[y - r : y + r + 1, x - r : x + r + 1]


# (image size, landmarks, chin point, eye-neighbourhood radius)
CASES = {
    "template": ((112, 112), TEMPLATE, CHIN, 3),
    "rotated_scaled": ((300, 300), transform(TEMPLATE), transform(CHIN[None])[0], 3),
    "rotated_other_way": ((300, 300), transform(TEMPLATE, deg=-25, scale=1.6, offset=(70, 40)),
                          transform(CHIN[None], deg=-25, scale=1.6, offset=(70, 40))[0], 3),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("base", ["grey", "noise"])
def test_mask_covers_nose_mouth_chin_not_eyes(style, case, base):
    (w, h), lm, chin, r = CASES[case]
    img = grey_image(w, h) if base == "grey" else noise_image(w, h)
    before = np.asarray(img).copy()
    out = draw_mask(img, lm, style, seed=1)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (w, h)
    assert np.array_equal(np.asarray(img), before), "input image was modified"
    a0 = before.astype(int)
    a1 = np.asarray(out).astype(int)
    diff = np.abs(a1 - a0).sum(axis=2)
    covered = [("left mouth", lm[3]), ("right mouth", lm[4]), ("chin", chin)]
    if style == "below_nose":  # worn under the nose: the nose tip stays visible
        assert window(diff, lm[2], 1).max() == 0, "nose covered by a mask worn below the nose"
    else:
        covered.append(("nose", lm[2]))
    for name, pt in covered:
        assert window(diff, pt, 1).min() > 0, f"{name} not masked"
        assert window(diff, pt, 1).mean() > 15, f"{name} barely changed"
    for name, pt in [("left eye", lm[0]), ("right eye", lm[1])]:
        assert window(diff, pt, r).max() == 0, f"{name} neighbourhood changed"


@pytest.mark.parametrize("case", sorted(CASES))
def test_mask_alpha_coverage(case):
    (w, h), lm, chin, r = CASES[case]
    alpha = mask_alpha((w, h), lm)
    assert alpha.shape == (h, w) and alpha.dtype == np.float32
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    for pt in (lm[2], lm[3], lm[4], chin):
        assert window(alpha, pt, 1).min() > 0.99
    for pt in (lm[0], lm[1]):
        assert window(alpha, pt, r).max() == 0.0
    # the mask is a sizeable but partial part of the image
    assert 0.05 < alpha.mean() < 0.6


@pytest.mark.parametrize("case", sorted(CASES))
def test_drawing_agrees_with_alpha(case):
    (w, h), lm, _, _ = CASES[case]
    img = noise_image(w, h, seed=3)
    out = draw_mask(img, lm, "surgical_blue", seed=0)
    changed = np.any(np.asarray(out) != np.asarray(img), axis=2)
    alpha = mask_alpha((w, h), lm)
    full = alpha >= 0.999
    assert changed[full].mean() > 0.95
    # outside the mask only the thin ear straps may change
    frame = masks.face_frame(lm)
    outside = ~changed[alpha == 0]
    assert outside.mean() > 0.9
    # nothing changes above the eye line (straps and mask are all below it)
    ys, xs = np.mgrid[0:h, 0:w]
    _, b = frame.to_frame(xs + 0.5, ys + 0.5)
    assert not changed[b < -0.05].any()


def test_polygon_rotates_with_face():
    base = mask_polygon(TEMPLATE)
    moved = mask_polygon(transform(TEMPLATE))
    assert base.ndim == 2 and base.shape[1] == 2 and base.shape[0] >= 20
    np.testing.assert_allclose(moved, transform(base), atol=1e-6)


def test_polygon_geometry_on_template():
    poly = mask_polygon(TEMPLATE)
    eye_y = TEMPLATE[:2, 1].mean()
    nose_y = TEMPLATE[2, 1]
    mouth_y = TEMPLATE[3:, 1].mean()
    iod = TEMPLATE[1, 0] - TEMPLATE[0, 0]
    centre_x = TEMPLATE[:2, 0].mean()
    top = poly[:, 1].min()
    assert eye_y + 0.3 * (nose_y - eye_y) < top < eye_y + 0.5 * (nose_y - eye_y)
    half_width = np.abs(poly[:, 0] - centre_x).max() / iod
    assert 0.95 <= half_width <= 1.15
    depth = (poly[:, 1].max() - mouth_y) / (mouth_y - eye_y)
    assert 0.6 <= depth <= 1.1


@pytest.mark.parametrize("style", STYLES)
def test_deterministic_per_seed(style):
    img = noise_image(112, 112, seed=7)
    a = np.asarray(draw_mask(img, TEMPLATE, style, seed=42))
    b = np.asarray(draw_mask(img, TEMPLATE, style, seed=42))
    assert np.array_equal(a, b)
    g = np.asarray(draw_mask(img, TEMPLATE, style, seed=np.random.default_rng(42)))
    assert np.array_equal(a, g)
    others = [np.asarray(draw_mask(img, TEMPLATE, style, seed=s)) for s in (1, 2, 3)]
    assert any(not np.array_equal(a, o) for o in others)


def test_choose_style_deterministic_and_covering():
    keys = [f"Person_{i:03d}/Person_{i:03d}_0001.jpg" for i in range(200)]
    picks = [choose_style(k, 0) for k in keys]
    assert picks == [choose_style(k, 0) for k in keys]
    assert set(picks) == set(TRAINING_STYLES)  # by default only the training styles
    counts = {s: picks.count(s) for s in TRAINING_STYLES}
    assert min(counts.values()) >= 200 / len(TRAINING_STYLES) * 0.5, counts
    assert picks != [choose_style(k, 1) for k in keys]
    assert {choose_style(k, 0, UNSEEN_STYLES) for k in keys} == set(UNSEEN_STYLES)


def test_unseen_styles_are_registered_and_disjoint_from_training():
    assert set(TRAINING_STYLES) | set(UNSEEN_STYLES) <= set(MASK_STYLES)
    assert not set(TRAINING_STYLES) & set(UNSEEN_STYLES) and len(UNSEEN_STYLES) >= 2
    with pytest.raises(ValueError, match="unknown or no mask styles"):
        choose_style("a", 0, ["nope"])


def test_unseen_outlines_differ_from_the_training_outline():
    from maskstudy.faces.masks.drawing import shape_of

    base = mask_alpha((112, 112), TEMPLATE) > 0.5
    for style in UNSEEN_STYLES:
        other = mask_alpha((112, 112), TEMPLATE, shape_of(style)) > 0.5
        assert (base ^ other).mean() > 0.02, style


@pytest.mark.parametrize(
    "shift",
    [(-45.0, -40.0), (60.0, 50.0), (-30.0, 20.0), (0.0, 40.0), (1000.0, 1000.0), (-500.0, 0.0)],
)
@pytest.mark.parametrize("style", STYLES)
def test_landmarks_partly_or_fully_outside(style, shift):
    img = noise_image(112, 112)
    lm = TEMPLATE + np.asarray(shift)
    out = draw_mask(img, lm, style, seed=0)
    assert out.size == img.size and out.mode == "RGB"
    alpha = mask_alpha(img.size, lm)
    assert alpha.shape == (112, 112)
    if abs(shift[0]) >= 500:
        assert np.array_equal(np.asarray(out), np.asarray(img))
        assert alpha.max() == 0.0


def test_unknown_style_lists_known():
    with pytest.raises(ValueError) as info:
        draw_mask(grey_image(112, 112), TEMPLATE, "space_helmet", seed=0)
    for name in MASK_STYLES:
        assert name in str(info.value)


def test_bad_landmarks_rejected():
    with pytest.raises(ValueError):
        mask_polygon(np.zeros((4, 2)))
    with pytest.raises(ValueError):
        mask_polygon(np.array([[10, 10], [10, 10], [10, 20], [5, 30], [15, 30]], float))


def test_other_modes_and_sizes():
    grey = Image.new("L", (160, 120), 100)
    out = draw_mask(grey, TEMPLATE + [20, 0], "black_cloth", seed=0)
    assert out.mode == "RGB" and out.size == (160, 120) and grey.mode == "L"
    rgba = Image.new("RGBA", (112, 112), (10, 20, 30, 255))
    assert draw_mask(rgba, TEMPLATE, "n95_white", seed=0).mode == "RGB"
    alpha = mask_alpha((160, 120), TEMPLATE + [20, 0])
    assert alpha.shape == (120, 160)
    assert np.array_equal(alpha, mask_alpha(grey, TEMPLATE + [20, 0]))


@pytest.mark.realdata
def test_real_photo_smoke(lfw_root):
    root = lfw_root
    photo = next(iter(sorted(root.glob("*/*_0001.jpg"))), None)
    if photo is None:
        pytest.skip(f"no photos under {root}")
    img = Image.open(photo).convert("RGB")
    # rough landmarks of a centred LFW face (250x250)
    lm = np.array([[105, 115], [145, 115], [125, 140], [108, 165], [142, 165]], float)
    lm = lm * (np.array(img.size) / 250.0)
    for style in TRAINING_STYLES:
        out = draw_mask(img, lm, style, seed=0)
        diff = np.abs(np.asarray(out).astype(int) - np.asarray(img).astype(int)).sum(axis=2)
        assert window(diff, lm[2], 1).mean() > 0
        assert window(diff, lm[0], 3).max() == 0 and window(diff, lm[1], 3).max() == 0


# --- the drawing reproduces the frozen reference (tests/masks_reference.py) within one grey level -----------------

LANDMARKS_FIXTURE = Path(__file__).parent / "data" / "lfw_mask_landmarks.json"


def face_at(centre, deg=0.0, scale=1.0):
    """The template face turned by ``deg``, scaled, with its landmarks' centre at ``centre``."""
    c = TEMPLATE.mean(axis=0)
    return transform(TEMPLATE, deg, scale, np.asarray(centre, float) - c * scale)


def edge_cases():
    """Synthetic faces the LFW photos lack: (name, image, landmarks, draw_mask keywords)."""
    return [
        ("across_left_border", noise_image(160, 120, seed=11), face_at((8, 50), 10.0, 1.5), {}),
        ("across_bottom_right", noise_image(140, 140, seed=12), face_at((125, 110), -15.0, 1.3), {}),
        ("only_chin_inside", noise_image(112, 112, seed=13), face_at((56, -30)), {}),
        ("tiny", noise_image(64, 48, seed=14), face_at((30, 22), 5.0, 0.15), {}),
        ("large_rotated", noise_image(560, 540, seed=15), face_at((280, 250), 35.0, 4.0), {}),
        ("grey_flat_light", grey_image(200, 200), face_at((100, 90), 0.0, 1.6), {}),
        ("no_relight", noise_image(300, 300, seed=16), transform(TEMPLATE), {"relight": False}),
    ]


def largest_difference(image, landmarks, style, seed, **kwargs) -> int:
    new = np.asarray(draw_mask(image, landmarks, style, seed=seed, **kwargs), dtype=np.int16)
    old = np.asarray(masks_reference.draw_mask(image, landmarks, style, seed=seed, **kwargs), dtype=np.int16)
    return int(np.abs(new - old).max())


@pytest.mark.parametrize("style", STYLES)
def test_drawing_matches_reference_on_edge_cases(style):
    found = {name: largest_difference(img, lm, style, seed, **kw)
             for seed, (name, img, lm, kw) in enumerate(edge_cases())}
    assert max(found.values()) <= 1, found


@pytest.mark.parametrize(("budget", "factor"), [(150_000, 2), (60_000, 1)])
@pytest.mark.parametrize("style", STYLES)
def test_drawing_matches_reference_with_lowered_supersampling(style, budget, factor, monkeypatch):
    for module in (masks, masks_reference):  # a small pixel budget stands in for a huge face
        monkeypatch.setattr(module, "_MAX_CANVAS_PIXELS", budget)
    img, lm = noise_image(300, 300, seed=17), transform(TEMPLATE, deg=-10.0)
    ref = masks_reference
    straps = ref.strap_segments(lm)
    box = ref._local_box(np.concatenate([ref.mask_polygon(lm), *straps]), 300, 300,
                         pad=max(0.8, 0.045 * ref.face_frame(lm).iod) + 2.0)
    assert ref._supersample(box) == factor
    assert largest_difference(img, lm, style, seed=5) <= 1


@pytest.mark.realdata
@pytest.mark.parametrize("style", STYLES)
def test_drawing_matches_reference_on_lfw(style, lfw_root):
    faces = json.loads(LANDMARKS_FIXTURE.read_text())["faces"]
    assert len(faces) >= 30
    found = {}
    for seed, face in enumerate(faces):
        image = Image.open(lfw_root / face["photo"]).convert("RGB")
        found[face["photo"]] = largest_difference(image, np.asarray(face["landmarks"]), style, seed)
    assert max(found.values()) <= 1, {k: v for k, v in found.items() if v > 1}


def test_geometry_matches_reference_bitwise():
    rng = np.random.default_rng(0)
    shapes = [masks.DEFAULT_SHAPE, *masks.STYLE_SHAPES.values()]
    for _ in range(200):
        lm = transform(TEMPLATE, rng.uniform(-60, 60), rng.uniform(0.1, 6.0), rng.uniform(-100, 300, 2))
        lm = lm + rng.normal(0.0, 4.0, lm.shape)
        for shape in shapes:
            old_shape = masks_reference.MaskShape(**vars(shape))
            assert np.array_equal(mask_polygon(lm, shape), masks_reference.mask_polygon(lm, old_shape))
            for new, old in zip(masks.strap_segments(lm, shape), masks_reference.strap_segments(lm, old_shape)):
                assert np.array_equal(new, old)


@pytest.mark.parametrize("width", [1, 4, 5, 6, 8, 9, 12])
def test_stroke_draws_what_imagedraw_line_draws(width):
    rng = np.random.default_rng(width)
    for k in range(40):
        n = int(rng.integers(2, 30))
        if k % 2:
            t = np.linspace(0.0, rng.uniform(1.0, 6.3), n)
            xy = np.stack([60 + 45 * np.cos(t), 60 + 35 * np.sin(t)], axis=1)
        else:
            xy = rng.uniform(-10, 130, (n, 2))
        points = [tuple(p) for p in xy.tolist()]
        expected = Image.new("L", (120, 120))
        ImageDraw.Draw(expected).line(points, fill=255, width=width, joint="curve")
        drawn = Image.new("L", (120, 120))
        masks._stroke(drawn, points, width)
        assert np.array_equal(np.asarray(drawn), np.asarray(expected))


@pytest.mark.parametrize("radius", [0.5, 1.8, 4.0, 14.4, 40.0])
def test_blur_near_is_the_whole_blur(radius):
    rng = np.random.default_rng(int(radius * 10))
    for x0, y0, x1, y1 in [(30, 20, 60, 50), (0, 0, 25, 30), (100, 60, 140, 90), (-5, 40, 20, 95)]:
        pixels = np.zeros((90, 140), dtype=np.uint8)
        box = pixels[max(0, y0):y1, max(0, x0):x1]
        box[...] = rng.integers(0, 256, box.shape) * (rng.random(box.shape) < 0.3)
        im = Image.fromarray(pixels, mode="L")
        whole = np.asarray(im.filter(ImageFilter.GaussianBlur(radius)))
        assert np.array_equal(masks._blur_near(im, radius, np.array([x0, y0]), np.array([x1, y1])), whole)


def test_a_replaced_style_is_drawn_through_its_function(monkeypatch):
    img = noise_image(300, 300, seed=21)
    lm = transform(TEMPLATE)
    painted = np.asarray(draw_mask(img, lm, "n95_white", seed=3), dtype=int)
    calls = []

    def replacement(canvas, rng):
        calls.append(canvas.shape)
        return MASK_STYLES_BUILT_IN["n95_white"](canvas, rng)

    monkeypatch.setitem(MASK_STYLES, "n95_white", replacement)
    through_rgb = np.asarray(draw_mask(img, lm, "n95_white", seed=3), dtype=int)
    assert calls and np.abs(through_rgb - painted).max() <= 1


@pytest.mark.parametrize("style", STYLES)
def test_a_generator_seed_advances_as_before(style):
    # the last one's box (with the straps' margin) overlaps the photo, but the mask and straps touch no pixel
    for lm in (TEMPLATE, TEMPLATE + [0.0, 30.0], TEMPLATE + [106.0, 0.0]):
        img = noise_image(112, 112, seed=5)
        new_rng, old_rng = np.random.default_rng(11), np.random.default_rng(11)
        new = np.asarray(draw_mask(img, lm, style, seed=new_rng), dtype=int)
        old = np.asarray(masks_reference.draw_mask(img, lm, style, seed=old_rng), dtype=int)
        assert np.abs(new - old).max() <= 1
        assert new_rng.random() == old_rng.random()


def test_a_paint_that_turns_negative_is_drawn_through_its_colour(monkeypatch):
    def darker(canvas, rng):
        paint, strap = MASK_STYLES_PAINTERS["black_cloth"](canvas, rng)
        paint.shade -= 0.9  # the paint's only weight is its shade; some of it drops below 0
        assert paint.shade.min() < 0.0 < paint.shade.max()
        return paint, strap

    def darker_rgb(canvas, rng):
        paint, strap = darker(canvas, rng)
        return paint.rgb(), strap

    img, lm = noise_image(300, 300, seed=22), transform(TEMPLATE)
    monkeypatch.setitem(masks.PAINTERS, "black_cloth", darker)
    painted = np.asarray(draw_mask(img, lm, "black_cloth", seed=4), dtype=int)
    monkeypatch.setitem(MASK_STYLES, "black_cloth", darker_rgb)
    through_rgb = np.asarray(draw_mask(img, lm, "black_cloth", seed=4), dtype=int)
    assert np.array_equal(painted, through_rgb)
