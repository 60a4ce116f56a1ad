"""Face detection with MTCNN (Zhang et al., IEEE SPL 2016) as packaged by facenet-pytorch.

Images are read defensively (:func:`load_image`): every way a photo can be bad becomes a recorded status and
reason instead of an exception deep inside a batch. Detection runs in batches, on CUDA when present.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

#: Statuses a source image can end with; ``ok`` is the only one that yields a detected face.
STATUSES = {
    "ok": "face detected, aligned and masked",
    "unreadable": "the file is not an image PIL can open",
    "truncated": "the image data ends early",
    "too_small": "the image is smaller than the detector's minimum face size",
    "no_face": "MTCNN found no face",
    "low_prob": "the best face is below the probability threshold",
    "too_large": "the image has more pixels than a decompression-bomb check allows",
    "bad_name": "the name is unsafe (.., absolute, outside the data folder) or not valid UTF-8",
    "skipped": "not a photo: hidden file, other extension, user-supplied *_mask.* twin, sub-folder",
    "name_collision": "another source image already maps to the same aligned crop name",
}

MIN_IMAGE_SIDE = 24
#: Photos with a longer side are downscaled for detection (landmarks are mapped back), so that one huge photo
#: does not pad a whole batch to its size.
MAX_DETECT_SIDE = 1600


@dataclass
class LoadedImage:
    """An RGB image or the reason it could not be used; ``notes`` lists conversions that were applied."""

    image: Image.Image | None
    status: str = "ok"
    reason: str = ""
    notes: list[str] = field(default_factory=list)


def file_digest(path: str | Path) -> str:
    """SHA-1 of the file's bytes: the cache key that tells a changed image from a known one."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        notes.append(f"{'16-bit' if mode.startswith('I;16') else mode}->8-bit")
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        notes.append("alpha composited on white")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    notes.append({"CMYK": "CMYK->RGB", "L": "grayscale->RGB", "1": "bilevel->RGB", "P": "palette->RGB"}.get(mode, f"{mode}->RGB"))
    return image.convert("RGB")


def load_image(path: str | Path) -> LoadedImage:
    """Open ``path`` as an upright RGB image, honouring EXIF orientation.

    Never raises for bad image data: unreadable and truncated files come back with ``image=None`` and a status;
    CMYK, grayscale, 16-bit, palette and alpha images are converted and the conversion is noted.
    """
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as handle:
                handle.load()
                image = handle.copy()
                # exif_transpose needs the EXIF block that copy() keeps in .info / getexif()
                exif = handle.getexif()
    except FileNotFoundError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return LoadedImage(None, "too_large", f"{type(error).__name__}: {error}")
    except UnidentifiedImageError as error:
        return LoadedImage(None, "unreadable", f"{type(error).__name__}: {error}")
    except (OSError, SyntaxError, ValueError) as error:
        message = str(error)
        status = "truncated" if "truncated" in message or "broken data stream" in message else "unreadable"
        return LoadedImage(None, status, f"{type(error).__name__}: {message}")
    notes: list[str] = []
    orientation = exif.get(0x0112, 1) if exif else 1
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image) or image
        notes.append(f"EXIF orientation {orientation} applied")
    image = _to_rgb(image, notes)
    if min(image.size) < MIN_IMAGE_SIDE:
        return LoadedImage(None, "too_small", f"image is {image.size[0]}x{image.size[1]} px", notes)
    return LoadedImage(image, notes=notes)


@dataclass
class Detection:
    """MTCNN output for one image: all faces, and which one the study uses."""

    boxes: np.ndarray  # (F, 4) x1, y1, x2, y2
    probs: np.ndarray  # (F,)
    landmarks: np.ndarray  # (F, 5, 2)
    chosen: int | None  # index into the faces, None when no face qualifies

    @property
    def n_faces(self) -> int:
        return len(self.probs)


def choose_face(boxes: np.ndarray, probs: np.ndarray, image_size: tuple[int, int], min_prob: float) -> int | None:
    """Index of the face to use: among faces at or above ``min_prob``, the one whose box centre is nearest the
    image centre (ties go to the more probable face); ``None`` when no face reaches ``min_prob``."""
    if len(probs) == 0:
        return None
    width, height = image_size
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    distance = np.hypot(centres[:, 0] - width / 2, centres[:, 1] - height / 2) / np.hypot(width, height)
    confident = np.flatnonzero(probs >= min_prob)
    if len(confident) == 0:
        return None
    order = np.lexsort((-probs[confident], np.round(distance[confident], 3)))
    return int(confident[order[0]])


class FaceDetector:
    """Batched MTCNN: P-Net, R-Net and O-Net give boxes, probabilities and 5 landmarks per face.

    The weights ship inside the facenet-pytorch wheel, so nothing is downloaded. The images of a batch are
    detected in groups of equal size (no padding); a photo whose longer side exceeds ``max_side`` is first
    downscaled, and its boxes and landmarks are scaled back.
    """

    def __init__(self, device: str | None = None, min_face_size: int = 20, min_prob: float = 0.9,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), max_side: int = MAX_DETECT_SIDE):
        import torch
        from facenet_pytorch import MTCNN

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.min_prob = float(min_prob)
        self.max_side = int(max_side)
        self.settings = {"min_face_size": int(min_face_size), "thresholds": [float(t) for t in thresholds],
                         "min_prob": self.min_prob, "detector": "facenet-pytorch MTCNN"}
        self.mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, thresholds=list(thresholds),
                           device=self.device, select_largest=False, post_process=False)

    def detect(self, images: Sequence[Image.Image]) -> list[Detection]:
        """Detect faces in a batch of RGB images."""
        if not images:
            return []
        scales = [min(1.0, self.max_side / max(image.size)) for image in images]
        scaled = [image if scale == 1.0 else
                  image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))),
                               Image.Resampling.BILINEAR)
                  for image, scale in zip(images, scales)]
        # one MTCNN call per image size: nothing is padded, so one large photo costs only its own pixels
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(scaled):
            by_size.setdefault(image.size, []).append(index)
        boxes, probs, landmarks = [None] * len(images), [None] * len(images), [None] * len(images)
        for indices in by_size.values():
            batch = np.stack([np.asarray(scaled[i]) for i in indices])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # facenet-pytorch warns about deprecated numpy/torch calls
                found = self.mtcnn.detect(batch, landmarks=True)
            for k, i in enumerate(indices):
                boxes[i], probs[i], landmarks[i] = found[0][k], found[1][k], found[2][k]
        results = []
        for image, scale, b, p, marks in zip(images, scales, boxes, probs, landmarks):
            if b is None:
                b, p, marks = np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
            b, p, marks = np.asarray(b, float) / scale, np.asarray(p, float), np.asarray(marks, float) / scale
            results.append(Detection(b, p, marks, choose_face(b, p, image.size, self.min_prob)))
        return results
