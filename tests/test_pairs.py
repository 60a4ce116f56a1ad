"""Scenario pairs, pair generation for identity-folder sets, and pair files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maskstudy.datasets.pairs import (
    SCENARIOS,
    generate_pairs,
    masked_name,
    read_pair_folds,
    read_pairs,
    scenario_pairs,
    write_pair_folds,
    write_pairs,
)


def _lfw_like_pairs(n_folds=4, per_fold=100):
    rows = []
    for f in range(1, n_folds + 1):
        for k in range(per_fold):
            label = int(k < per_fold // 2)
            a = f"P{f}_{k}/P{f}_{k}_0001.jpg"
            b = f"P{f}_{k}/P{f}_{k}_0002.jpg" if label else f"Q{f}_{k}/Q{f}_{k}_0001.jpg"
            rows.append((f, a, b, label))
    return pd.DataFrame(rows, columns=["fold", "image_a", "image_b", "label"])


def _images(counts: dict[str, int]) -> pd.DataFrame:
    return pd.DataFrame(
        [(i, f"{i}/{k:03d}.jpg") for i, n in counts.items() for k in range(n)], columns=["identity", "image"]
    )


def _is_masked(s: pd.Series) -> pd.Series:
    return s.str.endswith("_mask.jpg")


def test_masked_name():
    assert masked_name("Aaron_Peirsol/Aaron_Peirsol_0001.jpg") == "Aaron_Peirsol/Aaron_Peirsol_0001_mask.jpg"
    assert masked_name("7201/001085.jpg") == "7201/001085_mask.jpg"
    assert masked_name("a.b/c.d.png") == "a.b/c.d_mask.png"
    with pytest.raises(ValueError):
        masked_name("x/y_mask.jpg")


def test_scenarios_masking_rules():
    pairs = _lfw_like_pairs()
    assert SCENARIOS == ("unmasked_unmasked", "masked_unmasked", "masked_masked")
    uu = scenario_pairs(pairs, "unmasked_unmasked")
    mu = scenario_pairs(pairs, "masked_unmasked", seed=0)
    mm = scenario_pairs(pairs, "masked_masked")
    for df in (uu, mu, mm):
        assert list(df.columns) == ["fold", "a", "b", "label"]
        assert df["fold"].tolist() == pairs["fold"].tolist()
        assert df["label"].tolist() == pairs["label"].tolist()
    assert uu["a"].tolist() == pairs["image_a"].tolist() and uu["b"].tolist() == pairs["image_b"].tolist()
    assert _is_masked(mm["a"]).all() and _is_masked(mm["b"]).all()
    ma, mb = _is_masked(mu["a"]), _is_masked(mu["b"])
    assert (ma ^ mb).all()  # exactly one masked per pair
    share_a = ma.mean()
    assert 0.4 < share_a < 0.6, share_a
    # the unmasked side is the original image, the masked side its twin
    for (_, r), (_, o) in zip(mu.iterrows(), pairs.iterrows()):
        if r["a"].endswith("_mask.jpg"):
            assert r["a"] == masked_name(o["image_a"]) and r["b"] == o["image_b"]
        else:
            assert r["b"] == masked_name(o["image_b"]) and r["a"] == o["image_a"]
    # deterministic, seed-dependent, order-independent per pair
    pd.testing.assert_frame_equal(mu, scenario_pairs(pairs, "masked_unmasked", seed=0))
    assert not mu.equals(scenario_pairs(pairs, "masked_unmasked", seed=1))
    rev = scenario_pairs(pairs.iloc[::-1], "masked_unmasked", seed=0).iloc[::-1].reset_index(drop=True)
    pd.testing.assert_frame_equal(mu, rev)
    # input untouched; unknown scenario refused
    assert not _is_masked(pairs["image_a"]).any()
    with pytest.raises(ValueError, match="unknown scenario"):
        scenario_pairs(pairs, "masked")


def test_scenario_accepts_read_pairs_columns(tmp_path):
    df = pd.DataFrame({"a": ["x/1.jpg"], "b": ["y/1.jpg"], "label": [0]})
    out = scenario_pairs(df, "masked_masked")
    assert out.loc[0, "a"] == "x/1_mask.jpg" and out.loc[0, "fold"] == 1


def _check_generated(df: pd.DataFrame, n_folds: int):
    assert list(df.columns) == ["fold", "image_a", "identity_a", "image_b", "identity_b", "label"]
    assert set(df.fold) <= set(range(1, n_folds + 1))
    pos = df[df.label == 1]
    neg = df[df.label == 0]
    assert (pos.identity_a == pos.identity_b).all()
    assert (neg.identity_a != neg.identity_b).all()
    assert (df.image_a != df.image_b).all()
    # each image's path belongs to its identity
    assert all(img.split("/")[0] == i for img, i in zip(df.image_a, df.identity_a))
    assert all(img.split("/")[0] == i for img, i in zip(df.image_b, df.identity_b))
    # no duplicate pairs, in either order
    keys = {frozenset(p) for p in zip(df.image_a, df.image_b)}
    assert len(keys) == len(df)
    # balanced per fold
    per = df.groupby("fold")["label"].agg(["size", "sum"])
    assert (per["size"] == 2 * per["sum"]).all()
    # identity-disjoint folds
    owner = {}
    for col in ("identity_a", "identity_b"):
        for i, f in zip(df[col], df.fold):
            assert owner.setdefault(i, f) == f, f"{i} in folds {owner[i]} and {f}"


def test_generate_pairs_full():
    rng = np.random.default_rng(5)
    counts = {f"id{k:03d}": int(n) for k, n in enumerate(rng.integers(1, 25, size=300))}
    images = _images(counts)
    df = generate_pairs(images, n_folds=10, pairs_per_fold=60, seed=3)
    _check_generated(df, 10)
    per = df.groupby("fold")["label"].agg(["size", "sum"])
    assert list(per.index) == list(range(1, 11))
    assert (per["size"] == 60).all() and (per["sum"] == 30).all()
    # single-image identities appear only in negatives
    singles = {i for i, n in counts.items() if n == 1}
    assert not singles & set(df[df.label == 1].identity_a)
    # positives spread across identities (round-robin), not drawn from one
    assert df[df.label == 1].groupby("fold").identity_a.nunique().min() >= 25
    # deterministic with the seed, different with another seed
    pd.testing.assert_frame_equal(df, generate_pairs(images, n_folds=10, pairs_per_fold=60, seed=3))
    pd.testing.assert_frame_equal(df, generate_pairs(images.iloc[::-1], n_folds=10, pairs_per_fold=60, seed=3))
    assert not df.equals(generate_pairs(images, n_folds=10, pairs_per_fold=60, seed=4))


def test_generate_pairs_small_data_warns_and_stays_balanced(tmp_path):
    images = _images({"a": 2, "b": 1, "c": 3, "d": 1, "e": 1})
    with pytest.warns(UserWarning, match="cannot supply 10 positive"):
        df = generate_pairs(images, n_folds=2, pairs_per_fold=20, seed=0)
    _check_generated(df, 2)
    assert len(df) > 0
    # nothing possible: an empty frame with the usual columns and a warning, not a crash
    for tiny, folds in [({"a": 5}, 1), ({"a": 1, "b": 1, "c": 1}, 1), ({f"i{k}": 3 for k in range(8)}, 10)]:
        with pytest.warns(UserWarning, match="no pairs generated"):
            empty = generate_pairs(_images(tiny), n_folds=folds, pairs_per_fold=2)
        assert len(empty) == 0 and list(empty.columns) == ["fold", "image_a", "identity_a", "image_b", "identity_b", "label"]
        write_pairs(scenario_pairs(empty, "masked_unmasked"), tmp_path / "empty.txt")
        assert len(read_pairs(tmp_path / "empty.txt")) == 0
    with pytest.raises(ValueError, match="no images"):
        generate_pairs(_images({}))
    with pytest.raises(ValueError, match="even"):
        generate_pairs(images, pairs_per_fold=7)


def test_generate_pairs_exhausts_small_fold_without_duplicates():
    # one fold, 2 identities x 2 images: 2 positives and 4 negatives possible -> 2 + 2
    images = _images({"a": 2, "b": 2})
    with pytest.warns(UserWarning):
        df = generate_pairs(images, n_folds=1, pairs_per_fold=10, seed=1)
    _check_generated(df, 1)
    assert len(df) == 4 and df.label.sum() == 2


def test_write_read_round_trip(tmp_path):
    pairs = scenario_pairs(_lfw_like_pairs(2, 10), "masked_unmasked")
    path = tmp_path / "sub" / "pairs_masked_unmasked.txt"
    write_pairs(pairs, path)
    lines = path.read_text().splitlines()
    assert len(lines) == 20 and lines[0].count(" ") == 2 and lines[0].endswith(" 1")
    back = read_pairs(path)
    assert list(back.columns) == ["a", "b", "label"]
    pd.testing.assert_frame_equal(back, pairs[["a", "b", "label"]])
    assert not list(tmp_path.joinpath("sub").glob("*.tmp"))
    # generated frames (image_a/image_b) write too, and the fold CSV keeps folds and identities
    gen = generate_pairs(_images({f"i{k}": 3 for k in range(8)}), n_folds=2, pairs_per_fold=4)
    write_pairs(gen, tmp_path / "gen.txt")
    assert len(read_pairs(tmp_path / "gen.txt")) == len(gen)
    write_pair_folds(gen, tmp_path / "gen.csv")
    folds = read_pair_folds(tmp_path / "gen.csv")
    assert folds.fold.tolist() == gen.fold.tolist() and folds.a.tolist() == gen.image_a.tolist()
    assert folds.identity_b.tolist() == gen.identity_b.tolist()


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("a.jpg b.jpg 1\na.jpg c.jpg\n", 2, "3 fields"),
        ("a.jpg b.jpg 1\n\na.jpg c.jpg 2\n", 3, "label"),
        ("a.jpg b.jpg 1 extra\n", 1, "3 fields"),
    ],
)
def test_read_pairs_malformed_names_file_and_line(tmp_path, text, line, what):
    path = tmp_path / "bad_pairs.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"bad_pairs\.txt:{line}:.*{what}"):
        read_pairs(path)


def test_write_pairs_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="whitespace"):
        write_pairs(pd.DataFrame({"a": ["x y.jpg"], "b": ["z.jpg"], "label": [1]}), tmp_path / "p.txt")
    with pytest.raises(ValueError, match="0 or 1"):
        write_pairs(pd.DataFrame({"a": ["x.jpg"], "b": ["z.jpg"], "label": [2]}), tmp_path / "p.txt")
    assert not (tmp_path / "p.txt").exists()
