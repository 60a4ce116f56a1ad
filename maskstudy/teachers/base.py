"""What every teacher shares: photos + face boxes -> unit-length embeddings, with the kit's MTCNN detection.

A teacher is a pretrained face recogniser used as a reference (and, later, as a distillation target). Each one
implements :meth:`Teacher.embed_boxes` (its own crop of the face inside a given box, then its network); the
base class gives it the same ``embed`` / ``similarity`` interface as :class:`maskstudy.evaluate.FaceRecognizer`
(detection by :class:`maskstudy.faces.detect.FaceDetector`, so every recogniser of the study sees the same faces),
and :meth:`Teacher.embed_files` for photo files whose boxes are already known (the study's cached detections in
``<data_dir>/<dataset>/manifest.csv``, columns :data:`maskstudy.datasets.build.BOX_COLUMNS`).

A photo without a box (no face found, or none given) is embedded inside its :func:`centre_box`, the centre
square of the photo (the same fallback as :func:`maskstudy.faces.align.centre_crop`), and flagged in
:attr:`maskstudy.evaluate.EmbedResult.fallback`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..evaluate import EmbedResult

#: Environment variable naming the folder for downloaded weights and cached teacher embeddings.
CACHE_ENV_VAR = "MASKSTUDY_CACHE"
#: How to install the optional dependencies of the teachers.
TEACHER_EXTRA_HINT = "pip install -e .[teacher]"


class TeacherUnavailableError(ImportError):
    """A teacher's optional dependencies or weights are missing; the message says how to provide them."""


def default_cache_dir() -> Path:
    """``$MASKSTUDY_CACHE`` when set, else ``~/.cache/maskstudy``."""
    value = os.environ.get(CACHE_ENV_VAR)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "maskstudy"


def centre_box(width: int, height: int) -> np.ndarray:
    """The centre square of a ``width`` x ``height`` photo as ``x1, y1, x2, y2``: the fallback face box."""
    side = min(width, height)
    left, top = (width - side) / 2.0, (height - side) / 2.0
    return np.array([left, top, left + side, top + side], dtype=np.float64)


def check_boxes(boxes, n: int) -> np.ndarray:
    """``boxes`` as an (n, 4) float array (``x1, y1, x2, y2``); a row with a NaN (or ``None`` for all) means
    "no box". Raises ``ValueError`` for a wrong shape or a box with ``x2 <= x1`` or ``y2 <= y1``."""
    if boxes is None:
        return np.full((n, 4), np.nan)
    array = np.asarray(boxes, dtype=np.float64)
    if array.shape != (n, 4):
        raise ValueError(f"expected boxes of shape ({n}, 4) (x1, y1, x2, y2), got {array.shape}")
    given = np.isfinite(array).all(axis=1)
    bad = given & ((array[:, 2] <= array[:, 0]) | (array[:, 3] <= array[:, 1]))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"box {first} is empty or inverted: {array[first].tolist()} (need x2 > x1 and y2 > y1)")
    return array


class Teacher:
    """A pretrained recogniser behind the interface of :class:`maskstudy.evaluate.FaceRecognizer`.

    Subclasses set :attr:`name` and :attr:`embedding_size` and implement :meth:`embed_boxes`.
    """

    #: Registry name; part of every cache key of this teacher's embeddings.
    name: str = "teacher"
    #: Length of an embedding.
    embedding_size: int = 0

    def __init__(self, detector=None, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self._detector = detector

    @property
    def settings(self) -> dict:
        """Everything that changes this teacher's embeddings (compared by the embedding cache)."""
        return {"name": self.name, "embedding_size": self.embedding_size}

    def worker_spec(self) -> tuple[str, dict] | None:
        """``(registry name, keyword arguments)`` that rebuild this teacher in a worker process, or ``None`` when it
        must run in this process (see :func:`maskstudy.teachers.cache.teacher_embeddings`'s ``workers``)."""
        return None

    @property
    def detector(self):
        """The kit's MTCNN (:class:`maskstudy.faces.detect.FaceDetector`, on CUDA when present), created on first use
        unless given."""
        if self._detector is None:
            from ..faces.detect import FaceDetector

            self._detector = FaceDetector()
        return self._detector

    def embed_boxes(self, images: Sequence, boxes: np.ndarray) -> np.ndarray:
        """(N, D) float32 unit-length embeddings of the faces inside ``boxes`` (N, 4, all finite) of RGB PIL
        ``images``."""
        raise NotImplementedError

    def _embed_with_fallback(self, images: list, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes = check_boxes(boxes, len(images)).copy()
        fallback = ~np.isfinite(boxes).all(axis=1)
        for i in np.flatnonzero(fallback):
            boxes[i] = centre_box(*images[i].size)
        if not images:
            return np.zeros((0, self.embedding_size), np.float32), fallback
        embeddings = np.asarray(self.embed_boxes(images, boxes), dtype=np.float32)
        if embeddings.shape != (len(images), self.embedding_size):
            raise RuntimeError(f"{self.name}: expected embeddings of shape ({len(images)}, {self.embedding_size}), "
                               f"got {embeddings.shape}")
        return embeddings, fallback

    def embed(self, images, progress: bool = False) -> EmbedResult:
        """Embed raw photos (paths, PIL images or uint8 HxWx3 arrays; a single one is accepted too): MTCNN picks
        the face (:func:`maskstudy.faces.detect.choose_face`), the teacher crops and embeds it. An unreadable path
        raises ``ValueError`` naming the file."""
        from PIL import Image

        from ..evaluate import read_image

        if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        images = list(images)
        parts = [(np.zeros((0, self.embedding_size), np.float32), np.zeros(0, bool), np.zeros(0, bool))]
        for start in _progress(range(0, len(images), self.batch_size), len(images), progress, f"{self.name}"):
            chunk = [read_image(item, start + i) for i, item in enumerate(images[start:start + self.batch_size])]
            detections = self.detector.detect(chunk)
            boxes = np.full((len(chunk), 4), np.nan)
            for i, detection in enumerate(detections):
                if detection.chosen is not None:
                    boxes[i] = detection.boxes[detection.chosen]
            embeddings, fallback = self._embed_with_fallback(chunk, boxes)
            parts.append((embeddings, ~fallback, fallback))
        return EmbedResult(*(np.concatenate(column) for column in zip(*parts)))

    def embed_files(self, paths: Sequence[str | os.PathLike], boxes=None, progress: bool = False) -> EmbedResult:
        """Embed photo files inside precomputed face ``boxes`` ((N, 4) ``x1, y1, x2, y2`` in the photo's
        pixels, e.g. the manifest's :data:`maskstudy.datasets.build.BOX_COLUMNS`; a row with NaN, or ``boxes=None``,
        uses :func:`centre_box`). ``face_found`` says a box was given, ``fallback`` the opposite. Photos are
        read with :func:`maskstudy.faces.detect.load_image` (EXIF orientation, colour conversions); an unreadable
        file raises ``ValueError`` naming it."""
        from ..faces.detect import load_image

        paths = [Path(p) for p in paths]
        boxes = check_boxes(boxes, len(paths))
        parts = [(np.zeros((0, self.embedding_size), np.float32), np.zeros(0, bool), np.zeros(0, bool))]
        for start in _progress(range(0, len(paths), self.batch_size), len(paths), progress, f"{self.name}"):
            chunk = []
            for path in paths[start:start + self.batch_size]:
                try:
                    loaded = load_image(path)
                except OSError as error:
                    raise ValueError(f"cannot read image {path}: {type(error).__name__}: {error}") from error
                if loaded.image is None:
                    raise ValueError(f"cannot read image {path}: {loaded.status}: {loaded.reason}")
                chunk.append(loaded.image)
            embeddings, fallback = self._embed_with_fallback(chunk, boxes[start:start + len(chunk)])
            parts.append((embeddings, ~fallback, fallback))
        return EmbedResult(*(np.concatenate(column) for column in zip(*parts)))

    def similarity(self, a, b) -> float:
        """Cosine similarity of two photos' unit-length embeddings; warns (``UserWarning``) when a photo had no
        usable face and its centre square was compared instead."""
        from ..evaluate.recognizer import pair_similarity

        return pair_similarity(self.embed([a, b]), (a, b), "centre square")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, embedding_size={self.embedding_size})"


def _progress(starts: range, total: int, enabled: bool, desc: str):
    """Yield the batch starts of ``starts``, with a tqdm bar counting photos when ``enabled``."""
    if not enabled:
        yield from starts
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="photo", leave=False) as bar:
        for start in starts:
            yield start
            bar.update(min(starts.step, total - start))


def normalise_rows(array: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); an all-zero row stays zero."""
    array = np.asarray(array, dtype=np.float64)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return (array / np.where(norms > 0, norms, 1.0)).astype(np.float32)
