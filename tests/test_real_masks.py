"""Masks as a user meets them: MFR2's real masks, unseen styles, masked photos detected by themselves, and the
cache that must notice a changed style list."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskstudy.datasets import mfr2
from maskstudy.datasets.build import BuildSettings, build_aligned_dataset
from maskstudy.datasets.masked_photos import (
    VARIANTS,
    build_masked_variants,
    detection_summary,
    landmark_error,
    variant_name,
)
from maskstudy.datasets.pairs import VARIANT_SCENARIOS, scenario_pairs, variant_scenario_pairs
from maskstudy.datasets.protocol import scan_identity_folders
from maskstudy.faces.masks.drawing import TRAINING_STYLES, UNSEEN_STYLES
from tests.conftest import CountingDetector, copy_lfw_photos, real_data_dir


@pytest.fixture(scope="session")
def mfr2_root() -> Path:
    return real_data_dir("MASKSTUDY_MFR2", "mfr2")


@pytest.fixture()
def lfw_tree(tmp_path, lfw_root):
    return copy_lfw_photos(lfw_root, tmp_path / "photos")


def _build(root, out, detector, styles=TRAINING_STYLES):
    return build_aligned_dataset("lfw", root, scan_identity_folders(root), out, BuildSettings(), detector=detector,
                                 progress=False, log=lambda *_: None, mask_styles=styles)


def test_changing_the_style_list_redraws_exactly_the_twins_it_changes(lfw_tree, tmp_path, detector):
    out = tmp_path / "processed"
    first = _build(lfw_tree, out, detector).set_index("image")
    twins = {i: (out / "lfw" / "aligned" / r["masked"]).read_bytes() for i, r in first.iterrows() if r["masked"]}
    counting = CountingDetector(detector)
    styles = ("surgical_blue", "black_cloth")  # two styles removed: every twin of theirs must change
    second = _build(lfw_tree, out, counting, styles).set_index("image")
    assert counting.seen == 0  # no re-detection: the landmarks are cached
    for image, before in twins.items():
        row = second.loc[image]
        assert row["mask_style"] in styles
        after = (out / "lfw" / "aligned" / row["masked"]).read_bytes()
        assert (after == before) == (first.loc[image, "mask_style"] == row["mask_style"])


def test_masked_variants_detect_the_masked_photo_and_draw_unseen_styles(lfw_tree, tmp_path, detector):
    out = tmp_path / "processed"
    manifest = _build(lfw_tree, out, detector)
    ok = manifest[manifest["aligned"] != ""]
    variants = build_masked_variants(ok, lfw_tree, out / "lfw", detector, progress=False, log=lambda *_: None)
    assert list(variants["image"]) == list(ok["image"])
    assert set(variants["unseen_style"]) <= set(UNSEEN_STYLES) and set(variants["seen_style"]) <= set(TRAINING_STYLES)
    for row in variants.to_dict("records"):
        for variant in VARIANTS:
            crop = Image.open(out / "lfw" / "aligned" / variant_name(row["aligned"], variant))
            assert crop.size == (112, 112)
    # the detected crop differs from the shared one (other landmarks), but both show the same face region
    row = variants.iloc[0]
    shared = np.asarray(Image.open(out / "lfw" / "aligned" / variant_name(row["aligned"], "shared")), float)
    detected = np.asarray(Image.open(out / "lfw" / "aligned" / variant_name(row["aligned"], "detected")), float)
    assert 0 < np.abs(shared - detected).mean() < 40
    summary = detection_summary(variants).set_index("mask_styles")
    assert summary.loc["seen", "images"] == len(ok) and 0 <= summary.loc["seen", "face_found"] <= 1
    assert (variants["seen_landmark_error"].dropna() < 1.0).all()
    # reused on a second call: no detection
    counting = CountingDetector(detector)
    again = build_masked_variants(ok, lfw_tree, out / "lfw", counting, progress=False, log=lambda *_: None)
    assert counting.seen == 0 and len(again) == len(variants)


def test_landmark_error_in_interocular_distances():
    reference = np.array([[0, 0], [10, 0], [5, 5], [2, 9], [8, 9]], float)
    assert landmark_error(reference, reference) == 0
    assert landmark_error(reference + [5, 0], reference) == pytest.approx(0.5)
    assert np.isnan(landmark_error(np.full((5, 2), np.nan), reference))


def test_variant_scenarios_keep_pairs_and_masked_sides():
    pairs = pd.DataFrame({"image_a": ["A/A_1.jpg", "B/B_1.jpg"], "image_b": ["A/A_2.jpg", "C/C_1.jpg"],
                          "label": [1, 0], "fold": [1, 2]})
    base = scenario_pairs(pairs, "masked_unmasked", seed=0)
    for name, (basic, variant) in VARIANT_SCENARIOS.items():
        out = variant_scenario_pairs(pairs, name, seed=0)
        reference = scenario_pairs(pairs, basic, seed=0)
        assert list(out["label"]) == [1, 0] and list(out["fold"]) == [1, 2]
        suffix = VARIANTS[variant] + ".jpg"
        for column in ("a", "b"):
            for new, old in zip(out[column], reference[column]):
                assert (new == old) if not old.endswith("_mask.jpg") else new.endswith(suffix)
    assert list(variant_scenario_pairs(pairs, "masked_unmasked_detected")["a"].str.endswith("_mask_det.jpg")) == \
        list(base["a"].str.endswith("_mask.jpg"))
    with pytest.raises(ValueError, match="unknown variant scenario"):
        variant_scenario_pairs(pairs, "nope")


@pytest.mark.realdata
def test_mfr2_protocol_files(mfr2_root):
    labels = mfr2.read_labels(mfr2_root)
    pairs = mfr2.read_pairs(mfr2_root)
    assert len(labels) == 269 and labels["masked"].sum() == 171
    assert len(pairs) == 848 and pairs["label"].sum() == 424
    assert sorted(pairs["fold"].unique()) == list(range(1, 11))
    assert pairs.groupby("fold").size().between(84, 85).all()
    kinds = mfr2.pair_kinds(pairs, labels).value_counts()
    assert kinds.to_dict() == {"both_masked": 396, "one_masked": 383, "none_masked": 69}
    for image in set(pairs["image_a"]) | set(pairs["image_b"]):
        assert (mfr2_root / image).is_file()


def test_mfr2_bad_pair_line_names_file_and_line(tmp_path):
    (tmp_path / "pairs.txt").write_text("A 1 2\nB x 3\n")
    with pytest.raises(mfr2.MFR2FormatError, match=r"pairs.txt:2"):
        mfr2.read_pairs(tmp_path)


@pytest.mark.realdata
def test_mfr2_prepare_and_evaluate_through_the_user_path(mfr2_root, tmp_path, detector):
    """A few identities' photos detected and aligned, then scored by a tiny network end to end."""
    import torch

    from maskstudy.evaluate import evaluate_pairs
    from maskstudy.models import build_backbone

    small = tmp_path / "mfr2"
    labels = mfr2.read_labels(mfr2_root)
    mismatched = mfr2.read_pairs(mfr2_root).query("label == 0").head(2)
    people = sorted(set(mismatched["identity_a"]) | set(mismatched["identity_b"]))
    for person in people:
        shutil.copytree(mfr2_root / person, small / person)
    keep = labels[labels["identity"].isin(people)]
    (small / "mfr2_labels.txt").write_text("".join(
        f"{r.identity}, {int(os.path.splitext(r.image)[0][-4:])}, {r.mask_type}\n" for r in keep.itertuples()))
    pairs = mfr2.read_pairs(mfr2_root)
    pairs = pairs[pairs["identity_a"].isin(people) & pairs["identity_b"].isin(people)]
    lines = [f"{r.identity_a} {int(r.image_a[-8:-4])} {int(r.image_b[-8:-4])}" if r.label
             else f"{r.identity_a} {int(r.image_a[-8:-4])} {r.identity_b} {int(r.image_b[-8:-4])}" for r in pairs.itertuples()]
    assert len(lines) >= 4
    (small / "pairs.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    photos = mfr2.prepare(small, out, detector, progress=False)
    assert len(photos) == len(keep) and photos["aligned"].ne("").all()
    assert photos["face_found"].mean() > 0.5
    protocol = mfr2.protocol_pairs(mfr2.read_pairs(small, n_folds=2), photos)
    torch.manual_seed(0)
    model = build_backbone("ir18", width=0.125, input_size=32, embedding_size=32).eval()
    result = evaluate_pairs(model, 32, protocol, out / "aligned", n_boot=50, clusters=protocol["cluster"])
    row = mfr2.summarise(result, protocol, photos)
    assert 0 <= row["accuracy_mean"] <= 1 and 0 <= row["face_found"] <= 1
    assert sum(row[f"pairs_{k}"] for k in mfr2.PAIR_KINDS) == len(protocol)
    again = mfr2.prepare(small, out, CountingDetector(detector), progress=False)
    assert again["aligned"].tolist() == photos["aligned"].tolist()
