"""Shared fixtures: the real photos in ../shared/data, found through MASKSTUDY_LFW / MASKSTUDY_CELEBA.

Where the photos are absent (a user's fresh clone) the tests that need them skip with the reason; under CI
(``CI=true``) a missing data folder is a failure, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    from maskstudy.detect import FaceDetector

    return FaceDetector(device="cpu")


class CountingDetector:
    """Wraps the real MTCNN and counts how many images it was asked to look at (a cache test's witness)."""

    def __init__(self, detector):
        self.detector, self.seen = detector, 0
        self.settings = getattr(detector, "settings", None)  # what caches of detections are keyed on

    def detect(self, images):
        self.seen += len(images)
        return self.detector.detect(images)


def copy_lfw_photos(lfw_root: Path, root: Path, names=("Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody"),
                    per_person: int = 2) -> Path:
    """Copy a few real LFW photos into ``root/<name>/`` (tests never touch the shared originals)."""
    import shutil

    for name in names:
        for source in sorted((lfw_root / name).glob("*.jpg"))[:per_person]:
            (root / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, root / name / source.name)
    return root
