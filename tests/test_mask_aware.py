"""The mask-aware recogniser (maskstudy.models.mask_aware, maskstudy.train.mask_aware) and the one door to every model
file (maskstudy.models.model_file): the pair rule, the fits on training identities, a saved recogniser loaded back
with the same vectors, and the study's own evaluation path reproduced from raw photos."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from maskstudy.models.checkpoint import CheckpointError
from maskstudy.models.dlib_resnet import weights_available
from maskstudy.models.mask_aware import Fusion, MaskAwareSimilarity, MaskPresenceHead, split_vectors
from maskstudy.models.model_file import load_model
from maskstudy.train.mask_aware import PairScores, choose_fusion, fit_mask_presence

needs_weights = pytest.mark.skipif(not weights_available(), reason="needs the optional 'teacher' extra")


def vectors(whole_dir: np.ndarray, upper_dir: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = np.zeros((len(p), 257))
    out[:, :128], out[:, 128:256], out[:, 256] = whole_dir, upper_dir, p
    return out


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_switch_rule_takes_the_upper_face_when_either_photo_is_masked():
    rng = np.random.default_rng(0)
    w, u = unit(rng.normal(size=(4, 128))), unit(rng.normal(size=(4, 128)))
    a = vectors(w, u, np.array([0.1, 0.9, 0.2, 0.8]))
    b = vectors(w[::-1], u[::-1], np.array([0.3, 0.2, 0.7, 0.6]))
    fusion = Fusion("switch", whole_centre=0.1, whole_scale=0.2, upper_centre=0.3, upper_scale=0.1)
    scores = MaskAwareSimilarity(fusion).pairs(a, b)
    whole = (np.sum(w * w[::-1], axis=1) - 0.1) / 0.2
    upper = (np.sum(u * u[::-1], axis=1) - 0.3) / 0.1
    np.testing.assert_allclose(scores, [whole[0], upper[1], upper[2], upper[3]])
    mixed = MaskAwareSimilarity(Fusion("mix", "threshold", 0.1, 0.2, 0.3, 0.1)).pairs(a, b)
    weight = np.maximum(a[:, 256], b[:, 256])
    np.testing.assert_allclose(mixed, (1 - weight) * whole + weight * upper)
    matrix = MaskAwareSimilarity(fusion).matrix(a, b)
    np.testing.assert_allclose(np.diag(matrix), scores)
    with pytest.raises(ValueError, match="257"):
        split_vectors(np.zeros((2, 128)))
    with pytest.raises(ValueError, match="rule"):
        Fusion("vote")
    with pytest.raises(ValueError, match="normalisation"):
        Fusion("mix", "rank")


def test_mask_presence_head_is_fitted_on_training_rows_and_its_grid_chosen_held_out():
    """Twins whose lower half differs from the clean crop's: the head separates them on held-out crops, and the
    grid that sees the halves apart (2 or finer) wins over the global average."""
    g = torch.Generator().manual_seed(0)

    def crops(n: int, masked: bool) -> torch.Tensor:
        x = torch.randn(n, 8, 8, 8, generator=g)
        x[:, :3, 4:] += 1.5 if masked else 0.0  # the lower half of three channels
        x[:, :3, :4] -= 1.5 if masked else 0.0  # ... and the opposite above: the global mean does not move
        return x

    fit = fit_mask_presence(crops(200, False), [crops(200, True)], crops(50, False), [crops(50, True)])
    table = fit.table.set_index("pool")
    assert table.loc[1, "val_accuracy"] < 0.75 < table.loc[2, "val_accuracy"]
    assert fit.head.pool in (2, 4) and bool(table.loc[fit.head.pool, "chosen"])
    assert float((fit.head.probability(crops(20, True)) > 0.5).float().mean()) > 0.9


def _pairs(kind: str, n: int, rng, genuine_whole: float, genuine_upper: float, p: float) -> PairScores:
    labels = np.repeat([1, 0], n)
    whole = np.where(labels == 1, genuine_whole, 0.1) + rng.normal(0, 0.1, 2 * n)
    upper = np.where(labels == 1, genuine_upper, 0.1) + rng.normal(0, 0.1, 2 * n)
    p_a = np.full(2 * n, p)
    return PairScores(kind, whole, upper, p_a, np.full(2 * n, 0.05), labels)


def test_fusion_is_chosen_on_held_out_pairs_with_one_threshold():
    """The whole face fails on masked pairs, the upper face works: the switch rule is chosen, its threshold
    separates every kind of pair, and the impostor statistics come from the right pairs."""
    rng = np.random.default_rng(0)
    pairs = [_pairs("clean_clean", 100, rng, 0.7, 0.5, 0.02), _pairs("masked_clean", 100, rng, 0.15, 0.5, 0.98),
             _pairs("masked_masked", 100, rng, 0.2, 0.5, 0.97)]
    fusion, table = choose_fusion(pairs, source="held out")
    assert len(table) == 4 and table["chosen"].sum() == 1
    best = table[table["chosen"]].iloc[0]
    assert (best["rule"], best["normalisation"]) == (fusion.rule, fusion.normalisation)
    assert best["accuracy"] == table["accuracy"].max()
    assert best["accuracy_masked_clean"] > 0.95 and best["accuracy_clean_clean"] > 0.95
    impostors = pairs[1].upper[pairs[1].labels == 0]
    assert fusion.upper_scale == pytest.approx(impostors.std(ddof=1)) and fusion.threshold_source == "held out"
    if fusion.normalisation == "impostor":
        assert fusion.upper_centre == pytest.approx(impostors.mean())
    with pytest.raises(ValueError, match="clean_clean"):
        choose_fusion(pairs[1:])


def test_model_files_that_are_not_the_studys_are_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_model(tmp_path / "absent.pt")
    torch.save({"format": "someone-elses-v3"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign.pt is not a model file of this study"):
        load_model(tmp_path / "foreign.pt")
    torch.save({"format": "maskstudy-mask-aware-v1", "frozen_stages": 3}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial.pt.*'whole'"):
        load_model(tmp_path / "partial.pt")
    (tmp_path / "text.pt").write_text("not a torch file")
    with pytest.raises(CheckpointError, match="text.pt"):
        load_model(tmp_path / "text.pt")


@pytest.fixture(scope="module")
def recognizer():
    """A mask-aware recogniser from two lightly perturbed students (no training: the file format is under test)."""
    from maskstudy.models.dlib_resnet import student_network
    from maskstudy.models.mask_aware import MaskAwareRecognizer

    torch.manual_seed(0)
    whole, upper = student_network(), student_network(blank_lower=True)
    with torch.no_grad():
        for net in (whole, upper):
            net.fc.weight.add_(0.01 * torch.randn_like(net.fc.weight))
    head = MaskPresenceHead(128, 2)
    torch.nn.init.normal_(head.linear.weight, std=0.1)
    fusion = Fusion("switch", "impostor", 0.9, 0.03, 0.85, 0.04, threshold=2.0, threshold_source="held-out pairs")
    return MaskAwareRecognizer(whole, upper, head, fusion, 3, provenance={"whole": "ft_plain_seed0"}).eval()


@needs_weights
def test_a_saved_mask_aware_recognizer_loads_back_with_the_same_vectors(recognizer, tmp_path):
    torch.save(recognizer.state(), tmp_path / "ft_mask_aware.pt")
    loaded = load_model(tmp_path / "ft_mask_aware.pt")
    assert loaded.kind == "mask_aware" and loaded.threshold == 2.0 and loaded.threshold_source == "held-out pairs"
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    from maskstudy.faces.preprocess import to_input

    with torch.no_grad():
        expected = recognizer(to_input(crops, 112)).numpy()
    got = loaded.encode(crops)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    whole, upper, p = split_vectors(got)
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1, atol=1e-5)
    assert ((p >= 0) & (p <= 1)).all() and not np.allclose(whole, upper)
    np.testing.assert_allclose(loaded.mask_probability(got), p)
    size = (tmp_path / "ft_mask_aware.pt").stat().st_size
    assert size < 2 * sum(v.numel() * 4 for v in recognizer.state()["whole"].values()) + 1e6  # no frozen prefix


@needs_weights
def test_a_finetune_file_loads_with_its_threshold_and_the_studys_encoding(tmp_path):
    """A fine-tuning checkpoint of the track loads as a kind of its own: no flip, through its frozen stages rounded
    to float16 (as the study caches them), with the validation's threshold."""
    from maskstudy.train.finetune import FinetuneConfig, build_student, head_embeddings, save_checkpoint

    config = FinetuneConfig(attention="cbam", blank_lower=True)
    model = build_student(config)
    history = [{"epoch": 2, "val_acc": 0.9, "val_threshold": 0.93}]
    save_checkpoint(tmp_path / "ft.pt", config, model, None, None, config.epochs, history)
    loaded = load_model(tmp_path / "ft.pt")
    assert (loaded.kind, loaded.flip, loaded.prefix_stages, loaded.threshold) == ("finetuned", False, 3, 0.93)
    assert "upper face with CBAM" in loaded.description
    crops = np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    from maskstudy.faces.preprocess import to_input

    with torch.no_grad():
        features = model.features(to_input(crops, 112), 3).half()
    expected = torch.nn.functional.normalize(head_embeddings(model, features, 3), dim=1).numpy()
    np.testing.assert_allclose(loaded.encode(crops), expected, atol=1e-5)


@needs_weights
@pytest.mark.realdata
def test_verify_on_raw_photos_gives_the_studys_scores(tmp_path, detector):
    """The study evaluates MFR2 on crops it detected, aligned and saved once (lossless); ``verify`` on the raw
    photos runs the same path in memory: the same scores for the pretrained network (as the track evaluates it)."""
    from conftest import real_data_dir

    from maskstudy.datasets import mfr2
    from maskstudy.evaluate.cli import verify_command
    from maskstudy.study.pretrained_track import stored_embeddings
    from maskstudy.train.finetune import FeatureStore, FinetuneConfig, build_student

    root = real_data_dir("MASKSTUDY_MFR2", "mfr2")
    pairs = mfr2.read_pairs(root).head(12)
    lines = [f"{a.split('/')[0]} {int(a[-8:-4])} {int(b[-8:-4])}" if la == lb else
             f"{a.split('/')[0]} {int(a[-8:-4])} {b.split('/')[0]} {int(b[-8:-4])}"
             for a, b, la, lb in zip(pairs["image_a"], pairs["image_b"], pairs["identity_a"], pairs["identity_b"])]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    photos = sorted(set(pairs["image_a"]) | set(pairs["image_b"]))
    from PIL import Image

    from maskstudy.faces.align import detect_and_align

    crops, _, _, _ = detect_and_align([Image.open(root / p).convert("RGB") for p in photos], detector, 112)
    for photo, crop in zip(photos, crops):
        (tmp_path / "aligned" / mfr2.aligned_name(photo)).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(tmp_path / "aligned" / mfr2.aligned_name(photo))
    model = build_student(FinetuneConfig())
    paths = [tmp_path / "aligned" / mfr2.aligned_name(p) for p in photos]
    features = FeatureStore(tmp_path / "store", "k3").features(model, paths, 3, progress=False)
    study = stored_embeddings(model, dict(zip(photos, features)), 3, None, tmp_path / "aligned", "k3")
    expected = [float(np.dot(study[a], study[b])) for a, b in zip(pairs["image_a"], pairs["image_b"])]
    result = verify_command("pretrained", tmp_path / "pairs.txt", root, device="cpu", detector=detector, log=None)
    np.testing.assert_allclose(result["scores"], expected, atol=2e-4)
    assert result["pairs"] == 12 and result["raw_images"] == len(photos)


def test_lfw_format_pair_files_are_read_with_their_folds(tmp_path):
    """LFW's ``pairs.txt`` format (header, ``name i j`` and ``name1 i name2 j``), the photos' extension found under
    the root, 10 folds in file order (MFR2's file has no header)."""
    from maskstudy.evaluate.cli import read_any_pairs

    for name in ("Ann", "Bob"):
        (tmp_path / name).mkdir()
        for i in (1, 2):
            (tmp_path / name / f"{name}_{i:04d}.png").write_bytes(b"")
    lines = ["Ann 1 2", "Ann 1 Bob 2"] * 10
    (tmp_path / "pairs.txt").write_text("\n".join(["2 10", *lines]) + "\n")
    pairs = read_any_pairs(tmp_path / "pairs.txt", tmp_path)
    assert len(pairs) == 20 and list(pairs["fold"]) == [k for k in range(1, 11) for _ in range(2)]
    assert pairs.iloc[0].tolist() == [1, "Ann/Ann_0001.png", "Ann/Ann_0002.png", 1]
    assert pairs.iloc[1].tolist() == [1, "Ann/Ann_0001.png", "Bob/Bob_0002.png", 0]
    (tmp_path / "bad.txt").write_text("Ann 1 2\nAnn x Bob 2\n")
    with pytest.raises(ValueError, match="pair 2"):
        read_any_pairs(tmp_path / "bad.txt", tmp_path)
    (tmp_path / "gone.txt").write_text("Cid 1 2\n")
    with pytest.raises(FileNotFoundError, match="Cid/Cid_0001"):
        read_any_pairs(tmp_path / "gone.txt", tmp_path)


def test_crop_variants_and_the_presence_table():
    from types import SimpleNamespace

    from maskstudy.study.mask_aware import crop_variant, presence_table

    assert [crop_variant(r) for r in ("A/A_1.jpg", "A/A_1_mask.jpg", "A/A_1_mask_det.jpg", "A/A_1_mask_unseen_det.jpg",
                                      "A/A_1_mask_deteyes.jpg")] == ["clean", "shared", "detected",
                                                                      "unseen_detected", "detected_eyes"]
    p = {f"{who}/{who}_{i}{suffix}.jpg": value for who in ("A", "B", "C") for i in (1, 2)
         for suffix, value in (("", 0.1), ("_mask_det", 0.9))}
    p["C/C_2_mask_det.jpg"] = 0.4  # one miss
    photos = pd.DataFrame({"aligned": ["X/X_1.png", "X/X_2.png", "Y/Y_1.png"], "identity": ["X", "X", "Y"],
                           "masked": ["True", "False", "True"], "mask_type": ["cloth", "no-mask", "n95"]})
    table = presence_table(p, {"X/X_1.png": 0.8, "X/X_2.png": 0.7, "Y/Y_1.png": 0.9},
                           SimpleNamespace(mfr2_photos=photos), n_boot=50).set_index(["test_set", "subset"])
    assert table.loc[("LFW test crops", "clean"), "accuracy"] == 1.0
    assert table.loc[("LFW test crops", "detected"), "accuracy"] == pytest.approx(5 / 6)
    mfr2 = table.loc[("MFR2 photos (real masks)", "all photos")]
    assert (mfr2["photos"], mfr2["masked"], mfr2["accuracy"]) == (3, 2, pytest.approx(2 / 3))
    assert table.loc[("MFR2 photos (real masks)", "no-mask"), "accuracy"] == 0.0


@pytest.mark.parametrize("normalisation, words", [("impostor", "its impostors' mean"),
                                                  ("threshold", "its own best threshold")])
def test_the_mask_aware_score_names_its_own_normalisation(normalisation, words):
    from maskstudy.models.mask_aware import Fusion, MaskAwareSimilarity
    from maskstudy.models.model_file import COSINE

    assert words in MaskAwareSimilarity(Fusion(normalisation=normalisation)).description
    assert COSINE.description == "cosine similarity"
