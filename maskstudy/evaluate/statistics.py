"""Statistics a reviewer can trust: cluster bootstrap, Holm's correction, seed spread, fixed-threshold error rates.

* LFW pairs share photos and people, so pairs are not independent: :func:`cluster_bootstrap_ci` and
  :func:`paired_cluster_bootstrap` resample *identities* (clusters) with replacement (Field and Welsh, "Bootstrapping
  clustered data", JRSS-B 2007), not pairs.
* A family of model comparisons is corrected for multiplicity with Holm's step-down method (Holm, "A simple
  sequentially rejective multiple test procedure", Scand. J. Statistics 1979): :func:`holm_adjust`.
* Training seeds: :func:`seed_spread` and :func:`seed_difference` judge a model difference against the variation
  from one training seed to the next (paired by seed, a t interval over seeds).
* Deployments fix one threshold: :func:`fnmr_at_fmr` is the false non-match rate on masked pairs at the
  threshold that gives a target false match rate on *unmasked* pairs of the other folds (the practice of NIST's
  FRVT masked-face report, Ngan, Grother and Hanaoka, NISTIR 8311, 2020).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _clusters(values: np.ndarray, clusters) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums and sizes of ``values``."""
    clusters = np.asarray(clusters).ravel()
    if len(clusters) != len(values):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster ids")
    if len(values) == 0:
        raise ValueError("no values to bootstrap")
    _, index = np.unique(clusters, return_inverse=True)
    return np.bincount(index, weights=values), np.bincount(index).astype(np.float64)


def _cluster_means(sums: Sequence[np.ndarray], sizes: np.ndarray, n: int, seed: int,
                   chunk_elements: int = 4_000_000) -> list[np.ndarray]:
    """Ratio means of ``n`` cluster-bootstrap resamples: each draws as many clusters as there are, with
    replacement, and the statistic is (sum of values) / (number of values) over the drawn clusters."""
    k = len(sizes)
    rng = np.random.default_rng(seed)
    out = [np.empty(n) for _ in sums]
    rows = max(1, chunk_elements // max(k, 1))
    for start in range(0, n, rows):
        m = min(rows, n - start)
        counts = rng.multinomial(k, np.full(k, 1.0 / k), size=m).astype(np.float64)
        total = counts @ sizes
        for column, dest in zip(sums, out):
            dest[start:start + m] = (counts @ column) / total
    return out


def cluster_bootstrap_ci(values, clusters, n: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (e.g. per-pair correctness) under a bootstrap that
    resamples whole ``clusters`` (e.g. the identity of each pair's first photo)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    sums, sizes = _clusters(values, clusters)
    (means,) = _cluster_means([sums], sizes, n, seed)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def paired_cluster_bootstrap(correct_a, correct_b, clusters, n: int = 2000, seed: int = 0,
                             alpha: float = 0.05) -> dict:
    """Accuracy difference A - B over the same pairs, resampling whole clusters for both systems at once.

    Returns ``diff``, ``low``/``high`` (percentile interval), ``p_value`` (two-sided, from the bootstrap
    distribution shifted to the null: ``(1 + #{|d* - diff| >= |diff|}) / (n + 1)``), ``clusters``, ``pairs``.
    """
    a = np.asarray(correct_a, dtype=np.float64).ravel()
    b = np.asarray(correct_b, dtype=np.float64).ravel()
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs equal lengths, got {len(a)} and {len(b)}")
    sums, sizes = _clusters(a - b, clusters)
    diff = float(a.mean() - b.mean())
    (boot,) = _cluster_means([sums], sizes, n, seed)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    extreme = int(np.sum(np.abs(boot - diff) >= abs(diff) - 1e-12))
    return {"diff": diff, "low": float(low), "high": float(high), "p_value": float((1 + extreme) / (n + 1)),
            "clusters": int(len(sizes)), "pairs": int(len(a))}


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given): reject H_i at level alpha iff adjusted <= alpha.
    Controls the family-wise error rate under any dependence between the tests."""
    p = np.asarray(p_values, dtype=np.float64).ravel()
    if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError("p-values must be finite and in [0, 1]")
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def _t_quantile(q: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def seed_spread(values) -> dict:
    """Mean, standard deviation (``ddof=1``), min, max and count of one metric over training seeds."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "seeds": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
            "min": float(v.min()), "max": float(v.max()), "seeds": int(len(v))}


def seed_difference(a_by_seed, b_by_seed, alpha: float = 0.05) -> dict:
    """Difference A - B of a metric paired by training seed: mean, standard deviation over seeds, a t interval
    (``n - 1`` degrees of freedom) and its two-sided p-value. With one seed the interval is undefined (NaN)."""
    a = np.asarray(a_by_seed, dtype=np.float64).ravel()
    b = np.asarray(b_by_seed, dtype=np.float64).ravel()
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"need the same seeds for both models, got {len(a)} and {len(b)} values")
    d = a - b
    n = len(d)
    out = {"diff": float(d.mean()), "std": float("nan"), "low": float("nan"), "high": float("nan"),
           "p_value": float("nan"), "seeds": int(n)}
    if n > 1:
        sd = float(d.std(ddof=1))
        se = sd / np.sqrt(n)
        half = _t_quantile(1 - alpha / 2, n - 1) * se
        out.update(std=sd, low=float(d.mean() - half), high=float(d.mean() + half))
        if se > 0:
            from scipy import stats

            out["p_value"] = float(2 * stats.t.sf(abs(d.mean()) / se, n - 1))
        else:
            out["p_value"] = 1.0 if d.mean() == 0 else 0.0
    return out


def threshold_at_fmr(impostor_scores, fmr: float) -> float:
    """The lowest threshold ``t`` with ``mean(impostor_scores > t) <= fmr`` (decision: match iff score > t)."""
    s = np.sort(np.asarray(impostor_scores, dtype=np.float64).ravel())
    if len(s) == 0:
        raise ValueError("no impostor scores")
    if not 0 < fmr < 1:
        raise ValueError(f"fmr must be in (0, 1), got {fmr}")
    allowed = int(np.floor(fmr * len(s)))  # impostors that may score above the threshold
    return float(s[len(s) - 1 - allowed])


def fnmr_at_fmr(reference: dict, target: dict, fmr: float) -> dict:
    """False non-match rate on ``target`` pairs at the threshold that gives ``fmr`` on ``reference`` pairs.

    ``reference`` and ``target`` hold per-pair ``scores``, ``labels`` and ``folds`` (e.g. unmasked and masked
    pairs from :func:`maskstudy.evaluate.evaluate_pairs`). For each fold the threshold comes from the reference
    impostors of the *other* folds only; the target's genuine pairs of that fold give its FNMR and its impostors
    the FMR actually reached. Returns the means over folds: ``fnmr``, ``fmr_reached`` (on the target),
    ``threshold``, and ``fnmr_per_fold``.
    """
    ref_scores, ref_labels = np.asarray(reference["scores"], float), np.asarray(reference["labels"])
    ref_folds = np.asarray(reference["folds"])
    scores, labels, folds = (np.asarray(target["scores"], float), np.asarray(target["labels"]),
                             np.asarray(target["folds"]))
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise ValueError("fnmr_at_fmr needs at least 2 folds (thresholds come from the other folds)")
    fnmr, fmr_reached, thresholds = [], [], []
    for fold in fold_ids:
        impostors = ref_scores[(ref_folds != fold) & (ref_labels == 0)]
        t = threshold_at_fmr(impostors, fmr)
        here = folds == fold
        genuine, other = scores[here & (labels == 1)], scores[here & (labels == 0)]
        fnmr.append(float(np.mean(genuine <= t)) if len(genuine) else float("nan"))
        fmr_reached.append(float(np.mean(other > t)) if len(other) else float("nan"))
        thresholds.append(t)
    return {"fnmr": float(np.nanmean(fnmr)), "fmr_reached": float(np.nanmean(fmr_reached)),
            "threshold": float(np.mean(thresholds)), "fnmr_per_fold": fnmr}
