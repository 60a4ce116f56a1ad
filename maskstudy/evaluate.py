"""Face verification and identification metrics, and a checkpoint-backed face recogniser.

Verification follows the LFW protocol (Huang et al., "Labeled Faces in the Wild", UMass TR 07-49, 2007):
pairs are split into folds; for each fold the decision threshold is the one that maximises accuracy on the
*other* folds, the fold's accuracy is measured at that threshold, and the mean and standard deviation over the
folds are reported. Scores are cosine similarities of L2-normalised embeddings of aligned crops, with the
embeddings of a crop and of its horizontal mirror summed before normalising (the flip fusion of ArcFace's
evaluation code: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019).
ROC summaries (AUC, EER, TAR at fixed FAR) and bootstrap confidence intervals (Efron & Tibshirani, "An
Introduction to the Bootstrap", 1993) complete the verification report; :func:`identification_rank1` measures
closed-set rank-1 identification of masked probes against an unmasked gallery.

All model input goes through :func:`maskstudy.preprocess.load_crops` and :func:`maskstudy.preprocess.to_input`,
exactly as in training. :class:`FaceRecognizer` turns raw photos into embeddings (MTCNN detection, 5-point
alignment onto the ArcFace 112x112 template, embedding) from a ``maskstudy-checkpoint-v1`` file, and
:func:`verify_command` backs ``python -m maskstudy verify``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .align import centre_crop  # noqa: F401  (public here since v0.1)
from .pairs import read_pair_folds, read_pairs
from .preprocess import load_crops, to_input
from .statistics import cluster_bootstrap_ci

#: Side of the aligned crops on disk (the ArcFace template size); models with a smaller ``input_size`` get
#: these crops resized by :func:`maskstudy.preprocess.to_input`, as in training.
CROP_SIZE = 112
#: The ``format`` field of a checkpoint written by ``maskstudy.train``.
CHECKPOINT_FORMAT = "maskstudy-checkpoint-v1"
#: Number of internal folds used when the pairs carry a single fold (LFW-only protocol: fold 1 only).
INTERNAL_FOLDS = 10
#: False accept rates at which the true accept rate is reported.
FAR_LEVELS = (1e-2, 1e-3)


# --------------------------------------------------------------------------------------------
# Embedding aligned crops
# --------------------------------------------------------------------------------------------


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    if param is None:
        param = next(model.buffers(), None)
    return param.device if param is not None else torch.device("cpu")


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _progress(iterable, total: int, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def embed_crops(
    model: nn.Module,
    crops: np.ndarray | Sequence[str | os.PathLike],
    input_size: int,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    flip: bool = True,
    progress: bool = False,
) -> np.ndarray:
    """Embed aligned face crops: (N, D) float32, each row L2-normalised.

    ``crops`` is a uint8 array (N, H, W, 3) of RGB crops, or a list of crop files (read batch by batch with
    :func:`~maskstudy.preprocess.load_crops` at 112x112). Crops become model input through
    :func:`~maskstudy.preprocess.to_input` (resized to ``input_size`` when needed). With ``flip`` the
    embedding is ``normalise(f(x) + f(hflip(x)))``, the flip fusion of ArcFace's evaluation (Deng et al.
    2019); without it ``normalise(f(x))``.

    The model runs in eval mode under ``torch.inference_mode`` (its training flag is restored afterwards), with
    bf16 autocast on CUDA only. ``device`` defaults to the model's device; a different device moves the model.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from_paths = not isinstance(crops, (np.ndarray, torch.Tensor))
    if from_paths:
        crops = [str(p) for p in crops]
        n = len(crops)
    else:
        array = crops.cpu().numpy() if isinstance(crops, torch.Tensor) else crops
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise ValueError(f"expected uint8 crops of shape (N, H, W, 3), got {array.dtype} {array.shape}")
        crops = array
        n = len(array)
    if device is None:
        device = _model_device(model)
    else:
        device = torch.device(device)
        model.to(device)
    if n == 0:
        return np.zeros((0, int(getattr(model, "embedding_size", 0))), dtype=np.float32)

    was_training = model.training
    model.eval()
    outputs = []
    starts = range(0, n, batch_size)
    try:
        with torch.inference_mode(), _autocast(device):
            for start in _progress(starts, len(starts), progress, "embedding"):
                chunk = crops[start:start + batch_size]
                if from_paths:
                    chunk = load_crops(chunk, CROP_SIZE)
                x = to_input(chunk, input_size, device=device)
                if flip:
                    both = model(torch.cat([x, x.flip(3)])).float()
                    emb = both[: len(x)] + both[len(x):]
                else:
                    emb = model(x).float()
                outputs.append(nn.functional.normalize(emb, dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs).numpy().astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# Verification accuracy (LFW protocol)
# --------------------------------------------------------------------------------------------


def _check_scores(scores, labels, folds=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    if not np.isin(labels, [0, 1]).all():
        raise ValueError("labels must be 0 or 1")
    labels = labels.astype(np.int64)
    if folds is not None:
        folds = np.asarray(folds).ravel()
        if len(folds) != len(scores):
            raise ValueError(f"{len(scores)} scores but {len(folds)} fold ids")
    return scores, labels, folds


def best_threshold(scores, labels) -> tuple[float, float]:
    """Threshold maximising accuracy of the rule "same identity iff score > threshold", and that accuracy.

    Candidates are the midpoints between consecutive unique scores, plus one threshold below all scores
    (everything "same") and one above (everything "different"), each 1.0 away. Evaluated at once with
    cumulative counts (O(N log N)). Ties go to the lowest threshold.
    """
    scores, labels, _ = _check_scores(scores, labels)
    if len(scores) == 0:
        raise ValueError("no scores to choose a threshold from")
    unique, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse, weights=labels == 1, minlength=len(unique))
    neg = np.bincount(inverse, weights=labels == 0, minlength=len(unique))
    # k = number of unique values below the threshold, k = 0 .. K
    below_neg = np.concatenate([[0.0], np.cumsum(neg)])
    below_pos = np.concatenate([[0.0], np.cumsum(pos)])
    correct = below_neg + (pos.sum() - below_pos)
    candidates = np.concatenate([[unique[0] - 1.0], (unique[:-1] + unique[1:]) / 2.0, [unique[-1] + 1.0]])
    k = int(np.argmax(correct))
    return float(candidates[k]), float(correct[k] / len(scores))


def internal_folds(labels, n_folds: int = INTERNAL_FOLDS) -> np.ndarray:
    """Fold ids 1..``n_folds`` for pairs that come as one block, stratified by pair order.

    The positives, in their order, are cut into ``n_folds`` contiguous near-equal chunks, and so are the
    negatives; chunk k of each goes to fold k. For pairs laid out like LFW's ``pairs.txt`` (fold after fold,
    each with as many matched pairs, then as many mismatched ones) this recovers LFW's own folds; in general it
    keeps neighbouring pairs (often of the same identities) in the same fold.
    """
    labels = np.asarray(labels).ravel()
    out = np.zeros(len(labels), dtype=np.int64)
    for value in (1, 0):
        index = np.flatnonzero(labels == value)
        for fold, chunk in enumerate(np.array_split(index, n_folds), start=1):
            out[chunk] = fold
    return out


def _kfold(scores, labels, folds) -> tuple[dict, np.ndarray]:
    """Shared core of :func:`kfold_accuracy` and :func:`pair_correctness`: the result dict and each pair's
    threshold (the one of its fold)."""
    scores, labels, folds = _check_scores(scores, labels, folds)
    if folds is None:
        folds = np.ones(len(scores), dtype=np.int64)
    if len(scores) < 2:
        raise ValueError(f"need at least 2 pairs for k-fold accuracy, got {len(scores)}")
    ids = np.unique(folds)
    note = ""
    if len(ids) == 1:
        single = ids[0].item() if hasattr(ids[0], "item") else ids[0]
        folds = internal_folds(labels)
        ids = np.unique(folds)
        note = (f"a single fold ({single}) was given: accuracy over an internal {len(ids)}-fold split of its "
                f"{len(scores)} pairs (positives and negatives each cut into {INTERNAL_FOLDS} contiguous chunks "
                f"in pair order)")
    per_fold, thresholds = [], []
    pair_threshold = np.empty(len(scores))
    for fold in ids:
        test = folds == fold
        threshold, _ = best_threshold(scores[~test], labels[~test])
        per_fold.append(float(np.mean((scores[test] > threshold) == (labels[test] == 1))))
        thresholds.append(threshold)
        pair_threshold[test] = threshold
    result = {
        "mean": float(np.mean(per_fold)),
        "std": float(np.std(per_fold)),
        "per_fold": per_fold,
        "thresholds": thresholds,
        "folds": [f.item() if hasattr(f, "item") else f for f in ids],
        "note": note,
    }
    return result, pair_threshold


def kfold_accuracy(scores, labels, folds) -> dict:
    """Verification accuracy by the LFW protocol (Huang et al. 2007).

    For each fold, the threshold maximising accuracy on the *other* folds (see :func:`best_threshold`) is
    applied to this fold ("same" iff score > threshold). Returns ``mean`` and ``std`` (population standard
    deviation, ``ddof=0``, as in the ArcFace evaluation code) of the per-fold accuracies, ``per_fold`` and
    ``thresholds`` (in fold order), ``folds`` (the fold ids) and ``note``.

    With a single fold (the LFW-only protocol evaluates fold 1) there are no other folds to tune on: the pairs
    are split into :data:`INTERNAL_FOLDS` internal folds by :func:`internal_folds`, and ``note`` says so
    (it is ``""`` otherwise).
    """
    return _kfold(scores, labels, folds)[0]


def pair_correctness(scores, labels, folds) -> np.ndarray:
    """Whether each pair is classified correctly under its fold's threshold from :func:`kfold_accuracy`
    (bool array, in pair order); its mean over one fold's pairs is that fold's accuracy."""
    _, pair_threshold = _kfold(scores, labels, folds)
    scores, labels, _ = _check_scores(scores, labels)
    return (scores > pair_threshold) == (labels == 1)


def _tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Best TPR on the piecewise-linear ROC curve at FPR == ``target`` (linear between ROC points)."""
    i = int(np.searchsorted(fpr, target, side="right")) - 1  # last point with fpr <= target
    if i < 0:
        return 0.0
    if fpr[i] == target or i == len(fpr) - 1:
        return float(tpr[i])
    f0, f1, t0, t1 = fpr[i], fpr[i + 1], tpr[i], tpr[i + 1]
    return float(t0 + (target - f0) / (f1 - f0) * (t1 - t0))


def roc_metrics(scores, labels) -> dict:
    """ROC summaries of verification scores (higher = more likely the same identity).

    From :func:`sklearn.metrics.roc_curve`: ``auc``; ``eer``, the equal error rate, where FPR = 1 - TPR on the
    ROC curve taken as piecewise linear between its points; ``tar_at_far_1e-2`` and ``tar_at_far_1e-3``, the
    true accept rate at exactly that false accept rate, interpolated linearly between ROC points (with few
    negatives such a FAR lies between the achievable ones: ``n_neg`` says how fine the FAR grid is).
    Needs both positive and negative pairs.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    scores, labels, _ = _check_scores(scores, labels)
    n_pos, n_neg = int(labels.sum()), int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs positive and negative pairs, got {n_pos} positive and {n_neg} negative")
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    gap = fpr - (1.0 - tpr)  # nondecreasing along the curve, from -1 to 1
    i = int(np.argmax(gap >= 0))
    if i == 0 or gap[i] == 0:
        eer = float(fpr[i])
    else:
        t = -gap[i - 1] / (gap[i] - gap[i - 1])
        eer = float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))
    out = {"auc": float(roc_auc_score(labels, scores)), "eer": eer}
    for far in FAR_LEVELS:
        out[f"tar_at_far_{far:.0e}".replace("e-0", "e-")] = _tpr_at_fpr(fpr, tpr, far)
    out.update(n_pos=n_pos, n_neg=n_neg)
    return out


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def _bootstrap_means(columns: Sequence[np.ndarray], n: int, seed: int, chunk_elements: int = 4_000_000):
    """Means of ``n`` bootstrap resamples (same resampled indices for every column): list of (n,) arrays."""
    m = len(columns[0])
    rng = np.random.default_rng(seed)
    rows = max(1, chunk_elements // max(m, 1))
    out = [np.empty(n) for _ in columns]
    for start in range(0, n, rows):
        k = min(rows, n - start)
        index = rng.integers(0, m, size=(k, m))
        for column, dest in zip(columns, out):
            dest[start:start + k] = column[index].mean(axis=1)
    return out


def bootstrap_ci(values, n: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-pair correctness -> accuracy CI):
    ``n`` resamples with replacement, the ``alpha/2`` and ``1 - alpha/2`` quantiles of their means."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        raise ValueError("no values to bootstrap")
    if n < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n >= 1 and 0 < alpha < 1, got n={n}, alpha={alpha}")
    (means,) = _bootstrap_means([values], n, seed)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_bootstrap_difference(correct_a, correct_b, n: int = 2000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Paired bootstrap of the accuracy difference A - B over the same pairs.

    Each resample draws pair indices with replacement and uses them for both systems. Returns ``diff`` (the
    observed difference), ``low``/``high`` (percentile interval), ``p_value_two_sided`` (the bootstrap
    distribution shifted to the null, ``(1 + #{|d* - diff| >= |diff|}) / (n + 1)``, Efron & Tibshirani 1993
    ch. 16), and ``acc_a``, ``acc_b``, ``n_pairs``.
    """
    a = np.asarray(correct_a, dtype=np.float64).ravel()
    b = np.asarray(correct_b, dtype=np.float64).ravel()
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs equal lengths, got {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError("no pairs to compare")
    diff = float(a.mean() - b.mean())
    (boot,) = _bootstrap_means([a - b], n, seed)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    extreme = int(np.sum(np.abs(boot - diff) >= abs(diff) - 1e-12))
    return {
        "diff": diff,
        "low": float(low),
        "high": float(high),
        "p_value_two_sided": float((1 + extreme) / (n + 1)),
        "acc_a": float(a.mean()),
        "acc_b": float(b.mean()),
        "n_pairs": int(len(a)),
    }


# --------------------------------------------------------------------------------------------
# Pair lists and scenarios
# --------------------------------------------------------------------------------------------


def _check_files(root: Path, rels: Iterable[str]) -> None:
    missing = [r for r in rels if not (root / r).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} image(s) missing under {root}: {shown}")


def embed_paths(
    model: nn.Module,
    input_size: int,
    rels: Iterable[str],
    aligned_root: str | os.PathLike,
    cache: dict | None = None,
    **embed_kw,
) -> dict[str, np.ndarray]:
    """Embeddings of aligned crops ``aligned_root/rel`` keyed by ``rel``, each unique crop embedded once;
    ``cache`` (rel -> embedding, for one model and one set of options) is filled and reused."""
    root = Path(aligned_root)
    cache = {} if cache is None else cache
    todo = [r for r in dict.fromkeys(str(r) for r in rels) if r not in cache]
    if todo:
        _check_files(root, todo)
        embeddings = embed_crops(model, [root / r for r in todo], input_size, **embed_kw)
        cache.update(zip(todo, embeddings))
    return cache


def evaluate_pairs(
    model: nn.Module,
    input_size: int,
    pairs: pd.DataFrame,
    aligned_root: str | os.PathLike,
    crops_cache: dict | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    flip: bool = True,
    progress: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
    clusters: Sequence | None = None,
) -> dict:
    """Verify a pair list: DataFrame[fold, a, b, label] with ``a``/``b`` relative to ``aligned_root``.

    Each unique crop is embedded once (:func:`embed_crops`); ``crops_cache`` (rel path -> embedding) lets
    several pair lists of one model share embeddings, e.g. the three masked scenarios. Score = cosine of the
    two embeddings. Returns ``pairs`` (count), ``accuracy`` (:func:`kfold_accuracy`), ``roc``
    (:func:`roc_metrics`), ``acc_ci`` (bootstrap interval of the accuracy: over pairs, or over whole
    ``clusters`` when given, e.g. each pair's first identity, see
    :func:`maskstudy.statistics.cluster_bootstrap_ci`), and per pair ``scores``, ``labels``, ``folds``,
    ``correct`` and ``clusters`` (arrays, for paired bootstrap comparisons; ``clusters`` is one per pair when
    none are given).
    """
    missing = {"a", "b", "label"} - set(pairs.columns)
    if missing:
        raise KeyError(f"pairs need columns fold, a, b, label; missing {sorted(missing)}")
    a = pairs["a"].astype(str).tolist()
    b = pairs["b"].astype(str).tolist()
    labels = pairs["label"].astype(int).to_numpy()
    folds = pairs["fold"].astype(int).to_numpy() if "fold" in pairs.columns else np.ones(len(pairs), int)
    cache = embed_paths(model, input_size, a + b, aligned_root, crops_cache,
                        batch_size=batch_size, device=device, flip=flip, progress=progress)
    ea = np.stack([cache[r] for r in a]) if a else np.zeros((0, 1), np.float32)
    eb = np.stack([cache[r] for r in b]) if b else np.zeros((0, 1), np.float32)
    scores = np.sum(ea.astype(np.float64) * eb, axis=1)
    accuracy, pair_threshold = _kfold(scores, labels, folds)
    correct = (scores > pair_threshold) == (labels == 1)
    if clusters is None:
        clusters, acc_ci = np.arange(len(pairs)), bootstrap_ci(correct, n=n_boot, seed=seed)
    else:
        clusters = np.asarray(clusters)
        acc_ci = cluster_bootstrap_ci(correct, clusters, n=n_boot, seed=seed)
    return {
        "pairs": int(len(pairs)),
        "accuracy": accuracy,
        "roc": roc_metrics(scores, labels),
        "acc_ci": acc_ci,
        "scores": scores,
        "labels": labels,
        "folds": folds,
        "correct": correct,
        "clusters": clusters,
    }




# --------------------------------------------------------------------------------------------
# Closed-set identification
# --------------------------------------------------------------------------------------------


def identification_rank1(
    model: nn.Module,
    input_size: int,
    images: pd.DataFrame,
    aligned_root: str | os.PathLike,
    seed: int = 0,
    crops_cache: dict | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    flip: bool = True,
    progress: bool = False,
    n_boot: int = 2000,
    distractors: pd.DataFrame | None = None,
) -> dict:
    """Closed-set rank-1 identification of masked probes against an unmasked gallery (the seed study's Id).

    ``images``: DataFrame[identity, aligned, masked], crop paths relative to ``aligned_root``. Only identities
    with at least two images take part. Gallery: per identity, its first image by name (``aligned``, unmasked).
    Probes: the masked twins (``masked``) of each of its other images. A probe is correct when its most
    similar gallery embedding (cosine; ties go to the first identity by name) is its own identity.

    ``distractors`` (DataFrame[identity, aligned]): extra gallery entries of other people (e.g. identities with
    a single photo), which can only make a probe's nearest neighbour wrong.

    Returns ``rank1`` (share of correct probes), ``rank1_per_identity`` (the mean over probe identities of each
    identity's rank-1, so that people with many photos do not dominate), ``probes``, ``gallery`` and
    ``distractors`` (counts), ``ci`` (bootstrap interval with ``seed``), and ``correct`` (per probe, bool) with
    ``probe_identities``.
    """
    missing = {"identity", "aligned", "masked"} - set(images.columns)
    if missing:
        raise KeyError(f"images need columns identity, aligned, masked; missing {sorted(missing)}")
    df = images[["identity", "aligned", "masked"]].copy()
    df = df[df["aligned"].notna() & (df["aligned"].astype(str) != "")]
    df = df.astype(str).drop_duplicates("aligned").sort_values(["identity", "aligned"], kind="stable")
    gallery_rel, gallery_ids, probe_rel, probe_ids = [], [], [], []
    for identity, group in df.groupby("identity", sort=True):
        if len(group) < 2:
            continue
        gallery_rel.append(group["aligned"].iloc[0])
        gallery_ids.append(identity)
        for masked in group["masked"].iloc[1:]:
            if masked and masked != "nan":
                probe_rel.append(masked)
                probe_ids.append(identity)
    if len(gallery_rel) < 2 or not probe_rel:
        raise ValueError(f"identification needs >= 2 identities with >= 2 images and at least one masked probe; "
                         f"got {len(gallery_rel)} identities and {len(probe_rel)} probes")
    n_distractors = 0
    if distractors is not None and len(distractors):
        extra = distractors[["identity", "aligned"]].astype(str)
        extra = extra[~extra["aligned"].isin(set(gallery_rel)) & ~extra["identity"].isin(set(gallery_ids))]
        extra = extra.drop_duplicates("aligned").sort_values(["identity", "aligned"], kind="stable")
        gallery_rel += extra["aligned"].tolist()
        gallery_ids += extra["identity"].tolist()
        n_distractors = len(extra)
    cache = embed_paths(model, input_size, gallery_rel + probe_rel, aligned_root, crops_cache,
                        batch_size=batch_size, device=device, flip=flip, progress=progress)
    gallery = np.stack([cache[r] for r in gallery_rel])
    probes = np.stack([cache[r] for r in probe_rel])
    best = np.argmax(probes @ gallery.T, axis=1)
    correct = np.asarray(gallery_ids, dtype=object)[best] == np.asarray(probe_ids, dtype=object)
    correct = correct.astype(bool)
    per_identity = pd.Series(correct).groupby(np.asarray(probe_ids, dtype=object)).mean()
    return {
        "rank1": float(correct.mean()),
        "rank1_per_identity": float(per_identity.mean()),
        "probes": int(len(probe_rel)),
        "gallery": int(len(gallery_rel)),
        "distractors": int(n_distractors),
        "ci": bootstrap_ci(correct, n=n_boot, seed=seed),
        "correct": correct,
        "probe_identities": probe_ids,
    }


# --------------------------------------------------------------------------------------------
# Checkpoints and raw photos
# --------------------------------------------------------------------------------------------


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: corrupt, not a maskstudy checkpoint, or not loadable safely."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load and validate a ``maskstudy-checkpoint-v1`` file with ``torch.load(..., weights_only=True)``.

    Only tensors and plain Python containers are unpickled: a file holding any other object is refused
    (:class:`CheckpointError`), so loading never runs code from the file. A missing file raises
    ``FileNotFoundError``; a corrupt file, another format or missing fields raise :class:`CheckpointError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    is_zip = zipfile.is_zipfile(path)  # torch.save writes zip archives (since torch 1.6)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not is_zip:
            raise CheckpointError(f"cannot load checkpoint {path}: corrupt or not a torch file "
                                  f"(not a torch.save zip archive)") from error
        detail = next((line.strip() for line in str(error).splitlines() if "Unsupported" in line), "")
        detail = detail.split(". Please use")[0].replace("WeightsUnpickler error: ", "")
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain containers, which "
            f"weights_only=True loading rejects" + (f" ({detail})" if detail else "")
        ) from error
    except Exception as error:  # zip/EOF errors of a damaged or truncated file
        raise CheckpointError(f"cannot load checkpoint {path}: corrupt or not a torch file "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a maskstudy checkpoint: expected a dict, got {type(checkpoint).__name__}")
    found = checkpoint.get("format")
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has format {found!r}, expected {CHECKPOINT_FORMAT!r}")
    for key, kind in (("config", dict), ("model", dict)):
        if not isinstance(checkpoint.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint field {key!r} is missing or not a {kind.__name__}")
    if "backbone" not in checkpoint["config"]:
        raise CheckpointError(f"{path}: checkpoint config has no 'backbone' name")
    return checkpoint


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) key prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def backbone_from_checkpoint(checkpoint: Mapping, path: str | os.PathLike = "checkpoint") -> nn.Module:
    """Rebuild the backbone named in ``checkpoint["config"]`` and load its weights (strictly)."""
    from .models import build_backbone

    config = checkpoint["config"]
    model = build_backbone(
        config["backbone"],
        width=float(config.get("width", 1.0)),
        input_size=int(config.get("input_size", CROP_SIZE)),
        embedding_size=int(config.get("embedding_size", 512)),
        **dict(config.get("backbone_kwargs") or {}),
    )
    try:
        model.load_state_dict(_strip_prefixes(checkpoint["model"]), strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not fit backbone {config['backbone']!r} with "
                              f"width={config.get('width')}, input_size={config.get('input_size')}, "
                              f"embedding_size={config.get('embedding_size')}: {error}") from error
    return model


@dataclass
class EmbedResult:
    """Embeddings of raw photos: ``embeddings`` (N, D) float32 unit rows; ``face_found`` (N,) whether MTCNN
    found a face above the detector's probability threshold; ``fallback`` (N,) whether the crop is the
    centre-square fallback instead of a landmark alignment."""

    embeddings: np.ndarray
    face_found: np.ndarray
    fallback: np.ndarray


def _read_image(item, index: int):
    """Path / PIL image / uint8 HxWx3 array -> RGB PIL image; unreadable files raise ValueError."""
    from PIL import Image

    from .detect import load_image

    if isinstance(item, (str, os.PathLike)):
        try:
            loaded = load_image(item)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
            raise ValueError(f"cannot read image {os.fspath(item)}: {type(error).__name__}: {error}") from error
        if loaded.image is None:
            raise ValueError(f"cannot read image {os.fspath(item)}: {loaded.status}: {loaded.reason}")
        return loaded.image
    if isinstance(item, Image.Image):
        return _large_enough(item.convert("RGB"), index)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
            raise ValueError(f"image {index}: expected a uint8 HxWx3 RGB array, got {item.dtype} {item.shape}")
        return _large_enough(Image.fromarray(item, "RGB"), index)
    raise TypeError(f"image {index}: expected a path, PIL image or uint8 array, got {type(item).__name__}")


def _large_enough(image, index: int):
    from .detect import MIN_IMAGE_SIDE

    if min(image.size) < MIN_IMAGE_SIDE:
        raise ValueError(f"image {index} is too small: {image.size[0]}x{image.size[1]} px "
                         f"(at least {MIN_IMAGE_SIDE} px per side)")
    return image


class FaceRecognizer:
    """Raw photos -> identity embeddings with a trained backbone.

    Pipeline per photo: load (:func:`maskstudy.detect.load_image` for paths: EXIF orientation, colour
    conversions), detect with MTCNN (:class:`maskstudy.detect.FaceDetector`, batched, created on first use
    unless given), align the chosen face's 5 landmarks onto the ArcFace 112x112 template
    (:func:`maskstudy.align.align_face`), embed with flip fusion (:func:`embed_crops`). A photo without a
    usable face is centre-cropped to a square and resized to 112 (the crop of a pre-aligned photo) and
    flagged in :attr:`EmbedResult.fallback`.
    """

    def __init__(self, model: nn.Module, input_size: int, device: torch.device | str | None = None,
                 detector=None, batch_size: int = 64, flip: bool = True, config: dict | None = None):
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        self.model = model.to(self.device).eval()
        self.input_size = int(input_size)
        self.batch_size = int(batch_size)
        self.flip = bool(flip)
        self.config = dict(config or {})
        self._detector = detector

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: torch.device | str | None = None, detector=None,
                        **kw) -> FaceRecognizer:
        """Load a ``maskstudy-checkpoint-v1`` (see :func:`load_checkpoint`; ``weights_only=True``) and rebuild
        its backbone from the stored config."""
        checkpoint = load_checkpoint(path, map_location="cpu")
        model = backbone_from_checkpoint(checkpoint, path)
        return cls(model, model.input_size if hasattr(model, "input_size") else
                   int(checkpoint["config"].get("input_size", CROP_SIZE)),
                   device=device, detector=detector, config=checkpoint["config"], **kw)

    @property
    def detector(self):
        if self._detector is None:
            from .detect import FaceDetector

            self._detector = FaceDetector(device=str(self.device))
        return self._detector

    def align(self, images: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Aligned 112x112 crops (N, 112, 112, 3) uint8 of raw photos, with ``face_found`` and ``fallback``
        (see :func:`maskstudy.align.detect_and_align`)."""
        from .align import detect_and_align

        pil = [_read_image(item, i) for i, item in enumerate(images)]
        crops, found, fallback, _ = detect_and_align(pil, self.detector, CROP_SIZE)
        return crops, found, fallback

    def embed_aligned(self, crops: np.ndarray | Sequence[str | os.PathLike], progress: bool = False) -> np.ndarray:
        """Embeddings of crops that are already aligned (array or crop files); see :func:`embed_crops`."""
        return embed_crops(self.model, crops, self.input_size, batch_size=self.batch_size, device=self.device,
                           flip=self.flip, progress=progress)

    def embed(self, images, progress: bool = False) -> EmbedResult:
        """Embed raw photos (paths, PIL images or uint8 HxWx3 arrays; a single one is accepted too).

        Photos are read, detected, aligned and embedded ``batch_size`` at a time. An unreadable path raises
        ``ValueError`` naming the file.
        """
        from PIL import Image

        if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        images = list(images)
        dim = int(getattr(self.model, "embedding_size", 0))
        chunks = range(0, len(images), self.batch_size)
        embeddings, found, fallback = [np.zeros((0, dim), np.float32)], [np.zeros(0, bool)], [np.zeros(0, bool)]
        for start in _progress(chunks, len(chunks), progress, "photos"):
            crops, f, b = self.align(images[start:start + self.batch_size])
            embeddings.append(self.embed_aligned(crops))
            found.append(f)
            fallback.append(b)
        return EmbedResult(np.concatenate(embeddings).astype(np.float32, copy=False), np.concatenate(found),
                           np.concatenate(fallback))

    def similarity(self, a, b) -> float:
        """Cosine similarity of two photos' embeddings; warns (``UserWarning``) when a photo had no usable face
        and its centre crop was compared instead (use :meth:`embed` to get the flags)."""
        import warnings

        result = self.embed([a, b])
        for label, item, fallback in zip("ab", (a, b), result.fallback):
            if fallback:
                shown = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"photo {label}"
                warnings.warn(f"no face found in {shown}: its centre crop was compared instead", UserWarning,
                              stacklevel=2)
        return float(np.dot(result.embeddings[0].astype(np.float64), result.embeddings[1]))


# --------------------------------------------------------------------------------------------
# python -m maskstudy verify
# --------------------------------------------------------------------------------------------


def read_any_pairs(path: str | os.PathLike) -> pd.DataFrame:
    """Pairs as DataFrame[fold, a, b, label] from either the seed format (``a b 1|0`` lines, all fold 1) or the
    CSV with folds (``fold,a,b,label`` header)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pair file not found: {path}")
    with path.open("r", encoding="utf-8") as handle:
        first = next((line for line in handle if line.strip()), "")
    if first.strip().lower().startswith("fold,"):
        pairs = read_pair_folds(path)[["fold", "a", "b", "label"]]
    else:
        pairs = read_pairs(path)
        pairs.insert(0, "fold", 1)
    if len(pairs) == 0:
        raise ValueError(f"{path} holds no pairs")
    return pairs.reset_index(drop=True)


def _image_size(path: Path) -> tuple[int, int]:
    """Size of an image file; an aligned crop (112x112) is decoded fully so that a truncated one is named here."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            if handle.size == (CROP_SIZE, CROP_SIZE):
                handle.load()
            return handle.size
    except FileNotFoundError as error:
        raise ValueError(f"cannot read image {path}: file not found") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {type(error).__name__}: {error}") from error


def verify_command(
    checkpoint: str | os.PathLike,
    pairs_file: str | os.PathLike,
    root: str | os.PathLike,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    detector=None,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Verification accuracy of a checkpoint on a pair list (``python -m maskstudy verify``).

    ``pairs_file``: the seed format (``a b 1|0``, read as one fold, so :func:`kfold_accuracy` uses its
    internal 10-fold split) or the CSV with folds. Paths are relative to ``root``. A 112x112 image is taken as
    an aligned crop; any other image is a raw photo and goes through :class:`FaceRecognizer` (detect + align,
    centre-crop fallback). Prints the k-fold accuracy (mean +- std), AUC and EER through ``log`` and returns
    the metrics with per-pair ``scores``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root not found: {root}")
    pairs = read_any_pairs(pairs_file)
    try:
        recognizer = FaceRecognizer.from_checkpoint(checkpoint, device=device, detector=detector,
                                                    batch_size=batch_size)
    except TypeError as error:  # backbone_kwargs the model's builder does not take
        raise CheckpointError(f"{checkpoint}: the stored backbone settings do not build a model: {error}") from None
    rels = list(dict.fromkeys(pairs["a"].tolist() + pairs["b"].tolist()))
    aligned, raw = [], []
    for rel in rels:
        (aligned if _image_size(root / rel) == (CROP_SIZE, CROP_SIZE) else raw).append(rel)
    embeddings: dict[str, np.ndarray] = {}
    if aligned:
        embeddings.update(zip(aligned, recognizer.embed_aligned([root / r for r in aligned], progress=progress)))
    n_found = n_fallback = 0
    if raw:
        result = recognizer.embed([root / r for r in raw], progress=progress)
        embeddings.update(zip(raw, result.embeddings))
        n_found, n_fallback = int(result.face_found.sum()), int(result.fallback.sum())
    ea = np.stack([embeddings[r] for r in pairs["a"]]).astype(np.float64)
    eb = np.stack([embeddings[r] for r in pairs["b"]])
    scores = np.sum(ea * eb, axis=1)
    labels = pairs["label"].to_numpy()
    accuracy = kfold_accuracy(scores, labels, pairs["fold"].to_numpy())
    roc = roc_metrics(scores, labels)
    out = {
        "checkpoint": str(checkpoint),
        "pairs_file": str(pairs_file),
        "pairs": int(len(pairs)),
        "positives": int(labels.sum()),
        "images": len(rels),
        "aligned_images": len(aligned),
        "raw_images": len(raw),
        "faces_found": n_found,
        "fallback_crops": n_fallback,
        "accuracy_mean": accuracy["mean"],
        "accuracy_std": accuracy["std"],
        "per_fold": accuracy["per_fold"],
        "thresholds": accuracy["thresholds"],
        "note": accuracy["note"],
        "auc": roc["auc"],
        "eer": roc["eer"],
        "tar_at_far_1e-2": roc["tar_at_far_1e-2"],
        "tar_at_far_1e-3": roc["tar_at_far_1e-3"],
        "scores": scores,
    }
    if log is not None:
        log(f"pairs: {out['pairs']} ({out['positives']} same, {out['pairs'] - out['positives']} different); "
            f"images: {len(rels)} ({len(aligned)} aligned crops, {len(raw)} raw photos"
            + (f": {n_found} faces found, {n_fallback} centre-crop fallbacks" if raw else "") + ")")
        log(f"accuracy ({len(accuracy['per_fold'])}-fold): {accuracy['mean']:.4f} +- {accuracy['std']:.4f}")
        if accuracy["note"]:
            log(f"note: {accuracy['note']}")
        log(f"AUC: {roc['auc']:.4f}  EER: {roc['eer']:.4f}  "
            f"TAR@FAR=1e-2: {roc['tar_at_far_1e-2']:.4f}  TAR@FAR=1e-3: {roc['tar_at_far_1e-3']:.4f}")
    return out


def add_verify_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``python -m maskstudy verify`` on ``parser`` (a subparser); sets ``handler=run_verify``."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint file written by training")
    parser.add_argument("--pairs", required=True,
                        help="pair file: 'a b 1|0' lines (seed format) or CSV with columns fold,a,b,label")
    parser.add_argument("--root", required=True, help="folder the image paths in the pair file are relative to")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch (default: 128)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    parser.add_argument("--output", default=None, help="also write the metrics as JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_verify)
    return parser


def run_verify(args: argparse.Namespace) -> int:
    """Run :func:`verify_command` from parsed arguments; 0 on success, 2 with a one-line message on bad input."""
    try:
        _check_verify_arguments(args)
        result = verify_command(args.checkpoint, args.pairs, args.root, batch_size=args.batch_size,
                                device=args.device, progress=not getattr(args, "no_progress", False))
        if getattr(args, "output", None):
            from .storage import write_json

            write_json(args.output, {k: v for k, v in result.items() if k != "scores"})
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"maskstudy verify: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
              file=sys.stderr)
        return 2
    return 0


def _check_verify_arguments(args: argparse.Namespace) -> None:
    """Refuse bad options before any work: batch size, device, an ``--output`` that is a folder."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            raise ValueError(f"--device {args.device!r} is not a device: {str(error).splitlines()[0]}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available on this machine (use cpu)")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {args.device}: there are {torch.cuda.device_count()} CUDA device(s)")
        if device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"--device {args.device}: use cpu or cuda[:N]")
    output = getattr(args, "output", None)
    if output and Path(output).is_dir():
        raise ValueError(f"--output {output} is a folder; give a file name such as {Path(output) / 'verify.json'}")
