"""Verification metrics on numpy arrays: best threshold, k-fold accuracy (LFW protocol), ROC summaries, bootstrap.

Verification follows the LFW protocol (Huang et al., "Labeled Faces in the Wild", UMass TR 07-49, 2007): pairs
are split into folds; for each fold the decision threshold is the one that maximises accuracy on the *other*
folds, the fold's accuracy is measured at that threshold, and the mean and standard deviation over the folds are
reported. ROC summaries (AUC, EER, TAR at fixed FAR) and bootstrap confidence intervals (Efron & Tibshirani,
"An Introduction to the Bootstrap", 1993) complete the verification report. Scores: higher = more likely the
same identity; the decision rule is "same iff score > threshold".
"""

from __future__ import annotations

import numpy as np

#: Number of internal folds used when the pairs carry a single fold (LFW-only protocol: fold 1 only).
INTERNAL_FOLDS = 10
#: False accept rates at which the true accept rate is reported.
FAR_LEVELS = (1e-2, 1e-3)


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
    (everything "same") and one above (everything "different"), each 1.0 away: equal scores always get the
    same decision. Evaluated at once with cumulative counts (O(N log N)). Of thresholds with the same accuracy,
    the lowest is returned. The one best-threshold rule of the package: the k-fold protocol here and the
    per-epoch validation accuracy of training both use it.
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


def kfold_with_thresholds(scores, labels, folds) -> tuple[dict, np.ndarray]:
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
    return kfold_with_thresholds(scores, labels, folds)[0]


def pair_correctness(scores, labels, folds) -> np.ndarray:
    """Whether each pair is classified correctly under its fold's threshold from :func:`kfold_accuracy`
    (bool array, in pair order); its mean over one fold's pairs is that fold's accuracy."""
    _, pair_threshold = kfold_with_thresholds(scores, labels, folds)
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


def _bootstrap_means(values: np.ndarray, n: int, seed: int, chunk_elements: int = 4_000_000) -> np.ndarray:
    """Means of ``n`` bootstrap resamples of ``values`` (drawn in chunks of about ``chunk_elements`` indices)."""
    m = len(values)
    rng = np.random.default_rng(seed)
    rows = max(1, chunk_elements // max(m, 1))
    means = np.empty(n)
    for start in range(0, n, rows):
        k = min(rows, n - start)
        index = rng.integers(0, m, size=(k, m))
        means[start:start + k] = values[index].mean(axis=1)
    return means


def bootstrap_ci(values, n: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-pair correctness -> accuracy CI):
    ``n`` resamples with replacement, the ``alpha/2`` and ``1 - alpha/2`` quantiles of their means."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        raise ValueError("no values to bootstrap")
    if n < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n >= 1 and 0 < alpha < 1, got n={n}, alpha={alpha}")
    means = _bootstrap_means(values, n, seed)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_p_value(values, n: int = 2000, seed: int = 0) -> float:
    """Two-sided p-value of "the mean of ``values`` is 0" from the resamples of :func:`bootstrap_ci` (same ``n``
    and ``seed``), shifted to the null: ``(1 + #{|m* - mean| >= |mean|}) / (n + 1)``."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        raise ValueError("no values to bootstrap")
    mean = float(values.mean())
    means = _bootstrap_means(values, n, seed)
    return float((1 + np.sum(np.abs(means - mean) >= abs(mean) - 1e-12)) / (n + 1))
