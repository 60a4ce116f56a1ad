"""The build's detection settings: part of the cache key, from the profile; the threaded pipeline writes what a
sequential build writes."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from maskstudy.core.profiles import resolve_config
from maskstudy.datasets import build as data
from maskstudy.datasets.build import BuildSettings, build_aligned_dataset
from maskstudy.datasets.masked_photos import build_masked_variants, variant_name
from maskstudy.datasets.protocol import scan_identity_folders
from maskstudy.faces.detect import FIRST_PASS_FACE_SIZE, FaceDetector
from tests.conftest import CountingDetector, copy_lfw_photos


@pytest.fixture()
def photos(tmp_path, lfw_root):
    return copy_lfw_photos(lfw_root, tmp_path / "photos")


def build(root, out, detector, settings=None):
    return build_aligned_dataset("toy", root, scan_identity_folders(root), out, settings or BuildSettings(),
                                 detector=detector, progress=False, log=lambda *_: None, batch_size=4)


def test_detection_settings_key_the_cache(photos, tmp_path, detector):
    out = tmp_path / "processed"
    build(photos, out, detector)
    saved = json.loads((out / "toy" / "manifest.json").read_text())
    assert saved["first_pass_face_size"] == FIRST_PASS_FACE_SIZE and saved["pyramid_factor"] == 0.709
    for changed in (BuildSettings(first_pass_face_size=None), BuildSettings(pyramid_factor=0.8),
                    BuildSettings(min_face_size=30)):
        counting = CountingDetector(detector)
        build(photos, out, counting, changed)
        assert counting.seen == 6, changed  # every photo detected again under the new settings


def test_build_settings_make_their_detector_and_come_from_the_profile():
    config = resolve_config("cpu")
    settings = BuildSettings(min_face_size=config["min_face_size"], min_prob=config["min_prob"],
                             pyramid_factor=config["pyramid_factor"],
                             first_pass_face_size=config["first_pass_face_size"])
    assert settings == BuildSettings()  # the profile's defaults are the build's
    assert resolve_config("cpu", {"first_pass_face_size": None})["first_pass_face_size"] is None
    with pytest.raises(ValueError, match="first_pass_face_size"):
        resolve_config("cpu", {"first_pass_face_size": "big"})
    detector = BuildSettings(min_face_size=24, first_pass_face_size=None).detector(device="cpu")
    assert isinstance(detector, FaceDetector)
    assert detector.settings["min_face_size"] == 24 and detector.settings["first_pass_face_size"] is None


def test_threaded_build_writes_what_a_sequential_one_writes(photos, tmp_path, detector, monkeypatch):
    outputs = {}
    for workers in (1, 3):
        monkeypatch.setattr(data, "BUILD_WORKERS", workers)
        out = tmp_path / f"workers{workers}"
        manifest = build(photos, out, detector)
        ok = manifest[manifest["aligned"] != ""]
        variants = build_masked_variants(ok, photos, out / "toy", detector, batch_size=4, progress=False,
                                         log=lambda *_: None)
        files = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.jpg"))}
        outputs[workers] = (manifest, variants, files)
    (one, one_variants, one_files), (three, three_variants, three_files) = outputs[1], outputs[3]
    pd.testing.assert_frame_equal(one, three)
    pd.testing.assert_frame_equal(one_variants, three_variants)
    assert one_files.keys() == three_files.keys() and len(one_files) == 6 * (3 + 5)  # crop, twin, photo; 4 variants, 1 photo
    assert all(one_files[name] == three_files[name] for name in one_files)


def test_masked_variants_are_redone_for_another_detector(photos, tmp_path, detector):
    out = tmp_path / "processed"
    manifest = build(photos, out, detector)
    ok = manifest[manifest["aligned"] != ""]
    build_masked_variants(ok, photos, out / "toy", detector, progress=False, log=lambda *_: None)
    same = CountingDetector(detector)
    build_masked_variants(ok, photos, out / "toy", same, progress=False, log=lambda *_: None)
    assert same.seen == 0
    other = CountingDetector(FaceDetector(device="cpu", first_pass_face_size=None))
    variants = build_masked_variants(ok, photos, out / "toy", other, progress=False, log=lambda *_: None)
    assert other.seen == 2 * len(ok)  # training and unseen style, each detected again
    assert (out / "toy" / "aligned" / variant_name(variants["aligned"].iloc[0], "detected")).is_file()
