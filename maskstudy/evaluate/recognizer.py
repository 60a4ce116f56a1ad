"""Raw photos -> identity vectors with any network of the study: :class:`FaceRecognizer`.

Per photo: load, detect with MTCNN, align the 5 landmarks onto the ArcFace 112x112 template, encode as the study
evaluates that kind of network (:mod:`maskstudy.models.model_file`: from-scratch networks with flip fusion,
:func:`~maskstudy.evaluate.embed.embed_crops`; dlib's network and its fine-tunes without flip; the mask-aware
recogniser into its own vectors), from any model file of the study or the pretrained network by name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..faces.align import CROP_SIZE
from ..faces.preprocess import load_crops
from ..models.model_file import COSINE, LoadedModel, load_model
from .embed import EVAL_CHANNELS_LAST, embed_crops, forward_chunk, progress_bar


@dataclass
class EmbedResult:
    """Embeddings of raw photos: ``embeddings`` (N, D) float32 unit rows; ``face_found`` (N,) whether MTCNN
    found a face above the detector's probability threshold; ``fallback`` (N,) whether the crop is the
    centre-square fallback instead of a landmark alignment."""

    embeddings: np.ndarray
    face_found: np.ndarray
    fallback: np.ndarray


def read_image(item, index: int):
    """Path / PIL image / uint8 HxWx3 array -> RGB PIL image; unreadable files raise ValueError."""
    from PIL import Image

    from ..faces.detect import load_image

    if isinstance(item, (str, os.PathLike)):
        try:
            loaded = load_image(item)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
            raise ValueError(f"cannot read image {os.fspath(item)}: {type(error).__name__}: {error}") from error
        if loaded.image is None:
            raise ValueError(f"cannot read image {os.fspath(item)}: {loaded.status}: {loaded.reason}")
        return loaded.image
    if isinstance(item, Image.Image):
        return _large_enough(item.convert("RGB"), index)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ValueError(f"image {index}: expected a uint8 HxWx3 RGB array, got {item.dtype} {item.shape}")
        return _large_enough(Image.fromarray(item, "RGB"), index)
    raise TypeError(f"image {index}: expected a path, PIL image or uint8 array, got {type(item).__name__}")


def _large_enough(image, index: int):
    from ..faces.detect import MIN_IMAGE_SIDE

    if min(image.size) < MIN_IMAGE_SIDE:
        raise ValueError(f"image {index} is too small: {image.size[0]}x{image.size[1]} px "
                         f"(at least {MIN_IMAGE_SIDE} px per side)")
    return image


class FaceRecognizer:
    """Raw photos -> identity embeddings with a trained backbone.

    Pipeline per photo: load (:func:`maskstudy.faces.detect.load_image` for paths: EXIF orientation, colour
    conversions), detect with MTCNN (:class:`maskstudy.faces.detect.FaceDetector`, batched, created on first use
    unless given), align the chosen face's 5 landmarks onto the ArcFace 112x112 template
    (:func:`maskstudy.faces.align.align_face`), embed with flip fusion (:func:`embed_crops`). A photo without a
    usable face is centre-cropped to a square and resized to 112 (the crop of a pre-aligned photo) and
    flagged in :attr:`EmbedResult.fallback`.
    """

    def __init__(self, model: nn.Module, input_size: int, device: torch.device | str | None = None,
                 detector=None, batch_size: int = 64, flip: bool = True, config: dict | None = None,
                 loaded: LoadedModel | None = None):
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        self.model = model.to(self.device).eval()
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)
        self.flip = bool(flip)
        self.config = dict(config or {})
        self._detector = detector
        #: the model file's kind, threshold and encoding (None: a from-scratch backbone given directly)
        self.loaded = loaded
        #: how two vectors are compared (``pairs(a, b)``, ``matrix(a, b)``): cosine, or the model's own
        self.scorer = loaded.similarity if loaded is not None else COSINE

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: torch.device | str | None = None, detector=None,
                        **kw) -> FaceRecognizer:
        """Load any model file of the study, or ``"pretrained"`` for dlib's network as it is
        (:func:`maskstudy.models.model_file.load_model`; ``weights_only=True``; a damaged or foreign file raises
        :class:`~maskstudy.models.checkpoint.CheckpointError` naming it)."""
        loaded = load_model(path)
        return cls(loaded.model, loaded.input_size, device=device, detector=detector, flip=loaded.flip,
                   config=loaded.config, loaded=loaded, **kw)

    @property
    def detector(self):
        if self._detector is None:
            from ..faces.detect import FaceDetector

            self._detector = FaceDetector(device=str(self.device))
        return self._detector

    def align(self, images: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Aligned 112x112 crops (N, 112, 112, 3) uint8 of raw photos, with ``face_found`` and ``fallback``
        (see :func:`maskstudy.faces.align.detect_and_align`)."""
        from ..faces.align import detect_and_align

        pil = [read_image(item, i) for i, item in enumerate(images)]
        crops, found, fallback, _ = detect_and_align(pil, self.detector, CROP_SIZE)
        return crops, found, fallback

    def embed_aligned(self, crops: np.ndarray | Sequence[str | os.PathLike], progress: bool = False) -> np.ndarray:
        """Vectors of crops that are already aligned (array or crop files): :func:`embed_crops` for a from-scratch
        network, the model file's own encoding otherwise (:meth:`~maskstudy.models.model_file.LoadedModel.encode`)."""
        if self.loaded is None or self.loaded.kind == "scratch":
            return embed_crops(self.model, crops, self.input_size, batch_size=self.batch_size, device=self.device,
                               flip=self.flip, progress=progress)
        if not isinstance(crops, np.ndarray):
            crops = load_crops(list(crops))
        return self.loaded.encode(crops, self.batch_size, self.device, chunk=forward_chunk(self.device, self.input_size),
                                  channels_last=EVAL_CHANNELS_LAST.get(self.device.type, False))

    def mask_probability(self, vectors: np.ndarray) -> np.ndarray | None:
        """Per vector, the probability that a mask was found (mask-aware recogniser only; else ``None``)."""
        return None if self.loaded is None else self.loaded.mask_probability(vectors)

    def embed(self, images, progress: bool = False) -> EmbedResult:
        """Embed raw photos (paths, PIL images or uint8 HxWx3 arrays; a single one is accepted too).

        Photos are read, detected, aligned and embedded ``batch_size`` at a time. An unreadable path raises
        ``ValueError`` naming the file.
        """
        from PIL import Image

        if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        images = list(images)
        dim = int(getattr(self.model, "embedding_size", 0))
        chunks = range(0, len(images), self.batch_size)
        embeddings, found, fallback = [np.zeros((0, dim), np.float32)], [np.zeros(0, bool)], [np.zeros(0, bool)]
        for start in progress_bar(chunks, len(chunks), progress, "photos"):
            crops, f, b = self.align(images[start:start + self.batch_size])
            embeddings.append(self.embed_aligned(crops))
            found.append(f)
            fallback.append(b)
        return EmbedResult(np.concatenate(embeddings).astype(np.float32, copy=False), np.concatenate(found),
                           np.concatenate(fallback))

    def similarity(self, a, b) -> float:
        """Similarity of two photos (the cosine of their embeddings, or the model's own score); warns
        (``UserWarning``) when a photo had no usable face and its centre crop was compared instead (use
        :meth:`embed` to get the flags)."""
        return pair_similarity(self.embed([a, b]), (a, b), "centre crop", self.scorer)


def pair_similarity(result: EmbedResult, photos: tuple, stand_in: str, scorer=COSINE) -> float:
    """Similarity of the two vectors of ``result`` (``scorer.pairs``; default: the cosine of unit vectors); warns
    (``UserWarning``, naming the photo) for each photo that had no usable face, whose ``stand_in`` (e.g. its centre
    crop) was compared instead."""
    import warnings

    for label, item, fallback in zip("ab", photos, result.fallback):
        if fallback:
            shown = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"photo {label}"
            warnings.warn(f"no face found in {shown}: its {stand_in} was compared instead", UserWarning, stacklevel=3)
    return float(scorer.pairs(result.embeddings[:1], result.embeddings[1:2])[0])
