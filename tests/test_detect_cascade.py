"""The kit's MTCNN cascade: facenet-pytorch's numbers, faster; the two-pass pyramid finds small faces too."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from maskstudy.faces.detect import FaceDetector, area_resize, integral_image, load_image, pyramid_scales


@pytest.mark.parametrize("out", [(24, 24), (48, 48), (76, 55), (7, 30)])
def test_area_resize_gives_torch_area_interpolation(out):
    """The numbers of interpolate(mode="area"), which facenet-pytorch resizes with, down- and upscaling."""
    from torch.nn.functional import interpolate

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    regions = np.array([[0, 90, 0, 70], [10, 60, 5, 50], [80, 90, 60, 70], [3, 5, 4, 7], [0, 1, 0, 1]])
    resized = area_resize(integral_image(image), regions, *out)
    assert resized.shape == (len(regions), *out, 3) and resized.dtype == np.float32
    tensor = torch.as_tensor(image).permute(2, 0, 1).float()
    for k, (y0, y1, x0, x1) in enumerate(regions):
        expected = interpolate(tensor[:, y0:y1, x0:x1].unsqueeze(0), size=out, mode="area")[0].permute(1, 2, 0)
        np.testing.assert_allclose(resized[k], expected.numpy(), rtol=1e-6, atol=1e-4)


def test_pyramid_scales_are_facenets_and_refuse_bad_values():
    scales = pyramid_scales(250, 250, 20)
    assert scales[0] == pytest.approx(0.6) and scales[1] == pytest.approx(0.6 * 0.709)
    assert 250 * scales[-1] >= 12 > 250 * scales[-1] * 0.709
    assert len(pyramid_scales(250, 250, 40)) == len(scales) - 2  # larger smallest faces: fewer, cheaper levels
    for bad in [dict(min_face_size=0), dict(min_face_size=20, factor=1.0), dict(min_face_size=20, factor=0)]:
        with pytest.raises(ValueError):
            pyramid_scales(250, 250, **bad)


def facenet_detect(detector: FaceDetector, image: Image.Image):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # facenet-pytorch's deprecated numpy / torch calls
        boxes, probs, landmarks = detector.mtcnn.detect(image, landmarks=True)
    if boxes is None:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    return np.asarray(boxes, float), np.asarray(probs, float), np.asarray(landmarks, float)


@pytest.fixture(scope="module")
def mixed_photos(lfw_root, celeba_root):
    """Photos of several sizes: LFW is 250x250, CelebA's in-the-wild photos vary (some with small faces)."""
    paths = sorted(lfw_root.glob("A*/*_0001.jpg"))[:8] + sorted(celeba_root.glob("*/*.jpg"))[::97][:8]
    return [load_image(p).image for p in paths]


def confident(boxes, probs, landmarks, min_prob: float = 0.9):
    keep = np.flatnonzero(np.asarray(probs) >= min_prob)
    keep = keep[np.argsort(-np.asarray(probs)[keep])]
    return np.asarray(boxes)[keep], np.asarray(probs)[keep], np.asarray(landmarks)[keep]


def test_one_pass_equals_facenet_mtcnn_detect(mixed_photos):
    """The confident faces, their boxes and landmarks are facenet's (faces near P-Net's threshold may come and go
    with the float rounding of other convolution kernels)."""
    detector = FaceDetector(device="cpu", first_pass_face_size=None)
    for image, detection in zip(mixed_photos, detector.detect(mixed_photos)):
        expected = confident(*facenet_detect(detector, image))
        got = confident(detection.boxes, detection.probs, detection.landmarks)
        assert len(got[1]) == len(expected[1])
        for mine, theirs in zip(got, expected):
            np.testing.assert_allclose(mine, theirs, atol=1e-2)


def small_face_photo(face: Image.Image, side: int = 48) -> Image.Image:
    """The face photo shrunk (face about a quarter of ``side``) onto a plain 250x250 background."""
    canvas = Image.new("RGB", (250, 250), (110, 120, 130))
    canvas.paste(face.resize((side, side), Image.Resampling.BILINEAR), (93, 93))
    return canvas


def test_two_passes_keep_large_faces_and_still_find_small_ones(mixed_photos):
    one_pass = FaceDetector(device="cpu", first_pass_face_size=None)
    two_pass = FaceDetector(device="cpu", first_pass_face_size=36)
    small = small_face_photo(mixed_photos[0])
    photos = [*mixed_photos[:8], small]
    reference, fast = one_pass.detect(photos), two_pass.detect(photos)
    # the small face (about 20 px) is searched for again with the whole pyramid: the one-pass result exactly
    box = fast[-1].boxes[fast[-1].chosen]
    assert np.sqrt((box[2] - box[0]) * (box[3] - box[1])) < 36
    for old, new in zip(reference, fast):
        assert (old.chosen is None) == (new.chosen is None)
        if old.chosen is not None:
            np.testing.assert_allclose(new.landmarks[new.chosen], old.landmarks[old.chosen], atol=1e-3)
    assert two_pass.settings["first_pass_face_size"] == 36.0 and one_pass.settings["first_pass_face_size"] is None


def test_cascade_refuses_what_is_not_an_rgb_array():
    detector = FaceDetector(device="cpu")
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.cascade([np.zeros((50, 50), np.uint8)])
    with pytest.raises(ValueError, match="first_pass_face_size"):
        FaceDetector(device="cpu", first_pass_face_size=0)
    assert detector.cascade([]) == []
