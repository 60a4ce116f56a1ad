"""Fit the kit's 5-point template of dlib's face chip (the constants of ``maskstudy/models/dlib_chip.py``).

For LFW photos (the first of each of the first ``--people`` folders with a face), the kit's MTCNN gives the five
landmarks and the box; dlib's 5-point shape model, inside the squared box (as the ``dlib_resnet`` teacher cuts
chips), gives dlib's chip (``get_face_chip_details``, 150 px, padding 0.25). Each MTCNN landmark is carried into
the chip by drawing it as a small blob on an empty photo and cutting that photo with the same chip details (the
blob's centroid in the chip is where dlib's chip puts the landmark). The template is the mean over photos; the
fixed similarity from the ArcFace 112 template onto it is fitted by least squares.

Usage: python bench/fit_dlib_chip_template.py [--people 300] [--lfw ../shared/data/lfw]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def blob_image(shape, point, sigma: float = 1.5) -> np.ndarray:
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    blob = np.exp(-((x - point[0]) ** 2 + (y - point[1]) ** 2) / (2 * sigma**2))
    return np.repeat((blob * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=300)
    parser.add_argument("--lfw", default="../shared/data/lfw")
    args = parser.parse_args()
    import dlib

    from maskstudy.faces.align import ARCFACE_TEMPLATE_112, apply_transform, similarity_transform
    from maskstudy.faces.detect import FaceDetector, load_image
    from maskstudy.models.dlib_chip import CHIP_PADDING, CHIP_SIZE
    from maskstudy.teachers.dlib_resnet import SHAPE_MODEL, dlib_box, dlib_model_file

    shape_model = dlib.shape_predictor(str(dlib_model_file(SHAPE_MODEL)))
    detector = FaceDetector(device="cpu")
    folders = sorted(p for p in Path(args.lfw).iterdir() if p.is_dir())[: args.people]
    positions = []
    for folder in folders:
        photo = load_image(sorted(folder.glob("*.jpg"))[0]).image
        detection = detector.detect([photo])[0]
        if detection.chosen is None:
            continue
        landmarks = detection.landmarks[detection.chosen]
        array = np.ascontiguousarray(np.asarray(photo, dtype=np.uint8))
        left, top, right, bottom = (int(round(v)) for v in dlib_box(detection.boxes[detection.chosen]))
        shape = shape_model(array, dlib.rectangle(left, top, right, bottom))
        details = dlib.get_face_chip_details(shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        found = []
        for point in landmarks:
            chip = dlib.extract_image_chip(blob_image(array.shape[:2], point), details).astype(np.float64)[:, :, 0]
            y, x = np.mgrid[0:CHIP_SIZE, 0:CHIP_SIZE]
            found.append([(chip * x).sum() / chip.sum(), (chip * y).sum() / chip.sum()])
        positions.append(found)
    positions = np.asarray(positions)
    mean = positions.mean(axis=0)
    spread = np.sqrt(((positions - mean) ** 2).sum(axis=2).mean(axis=0))
    matrix = similarity_transform(ARCFACE_TEMPLATE_112, mean)
    residual = np.sqrt(((apply_transform(matrix, ARCFACE_TEMPLATE_112) - mean) ** 2).sum(axis=1))
    np.set_printoptions(precision=4, suppress=True)
    print(f"photos: {len(positions)}")
    print("template (mean of MTCNN landmarks in dlib's chip):\n", mean)
    print("per-landmark RMS spread over photos (px):", spread)
    print("ArcFace 112 -> chip similarity:\n", matrix)
    print("scale:", np.hypot(*matrix[:, 0]), "residual per landmark (px):", residual,
          "RMS:", np.sqrt((residual**2).mean()))


if __name__ == "__main__":
    main()
