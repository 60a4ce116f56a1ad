"""Face alignment: a similarity transform of 5 landmarks onto the ArcFace 112x112 template.

The template is the one used by insightface / ArcFace (Deng et al., CVPR 2019) for 112x112 crops; the
transform is the least-squares similarity of Umeyama (IEEE TPAMI 1991).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: 5-point template for a 112x112 crop: left eye, right eye, nose tip, left and right mouth corners.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

#: Side of the aligned crops on disk, the size the ArcFace template is given for. Models with a smaller
#: ``input_size`` get these crops resized by :func:`maskstudy.faces.preprocess.to_input`, in training and evaluation.
CROP_SIZE = 112

#: Index of each landmark in the 5-point convention (MTCNN order).
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def template(size: int = CROP_SIZE) -> np.ndarray:
    """The ArcFace template scaled to a ``size`` x ``size`` crop."""
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


#: Landmark weights for faces whose lower landmarks are guessed (under a mask): the eyes fix the transform, the
#: nose and mouth corners only nudge it. Used by :func:`estimate_alignment` for masked photos (``eye_weighted``).
EYE_WEIGHTED = np.array([1.0, 1.0, 0.2, 0.1, 0.1])


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """2x3 matrix ``M`` of the similarity (rotation, uniform scale, translation) that maps ``src`` onto ``dst``
    in the (weighted) least-squares sense (Umeyama 1991, without reflection)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    if not np.all(np.isfinite(src)):
        raise ValueError("landmarks contain NaN or inf")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if len(w) != len(src) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"need {len(src)} non-negative weights with a positive sum, got {w}")
    w = w / w.sum()
    src_mean, dst_mean = w @ src, w @ dst
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = float(w @ (src_c**2).sum(1))
    if src_var < 1e-12:
        raise ValueError("degenerate landmarks: all points coincide")
    cov = (dst_c * w[:, None]).T @ src_c
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    scale = (sigma * d).sum() / src_var
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to (N, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def estimate_alignment(landmarks: np.ndarray, size: int = CROP_SIZE, weights: np.ndarray | None = None) -> np.ndarray:
    """2x3 matrix mapping image coordinates onto the ``size`` x ``size`` ArcFace template (``weights``: one per
    landmark, e.g. :data:`EYE_WEIGHTED`; default equal)."""
    return similarity_transform(np.asarray(landmarks).reshape(5, 2), template(size), weights)


def warp(image: Image.Image, matrix: np.ndarray, size: int = CROP_SIZE) -> Image.Image:
    """Warp ``image`` with the 2x3 ``matrix`` (image -> crop coordinates) into a ``size`` x ``size`` crop.

    PIL's affine transform wants the inverse map (crop -> image); pixels outside the photo are black.
    """
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)[:2].ravel()
    return image.transform((size, size), Image.Transform.AFFINE, data=tuple(inverse), resample=Image.Resampling.BILINEAR)


def align_face(image: Image.Image, landmarks: np.ndarray, size: int = CROP_SIZE,
               weights: np.ndarray | None = None) -> tuple[Image.Image, np.ndarray]:
    """Aligned ``size`` x ``size`` crop and the transform used; see :func:`estimate_alignment`."""
    matrix = estimate_alignment(landmarks, size, weights)
    return warp(image, matrix, size), matrix


def centre_crop(image: Image.Image, size: int = CROP_SIZE) -> np.ndarray:
    """Centre square of ``image`` resized to ``size`` x ``size``: the crop of a photo that is already roughly a
    face crop, used when no face is detected. uint8 (size, size, 3)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.convert("RGB").crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def detect_and_align(images: list[Image.Image], detector, size: int = CROP_SIZE, weights: np.ndarray | None = None,
                     batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a user's pipeline does with raw photos: detect (``detector.detect``), align the chosen face's 5
    landmarks (optionally ``weights``, e.g. :data:`EYE_WEIGHTED`), and centre-crop photos without a usable face.

    Returns ``crops`` (N, size, size, 3) uint8, ``found`` (a face above the detector's threshold), ``fallback``
    (the crop is the centre-crop fallback) and ``landmarks`` (N, 5, 2; NaN where no face was chosen)."""
    detections = []
    for start in range(0, len(images), batch_size):
        detections += detector.detect(images[start:start + batch_size])
    return align_detections(images, detections, size, weights)


def align_detections(images: list[Image.Image], detections: list, size: int = 112,
                     weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The second half of :func:`detect_and_align`, for detections made elsewhere (one per image)."""
    if len(detections) != len(images):
        raise ValueError(f"{len(images)} images but {len(detections)} detections")
    crops = np.empty((len(images), size, size, 3), dtype=np.uint8)
    found = np.zeros(len(images), dtype=bool)
    fallback = np.zeros(len(images), dtype=bool)
    landmarks = np.full((len(images), 5, 2), np.nan)
    for i, (image, detection) in enumerate(zip(images, detections)):
        if detection.chosen is not None:
            found[i] = True
            landmarks[i] = detection.landmarks[detection.chosen]
            try:
                crop, _ = align_face(image, landmarks[i], size, weights)
                crops[i] = np.asarray(crop.convert("RGB"), dtype=np.uint8)
                continue
            except ValueError:  # degenerate landmarks
                pass
        fallback[i] = True
        crops[i] = centre_crop(image, size)
    return crops, found, fallback, landmarks
