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
