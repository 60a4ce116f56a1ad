"""Every file the kit keeps to skip work next time, written whole and then cut short (a full disk, a copy that
stopped): the kit does the work again, or, for a training checkpoint and a teacher file (inputs, not caches),
raises a clear error saying what to do; never a zip, pickle, EOF or CSV error from deep inside."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_teachers import CountingTeacher, _photos

from maskstudy.datasets.build import BuildSettings, build_aligned_dataset, read_manifest
from maskstudy.datasets.protocol import scan_identity_folders
from tests.conftest import TemplateDetector, local_file_server

CUTS = {"empty": 0, "one byte": 1, "half": 0.5, "all but the last 2 bytes": -2}
CACHES = {}


def cache(function):
    """Register ``function(tmp_path, cut, request)``: write the cache, ``cut(path)`` it, check the kit copes."""
    CACHES[function.__name__] = function
    return function


def quiet(*_):
    pass


def build(photos: Path, out: Path, detector, **kwargs) -> pd.DataFrame:
    return build_aligned_dataset("toy", photos, scan_identity_folders(photos), out, BuildSettings(), detector=detector,
                                 batch_size=4, progress=False, log=quiet, **kwargs)


@cache
def evaluation_embeddings(tmp_path, cut, request):
    import torch

    from maskstudy.evaluate.store import EmbeddingStore

    crops = tmp_path / "aligned"
    rels = [f"p/{i}.png" for i in range(3)]
    for i, rel in enumerate(rels):
        (crops / "p").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(crops / rel)
    store = EmbeddingStore(tmp_path / "store", torch.nn.Linear(2, 2), 16, crops)
    embeddings = {rel: np.full(4, i, np.float32) for i, rel in enumerate(rels)}
    store.save(embeddings)
    assert sorted(store.load()) == rels
    cut(store.path)
    caplog = request.getfixturevalue("caplog")
    with caplog.at_level(logging.WARNING):
        assert store.load() == {}  # every crop is embedded again
    assert "unreadable embedding store" in caplog.text
    store.save(embeddings)
    assert sorted(store.load()) == rels


@cache
def teacher_embeddings(tmp_path, cut, request):
    from maskstudy.teachers import teacher_embeddings
    from maskstudy.teachers.cache import cache_file

    paths = _photos(tmp_path / "photos", n=4)
    first = teacher_embeddings(CountingTeacher(), paths, tmp_path / "cache", progress=False)
    cut(cache_file(tmp_path / "cache", CountingTeacher()))
    again = teacher_embeddings(CountingTeacher(), paths, tmp_path / "cache", progress=False)
    assert again.computed == 4
    np.testing.assert_array_equal(again.embeddings, first.embeddings)


@cache
def teacher_boxes(tmp_path, cut, request):
    from maskstudy.study.reference import detected_boxes

    paths = sorted(request.getfixturevalue("synthetic_photos").glob("id[01]/img?.jpg"))
    boxes, found = detected_boxes(paths, TemplateDetector(), tmp_path / "cache", progress=False)
    cut(tmp_path / "cache" / "detected_boxes.npz")
    rerun = TemplateDetector()
    again, found_again = detected_boxes(paths, rerun, tmp_path / "cache", progress=False)
    assert rerun.seen == len(paths)
    np.testing.assert_array_equal(again, boxes)
    np.testing.assert_array_equal(found_again, found)


def _build_then(tmp_path, request, damage) -> TemplateDetector:
    """A build, ``damage(build folder)``, a rebuild: it must end with the first build's rows and files."""
    photos = request.getfixturevalue("synthetic_photos")
    out = tmp_path / "data"
    build(photos, out, TemplateDetector())
    manifest = read_manifest(out / "toy" / "manifest.csv")
    damage(out / "toy")
    rerun = TemplateDetector()
    build(photos, out, rerun)
    pd.testing.assert_frame_equal(read_manifest(out / "toy" / "manifest.csv"), manifest, check_dtype=False)
    return rerun


@cache
def data_manifest(tmp_path, cut, request):
    rerun = _build_then(tmp_path, request, lambda folder: cut(folder / "manifest.csv"))
    assert 0 < rerun.seen <= 24 or cut.keywords["cut"] == -2  # that cut loses one row, perhaps a skipped one


@cache
def data_build_settings(tmp_path, cut, request):
    assert _build_then(tmp_path, request, lambda folder: cut(folder / "manifest.json")).seen == 24


@cache
def data_build_journal(tmp_path, cut, request):
    photos = request.getfixturevalue("synthetic_photos")

    class Stop(TemplateDetector):
        def detect(self, images):
            if self.seen >= 8:
                raise KeyboardInterrupt
            return super().detect(images)

    with pytest.raises(KeyboardInterrupt):
        build(photos, tmp_path / "stopped", Stop(), checkpoint_every=100)
    journal = tmp_path / "stopped" / "toy" / "manifest.journal"
    cut(journal)
    rerun = TemplateDetector()
    build(photos, tmp_path / "stopped", rerun)
    assert 24 - 8 <= rerun.seen <= 24
    reference = tmp_path / "reference"
    build(photos, reference, TemplateDetector())
    pd.testing.assert_frame_equal(read_manifest(tmp_path / "stopped" / "toy" / "manifest.csv"),
                                  read_manifest(reference / "toy" / "manifest.csv"), check_dtype=False)


@cache
def masked_variants(tmp_path, cut, request):
    from maskstudy.datasets.masked_photos import build_masked_variants

    photos = request.getfixturevalue("synthetic_photos")
    manifest = build(photos, tmp_path / "data", TemplateDetector())
    kwargs = dict(unseen_styles=(), batch_size=4, progress=False, log=quiet)
    first = build_masked_variants(manifest, photos, tmp_path / "data" / "toy", TemplateDetector(), **kwargs)
    cut(tmp_path / "data" / "toy" / "masked_variants.csv")
    rerun = TemplateDetector()
    again = build_masked_variants(manifest, photos, tmp_path / "data" / "toy", rerun, **kwargs)
    pd.testing.assert_frame_equal(again, first)
    assert 0 < rerun.seen or cut.keywords["cut"] == -2


@cache
def mfr2_photos(tmp_path, cut, request):
    from maskstudy.datasets import mfr2

    root = tmp_path / "mfr2"
    labels = []
    for k, source in enumerate(sorted(request.getfixturevalue("synthetic_photos").glob("id[0-2]/img[01].jpg"))):
        name, number = f"Person{source.parent.name}", int(source.stem[-1]) + 1
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.open(source).save(root / mfr2.image_name(name, number))
        labels.append(f"{name}, {number}, {'no-mask' if k % 2 else 'surgical'}")
    (root / "mfr2_labels.txt").write_text("\n".join(labels) + "\n")
    first = mfr2.prepare(root, tmp_path / "out", TemplateDetector(), batch_size=4, progress=False)
    cut(tmp_path / "out" / "photos.csv")
    rerun = TemplateDetector()
    again = mfr2.prepare(root, tmp_path / "out", rerun, batch_size=4, progress=False)
    pd.testing.assert_frame_equal(again.sort_values("image", ignore_index=True),
                                  first.sort_values("image", ignore_index=True))
    assert rerun.seen >= 1


@cache
def facenet_weights(tmp_path, cut, request):
    import hashlib

    from maskstudy.datasets.download import RemoteFile
    from maskstudy.teachers import TeacherUnavailableError
    from maskstudy.teachers.facenet import fetch_facenet_weights

    served = tmp_path / "served"
    served.mkdir()
    data = bytes(range(256)) * 16
    (served / "weights.pt").write_bytes(data)
    remote = RemoteFile("weights.pt", "https://example.invalid/weights.pt", hashlib.sha256(data).hexdigest())
    with local_file_server(served) as base_url:
        path = fetch_facenet_weights(tmp_path / "cache", remote=remote, base_url=base_url, progress=False)
        cut(path)
        with pytest.raises(TeacherUnavailableError, match="has SHA-256"):
            fetch_facenet_weights(tmp_path / "cache", remote=remote, allow_download=False)
        assert fetch_facenet_weights(tmp_path / "cache", remote=remote, base_url=base_url, progress=False) == path
    assert path.read_bytes() == data  # downloaded again


@cache
def teacher_training_file(tmp_path, cut, request):
    from maskstudy.teachers.training import load_training_targets, write_training_file

    rows = pd.DataFrame({"dataset": ["lfw", "lfw"], "image": ["a/1.jpg", "b/1.jpg"]})
    embeddings = np.eye(2, 8, dtype=np.float32)
    path = write_training_file(tmp_path / "counting_train.npz", CountingTeacher(), ["lfw/a/1.jpg", "lfw/b/1.jpg"],
                               ["d1", "d2"], embeddings, np.zeros(2, bool))
    assert load_training_targets(path, rows).embeddings.shape == (2, 8)
    cut(path)
    with pytest.raises(ValueError, match="cannot read teacher embeddings .* compute it with"):
        load_training_targets(path, rows)


@cache
def training_checkpoint(tmp_path, cut, request):
    from maskstudy.models.checkpoint import CheckpointError
    from maskstudy.train import TrainConfig, train

    csv, root, finished = request.getfixturevalue("trained_run")
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(finished.read_bytes())
    cut(out / "last.pt")
    config = TrainConfig(**TRAIN_CONFIG)
    with pytest.raises(CheckpointError, match=r"cannot resume: .*corrupt.*resume=False \(--no-resume\)"):
        train(config, csv, root, out, progress=False, log=None)
    assert len(train(config, csv, root, out, resume=False, progress=False, log=None).history) == 1


@cache
def previous_run_record(tmp_path, cut, request):
    from maskstudy.core.storage import write_json
    from maskstudy.report.pipeline import _previous_run

    write_json(tmp_path / "run.json", {"notebooks": {"01_data_build": {"status": "done"}}})
    assert _previous_run(tmp_path)
    cut(tmp_path / "run.json")
    assert _previous_run(tmp_path) == {}  # the run starts with no record of earlier notebooks


TRAIN_CONFIG = dict(backbone="ir18", width=0.125, input_size=32, embedding_size=32, scale=16.0, epochs=1, batch_size=8,
                    val_identities=0, seed=0, device="cpu")


@pytest.fixture(scope="module")
def trained_run(synthetic_faces, tmp_path_factory) -> tuple[Path, Path, Path]:
    """``(train_csv, data_dir, last.pt)`` of a one-epoch training run."""
    import torch

    from maskstudy.train import TrainConfig, train

    csv, root = synthetic_faces
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(TrainConfig(**TRAIN_CONFIG), csv, root, tmp_path_factory.mktemp("trained"), progress=False,
                       log=None)
    finally:
        torch.set_num_threads(threads)
    return csv, root, result.checkpoint


def cut_short(path: Path, cut: float) -> None:
    """Keep the first ``cut`` bytes of ``path`` (a share of them when 0 < cut < 1; all but ``-cut`` when negative)."""
    data = path.read_bytes()
    keep = int(len(data) * cut) if 0 < cut < 1 else (len(data) + cut if cut < 0 else int(cut))
    path.write_bytes(data[:keep])


@pytest.mark.parametrize("cut", list(CUTS))
@pytest.mark.parametrize("name", list(CACHES))
def test_a_cache_cut_short_costs_a_recomputation_or_a_clear_error(name, cut, tmp_path, request):
    from functools import partial

    CACHES[name](tmp_path, partial(cut_short, cut=CUTS[cut]), request)


def test_save_image_keeps_an_identical_file_and_replaces_a_changed_one(tmp_path):
    """A rebuild that produces the same crop leaves the file (and its time) alone: caches keyed by size and time
    stay valid; a changed crop is written."""
    import os

    from maskstudy.core import storage

    path = tmp_path / "crop.jpg"
    ramp = np.linspace(0, 255, 112).astype(np.uint8)
    pixels = np.stack([np.tile(ramp, (112, 1)), np.tile(ramp[:, None], (1, 112)), np.full((112, 112), 90, np.uint8)], 2)
    storage.save_image(path, Image.fromarray(pixels), keep_identical=True)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    storage.save_image(path, Image.fromarray(pixels), keep_identical=True)
    assert path.stat().st_mtime_ns == 1_000_000_000
    storage.save_image(path, Image.fromarray(255 - pixels), keep_identical=True)
    assert path.stat().st_mtime_ns != 1_000_000_000
    assert np.abs(np.asarray(Image.open(path), dtype=int) - (255 - pixels)).mean() < 3
    with pytest.raises(ValueError, match="image format"):
        storage.save_image(tmp_path / "crop.unknown", Image.fromarray(pixels))
