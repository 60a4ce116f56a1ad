"""The dataset build: manifest rows for every image, aligned crops and masked twins, cache and resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskstudy.datasets.build import (
    BuildSettings,
    DataNotFoundError,
    build_aligned_dataset,
    find_dataset,
    row_landmarks,
)
from maskstudy.datasets.protocol import scan_identity_folders
from maskstudy.faces.align import ARCFACE_TEMPLATE_112
from maskstudy.faces.masks.drawing import MASK_STYLES
from tests.conftest import CountingDetector, copy_lfw_photos


@pytest.fixture()
def small_tree(tmp_path, lfw_root):
    """A copy of 6 real photos in 3 identity folders, plus a broken and a blank image."""
    root = copy_lfw_photos(lfw_root, tmp_path / "photos")
    (root / "Broken").mkdir()
    (root / "Broken" / "Broken_0001.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.new("RGB", (250, 250), (120, 120, 120)).save(root / "Broken" / "Broken_0002.jpg")
    return root


def build(root, out, detector, **kwargs):
    images = scan_identity_folders(root)
    return build_aligned_dataset("toy", root, images, out, BuildSettings(), detector=detector, progress=False,
                                 log=lambda *_: None, **kwargs)


def test_build_writes_manifest_crops_and_masked_twins(small_tree, tmp_path, detector):
    out = tmp_path / "processed"
    manifest = build(small_tree, out, CountingDetector(detector), fallback_alignment=True)
    assert len(manifest) == 8
    by_image = manifest.set_index("image")
    assert by_image.loc["Broken/Broken_0001.jpg", "status"] == "unreadable"
    assert by_image.loc["Broken/Broken_0002.jpg", "status"] == "no_face"
    ok = manifest[manifest["status"] == "ok"]
    assert len(ok) >= 5
    for row in ok.to_dict("records"):
        aligned = Image.open(out / "toy" / "aligned" / row["aligned"])
        masked = Image.open(out / "toy" / "aligned" / row["masked"])
        assert aligned.size == masked.size == (112, 112)
        assert row["masked"].endswith("_mask.jpg") and row["mask_style"] in MASK_STYLES
        assert (out / "toy" / "masked_photos" / row["masked"]).is_file()
        diff = np.abs(np.asarray(aligned, int) - np.asarray(masked, int)).sum(axis=2)
        # in the aligned frame the mask covers the nose tip and mouth, and not the eyes
        for x, y in ARCFACE_TEMPLATE_112[2:]:
            assert diff[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2].mean() > 10
        for x, y in ARCFACE_TEMPLATE_112[:2]:
            assert diff[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3].mean() < 10
        assert np.isfinite(row_landmarks(row)).all() and row["prob"] >= 0.9
    # the blank image is kept evaluable by the fallback alignment, flagged as such
    assert by_image.loc["Broken/Broken_0002.jpg", "aligned_by"] == "fallback"
    assert (out / "toy" / "manifest.csv").is_file() and (out / "toy" / "manifest.json").is_file()
    # the source folder is untouched: no file added there
    assert sorted(p.name for p in small_tree.rglob("*") if p.is_file()) == sorted(
        ["Broken_0001.jpg", "Broken_0002.jpg"] + [p.name for p in small_tree.rglob("*_000[12].jpg") if "Broken" not in str(p)])


def test_rerun_reuses_cache_and_a_changed_image_is_redetected(small_tree, tmp_path, detector):
    out = tmp_path / "processed"
    first = build(small_tree, out, CountingDetector(detector))
    counting = CountingDetector(detector)
    second = build(small_tree, out, counting)
    assert counting.seen == 0
    pd.testing.assert_frame_equal(first.reset_index(drop=True), second.reset_index(drop=True), check_dtype=False)
    changed = small_tree / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)
    counting = CountingDetector(detector)
    third = build(small_tree, out, counting)
    assert counting.seen == 1
    assert third.set_index("image").loc["Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "sha1"] != \
        first.set_index("image").loc["Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "sha1"]


def test_changed_settings_invalidate_the_cache(small_tree, tmp_path, detector):
    out = tmp_path / "processed"
    build(small_tree, out, CountingDetector(detector))
    counting = CountingDetector(detector)
    images = scan_identity_folders(small_tree)
    build_aligned_dataset("toy", small_tree, images, out, BuildSettings(seed=1), detector=counting,
                          progress=False, log=lambda *_: None)
    assert counting.seen == 7  # every readable image again


def test_find_dataset_errors_on_a_wrong_explicit_path(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        find_dataset("lfw", tmp_path / "missing")
    monkeypatch.setenv("MASKSTUDY_LFW", str(tmp_path / "also-missing"))
    with pytest.raises(DataNotFoundError, match="MASKSTUDY_LFW"):
        find_dataset("lfw")
    monkeypatch.setenv("MASKSTUDY_LFW", str(tmp_path))
    assert find_dataset("lfw") == tmp_path.resolve()


def test_interrupted_build_resumes_without_losing_rows(small_tree, tmp_path, detector):
    """A build stopped mid-way (here: the detector fails on the second batch) keeps the finished batches;
    the rerun detects only the rest and ends with the same manifest as an uninterrupted build."""
    out = tmp_path / "processed"

    class FailingDetector(CountingDetector):
        def detect(self, images):
            if self.seen >= 2:
                raise KeyboardInterrupt
            return super().detect(images)

    images = scan_identity_folders(small_tree)
    with pytest.raises(KeyboardInterrupt):
        build_aligned_dataset("toy", small_tree, images, out, BuildSettings(), detector=FailingDetector(detector),
                              batch_size=2, checkpoint_every=1, progress=False, log=lambda *_: None)
    partial = pd.read_csv(out / "toy" / "manifest.csv")
    assert 0 < len(partial) < len(images) and partial["status"].notna().all()
    counting = CountingDetector(detector)
    resumed = build(small_tree, out, counting)
    assert counting.seen == 7 - 2  # readable images minus the two detected before the interruption
    assert resumed["status"].isin(["ok", "no_face", "unreadable"]).all()
    assert oct((out / "toy" / "manifest.csv").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    import os

    current = os.umask(0)
    os.umask(current)
    return current
