"""The study's train/evaluation splits of LFW View 2 and identity-folder training sets.

An image is named by its path relative to its dataset root, POSIX style (:mod:`maskstudy.datasets.identity_folders`);
LFW's protocol files are read by :mod:`maskstudy.datasets.lfw_files`. Both are re-exported here, where the notebooks and
the data build have always imported them from.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..core.storage import write_csv, write_json
from .identity_folders import (
    IMAGE_EXTENSIONS,
    SCAN_COLUMNS,
    printable_name,
    scan_all_files,
    scan_identity_folders,
    skipped_files,
    unsafe_name_reason,
)
from .lfw_files import PAIR_COLUMNS, PEOPLE_COLUMNS, identity_folds, lfw_image, read_lfw_pairs, read_lfw_people

__all__ = [
    "IMAGE_EXTENSIONS", "PAIR_COLUMNS", "PEOPLE_COLUMNS", "PROTOCOL_EXTRA", "PROTOCOL_LFW", "SCAN_COLUMNS",
    "TRAIN_COLUMNS", "Split", "identity_folds", "lfw_image", "make_split", "printable_name", "read_lfw_pairs",
    "read_lfw_people", "scan_all_files", "scan_identity_folders", "skipped_files", "unsafe_name_reason",
]

TRAIN_COLUMNS = ["dataset", "identity", "image"]

PROTOCOL_EXTRA = "extra-train/lfw-10fold"
PROTOCOL_LFW = "lfw-folds2-10/fold1"


def _fold_text(folds) -> str:
    """[2,3,...,10] -> '2-10'; [1] -> '1'; [1,3,4] -> '1,3-4'."""
    folds = sorted(set(int(f) for f in folds))
    parts, start, prev = [], None, None
    for f in folds:
        if start is None:
            start = prev = f
        elif f == prev + 1:
            prev = f
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = f
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def _eval_identities(eval_pairs: pd.DataFrame) -> pd.DataFrame:
    rows = pd.concat(
        [
            eval_pairs[["identity_a", "fold"]].rename(columns={"identity_a": "identity"}),
            eval_pairs[["identity_b", "fold"]].rename(columns={"identity_b": "identity"}),
        ]
    )
    rows["identity"] = rows["identity"].astype(str)
    return rows.drop_duplicates("identity").sort_values(["fold", "identity"]).reset_index(drop=True)


@dataclass
class Split:
    """A train / evaluation split of the study.

    ``train``: DataFrame[dataset, identity, image]; ``eval_pairs``: the LFW pairs rows of the evaluated
    folds (``read_lfw_pairs`` columns); ``eval_folds``: the evaluated fold numbers.
    """

    protocol: str
    description: str
    train: pd.DataFrame
    eval_pairs: pd.DataFrame
    eval_folds: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.verify()

    @property
    def eval_identities(self) -> pd.DataFrame:
        """DataFrame[identity, fold] of the identities in the evaluated pairs."""
        return _eval_identities(self.eval_pairs)

    @property
    def eval_images(self) -> pd.DataFrame:
        """DataFrame[identity, image] of every photo in the evaluated pairs, once each, sorted by image."""
        pairs = self.eval_pairs
        images = pd.DataFrame({"identity": pd.concat([pairs["identity_a"], pairs["identity_b"]]),
                               "image": pd.concat([pairs["image_a"], pairs["image_b"]])})
        return images.drop_duplicates("image").sort_values("image").reset_index(drop=True)

    def verify(self) -> None:
        """Raise ``ValueError`` if a training identity is also an evaluated identity."""
        if len(self.train) == 0:
            raise ValueError(f"split {self.protocol!r}: the training set is empty")
        bad_folds = sorted(set(self.eval_pairs["fold"].astype(int)) - set(int(f) for f in self.eval_folds))
        if bad_folds:
            raise ValueError(f"split {self.protocol!r}: eval_pairs hold folds {bad_folds} not in eval_folds")
        overlap = sorted(set(self.train["identity"].astype(str)) & set(self.eval_identities["identity"]))
        if overlap:
            raise ValueError(
                f"split {self.protocol!r} leaks {len(overlap)} identities from evaluation into training, "
                f"e.g. {overlap[:5]}"
            )

    def counts(self) -> dict:
        per_ds = {
            str(ds): {"images": int(len(g)), "identities": int(g["identity"].nunique())}
            for ds, g in self.train.groupby("dataset", sort=True)
        }
        return {
            "train_images": int(len(self.train)),
            "train_identities": int(self.train[["dataset", "identity"]].drop_duplicates().shape[0]),
            "train_by_dataset": per_ds,
            "eval_pairs": int(len(self.eval_pairs)),
            "eval_positive": int((self.eval_pairs["label"] == 1).sum()),
            "eval_negative": int((self.eval_pairs["label"] == 0).sum()),
            "eval_identities": int(len(self.eval_identities)),
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``split.json``, ``train_images.csv``, ``eval_identities.csv`` and ``eval_pairs.csv``."""
        self.verify()  # the frames may have been edited since construction
        folder = Path(folder)
        write_csv(folder / "train_images.csv", self.train[TRAIN_COLUMNS])
        write_csv(folder / "eval_identities.csv", self.eval_identities)
        write_csv(folder / "eval_pairs.csv", self.eval_pairs[PAIR_COLUMNS])
        write_json(
            folder / "split.json",
            {
                "protocol": self.protocol,
                "description": self.description,
                "eval_folds": [int(f) for f in self.eval_folds],
                "counts": self.counts(),
            },
        )
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Split:
        folder = Path(folder)
        meta_path = folder / "split.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no split.json in {folder}")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        train = pd.read_csv(folder / "train_images.csv", dtype=str, keep_default_na=False)
        pairs = pd.read_csv(
            folder / "eval_pairs.csv",
            dtype={"identity_a": str, "image_a": str, "identity_b": str, "image_b": str},
            keep_default_na=False,
        ).astype({"fold": int, "pair_index": int, "label": int})
        return cls(
            protocol=meta["protocol"],
            description=meta["description"],
            train=train[TRAIN_COLUMNS],
            eval_pairs=pairs[PAIR_COLUMNS],
            eval_folds=[int(f) for f in meta["eval_folds"]],
        )


def make_split(
    lfw_images: pd.DataFrame,
    lfw_pairs: pd.DataFrame,
    id_folds: dict[str, int],
    extra_images: dict[str, pd.DataFrame] | None = None,
    eval_folds=None,
) -> Split:
    """Build the study's split.

    * With extra identity-folder datasets (e.g. ``{"celeba": scan_identity_folders(...)}``): train on
      all their images and evaluate on the LFW pairs of every fold (protocol ``extra-train/lfw-10fold``).
    * With LFW alone: evaluate on fold 1 (or ``eval_folds``) and train on the LFW identities that are
      not in an evaluated fold, i.e. those of the other folds and those in no fold
      (protocol ``lfw-folds2-10/fold1``).

    Identities are compared by name; CelebA's numeric identity ids cannot be matched to LFW names,
    so a person present in both datasets cannot be detected here.
    """
    all_folds = sorted(set(int(f) for f in lfw_pairs["fold"]))
    if not all_folds:
        raise ValueError("lfw_pairs is empty")
    extra_images = {k: v for k, v in (extra_images or {}).items() if v is not None and len(v)}
    if "lfw" in extra_images:
        raise ValueError("an extra training set may not be named 'lfw' (reserved for the evaluation set); rename it")

    if eval_folds is None:
        eval_folds = all_folds if extra_images else [all_folds[0]]
    eval_folds = sorted(set(int(f) for f in eval_folds))
    unknown = sorted(set(eval_folds) - set(all_folds))
    if unknown:
        raise ValueError(f"eval_folds {unknown} are not in the pairs (folds {all_folds})")
    eval_pairs = lfw_pairs[lfw_pairs["fold"].astype(int).isin(eval_folds)].reset_index(drop=True)
    n_eval_ids = len(_eval_identities(eval_pairs))
    eval_text = (
        f"all {len(all_folds)} LFW View 2 folds" if eval_folds == all_folds and len(all_folds) > 1
        else f"LFW View 2 fold{'s' if len(eval_folds) > 1 else ''} {_fold_text(eval_folds)}"
    )

    evaluated = f"the {len(eval_pairs):,} pairs of {eval_text} ({n_eval_ids:,} identities)"
    if extra_images:
        train, protocol, trained_on = _extra_training(extra_images, eval_folds, all_folds)
        description = f"{trained_on}, and are evaluated on {evaluated}, none of which is used for training."
    else:
        train, protocol, trained_on = _lfw_training(lfw_images, id_folds, eval_folds)
        description = f"{trained_on}, and are evaluated on {evaluated}, whose identities are all excluded from training."
    return Split(
        protocol=protocol,
        description=description,
        train=train[TRAIN_COLUMNS].reset_index(drop=True),
        eval_pairs=eval_pairs,
        eval_folds=list(eval_folds),
    )


def _extra_training(extra_images: dict[str, pd.DataFrame], eval_folds: list[int], all_folds: list[int]):
    """Training on every image of the extra identity-folder sets: ``(train, protocol, description start)``."""
    parts = []
    for name, df in sorted(extra_images.items()):
        part = df[["identity", "image"]].astype(str).copy()
        part.insert(0, "dataset", str(name))
        parts.append(part)
    train = pd.concat(parts, ignore_index=True)
    if eval_folds == all_folds and len(all_folds) == 10:
        protocol = PROTOCOL_EXTRA
    else:
        protocol = f"extra-train/lfw-fold{_fold_text(eval_folds)}"
    ds_text = " and ".join(
        f"{name} ({g['identity'].nunique():,} identities, {len(g):,} images)"
        for name, g in train.groupby("dataset", sort=True)
    )
    return train, protocol, f"The networks train on {ds_text} only"


def _lfw_training(lfw_images: pd.DataFrame, id_folds: dict[str, int], eval_folds: list[int]):
    """Training on the LFW identities outside the evaluated folds: ``(train, protocol, description start)``."""
    imgs = lfw_images[["identity", "image"]].astype(str)
    ident_fold = imgs["identity"].map(lambda i: id_folds.get(i))
    keep = ~ident_fold.isin(eval_folds)
    train = imgs[keep].copy()
    train.insert(0, "dataset", "lfw")
    train = train.reset_index(drop=True)
    train_folds = sorted(set(int(f) for f in id_folds.values()) - set(eval_folds))
    protocol = f"lfw-folds{_fold_text(train_folds)}/fold{_fold_text(eval_folds)}"
    n_nofold = int(ident_fold[keep].isna().sum())
    nofold_ids = int(train.loc[ident_fold[keep].isna().to_numpy(), "identity"].nunique())
    sources = []
    if train_folds:
        sources.append(f"View 2 fold{'s' if len(train_folds) > 1 else ''} {_fold_text(train_folds)}")
    if nofold_ids:
        sources.append(f"no fold ({nofold_ids:,} identities, {n_nofold:,} images)")
    description = (f"The networks train on {train['identity'].nunique():,} LFW identities ({len(train):,} images) "
                   f"from {' and from '.join(sources) or 'no fold'}")
    return train, protocol, description
