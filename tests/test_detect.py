"""Loading bad images is recorded, never a crash; MTCNN finds faces on real photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskstudy.faces.detect import choose_face, load_image


@pytest.fixture(scope="module")
def face(lfw_root) -> Image.Image:
    return Image.open(lfw_root / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg").convert("RGB")


def write_variant(kind: str, face: Image.Image, folder) -> str:
    path = folder / {"png16": "x.png", "alpha": "x.png", "palette": "x.png"}.get(kind, "x.jpg")
    if kind == "cmyk":
        face.convert("CMYK").save(path)
    elif kind == "grayscale":
        face.convert("L").save(path)
    elif kind == "png16":
        Image.fromarray(np.asarray(face.convert("L")).astype(np.uint16) * 257).save(path)
    elif kind == "alpha":
        face.convert("RGBA").save(path)
    elif kind == "palette":
        face.convert("P").save(path)
    elif kind == "exif_rotated":
        rotated = face.rotate(90, expand=True)  # stored on its side; EXIF 6 says "turn 90 degrees clockwise"
        exif = rotated.getexif()
        exif[0x0112] = 6
        rotated.save(path, exif=exif.tobytes())
    elif kind == "truncated":
        face.save(path, quality=95)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not_an_image":
        path.write_bytes(b"this is not a JPEG")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "tiny":
        face.resize((12, 12)).save(path)
    return path


CONVERTED = {"cmyk": "CMYK", "grayscale": "grayscale", "png16": "16-bit", "alpha": "alpha", "palette": "palette",
             "exif_rotated": "EXIF orientation 6"}
FAILED = {"truncated": "truncated", "not_an_image": "unreadable", "empty": "unreadable", "tiny": "too_small"}


@pytest.mark.parametrize("kind", sorted(CONVERTED))
def test_convertible_images_load_as_rgb_with_a_note(kind, face, tmp_path, detector):
    loaded = load_image(write_variant(kind, face, tmp_path))
    assert loaded.status == "ok" and loaded.image.mode == "RGB"
    assert any(CONVERTED[kind] in note for note in loaded.notes), loaded.notes
    # the face is still found after conversion (EXIF rotation restored the upright face)
    assert detector.detect([loaded.image])[0].chosen is not None


@pytest.mark.parametrize("kind", sorted(FAILED))
def test_broken_images_get_a_status_and_reason(kind, face, tmp_path):
    loaded = load_image(write_variant(kind, face, tmp_path))
    assert loaded.image is None
    assert loaded.status == FAILED[kind]
    assert loaded.reason


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.jpg")


def test_mtcnn_on_real_photos(lfw_root, celeba_root, detector):
    paths = sorted(lfw_root.glob("A*/*_0001.jpg"))[:6] + sorted(celeba_root.glob("*/*.jpg"))[:4]
    images = [load_image(p).image for p in paths]
    detections = detector.detect(images)  # mixed sizes: CelebA photos are not 250x250
    found = [d for d in detections if d.chosen is not None]
    assert len(found) >= 8
    for image, detection in zip(images, detections):
        if detection.chosen is None:
            continue
        box = detection.boxes[detection.chosen]
        landmarks = detection.landmarks[detection.chosen]
        assert detection.probs[detection.chosen] >= 0.9
        # eyes above the nose above the mouth, all inside the (slightly padded) box
        assert landmarks[:2, 1].max() < landmarks[2, 1] < landmarks[3:, 1].min()
        pad = 0.15 * (box[2] - box[0])
        assert (landmarks[:, 0] > box[0] - pad).all() and (landmarks[:, 0] < box[2] + pad).all()
        assert 0 <= box[0] < box[2] <= image.size[0] + 5


def test_mtcnn_finds_no_face_in_a_blank_image(detector):
    detection = detector.detect([Image.new("RGB", (200, 200), (128, 128, 128))])[0]
    assert detection.n_faces == 0 and detection.chosen is None


def test_choose_face_prefers_confident_central_faces():
    boxes = np.array([[0, 0, 40, 40], [80, 80, 120, 120], [150, 150, 200, 200]], float)
    assert choose_face(boxes, np.array([0.99, 0.95, 0.999]), (200, 200), 0.9) == 1  # nearest the centre
    assert choose_face(boxes, np.array([0.99, 0.5, 0.999]), (200, 200), 0.9) in (0, 2)  # central one too weak
    assert choose_face(boxes, np.array([0.5, 0.5, 0.5]), (200, 200), 0.9) is None
    assert choose_face(np.zeros((0, 4)), np.zeros(0), (200, 200), 0.9) is None
