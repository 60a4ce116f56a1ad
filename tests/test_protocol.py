"""LFW protocol parsing and the study's splits; the real-file checks run on ../shared/data/lfw."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from maskstudy.datasets.lfw_files import write_lfw_pairs
from maskstudy.datasets.protocol import (
    PROTOCOL_EXTRA,
    PROTOCOL_LFW,
    Split,
    identity_folds,
    make_split,
    read_lfw_pairs,
    read_lfw_people,
    scan_identity_folders,
)


@pytest.fixture(scope="module")
def lfw_pairs(lfw_root) -> pd.DataFrame:
    return read_lfw_pairs(lfw_root / "pairs.txt")


@pytest.fixture(scope="module")
def lfw_people(lfw_root) -> pd.DataFrame:
    return read_lfw_people(lfw_root / "people.txt")


@pytest.fixture(scope="module")
def lfw_images(lfw_root) -> pd.DataFrame:
    return scan_identity_folders(lfw_root)


# ------------------------------------------------------------------------------------------
# Real files
# ------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_pairs_structure(lfw_pairs, lfw_root):
    assert len(lfw_pairs) == 6000
    assert list(lfw_pairs.columns) == ["fold", "pair_index", "identity_a", "image_a", "identity_b", "image_b", "label"]
    per_fold = lfw_pairs.groupby("fold")["label"].agg(["size", "sum"])
    assert list(per_fold.index) == list(range(1, 11))
    assert (per_fold["size"] == 600).all()
    assert (per_fold["sum"] == 300).all()
    assert (lfw_pairs.groupby("fold")["pair_index"].apply(lambda s: list(s) == list(range(600)))).all()
    # matched pairs first in each fold, then mismatched
    assert (lfw_pairs["label"] == (lfw_pairs["pair_index"] < 300).astype(int)).all()
    assert (lfw_pairs.loc[lfw_pairs.label == 1, "identity_a"] == lfw_pairs.loc[lfw_pairs.label == 1, "identity_b"]).all()
    assert (lfw_pairs.loc[lfw_pairs.label == 0, "identity_a"] != lfw_pairs.loc[lfw_pairs.label == 0, "identity_b"]).all()
    first = lfw_pairs.iloc[0]
    assert first["image_a"] == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    assert first["image_b"] == "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    images = set(lfw_pairs["image_a"]) | set(lfw_pairs["image_b"])
    missing = [p for p in images if not (lfw_root / p).is_file()]
    assert not missing, missing[:5]


@pytest.mark.realdata
def test_real_folds_identity_disjoint_and_match_people(lfw_pairs, lfw_people):
    derived = identity_folds(lfw_pairs)  # raises if an identity is in two folds' pairs
    from_people = identity_folds(lfw_pairs, lfw_people)  # raises if pairs and people disagree
    assert len(lfw_people) == 5749
    assert sorted(lfw_people["fold"].unique()) == list(range(1, 11))
    assert len(from_people) == 5749
    assert all(from_people[i] == f for i, f in derived.items())
    for fold, g in lfw_pairs.groupby("fold"):
        ids = set(g["identity_a"]) | set(g["identity_b"])
        others = lfw_pairs[lfw_pairs.fold != fold]
        assert not ids & (set(others["identity_a"]) | set(others["identity_b"]))
    # n_images in people.txt covers every index the pairs use
    n = dict(zip(lfw_people.identity, lfw_people.n_images))
    idx = lfw_pairs["image_a"].str.extract(r"_(\d{4})\.jpg$")[0].astype(int)
    assert (idx <= lfw_pairs["identity_a"].map(n)).all()


@pytest.mark.realdata
def test_real_view1_files(lfw_root):
    train = read_lfw_pairs(lfw_root / "pairsDevTrain.txt")
    test = read_lfw_pairs(lfw_root / "pairsDevTest.txt")
    assert len(train) == 2200 and train["label"].sum() == 1100 and set(train.fold) == {1}
    assert len(test) == 1000 and test["label"].sum() == 500
    people = read_lfw_people(lfw_root / "peopleDevTrain.txt")
    assert len(people) == 4038 and set(people.fold) == {1}
    identity_folds(train, people)


@pytest.mark.realdata
def test_real_split_lfw_only(lfw_images, lfw_pairs, lfw_people, tmp_path):
    folds = identity_folds(lfw_pairs, lfw_people)
    split = make_split(lfw_images, lfw_pairs, folds, None)
    assert split.protocol == PROTOCOL_LFW
    assert split.eval_folds == [1]
    assert len(split.eval_pairs) == 600 and set(split.eval_pairs.fold) == {1}
    eval_ids = set(split.eval_pairs.identity_a) | set(split.eval_pairs.identity_b)
    train_ids = set(split.train.identity)
    assert not eval_ids & train_ids
    assert set(split.train.dataset) == {"lfw"}
    assert all(folds.get(i) != 1 for i in train_ids)
    # every LFW identity not in fold 1 trains
    assert train_ids == {i for i in lfw_images.identity if folds.get(i) != 1}
    assert "fold 1" in split.description and "folds 2-10" in split.description
    split.save(tmp_path)
    meta = json.loads((tmp_path / "split.json").read_text())
    assert meta["protocol"] == PROTOCOL_LFW and meta["eval_folds"] == [1]
    assert meta["counts"]["train_images"] == len(split.train)
    loaded = Split.load(tmp_path)
    pd.testing.assert_frame_equal(loaded.train, split.train)
    pd.testing.assert_frame_equal(loaded.eval_pairs, split.eval_pairs)


@pytest.mark.realdata
def test_real_split_with_celeba(lfw_images, lfw_pairs, lfw_people, celeba_root):
    celeba = scan_identity_folders(celeba_root)
    assert celeba["identity"].nunique() == 299
    assert len(celeba) == 6300
    assert celeba["image"].str.match(r"^\d+/[^/]+\.jpg$").all()
    split = make_split(lfw_images, lfw_pairs, identity_folds(lfw_pairs, lfw_people), {"celeba": celeba})
    assert split.protocol == PROTOCOL_EXTRA
    assert split.eval_folds == list(range(1, 11))
    assert len(split.eval_pairs) == 6000
    assert set(split.train.dataset) == {"celeba"} and len(split.train) == 6300
    assert not set(split.train.identity) & set(split.eval_identities.identity)
    assert "celeba" in split.description


# ------------------------------------------------------------------------------------------
# Synthetic files
# ------------------------------------------------------------------------------------------

PAIRS_2x2 = """2\t2
A\t1\t2
B\t1\t3
A\t1\tB\t2
A\t2\tC\t1
D\t1\t2
D\t2\t3
D\t1\tE\t1
E\t1\tF\t1
"""

PEOPLE_2 = """2
3
A\t2
B\t3
C\t1
3
D\t3
E\t1
F\t1
"""


def test_parse_small_pairs_and_people(tmp_path):
    (tmp_path / "pairs.txt").write_text(PAIRS_2x2)
    (tmp_path / "people.txt").write_text(PEOPLE_2)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt")
    assert list(pairs.fold) == [1, 1, 1, 1, 2, 2, 2, 2]
    assert list(pairs.label) == [1, 1, 0, 0, 1, 1, 0, 0]
    assert list(pairs.pair_index) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert pairs.loc[2, "image_b"] == "B/B_0002.jpg"
    people = read_lfw_people(tmp_path / "people.txt")
    assert list(people.fold) == [1, 1, 1, 2, 2, 2]
    assert identity_folds(pairs, people) == {"A": 1, "B": 1, "C": 1, "D": 2, "E": 2, "F": 2}
    assert identity_folds(pairs) == {"A": 1, "B": 1, "C": 1, "D": 2, "E": 2, "F": 2}


def test_written_pairs_read_back_unchanged(tmp_path):
    (tmp_path / "pairs.txt").write_text(PAIRS_2x2)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt")
    write_lfw_pairs(pairs, tmp_path / "copy.txt")
    pd.testing.assert_frame_equal(read_lfw_pairs(tmp_path / "copy.txt"), pairs)
    # a subset with the same number of pairs per fold and label is a valid pairs.txt of its own
    subset = pairs.groupby(["fold", "label"], group_keys=False).head(1)
    write_lfw_pairs(subset, tmp_path / "subset.txt")
    back = read_lfw_pairs(tmp_path / "subset.txt")
    assert back[["fold", "image_a", "image_b", "label"]].equals(subset[["fold", "image_a", "image_b", "label"]]
                                                                .reset_index(drop=True))
    with pytest.raises(ValueError, match="same number of matched and mismatched"):
        write_lfw_pairs(pairs.iloc[:-1], tmp_path / "uneven.txt")


def test_view1_single_count_header(tmp_path):
    (tmp_path / "p.txt").write_text("2\nA 1 2\nB 1 2\nA 1 B 1\nB 2 C 1\n")
    (tmp_path / "q.txt").write_text("3\nA 2\nB 2\nC 1\n")
    pairs = read_lfw_pairs(tmp_path / "p.txt")
    assert list(pairs.label) == [1, 1, 0, 0] and set(pairs.fold) == {1}
    people = read_lfw_people(tmp_path / "q.txt")
    assert list(people.identity) == ["A", "B", "C"] and set(people.fold) == {1}


@pytest.mark.parametrize(
    "text, line",
    [
        ("2\t2\nA\t1\nB\t1\t3\n", 2),  # matched line with 2 fields
        ("2\t2\nA\t1\t2\nB\t1\tx\n", 3),  # non-integer index
        ("1\t2\nA\t1\t2\nB\t1\t3\nA\t1\t2\nA\t1\tC\t1\n", 4),  # matched line where mismatched expected
        ("1\t1\nA\t1\t2\nA\t1\tB\t1\nextra\t1\t2\n", 4),  # extra line
        ("1\t2\nA\t1\t2\n", 2),  # file ends early
        ("x\t2\n", 1),  # header
    ],
)
def test_malformed_pairs_name_the_line(tmp_path, text, line):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"pairs\.txt:{line}:"):
        read_lfw_pairs(path)


def test_malformed_people_names_the_line(tmp_path):
    path = tmp_path / "people.txt"
    path.write_text("1\n2\nA 1\nB one\n")
    with pytest.raises(ValueError, match=r"people\.txt:4:"):
        read_lfw_people(path)


def test_identity_folds_detects_overlap_and_inconsistency(tmp_path):
    (tmp_path / "pairs.txt").write_text(PAIRS_2x2.replace("E\t1\tF\t1", "E\t1\tA\t1"))
    pairs = read_lfw_pairs(tmp_path / "pairs.txt")
    with pytest.raises(ValueError, match="identity-disjoint"):
        identity_folds(pairs)
    (tmp_path / "pairs.txt").write_text(PAIRS_2x2)
    swapped = "2\n3\nA 2\nB 3\nD 3\n3\nC 1\nE 1\nF 1\n"  # D and C in the other fold than in the pairs
    (tmp_path / "people.txt").write_text(swapped)
    with pytest.raises(ValueError, match="different fold"):
        identity_folds(read_lfw_pairs(tmp_path / "pairs.txt"), read_lfw_people(tmp_path / "people.txt"))
    (tmp_path / "people.txt").write_text("2\n2\nA 2\nB 3\n3\nD 3\nE 1\nF 1\n")  # C missing
    with pytest.raises(ValueError, match="not in the people list"):
        identity_folds(read_lfw_pairs(tmp_path / "pairs.txt"), read_lfw_people(tmp_path / "people.txt"))


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_scan_identity_folders(tmp_path):
    for rel in ["b/2.jpg", "b/1.JPG", "a/x.png", "a/x_mask.png", "a/.hidden.jpg", "a/notes.txt",
                "top.jpg", ".cache/z.jpg", "empty_only_mask/m_mask.jpg", "a/sub/deep.jpg"]:
        _touch(tmp_path / rel)
    df = scan_identity_folders(tmp_path)
    assert list(df.columns) == ["identity", "image"]
    assert list(df.image) == ["a/x.png", "b/1.JPG", "b/2.jpg"]
    assert list(df.identity) == ["a", "b", "b"]
    with pytest.raises(FileNotFoundError):
        scan_identity_folders(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    _touch(tmp_path / "flat" / "img.jpg")
    with pytest.raises(ValueError, match="no identity folder"):
        scan_identity_folders(tmp_path / "flat")


def _toy_lfw(tmp_path):
    (tmp_path / "pairs.txt").write_text(PAIRS_2x2)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt")
    images = pd.DataFrame(
        [(i, f"{i}/{i}_{k:04d}.jpg") for i, n in [("A", 2), ("B", 3), ("C", 1), ("D", 3), ("E", 1), ("F", 1), ("G", 2)]
         for k in range(1, n + 1)],
        columns=["identity", "image"],
    )
    return images, pairs, identity_folds(pairs)


def test_make_split_synthetic_protocols(tmp_path):
    images, pairs, folds = _toy_lfw(tmp_path)
    s = make_split(images, pairs, folds, None)
    assert s.protocol == "lfw-folds2/fold1" and s.eval_folds == [1]
    assert set(s.train.identity) == {"D", "E", "F", "G"}  # G is in no fold
    s2 = make_split(images, pairs, folds, None, eval_folds=[2])
    assert set(s2.train.identity) == {"A", "B", "C", "G"} and set(s2.eval_pairs.fold) == {2}
    extra = pd.DataFrame({"identity": ["7201", "7201"], "image": ["7201/1.jpg", "7201/2.jpg"]})
    s3 = make_split(images, pairs, folds, {"celeba": extra})
    assert s3.eval_folds == [1, 2] and len(s3.eval_pairs) == 8
    assert list(s3.train.columns) == ["dataset", "identity", "image"] and set(s3.train.dataset) == {"celeba"}
    s3.save(tmp_path / "split")
    loaded = Split.load(tmp_path / "split")
    assert loaded.train.identity.tolist() == ["7201", "7201"]  # stays a string
    assert (tmp_path / "split" / "eval_identities.csv").is_file()
    with pytest.raises(ValueError, match="not in the pairs"):
        make_split(images, pairs, folds, None, eval_folds=[3])


def test_make_split_rejects_leak(tmp_path):
    images, pairs, folds = _toy_lfw(tmp_path)
    leaky = dict(folds, A=2)  # A is evaluated in fold 1 but claimed to be in fold 2
    with pytest.raises(ValueError, match="leaks"):
        make_split(images, pairs, leaky, None)
    extra = pd.DataFrame({"identity": ["B"], "image": ["B/x.jpg"]})
    with pytest.raises(ValueError, match="leaks"):
        make_split(images, pairs, folds, {"other": extra})
