"""Shared fixtures: the real photos in ../shared/data, found through MASKSTUDY_LFW / MASKSTUDY_CELEBA.

Where the photos are absent (a user's fresh clone) the tests that need them skip with the reason; under CI
(``CI=true``) a missing data folder is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]


def real_data_dir(env_var: str, default_name: str) -> Path:
    path = Path(os.environ.get(env_var) or REPO.parent / "shared" / "data" / default_name)
    if not path.is_dir():
        message = f"real data folder {path} is absent (set {env_var} to its location)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI=true requires the real data")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    return real_data_dir("MASKSTUDY_LFW", "lfw")


@pytest.fixture(scope="session")
def celeba_root() -> Path:
    return real_data_dir("MASKSTUDY_CELEBA", "celeba")


@pytest.fixture(scope="session")
def detector():
    """One MTCNN for the whole session (its weights ship inside facenet-pytorch)."""
    from maskstudy.faces.detect import FaceDetector

    return FaceDetector(device="cpu")


class CountingDetector:
    """Wraps the real MTCNN and counts how many images it was asked to look at (a cache test's witness)."""

    def __init__(self, detector):
        self.detector, self.seen = detector, 0
        self.settings = getattr(detector, "settings", None)  # what caches of detections are keyed on

    def detect(self, images):
        self.seen += len(images)
        return self.detector.detect(images)


class TemplateDetector:
    """A stand-in for MTCNN, without weights and fast: from a digest of the pixels, a quarter of the photos hold no
    face, a quarter a face below the probability threshold, the rest one face whose landmarks are the ArcFace
    template scaled to the photo and moved by a few pixels; counts the photos it is shown (``seen``)."""

    settings = {"detector": "template"}

    def __init__(self):
        self.seen = 0

    def detect(self, images):
        import hashlib

        from maskstudy.faces.align import ARCFACE_TEMPLATE_112
        from maskstudy.faces.detect import Detection

        self.seen += len(images)
        found = []
        for image in images:
            digest = hashlib.sha1(image.tobytes()).digest()
            if digest[0] % 4 == 0:
                found.append(Detection(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)), None))
                continue
            width, height = image.size
            marks = ARCFACE_TEMPLATE_112 * [width / 112, height / 112] + (digest[1] % 5 - 2, digest[2] % 5 - 2)
            box = np.array([[marks[:, 0].min() - 20, marks[:, 1].min() - 30, marks[:, 0].max() + 20,
                             marks[:, 1].max() + 15]])
            prob = 0.5 if digest[0] % 4 == 1 else 0.99
            found.append(Detection(box, np.array([prob]), marks[None], 0 if prob >= 0.9 else None))
        return found


def copy_lfw_photos(lfw_root: Path, root: Path, names=("Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody"),
                    per_person: int = 2) -> Path:
    """Copy a few real LFW photos into ``root/<name>/`` (tests never touch the shared originals)."""
    import shutil

    for name in names:
        for source in sorted((lfw_root / name).glob("*.jpg"))[:per_person]:
            (root / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / name / source.name)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread, above all on a shared, busy machine (``pytestmark`` of a module)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_synthetic_faces(root: Path, n_ids: int = 6, per_id: int = 4, seed: int = 0) -> Path:
    """Identities = a colour scheme plus a shape; images vary by noise and jitter; masked twin = grey lower half."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_ids):
        base = rng.integers(40, 215, size=3)
        accent = tuple(int(c) for c in rng.integers(0, 256, size=3))
        for j in range(per_id):
            pixels = np.clip(base + rng.normal(0, 25, size=(112, 112, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            draw = ImageDraw.Draw(image)
            dx, dy = rng.integers(-6, 7, size=2)
            box = (30 + dx, 20 + dy, 82 + dx, 72 + dy)
            if i % 3 == 0:
                draw.ellipse(box, fill=accent)
            elif i % 3 == 1:
                draw.rectangle(box, fill=accent)
            else:
                draw.polygon([(56 + dx, 15 + dy), (25 + dx, 75 + dy), (87 + dx, 75 + dy)], fill=accent)
            draw.line((0, 10 * (i + 1), 111, 111 - 10 * (i + 1)), fill=accent[::-1], width=4)
            rel = f"id{i}/img{j}.jpg"
            masked_rel = f"id{i}/img{j}_mask.jpg"
            out = root / "synth" / "aligned" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            image.save(out, quality=90)
            masked = image.copy()
            ImageDraw.Draw(masked).rectangle((0, 60, 111, 111), fill=(128, 128, 128))
            masked.save(root / "synth" / "aligned" / masked_rel, quality=90)
            rows.append({"dataset": "synth", "identity": f"id{i}", "image": rel, "aligned": rel,
                         "masked": masked_rel, "mask_style": "grey"})
    csv = root / "train_clean.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


@pytest.fixture(scope="module")
def synthetic_faces(tmp_path_factory) -> tuple[Path, Path]:
    """``(train_clean.csv, data folder)`` of :func:`make_synthetic_faces`, once per module."""
    root = tmp_path_factory.mktemp("faces")
    return make_synthetic_faces(root), root


@pytest.fixture(scope="module")
def synthetic_photos(tmp_path_factory) -> Path:
    """Identity folders of 24 synthetic photos beside their ``*_mask.jpg`` twins (which a data build records as
    skipped): a source folder for builds with :class:`TemplateDetector`."""
    root = tmp_path_factory.mktemp("photos")
    make_synthetic_faces(root)
    return root / "synth" / "aligned"


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    """Serves a folder's files without logging each request."""

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def local_file_server(folder: Path, handler: type = QuietFiles) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving ``folder`` (download features are tested against it, never the
    internet); yields its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
