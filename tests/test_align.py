"""Alignment: a similarity transform of 5 landmarks onto the ArcFace template."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from maskstudy.faces.align import ARCFACE_TEMPLATE_112, align_face, apply_transform, similarity_transform, template


def similarity(points, angle_deg, scale, shift):
    angle = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return scale * points @ rotation.T + np.asarray(shift)


@pytest.mark.parametrize("angle,scale,shift", [(0, 1, (0, 0)), (25, 2.2, (60, 40)), (-40, 0.7, (10, 90)), (170, 1.5, (200, 200))])
def test_recovers_exact_similarity(angle, scale, shift):
    src = similarity(ARCFACE_TEMPLATE_112, angle, scale, shift)
    matrix = similarity_transform(src, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(apply_transform(matrix, src), ARCFACE_TEMPLATE_112, atol=1e-9)


def test_noisy_landmarks_land_within_a_few_pixels():
    rng = np.random.default_rng(0)
    src = similarity(ARCFACE_TEMPLATE_112, 15, 1.8, (40, 30)) + rng.normal(0, 1.5, (5, 2))
    warped = apply_transform(similarity_transform(src, ARCFACE_TEMPLATE_112), src)
    assert np.abs(warped - ARCFACE_TEMPLATE_112).max() < 3.0


def test_warped_image_puts_marked_landmarks_on_the_template():
    """Dots drawn at the landmarks of a rotated, scaled face land on the template pixels after warping."""
    src = similarity(ARCFACE_TEMPLATE_112, 20, 2.0, (70, 20))
    image = Image.new("RGB", (400, 400), "black")
    draw = ImageDraw.Draw(image)
    for x, y in src:
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill="white")
    crop, _ = align_face(image, src, 112)
    array = np.asarray(crop.convert("L"), dtype=float)
    for x, y in ARCFACE_TEMPLATE_112:
        ys, xs = np.mgrid[int(y) - 6:int(y) + 7, int(x) - 6:int(x) + 7]
        weights = array[ys, xs]
        centre = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
        assert np.hypot(*(centre - [x, y])) < 1.5
    assert crop.size == (112, 112)


def test_template_scales():
    np.testing.assert_allclose(template(224), ARCFACE_TEMPLATE_112 * 2)


@pytest.mark.parametrize("points", [np.zeros((5, 2)), np.full((5, 2), np.nan)])
def test_degenerate_landmarks_are_rejected(points):
    with pytest.raises(ValueError):
        similarity_transform(points, ARCFACE_TEMPLATE_112)
