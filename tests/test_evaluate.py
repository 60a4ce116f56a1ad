"""Verification metrics, identification, embeddings, checkpoints, FaceRecognizer and the verify command."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from maskstudy.evaluate import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    FaceRecognizer,
    add_verify_arguments,
    best_threshold,
    bootstrap_ci,
    compute_embeddings,
    embed_crops,
    evaluate_pairs,
    identification_rank1,
    internal_folds,
    kfold_accuracy,
    pair_correctness,
    roc_metrics,
    run_verify,
    verify_command,
)
from maskstudy.evaluate.embed import EVAL_CHANNELS_LAST, forward_chunk
from maskstudy.faces.preprocess import DecodedCrops, load_crops, to_input
from maskstudy.models import build_backbone, fold_batchnorm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "data" / "smoke" / "lfw"
LFW_PHOTOS = ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "AJ_Lamas/AJ_Lamas_0001.jpg",
              "Aaron_Peirsol/Aaron_Peirsol_0001.jpg"]


def tiny_model(seed: int = 0, input_size: int = 56) -> nn.Module:
    torch.manual_seed(seed)
    return build_backbone("ir18", width=0.125, input_size=input_size, embedding_size=32).eval()


def write_checkpoint(path: Path, model: nn.Module | None = None, **extra) -> Path:
    model = model or tiny_model()
    config = {"backbone": "ir18", "width": 0.125, "input_size": 56, "embedding_size": 32, "lr": 0.1}
    torch.save({"format": CHECKPOINT_FORMAT, "config": config, "model": model.state_dict(), "epoch": 3, **extra},
               path)
    return path


# ------------------------------------------------------------------------------------------
# k-fold accuracy
# ------------------------------------------------------------------------------------------


def test_best_threshold_midpoint_and_extremes():
    assert best_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == (pytest.approx(0.5), 1.0)
    # all positive: threshold below every score
    threshold, acc = best_threshold([0.3, 0.4], [1, 1])
    assert threshold < 0.3 and acc == 1.0
    threshold, acc = best_threshold([0.3, 0.4], [0, 0])
    assert threshold > 0.4 and acc == 1.0


def test_best_threshold_is_exact_with_ties():
    """The one best-threshold rule (k-fold protocol and training validation): equal scores get one decision, the
    accuracy is the best over every threshold, and of equally good thresholds the lowest is returned."""
    assert best_threshold([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])[1] == 1.0
    assert best_threshold([0.5, 0.5], [1, 0])[1] == 0.5  # ties cannot be split
    assert best_threshold([0.1, 0.9], [1, 0])[1] == 0.5
    assert best_threshold([0.2, 0.2, 0.2, 0.7], [1, 0, 0, 1]) == (pytest.approx(0.45), 0.75)
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 40))
        scores = np.round(rng.normal(size=n), int(rng.integers(0, 2)))  # many ties
        labels = rng.integers(0, 2, n)
        unique = np.unique(scores)
        candidates = np.r_[unique[0] - 1.0, (unique[:-1] + unique[1:]) / 2, unique[-1] + 1.0]
        accuracies = [np.mean((scores > t) == (labels == 1)) for t in candidates]
        threshold, accuracy = best_threshold(scores, labels)
        assert accuracy == max(accuracies), trial
        assert threshold == pytest.approx(candidates[int(np.argmax(accuracies))]), trial
        assert np.mean((scores > threshold) == (labels == 1)) == accuracy


def test_kfold_perfectly_separable():
    rng = np.random.default_rng(0)
    folds = np.repeat(np.arange(1, 11), 20)
    labels = np.tile(np.r_[np.ones(10), np.zeros(10)], 10).astype(int)
    scores = np.where(labels == 1, rng.uniform(0.6, 1.0, 200), rng.uniform(-1.0, 0.4, 200))
    result = kfold_accuracy(scores, labels, folds)
    assert result["mean"] == 1.0 and result["std"] == 0.0
    assert result["per_fold"] == [1.0] * 10 and result["folds"] == list(range(1, 11))
    assert all(0.4 < t < 0.6 for t in result["thresholds"])
    assert result["note"] == ""


def test_kfold_known_misclassifications():
    # every fold: 5 positives at 0.8-0.9, 5 negatives at 0.2-0.3, and one positive at 0.0 (below every negative)
    scores, labels, folds = [], [], []
    for fold in range(1, 11):
        scores += [0.8, 0.82, 0.85, 0.88, 0.9, 0.2, 0.22, 0.25, 0.28, 0.3, 0.0]
        labels += [1] * 5 + [0] * 5 + [1]
        folds += [fold] * 11
    result = kfold_accuracy(scores, labels, folds)
    assert result["per_fold"] == pytest.approx([10 / 11] * 10)
    assert result["mean"] == pytest.approx(10 / 11) and result["std"] == pytest.approx(0.0)
    correct = pair_correctness(scores, labels, folds)
    assert correct.dtype == bool
    assert np.flatnonzero(~correct).tolist() == [11 * k + 10 for k in range(10)]


def test_kfold_threshold_comes_from_other_folds():
    # folds 2-10 separate at 0.5; fold 1's positives (0.40, 0.45) lie below it, so fold 1 scores 0.5 although
    # its own optimum threshold (between 0.1 and 0.4) would give 1.0
    scores, labels, folds = [0.40, 0.45, 0.05, 0.10], [1, 1, 0, 0], [1] * 4
    for fold in range(2, 11):
        scores += [0.7, 0.8, 0.2, 0.3]
        labels += [1, 1, 0, 0]
        folds += [fold] * 4
    result = kfold_accuracy(scores, labels, folds)
    assert best_threshold(scores[:4], labels[:4])[1] == 1.0  # fold 1 alone is separable
    assert result["thresholds"][0] == pytest.approx(0.5)  # midpoint of 0.3 and 0.7 (folds 2-10)
    assert result["thresholds"][1:] == pytest.approx([0.35] * 9)  # 0.3 | 0.4 once fold 1 is in the training set
    assert result["per_fold"] == [0.5] + [1.0] * 9
    assert result["mean"] == pytest.approx(0.95)
    assert result["std"] == pytest.approx(np.std([0.5] + [1.0] * 9))
    assert pair_correctness(scores, labels, folds).tolist() == [False, False, True, True] + [True] * 36


def test_kfold_single_fold_uses_internal_split():
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(30), np.zeros(30)].astype(int)
    scores = np.where(labels == 1, rng.normal(0.6, 0.2, 60), rng.normal(0.2, 0.2, 60))
    result = kfold_accuracy(scores, labels, np.ones(60, int))
    assert len(result["per_fold"]) == 10 and result["folds"] == list(range(1, 11))
    assert "single fold" in result["note"] and "internal 10-fold" in result["note"]
    internal = internal_folds(labels)
    assert internal[:30].tolist() == np.repeat(np.arange(1, 11), 3).tolist()  # contiguous chunks of positives
    assert internal[30:].tolist() == np.repeat(np.arange(1, 11), 3).tolist()
    assert kfold_accuracy(scores, labels, internal)["per_fold"] == result["per_fold"]
    # deterministic
    assert kfold_accuracy(scores, labels, np.ones(60, int)) == result


def test_kfold_rejects_bad_input():
    with pytest.raises(ValueError, match="labels"):
        kfold_accuracy([0.1, 0.2], [0, 2], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        kfold_accuracy([0.1, np.nan], [0, 1], [1, 2])
    with pytest.raises(ValueError, match="fold"):
        kfold_accuracy([0.1, 0.2], [0, 1], [1])


# ------------------------------------------------------------------------------------------
# ROC
# ------------------------------------------------------------------------------------------


def test_roc_perfect_separation():
    result = roc_metrics([0.9, 0.8, 0.7, 0.1, 0.2, 0.3], [1, 1, 1, 0, 0, 0])
    assert result["auc"] == 1.0 and result["eer"] == 0.0
    assert result["tar_at_far_1e-2"] == 1.0 and result["tar_at_far_1e-3"] == 1.0


def test_roc_random_scores():
    rng = np.random.default_rng(0)
    result = roc_metrics(rng.random(4000), rng.integers(0, 2, 4000))
    assert result["auc"] == pytest.approx(0.5, abs=0.03)
    assert result["eer"] == pytest.approx(0.5, abs=0.03)


def test_roc_hand_case():
    # positives 0.9, 0.5; negatives 0.5 (tie), 0.1 -> ROC points (0,0) (0,.5) (.5,1) (1,1)
    result = roc_metrics([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0])
    assert result["auc"] == pytest.approx(0.875)  # 3 wins + 1 tie of 4 positive-negative pairs
    assert result["eer"] == pytest.approx(0.25)  # segment (0,.5)-(.5,1) meets FPR = 1 - TPR at FPR .25
    assert result["tar_at_far_1e-2"] == pytest.approx(0.51)  # 0.5 + 0.01/0.5 * 0.5
    assert result["tar_at_far_1e-3"] == pytest.approx(0.501)
    assert (result["n_pos"], result["n_neg"]) == (2, 2)
    with pytest.raises(ValueError, match="positive and negative"):
        roc_metrics([0.1, 0.2], [1, 1])


# ------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_and_narrows_with_sample_size():
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=100), rng.normal(size=5000)
    low_s, high_s = bootstrap_ci(small)
    low_l, high_l = bootstrap_ci(large)
    assert low_s < small.mean() < high_s and low_l < large.mean() < high_l
    assert high_l - low_l < (high_s - low_s) / 3  # ~ 1/sqrt(50) as wide
    assert bootstrap_ci(small) == (low_s, high_s)  # deterministic for a seed
    assert bootstrap_ci(np.ones(10, bool)) == (1.0, 1.0)
    lo90, hi90 = bootstrap_ci(small, alpha=0.1)
    assert low_s <= lo90 and hi90 <= high_s


# ------------------------------------------------------------------------------------------
# Embeddings, pairs, identification
# ------------------------------------------------------------------------------------------


def test_embed_crops_unit_norm_flip_fusion_and_determinism(tmp_path):
    model = tiny_model()
    crops = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    emb = embed_crops(model, crops, 56, batch_size=2)
    assert emb.shape == (5, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        x = to_input(crops, 56)
        manual = nn.functional.normalize(model(x) + model(x.flip(3)), dim=1).numpy()
        plain = nn.functional.normalize(model(x), dim=1).numpy()
    np.testing.assert_allclose(emb, manual, atol=1e-5)
    np.testing.assert_allclose(embed_crops(model, crops, 56, flip=False), plain, atol=1e-5)
    np.testing.assert_array_equal(embed_crops(model, crops, 56, batch_size=2), emb)
    # crop files give the same embeddings as the array (PNG is lossless)
    paths = []
    for i, crop in enumerate(crops):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(crop).save(paths[-1])
    np.testing.assert_allclose(embed_crops(model, paths, 56, batch_size=3), emb, atol=1e-6)
    model.train()
    embed_crops(model, crops[:1], 56)
    assert model.training  # the training flag is restored
    assert embed_crops(model, crops[:0], 56).shape == (0, 32)


@pytest.mark.parametrize("forward_batch", [1, 3, None])
def test_embeddings_do_not_depend_on_how_a_batch_is_cut(forward_batch):
    """compute_embeddings feeds the model chunks of forward_batch images (default forward_chunk: small ones on
    the CPU); the rows match those of one forward pass over the whole batch."""
    model = fold_batchnorm(tiny_model())
    crops = np.random.default_rng(1).integers(0, 256, (7, 112, 112, 3), dtype=np.uint8)
    whole = compute_embeddings(model, crops, 56, batch_size=7, flip=True, forward_batch=14)
    cut = compute_embeddings(model, crops, 56, batch_size=7, flip=True, forward_batch=forward_batch)
    torch.testing.assert_close(cut, whole, rtol=0, atol=1e-6)
    assert forward_chunk(torch.device("cpu"), 56) == 64 and forward_chunk(torch.device("cpu"), 150) == 8
    assert forward_chunk(torch.device("cuda"), 112) is None  # GPUs take whole batches


def _write_pngs(folder: Path, crops: np.ndarray) -> list[Path]:
    paths = []
    for i, crop in enumerate(crops):
        paths.append(folder / f"{i}.png")
        Image.fromarray(crop).save(paths[-1])
    return paths


def test_decoded_crops_are_read_once_and_again_when_the_file_changes(tmp_path):
    crops = np.random.default_rng(2).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    paths = _write_pngs(tmp_path, crops)
    decoded = DecodedCrops()
    first = load_crops(paths, cache=decoded)
    np.testing.assert_array_equal(first, crops)
    assert (decoded.misses, decoded.hits, len(decoded)) == (4, 0, 4) and decoded.nbytes == crops.nbytes
    first[:] = 0  # the caller's copy: changing it does not change what is kept
    np.testing.assert_array_equal(load_crops(paths[::-1], cache=decoded), crops[::-1])
    assert (decoded.misses, decoded.hits) == (4, 4)
    # a crop rebuilt with other pixels (new size or modification time) is decoded again
    Image.fromarray(crops[0][::-1].copy()).save(paths[0])
    os.utime(paths[0], ns=(1, 1))
    np.testing.assert_array_equal(load_crops(paths[:1], cache=decoded)[0], crops[0][::-1])
    assert decoded.misses == 5 and len(decoded) == 4 and decoded.nbytes == crops.nbytes


def test_decoded_crops_keep_at_most_max_bytes(tmp_path):
    crops = np.random.default_rng(3).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    paths = _write_pngs(tmp_path, crops)
    decoded = DecodedCrops(max_bytes=2 * crops[0].nbytes)
    for _ in range(2):
        np.testing.assert_array_equal(load_crops(paths, cache=decoded), crops)  # right either way
    assert len(decoded) == 2 and decoded.nbytes == 2 * crops[0].nbytes
    assert (decoded.hits, decoded.misses) == (2, 4)  # the third crop is decoded on every read
    with pytest.raises(ValueError, match="max_bytes"):
        DecodedCrops(max_bytes=-1)


def test_evaluation_through_decoded_crops_matches_reading_the_files(tmp_path):
    model = tiny_model()
    crops = np.random.default_rng(4).integers(0, 256, (6, 112, 112, 3), dtype=np.uint8)
    paths = _write_pngs(tmp_path, crops)
    decoded = DecodedCrops()
    plain = embed_crops(model, paths, 56)
    for _ in range(2):
        np.testing.assert_array_equal(embed_crops(model, paths, 56, decoded_crops=decoded), plain)
    assert decoded.hits == 6


def _old_validation_embeddings(model, crops, input_size, batch_size, channels_last):
    """Training validation's embedding loop before compute_embeddings existed (reference)."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(crops), batch_size):
            x = to_input(crops[lo:lo + batch_size], input_size, "cpu")
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(nn.functional.normalize(model(x).float(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def _old_cam_embeddings(model, crops, input_size, batch_size):
    """Grad-CAM's raw fp32 reference embeddings before compute_embeddings existed (reference)."""
    out = []
    model.eval()
    with torch.no_grad(), torch.autocast(device_type="cpu", enabled=False):
        for start in range(0, len(crops), batch_size):
            out.append(model(to_input(crops[start:start + batch_size], input_size)).float().cpu())
    return torch.cat(out)


def test_compute_embeddings_gives_what_validation_evaluation_and_gradcam_computed():
    from maskstudy.explain.cams import _embed

    model = tiny_model()
    crops = np.random.default_rng(1).integers(0, 256, (7, 112, 112, 3), dtype=np.uint8)
    model.train()
    # training validation: no flip, normalised, the run's memory format
    for channels_last in (False, True):
        got = compute_embeddings(model, crops, 56, batch_size=3, device="cpu", flip=False, normalise=True,
                                 amp_dtype=None, channels_last=channels_last)
        np.testing.assert_array_equal(got.numpy(), _old_validation_embeddings(model, crops, 56, 3, channels_last))
    assert model.training
    # evaluation: flip fusion, normalised (embed_crops is this setting)
    with torch.no_grad():
        x = to_input(crops, 56)
        both = model.eval()(torch.cat([x, x.flip(3)])).float()
    fused = nn.functional.normalize(both[:7] + both[7:], dim=1).numpy()
    np.testing.assert_allclose(compute_embeddings(model, crops, 56, flip=True).numpy(), fused, atol=1e-6)
    # embed_crops runs the BatchNorm-folded copy on channels-last batches (CPU): the same up to float rounding
    np.testing.assert_array_equal(embed_crops(model, crops, 56), compute_embeddings(
        fold_batchnorm(model), crops, 56, flip=True, channels_last=EVAL_CHANNELS_LAST["cpu"]).numpy())
    np.testing.assert_allclose(embed_crops(model, crops, 56), compute_embeddings(model, crops, 56, flip=True).numpy(),
                               atol=1e-5)
    # Grad-CAM: raw fp32, also inside a caller's autocast block
    raw = compute_embeddings(model, crops, 56, batch_size=4, normalise=False)
    old = _old_cam_embeddings(model, crops, 56, 4)
    assert torch.equal(raw, old) and raw.dtype == torch.float32
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert torch.equal(_embed(model, crops, 56, 4), old)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(7))  # not normalised
    # autocast to bf16 when asked: close to fp32, not equal
    half = compute_embeddings(model, crops, 56, amp_dtype=torch.bfloat16)
    assert half.dtype == torch.float32 and not torch.equal(half, compute_embeddings(model, crops, 56))
    np.testing.assert_allclose(half.numpy(), compute_embeddings(model, crops, 56).numpy(), atol=0.05)
    with pytest.raises(ValueError, match="uint8"):
        compute_embeddings(model, crops.astype(np.float32), 56)


class MeanColour(nn.Module):
    """Stub embedding: the crop's mean colour mapped from [-1, 1] to [0, 1] (pure red -> (1, 0, 0))."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.embedding_size = 3

    def forward(self, x):
        return (x.mean(dim=(2, 3)) + 1) / 2 + 0 * self.dummy


COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def write_crop(root: Path, rel: str, colour: str) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (112, 112), COLOURS[colour]).save(path)
    return rel


def test_identification_rank1_exact(tmp_path):
    # (identity, name, unmasked colour, masked-twin colour)
    spec = [
        ("A", "A_0002", "green", "red"),  # listed first, but A_0001 comes first by name
        ("A", "A_0001", "red", "green"),  # gallery for A is red (its unmasked image, not the green twin)
        ("A", "A_0003", "blue", "green"),  # probe: green -> B, wrong
        ("B", "B_0001", "green", "blue"),  # gallery B green
        ("B", "B_0002", "red", "green"),  # probe green -> B, right
        ("C", "C_0001", "blue", "blue"),  # single image: not in gallery nor a probe
        ("D", "D_0001", "blue", "blue"),  # gallery D blue
        ("D", "D_0002", "blue", "red"),  # probe red -> A, wrong
    ]
    rows = []
    for identity, name, plain, masked in spec:
        rows.append({"identity": identity,
                     "aligned": write_crop(tmp_path, f"{identity}/{name}.png", plain),
                     "masked": write_crop(tmp_path, f"{identity}/{name}_mask.png", masked)})
    images = pd.DataFrame(rows)
    result = identification_rank1(MeanColour(), 16, images, tmp_path)
    # probes: A_0002 masked (red -> A right), A_0003 masked (green -> B wrong), B_0002 masked (right),
    # D_0002 masked (red -> A wrong)
    assert result["gallery"] == 3 and result["probes"] == 4
    assert result["rank1"] == 0.5
    assert result["correct"].tolist() == [True, False, True, False]
    low, high = result["ci"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0


def test_evaluate_pairs_and_scenarios_share_embeddings(tmp_path):
    aligned = tmp_path / "aligned"
    colours = ["red", "green", "blue"]
    for k, colour in enumerate(colours):
        for i in range(3):
            write_crop(aligned, f"P{k}/P{k}_{i}.png", colour)
            write_crop(aligned, f"P{k}/P{k}_{i}_mask.png", colours[(k + 1) % 3] if i == 2 else colour)
    rows = []
    for fold in (1, 2):
        for k in range(3):
            rows.append((fold, f"P{k}/P{k}_0.png", f"P{k}/P{k}_{fold}.png", 1))
            rows.append((fold, f"P{k}/P{k}_0.png", f"P{(k + 1) % 3}/P{(k + 1) % 3}_{fold}.png", 0))
    plain = pd.DataFrame(rows, columns=["fold", "a", "b", "label"])
    masked = plain.assign(b=plain["b"].str.replace(".png", "_mask.png", regex=False))
    pairs_dir = tmp_path / "pairs"
    pairs_dir.mkdir()
    plain.to_csv(pairs_dir / "unmasked_unmasked.csv", index=False)
    masked.to_csv(pairs_dir / "masked_unmasked.csv", index=False)

    cache: dict = {}
    result = evaluate_pairs(MeanColour(), 16, plain, aligned, cache, n_boot=200)
    assert len(cache) == 9 and result["pairs"] == 12
    assert result["accuracy"]["mean"] == 1.0 and result["roc"]["auc"] == 1.0
    np.testing.assert_allclose(result["scores"], np.where(plain["label"] == 1, 1.0, 0.0), atol=1e-6)
    assert result["correct"].all() and result["acc_ci"] == (1.0, 1.0)

    from maskstudy.study.testsets import TestSets, evaluate_model

    empty = pd.DataFrame(columns=["identity", "aligned", "masked"])
    tests = TestSets(pairs_dir, aligned, ["unmasked_unmasked", "masked_unmasked"], empty, empty[["identity", "aligned"]])
    results = evaluate_model(MeanColour(), 16, tests, identification=False, n_boot=200)
    table, details = results.verification, results.per_pair
    assert table["scenario"].tolist() == ["unmasked_unmasked", "masked_unmasked"]
    assert list(table.columns) == ["scenario", "pairs", "accuracy_mean", "accuracy_std", "acc_ci_low",
                                   "acc_ci_high", "auc", "eer", "tar_far_1e-2", "tar_far_1e-3"]
    assert table.loc[0, "accuracy_mean"] == 1.0
    # fold 2's masked positives (P*_2_mask) carry the next identity's colour: they fail
    assert table.loc[1, "accuracy_mean"] < 1.0
    assert details["masked_unmasked"]["correct"].shape == (12,)
    assert list(details["masked_unmasked"]["clusters"][:2]) == ["P0", "P0"]  # resampled by identity
    with pytest.raises(FileNotFoundError, match="masked_masked"):
        evaluate_model(MeanColour(), 16, tests, scenarios=["masked_masked"], identification=False)
    with pytest.raises(FileNotFoundError, match="missing"):
        evaluate_pairs(MeanColour(), 16, plain.assign(a="nope/x.png"), aligned)


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------


def _touch(path):  # what a malicious pickle would run on load
    Path(path).write_text("pwned")
    return 0


class Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


def test_from_checkpoint_loads_and_matches_model(tmp_path):
    model = tiny_model(seed=3)
    path = write_checkpoint(tmp_path / "ckpt.pt", model, head={"weight": torch.zeros(2, 32)})
    recognizer = FaceRecognizer.from_checkpoint(path, device="cpu", detector=object())
    assert recognizer.input_size == 56 and recognizer.config["backbone"] == "ir18"
    crops = np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_allclose(recognizer.embed_aligned(crops), embed_crops(model, crops, 56), atol=1e-6)


def test_from_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        FaceRecognizer.from_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "a.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or not a torch file"):
        FaceRecognizer.from_checkpoint(garbage)
    data = write_checkpoint(tmp_path / "b.pt").read_bytes()
    truncated = tmp_path / "c.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or not a torch file"):
        FaceRecognizer.from_checkpoint(truncated)
    wrong = tmp_path / "wrong.pt"
    torch.save({"format": "something-else", "config": {}, "model": {}}, wrong)
    with pytest.raises(ValueError, match="format 'something-else'"):
        FaceRecognizer.from_checkpoint(wrong)
    bare = tmp_path / "bare.pt"
    torch.save(tiny_model().state_dict(), bare)  # a state dict is not a checkpoint
    with pytest.raises(CheckpointError, match="format None"):
        FaceRecognizer.from_checkpoint(bare)
    mismatch = tmp_path / "mismatch.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": tiny_model().state_dict(),
                "config": {"backbone": "ir18", "width": 0.25, "input_size": 56, "embedding_size": 32}}, mismatch)
    with pytest.raises(CheckpointError, match="do not fit"):
        FaceRecognizer.from_checkpoint(mismatch)


def test_from_checkpoint_refuses_arbitrary_pickles(tmp_path):
    marker = tmp_path / "marker"
    path = write_checkpoint(tmp_path / "evil.pt", extra=Malicious(marker))
    with pytest.raises(CheckpointError, match=r"refusing to load .*weights_only=True.*_touch"):
        FaceRecognizer.from_checkpoint(path)
    assert not marker.exists()  # nothing from the file ran


# ------------------------------------------------------------------------------------------
# FaceRecognizer on real photos
# ------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_face_recognizer_real_photos(tmp_path, lfw_root, detector):
    from maskstudy.faces.detect import load_image
    from maskstudy.faces.masks.drawing import draw_mask

    recognizer = FaceRecognizer.from_checkpoint(write_checkpoint(tmp_path / "ckpt.pt"), device="cpu",
                                                detector=detector)
    paths = [lfw_root / rel for rel in LFW_PHOTOS]
    photo = load_image(paths[0]).image
    found = detector.detect([photo])[0]
    masked = draw_mask(photo, found.landmarks[found.chosen], "surgical_blue", seed=0)
    grey = np.full((250, 250, 3), 128, dtype=np.uint8)
    result = recognizer.embed([*paths, grey, masked])
    assert result.embeddings.shape == (5, 32) and result.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    assert result.face_found.tolist() == [True, True, True, False, True]
    assert result.fallback.tolist() == [False, False, False, True, False]
    # the fallback crop of the grey image is the grey centre square
    crops, _, _ = recognizer.align([grey])
    assert (crops == 128).all()
    # a path, a PIL image and an array of the same photo embed alike
    same = recognizer.embed([paths[0], photo, np.asarray(photo)]).embeddings
    np.testing.assert_allclose(same[1:], same[[0, 0]], atol=1e-6)
    assert recognizer.similarity(paths[1], paths[1]) == pytest.approx(1.0, abs=1e-5)
    assert recognizer.similarity(paths[0], masked) < 1.0 - 1e-4

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        recognizer.embed([paths[0], bad])
    with pytest.raises(ValueError, match="nothere.jpg"):
        recognizer.embed([tmp_path / "nothere.jpg"])


# ------------------------------------------------------------------------------------------
# verify command
# ------------------------------------------------------------------------------------------


def _aligned_case(tmp_path: Path, source: str) -> tuple[Path, Path]:
    """Pairs CSV with folds and its aligned root: the smoke data (when built) or synthetic crops in tmp_path."""
    if source == "smoke":
        pairs = SMOKE / "pairs" / "unmasked_unmasked.csv"
        if not (pairs.is_file() and (SMOKE / "aligned").is_dir()):
            pytest.skip(f"smoke data not built ({pairs} absent); the synthetic case covers verify_command")
        return pairs, SMOKE / "aligned"
    root = tmp_path / "aligned"
    rng = np.random.default_rng(0)
    rows = []
    for fold in range(1, 4):
        for k in range(4):
            for i in range(2):
                rel = f"F{fold}_{k}/F{fold}_{k}_{i}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(root / rel)
            rows.append((fold, f"F{fold}_{k}/F{fold}_{k}_0.png", f"F{fold}_{k}/F{fold}_{k}_1.png", 1))
            rows.append((fold, f"F{fold}_{k}/F{fold}_{k}_0.png", f"F{fold}_{(k + 1) % 4}/F{fold}_{(k + 1) % 4}_1.png", 0))
    path = tmp_path / "pairs.csv"
    pd.DataFrame(rows, columns=["fold", "a", "b", "label"]).to_csv(path, index=False)
    return path, root


@pytest.mark.parametrize("source", ["smoke", "synthetic"])
def test_verify_command_aligned_crops(tmp_path, capsys, source):
    pairs, root = _aligned_case(tmp_path, source)
    ckpt = write_checkpoint(tmp_path / "ckpt.pt")
    # a detector that must not be used: every image is an aligned 112x112 crop
    result = verify_command(ckpt, pairs, root, batch_size=64, device="cpu", detector=object())
    frame = pd.read_csv(pairs)
    assert result["pairs"] == len(frame) and result["raw_images"] == 0
    assert result["aligned_images"] == len(set(frame.a) | set(frame.b))
    assert len(result["per_fold"]) == frame.fold.nunique() and result["note"] == ""
    assert 0.0 <= result["accuracy_mean"] <= 1.0 and 0.0 <= result["auc"] <= 1.0
    out = capsys.readouterr().out
    assert "accuracy (" in out and "+-" in out and "AUC" in out and "EER" in out

    # the CLI helpers
    parser = argparse.ArgumentParser()
    add_verify_arguments(parser)
    args = parser.parse_args(["--checkpoint", str(ckpt), "--pairs", str(pairs), "--root", str(root),
                              "--device", "cpu", "--no-progress", "--output", str(tmp_path / "m.json")])
    assert args.handler is run_verify and run_verify(args) == 0
    assert '"accuracy_mean"' in (tmp_path / "m.json").read_text()
    args = parser.parse_args(["--checkpoint", str(tmp_path / "none.pt"), "--pairs", str(pairs), "--root", str(root)])
    assert run_verify(args) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.realdata
def test_verify_command_raw_photos_seed_format(tmp_path, lfw_root, detector, capsys):
    people = ["Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody"]
    for name in people:
        assert (lfw_root / name / f"{name}_0002.jpg").is_file()
    lines = []
    for k, name in enumerate(people):
        other = people[(k + 1) % 3]
        lines.append(f"{name}/{name}_0001.jpg {name}/{name}_0002.jpg 1")
        lines.append(f"{name}/{name}_0001.jpg {other}/{other}_0002.jpg 0")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    result = verify_command(write_checkpoint(tmp_path / "ckpt.pt"), pairs, lfw_root, device="cpu",
                            detector=detector)
    assert result["raw_images"] == 6 and result["aligned_images"] == 0
    assert result["faces_found"] == 6 and result["fallback_crops"] == 0
    assert "single fold" in result["note"]
    assert "raw photos: 6 faces found" in capsys.readouterr().out
