"""FaceNet (Inception-ResNet-v1, VGGFace2) as a teacher: 512-d embeddings; weights downloaded once, verified.

The network is facenet-pytorch's ``InceptionResnetV1`` (Szegedy et al., "Inception-v4, Inception-ResNet and the
Impact of Residual Connections on Learning", AAAI 2017) with the ``20180402-114759`` weights of D. Sandberg's
facenet, trained on VGGFace2 (Cao et al., FG 2018) with a softmax + centre loss in the manner of FaceNet
(Schroff et al., CVPR 2015); reported LFW accuracy 99.65%.

The architecture is part of facenet-pytorch (a core dependency) but its weights are not: facenet-pytorch would
fetch them on construction, unchecked. Here :func:`fetch_facenet_weights` downloads them once with
:mod:`maskstudy.datasets.download`'s pooch-based downloader into ``<cache>/weights/`` (``$MASKSTUDY_CACHE``, else
``~/.cache/maskstudy``), verifies the SHA-256 and moves the file into place only when it matches (no partial
file ever has the final name), and loads them with ``torch.load(weights_only=True)``. Without network access and
without the file, the teacher raises :class:`~maskstudy.teachers.base.TeacherUnavailableError` telling where to
put it.

Input: the face box with facenet-pytorch's default margin (0) cut from the photo and resized to 160x160
(``facenet_pytorch.models.utils.detect_face.extract_face``, as its MTCNN does), standardised as
``(x - 127.5) / 128`` (``fixed_image_standardization``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..datasets.download import DownloadError, RemoteFile
from .base import Teacher, TeacherUnavailableError, default_cache_dir

#: facenet-pytorch's release of the VGGFace2 weights (111,898,327 bytes); the SHA-256 is the one several
#: independent projects pin for this file.
FACENET_VGGFACE2_WEIGHTS = RemoteFile(
    "20180402-114759-vggface2.pt",
    "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    "281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b",
)
#: Input side and margin (in output pixels) of facenet-pytorch's MTCNN crops.
FACENET_INPUT_SIZE = 160
FACENET_MARGIN = 0


def weights_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache_dir>/weights``; ``cache_dir`` defaults to :func:`~maskstudy.teachers.base.default_cache_dir`."""
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / "weights"


def _manual_instructions(remote: RemoteFile, folder: Path, base_url: str | None) -> str:
    return (f"To place the file by hand: download {remote.resolve_url(base_url)}, check that its SHA-256 is "
            f"{remote.sha256}, and save it as {folder / remote.filename} (or set $MASKSTUDY_CACHE to a folder "
            f"whose weights/ sub-folder holds it).")


def fetch_facenet_weights(
    cache_dir: str | os.PathLike | None = None,
    remote: RemoteFile = FACENET_VGGFACE2_WEIGHTS,
    base_url: str | None = None,
    allow_download: bool = True,
    progress: bool = True,
) -> Path:
    """Path of the verified weights file, downloading it on first use.

    A file already in place is returned when its SHA-256 matches (a mismatching one is downloaded again, or
    refused when ``allow_download`` is false).
    ``base_url`` fetches ``<base_url>/<last URL component>`` instead (a mirror or a test server).

    Raises:
        TeacherUnavailableError: the file is absent and ``allow_download`` is false.
        DownloadError: HTTP error, network failure or checksum mismatch (the download is deleted).
    """
    import pooch

    from ..datasets.download import DOWNLOAD_TIMEOUT_S, download_verified

    folder = weights_dir(cache_dir)
    target = folder / remote.filename
    manual = _manual_instructions(remote, folder, base_url)
    if not allow_download:
        if not target.is_file():
            raise TeacherUnavailableError(f"the weights {remote.filename} are not in {folder} and downloading is "
                                          f"off. {manual}")
        got = pooch.file_hash(str(target), alg="sha256")
        if got != remote.sha256:
            raise TeacherUnavailableError(f"{target} has SHA-256 {got}, expected {remote.sha256}, and downloading "
                                          f"is off. {manual}")
        return target
    folder.mkdir(parents=True, exist_ok=True)
    downloader = pooch.HTTPDownloader(progressbar=progress, timeout=DOWNLOAD_TIMEOUT_S)
    return download_verified(remote, folder, base_url, downloader, manual)


def load_facenet(weights: str | os.PathLike):
    """facenet-pytorch's ``InceptionResnetV1`` (eval mode) with the state dict in ``weights``; the classifier of
    the training identities (``logits.*``) is dropped."""
    import torch
    from facenet_pytorch import InceptionResnetV1

    state = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{weights}: expected a state dict, got {type(state).__name__}")
    state = {key: value for key, value in state.items() if not key.startswith("logits.")}
    model = InceptionResnetV1(pretrained=None, classify=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{weights}: not InceptionResnetV1 weights: {error}") from error
    return model.eval()


class FacenetTeacher(Teacher):
    """facenet-pytorch's InceptionResnetV1 with VGGFace2 weights (512-d), on 160x160 crops of the face boxes.

    ``weights``: a weights file to use as it is (no download, no checksum); otherwise
    :func:`fetch_facenet_weights` provides the verified file (``cache_dir``, ``base_url``, ``allow_download``,
    ``progress`` are passed on).
    """

    name = "facenet_vggface2"
    embedding_size = 512

    def __init__(self, detector=None, batch_size: int = 32, device: str | None = None,
                 weights: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 base_url: str | None = None, allow_download: bool = True, progress: bool = True):
        import torch

        super().__init__(detector=detector, batch_size=batch_size)
        if weights is None:
            try:
                weights = fetch_facenet_weights(cache_dir, base_url=base_url, allow_download=allow_download,
                                                progress=progress)
            except DownloadError as error:
                raise TeacherUnavailableError(f"the facenet_vggface2 teacher could not get its weights: {error}") \
                    from error
        self.weights = Path(weights)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_facenet(self.weights).to(self.device)

    @property
    def settings(self) -> dict:
        return {**super().settings, "input": [FACENET_INPUT_SIZE, FACENET_MARGIN], "weights": self.weights.name}

    def crops(self, images: Sequence, boxes: np.ndarray):
        """(N, 3, 160, 160) float tensor of the face crops, pixel values 0..255 (before standardisation)."""
        import torch
        from facenet_pytorch.models.utils.detect_face import extract_face

        return torch.stack([extract_face(image.convert("RGB"), [float(v) for v in box], FACENET_INPUT_SIZE,
                                         FACENET_MARGIN) for image, box in zip(images, boxes)])

    def embed_boxes(self, images: Sequence, boxes: np.ndarray) -> np.ndarray:
        import torch
        from facenet_pytorch import fixed_image_standardization

        x = fixed_image_standardization(self.crops(images, boxes)).to(self.device)
        with torch.inference_mode():
            out = torch.nn.functional.normalize(self.model(x).float(), dim=1)
        return out.cpu().numpy().astype(np.float32)
