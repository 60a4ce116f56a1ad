"""Cluster bootstrap, Holm's correction, seed spread and fixed-threshold error rates."""

import numpy as np
import pytest

from maskstudy.evaluate.statistics import (
    cluster_bootstrap_ci,
    fnmr_at_fmr,
    holm_adjust,
    paired_cluster_bootstrap,
    seed_difference,
    seed_spread,
    threshold_at_fmr,
)


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert np.allclose(holm_adjust(p), [0.03, 0.06, 0.06, 0.02])
    assert np.allclose(holm_adjust([0.9, 0.8]), [1.0, 1.0])
    with pytest.raises(ValueError):
        holm_adjust([0.1, 1.5])


def test_cluster_bootstrap_is_wider_than_pair_bootstrap_when_pairs_share_people():
    from maskstudy.evaluate import bootstrap_ci

    rng = np.random.default_rng(0)
    # 40 people with 20 pairs each; each person's pairs are all right or all wrong (strong clustering)
    person_right = rng.random(40) < 0.7
    correct = np.repeat(person_right, 20).astype(float)
    clusters = np.repeat(np.arange(40), 20)
    low, high = cluster_bootstrap_ci(correct, clusters, n=2000, seed=1)
    plow, phigh = bootstrap_ci(correct, n=2000, seed=1)
    assert low <= correct.mean() <= high
    assert (high - low) > 2 * (phigh - plow)


def test_cluster_bootstrap_with_singleton_clusters_matches_the_pair_bootstrap_width():
    from maskstudy.evaluate import bootstrap_ci

    correct = (np.random.default_rng(3).random(800) < 0.8).astype(float)
    low, high = cluster_bootstrap_ci(correct, np.arange(800), n=3000, seed=2)
    plow, phigh = bootstrap_ci(correct, n=3000, seed=2)
    assert abs((high - low) - (phigh - plow)) < 0.01


def test_paired_cluster_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(200), 5)
    a = rng.random(1000) < 0.9
    b = rng.random(1000) < 0.6
    strong = paired_cluster_bootstrap(a, b, clusters, n=1000, seed=0)
    assert strong["low"] > 0 and strong["p_value"] < 0.01 and strong["clusters"] == 200
    null = paired_cluster_bootstrap(a, a, clusters, n=1000, seed=0)
    assert null["diff"] == 0 and null["p_value"] == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_cluster_bootstrap(a, b[:-1], clusters)


def test_seed_spread_and_paired_seed_difference():
    assert seed_spread([0.8, 0.82, 0.84]) == pytest.approx(
        {"mean": 0.82, "std": 0.02, "min": 0.8, "max": 0.84, "seeds": 3})
    d = seed_difference([0.80, 0.82, 0.81], [0.70, 0.71, 0.72])
    assert d["diff"] == pytest.approx(0.1) and d["low"] > 0 and d["p_value"] < 0.05
    noisy = seed_difference([0.80, 0.70, 0.82], [0.78, 0.80, 0.74])
    assert noisy["low"] < 0 < noisy["high"] and noisy["p_value"] > 0.05
    single = seed_difference([0.8], [0.7])
    assert single["diff"] == pytest.approx(0.1) and np.isnan(single["low"]) and np.isnan(single["p_value"])


def test_threshold_at_fmr_allows_the_right_number_of_impostors():
    impostors = np.arange(1000) / 1000.0
    t = threshold_at_fmr(impostors, 1e-2)
    assert np.mean(impostors > t) <= 1e-2 and np.mean(impostors >= t) > 1e-2


def test_fnmr_at_fmr_uses_thresholds_from_the_other_folds():
    rng = np.random.default_rng(0)
    folds = np.repeat(np.arange(1, 11), 200)
    labels = np.tile(np.r_[np.ones(100), np.zeros(100)], 10).astype(int)
    clean = np.where(labels == 1, rng.normal(0.7, 0.1, 2000), rng.normal(0.1, 0.1, 2000))
    reference = {"scores": clean, "labels": labels, "folds": folds}
    same = fnmr_at_fmr(reference, reference, 1e-2)
    assert same["fmr_reached"] < 0.03 and same["fnmr"] < 0.1
    masked = {"scores": np.where(labels == 1, clean - 0.4, clean), "labels": labels, "folds": folds}
    worse = fnmr_at_fmr(reference, masked, 1e-2)
    assert worse["fnmr"] > same["fnmr"] + 0.3  # masked genuine scores fall below the unmasked threshold
    with pytest.raises(ValueError, match="2 folds"):
        fnmr_at_fmr(reference, {**masked, "folds": np.ones(2000)}, 1e-2)
