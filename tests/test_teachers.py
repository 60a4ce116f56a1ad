"""Teachers (maskstudy.teachers): registry, the optional dlib encoder on real LFW photos, the embedding cache, and
the FaceNet weights download against a local HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskstudy.datasets.build import BOX_COLUMNS
from maskstudy.datasets.download import DownloadError, RemoteFile
from maskstudy.datasets.protocol import read_lfw_pairs
from maskstudy.faces.detect import file_digest
from maskstudy.models.registry import UnknownNameError
from maskstudy.teachers import (
    Teacher,
    TeacherUnavailableError,
    available_teachers,
    build_teacher,
    manifest_teacher_embeddings,
    teacher_embeddings,
)
from maskstudy.teachers.base import centre_box, check_boxes, default_cache_dir
from maskstudy.teachers.cache import cache_file
from tests.conftest import local_file_server

# --------------------------------------------------------------------------------------------
# Registry and the "extra absent" path
# --------------------------------------------------------------------------------------------


def test_registry_names_and_unknown_name():
    assert available_teachers() == ["dlib_resnet", "facenet_vggface2"]
    with pytest.raises(UnknownNameError) as info:
        build_teacher("dlib")
    message = str(info.value)
    assert "'dlib'" in message and "dlib_resnet" in message and "facenet_vggface2" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_dlib_absent_says_how_to_enable_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # "import dlib" now raises ImportError
    with pytest.raises(TeacherUnavailableError, match=r"pip install -e \.\[teacher\]") as info:
        build_teacher("dlib_resnet")
    assert isinstance(info.value, ImportError) and "dlib" in str(info.value)


def test_model_package_absent_says_how_to_enable_it(monkeypatch):
    from maskstudy.teachers.dlib_resnet import RECOGNITION_MODEL, dlib_model_file

    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    with pytest.raises(TeacherUnavailableError, match=r"face_recognition_models.*pip install -e \.\[teacher\]"):
        dlib_model_file(RECOGNITION_MODEL)


def test_model_files_found_without_importing_the_package():
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("the optional 'teacher' extra is not installed (pip install -e .[teacher])")
    from maskstudy.teachers.dlib_resnet import RECOGNITION_MODEL, SHAPE_MODEL, dlib_model_file

    sys.modules.pop("face_recognition_models", None)
    for name in (RECOGNITION_MODEL, SHAPE_MODEL):
        path = dlib_model_file(name)
        assert path.name == name and path.stat().st_size > 1_000_000
    assert "face_recognition_models" not in sys.modules  # its __init__ needs pkg_resources: never run


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MASKSTUDY_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MASKSTUDY_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "maskstudy"


def test_boxes_are_checked():
    assert np.isnan(check_boxes(None, 2)).all() and check_boxes(None, 2).shape == (2, 4)
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        check_boxes(np.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="box 1 is empty or inverted"):
        check_boxes([[0, 0, 10, 10], [5, 5, 5, 9]], 2)
    assert centre_box(250, 200).tolist() == [25.0, 0.0, 225.0, 200.0]


# --------------------------------------------------------------------------------------------
# dlib's ResNet encoder on real LFW photos (needs the optional extra)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlib_teacher(detector):
    try:
        return build_teacher("dlib_resnet", detector=detector)
    except TeacherUnavailableError as error:  # the optional extra is absent: the message says how to install it
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def lfw_pairs(lfw_root) -> pd.DataFrame:
    """The first 4 matched and 4 mismatched pairs of fold 1 of pairs.txt."""
    pairs = read_lfw_pairs(lfw_root / "pairs.txt")
    fold = pairs[pairs["fold"] == 1]
    return pd.concat([fold[fold["label"] == 1].head(4), fold[fold["label"] == 0].head(4)])


@pytest.mark.realdata
def test_dlib_separates_lfw_pairs(dlib_teacher, lfw_root, lfw_pairs):
    images = sorted(set(lfw_pairs["image_a"]) | set(lfw_pairs["image_b"]))
    result = dlib_teacher.embed([lfw_root / image for image in images])
    assert result.embeddings.shape == (len(images), 128) and result.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    assert result.face_found.all() and not result.fallback.any()
    embedding = dict(zip(images, result.embeddings.astype(np.float64)))
    scores = np.array([embedding[a] @ embedding[b] for a, b in zip(lfw_pairs["image_a"], lfw_pairs["image_b"])])
    same, different = scores[lfw_pairs["label"].to_numpy() == 1], scores[lfw_pairs["label"].to_numpy() == 0]
    assert same.min() > different.max(), (same, different)

    # embed_files with the detector's boxes (as a manifest holds them) gives the very same embeddings
    paths = [lfw_root / image for image in images[:3]]
    detections = dlib_teacher.detector.detect([Image.open(p).convert("RGB") for p in paths])
    boxes = np.stack([d.boxes[d.chosen] for d in detections])
    from_boxes = dlib_teacher.embed_files(paths, boxes)
    np.testing.assert_allclose(from_boxes.embeddings, result.embeddings[:3], atol=1e-6)
    assert from_boxes.face_found.all() and not from_boxes.fallback.any()

    chips = dlib_teacher.chips([Image.open(paths[0])], boxes[:1])
    assert chips.shape == (1, 150, 150, 3) and chips.dtype == np.uint8


@pytest.mark.realdata
def test_dlib_worker_processes_give_the_same_embeddings(dlib_teacher, lfw_root, lfw_pairs, tmp_path):
    from maskstudy.teachers.cache import teacher_embeddings

    dlib_teacher.batch_size, batch_size = 2, dlib_teacher.batch_size
    try:
        paths = [lfw_root / image for image in sorted(set(lfw_pairs["image_a"]))[:5]]
        boxes = np.array([[60.0, 60.0, 190.0, 190.0]] * len(paths))
        alone = teacher_embeddings(dlib_teacher, paths, tmp_path / "one", boxes=boxes, progress=False, workers=1)
        shared = teacher_embeddings(dlib_teacher, paths, tmp_path / "two", boxes=boxes, progress=False, workers=2)
    finally:
        dlib_teacher.batch_size = batch_size
    assert alone.computed == shared.computed == len(paths)
    np.testing.assert_allclose(shared.embeddings, alone.embeddings, atol=1e-6)


@pytest.mark.realdata
def test_dlib_fallbacks_are_recorded(dlib_teacher, lfw_root, lfw_pairs, tmp_path):
    photo = lfw_root / lfw_pairs["image_a"].iloc[0]
    no_box = dlib_teacher.embed_files([photo, photo], np.array([[np.nan] * 4, [60.0, 60.0, 190.0, 190.0]]))
    assert no_box.fallback.tolist() == [True, False] and no_box.face_found.tolist() == [False, True]
    np.testing.assert_allclose(np.linalg.norm(no_box.embeddings, axis=1), 1.0, atol=1e-5)

    blank = Image.new("RGB", (120, 120), (128, 128, 128))
    with pytest.warns(UserWarning, match="no face found in photo b"):
        dlib_teacher.similarity(photo, blank)

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        dlib_teacher.embed_files([broken])


# --------------------------------------------------------------------------------------------
# Embedding cache (a counting stand-in teacher: no optional packages needed)
# --------------------------------------------------------------------------------------------


class CountingTeacher(Teacher):
    """Embeds a face box by the mean colour inside it and the box itself; counts the photos it embedded."""

    name = "counting"
    embedding_size = 8

    def __init__(self, fail_after: int | None = None):
        super().__init__(batch_size=4)
        self.embedded: list[tuple[int, int]] = []
        self.fail_after = fail_after

    def embed_boxes(self, images, boxes):
        if self.fail_after is not None and len(self.embedded) + len(images) > self.fail_after:
            raise KeyboardInterrupt("interrupted")
        rows = []
        for image, box in zip(images, boxes):
            self.embedded.append(image.size)
            mean = np.asarray(image.crop(tuple(box)), dtype=np.float64).reshape(-1, 3).mean(0)
            rows.append(np.r_[mean, box, 1.0])
        rows = np.array(rows)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


class OtherCountingTeacher(CountingTeacher):
    name = "counting_other"


def _photos(folder: Path, n: int = 5) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"p{i}.png"
        Image.new("RGB", (40 + i, 40), (20 * i, 100, 200 - 10 * i)).save(path)
        paths.append(path)
    return paths


def test_cache_reuses_and_recomputes_only_changed_photos(tmp_path):
    paths = _photos(tmp_path / "photos")
    cache = tmp_path / "cache"
    teacher = CountingTeacher()
    first = teacher_embeddings(teacher, paths, cache, progress=False)
    assert first.computed == 5 and len(teacher.embedded) == 5
    assert first.embeddings.shape == (5, 8) and first.fallback.all()  # no boxes: centre squares
    assert first.digests == [file_digest(p) for p in paths] and first.keys == [str(p) for p in paths]
    assert cache_file(cache, teacher).is_file() and (cache / "counting.json").is_file()
    assert not list(cache.glob(".*"))  # no temp files left

    again = teacher_embeddings(teacher, paths, cache, progress=False)
    assert again.computed == 0 and len(teacher.embedded) == 5
    np.testing.assert_array_equal(again.embeddings, first.embeddings)

    Image.new("RGB", (41, 40), (0, 0, 0)).save(paths[1])  # same size, other pixels: a changed photo
    changed = teacher_embeddings(teacher, paths, cache, progress=False)
    assert changed.computed == 1 and len(teacher.embedded) == 6
    assert not np.allclose(changed.embeddings[1], first.embeddings[1])
    np.testing.assert_array_equal(np.delete(changed.embeddings, 1, 0), np.delete(first.embeddings, 1, 0))

    boxes = np.full((5, 4), np.nan)
    boxes[3] = [2, 2, 30, 30]
    boxed = teacher_embeddings(teacher, paths, cache, boxes=boxes, progress=False)
    assert boxed.computed == 1 and boxed.fallback.tolist() == [True, True, True, False, True]


def test_cache_is_per_teacher_and_settings(tmp_path):
    paths = _photos(tmp_path / "photos")
    cache = tmp_path / "cache"
    teacher_embeddings(CountingTeacher(), paths, cache, progress=False)

    other = OtherCountingTeacher()
    result = teacher_embeddings(other, paths, cache, progress=False)
    assert result.computed == 5 and len(other.embedded) == 5

    # a cache file written by another teacher (copied under this one's name) is not trusted: all recomputed
    cache_file(cache, other).write_bytes(cache_file(cache, CountingTeacher()).read_bytes())
    other.embedded.clear()
    assert teacher_embeddings(other, paths, cache, progress=False).computed == 5


def test_cache_survives_corruption_and_interruption(tmp_path):
    paths = _photos(tmp_path / "photos", n=6)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        teacher_embeddings(CountingTeacher(fail_after=2), paths, cache, progress=False, checkpoint_every=2)
    resumed = CountingTeacher()
    assert teacher_embeddings(resumed, paths, cache, progress=False, checkpoint_every=2).computed == 4
    assert not list(cache.glob(".*"))

    cache_file(cache, resumed).write_bytes(b"garbage")
    assert teacher_embeddings(CountingTeacher(), paths, cache, progress=False).computed == 6


def test_cache_embeds_duplicates_once(tmp_path):
    paths = _photos(tmp_path / "photos", n=2)
    copy = tmp_path / "photos" / "copy.png"
    copy.write_bytes(paths[0].read_bytes())
    teacher = CountingTeacher()
    result = teacher_embeddings(teacher, [paths[0], paths[1], copy], tmp_path / "cache", progress=False)
    assert result.computed == 2 and len(teacher.embedded) == 2
    np.testing.assert_array_equal(result.embeddings[0], result.embeddings[2])


def test_manifest_embeddings_use_boxes_of_ok_rows_and_refuse_stale_rows(tmp_path):
    paths = _photos(tmp_path / "photos", n=3)
    manifest = pd.DataFrame({"image": [p.name for p in paths], "sha1": [file_digest(p) for p in paths],
                             "status": ["ok", "low_prob", "ok"]})
    for column, value in zip(BOX_COLUMNS, (2.0, 2.0, 30.0, 30.0)):
        manifest[column] = value
    result = manifest_teacher_embeddings(CountingTeacher(), manifest, tmp_path / "photos", tmp_path / "cache",
                                         progress=False)
    assert result.keys == ["p0.png", "p1.png", "p2.png"] and result.fallback.tolist() == [False, True, False]
    assert set(result.as_dict()) == set(result.keys)

    manifest.loc[1, "sha1"] = "0" * 40
    with pytest.raises(ValueError, match="p1.png.*notebook 01"):
        manifest_teacher_embeddings(CountingTeacher(), manifest, tmp_path / "photos", tmp_path / "cache")
    with pytest.raises(KeyError, match="box_x1"):
        manifest_teacher_embeddings(CountingTeacher(), manifest.drop(columns="box_x1"), tmp_path, tmp_path)


# --------------------------------------------------------------------------------------------
# FaceNet weights: download from a local server, checksum, atomic placement
# --------------------------------------------------------------------------------------------

FAKE_URL = "https://mirror.invalid/releases/fake-weights.pt"


@pytest.fixture
def served_weights(tmp_path) -> tuple[Path, RemoteFile]:
    folder = tmp_path / "served"
    folder.mkdir()
    data = bytes(range(256)) * 64
    (folder / "fake-weights.pt").write_bytes(data)
    return folder, RemoteFile("fake-weights.pt", FAKE_URL, hashlib.sha256(data).hexdigest())


def test_weights_download_once_then_offline(served_weights, tmp_path):
    from maskstudy.teachers.facenet import fetch_facenet_weights

    folder, remote = served_weights
    cache = tmp_path / "cache"
    with local_file_server(folder) as base_url:
        path = fetch_facenet_weights(cache, remote=remote, base_url=base_url, progress=False)
    assert path == cache / "weights" / "fake-weights.pt"
    assert path.read_bytes() == (folder / "fake-weights.pt").read_bytes()
    # the server is gone: the verified file is returned, with or without permission to download
    assert fetch_facenet_weights(cache, remote=remote, base_url=base_url, progress=False) == path
    assert fetch_facenet_weights(cache, remote=remote, allow_download=False) == path


def test_weights_checksum_mismatch_leaves_nothing(served_weights, tmp_path):
    from maskstudy.teachers.facenet import fetch_facenet_weights

    folder, good = served_weights
    wrong = RemoteFile(good.filename, good.url, "0" * 64)
    cache = tmp_path / "cache"
    with local_file_server(folder) as base_url:
        with pytest.raises(DownloadError) as info:
            fetch_facenet_weights(cache, remote=wrong, base_url=base_url, progress=False)
    message = str(info.value)
    assert "Checksum mismatch" in message and "0" * 64 in message and good.sha256 in message
    assert "save it as" in message and "MASKSTUDY_CACHE" in message
    assert list((cache / "weights").iterdir()) == []  # no partial or temporary file


def test_weights_absent_offline_and_bad_local_copy(served_weights, tmp_path):
    from maskstudy.teachers.facenet import FACENET_VGGFACE2_WEIGHTS, fetch_facenet_weights

    folder, remote = served_weights
    with pytest.raises(TeacherUnavailableError, match=r"not in .*downloading is off.*save it as"):
        fetch_facenet_weights(tmp_path / "cache", remote=remote, allow_download=False)
    with pytest.raises(TeacherUnavailableError, match=FACENET_VGGFACE2_WEIGHTS.sha256):
        build_teacher("facenet_vggface2", cache_dir=tmp_path / "cache", allow_download=False)
    bad = tmp_path / "cache" / "weights" / remote.filename
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"truncated")
    with pytest.raises(TeacherUnavailableError, match="has SHA-256"):
        fetch_facenet_weights(tmp_path / "cache", remote=remote, allow_download=False)
    with local_file_server(folder) as base_url:  # with downloading allowed, a bad local copy is replaced
        path = fetch_facenet_weights(tmp_path / "cache", remote=remote, base_url=base_url, progress=False)
    assert path.read_bytes() == (folder / remote.filename).read_bytes()


def test_facenet_teacher_download_failure_is_unavailable(tmp_path):
    with local_file_server(tmp_path) as base_url:  # serves an empty folder: HTTP 404
        with pytest.raises(TeacherUnavailableError, match="HTTP 404"):
            build_teacher("facenet_vggface2", cache_dir=tmp_path / "cache", base_url=base_url, progress=False)


def test_facenet_teacher_with_local_weights(tmp_path):
    """Random weights of the right architecture (the real ones are never downloaded in tests)."""
    import torch
    from facenet_pytorch import InceptionResnetV1

    from maskstudy.teachers.facenet import load_facenet

    torch.manual_seed(0)
    state = InceptionResnetV1().state_dict()
    state["logits.weight"] = torch.zeros(3, 512)  # the training classifier is dropped on load
    state["logits.bias"] = torch.zeros(3)
    weights = tmp_path / "w.pt"
    torch.save(state, weights)
    teacher = build_teacher("facenet_vggface2", weights=weights, device="cpu")
    assert teacher.embedding_size == 512 and teacher.settings["weights"] == "w.pt"
    photo = tmp_path / "p.png"
    Image.new("RGB", (80, 90), (150, 120, 100)).save(photo)
    result = teacher.embed_files([photo, photo], [[10, 10, 60, 70], [np.nan] * 4])
    assert result.embeddings.shape == (2, 512) and result.fallback.tolist() == [False, True]
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    assert teacher.crops([Image.open(photo)], np.array([[10.0, 10.0, 60.0, 70.0]])).shape == (1, 3, 160, 160)

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not InceptionResnetV1 weights"):
        load_facenet(tmp_path / "other.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a state dict"):
        load_facenet(tmp_path / "list.pt")
