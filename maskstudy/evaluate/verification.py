"""Pair verification of a model on aligned crops: embeddings, cosine scores, k-fold accuracy, ROC and intervals."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..faces.preprocess import DecodedCrops
from ..models.model_file import COSINE
from .embed import embed_paths
from .metrics import bootstrap_ci, kfold_with_thresholds, roc_metrics
from .statistics import cluster_bootstrap_ci


def evaluate_pairs(model: nn.Module, input_size: int, pairs: pd.DataFrame, aligned_root: str | os.PathLike,
                   crops_cache: dict | None = None, batch_size: int = 256, device: torch.device | str | None = None,
                   flip: bool = True, progress: bool = False, n_boot: int = 2000, seed: int = 0,
                   clusters: Sequence | None = None, decoded_crops: DecodedCrops | None = None,
                   similarity=None) -> dict:
    """Verify a pair list: DataFrame[fold, a, b, label] with ``a``/``b`` relative to ``aligned_root``.

    Each unique crop is embedded once (:func:`embed_crops`); ``crops_cache`` (rel path -> embedding) lets
    several pair lists of one model share embeddings, e.g. the three masked scenarios. Score = cosine of the
    two embeddings. Returns ``pairs`` (count), ``accuracy`` (:func:`kfold_accuracy`), ``roc``
    (:func:`roc_metrics`), ``acc_ci`` (bootstrap interval of the accuracy: over pairs, or over whole
    ``clusters`` when given, e.g. each pair's first identity, see
    :func:`maskstudy.evaluate.statistics.cluster_bootstrap_ci`), and per pair ``scores``, ``labels``, ``folds``,
    ``correct`` and ``clusters`` (arrays, for paired bootstrap comparisons; ``clusters`` is one per pair when
    none are given). ``decoded_crops``: crop files read through this in-memory store
    (:class:`~maskstudy.faces.preprocess.DecodedCrops`). ``similarity``: how two cached vectors are compared
    (``pairs(a, b)``; default the cosine of unit vectors, :data:`maskstudy.models.model_file.COSINE`; the mask-aware
    recogniser's vectors have their own, :class:`maskstudy.models.mask_aware.MaskAwareSimilarity`).
    """
    missing = {"a", "b", "label"} - set(pairs.columns)
    if missing:
        raise KeyError(f"pairs need columns fold, a, b, label; missing {sorted(missing)}")
    a = pairs["a"].astype(str).tolist()
    b = pairs["b"].astype(str).tolist()
    labels = pairs["label"].astype(int).to_numpy()
    folds = pairs["fold"].astype(int).to_numpy() if "fold" in pairs.columns else np.ones(len(pairs), int)
    cache = embed_paths(model, input_size, a + b, aligned_root, crops_cache,
                        batch_size=batch_size, device=device, flip=flip, progress=progress,
                        decoded_crops=decoded_crops)
    ea = np.stack([cache[r] for r in a]) if a else np.zeros((0, 1), np.float32)
    eb = np.stack([cache[r] for r in b]) if b else np.zeros((0, 1), np.float32)
    scores = (similarity or COSINE).pairs(ea, eb)
    accuracy, pair_threshold = kfold_with_thresholds(scores, labels, folds)
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
