"""Verification pair lists in the seed study's format, and masked scenarios.

A pair file holds one pair per line, ``a b label`` separated by single spaces, where ``a`` and ``b``
are image paths relative to the aligned root (POSIX style) and ``label`` is 1 (same identity) or 0.
The masked twin of ``X/Y.jpg`` is ``X/Y_mask.jpg``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from ..core.storage import write_csv, write_text

#: The basic scenarios: no image masked, one image of each pair masked, both masked.
UNMASKED_UNMASKED, MASKED_UNMASKED, MASKED_MASKED = "unmasked_unmasked", "masked_unmasked", "masked_masked"
SCENARIOS = (UNMASKED_UNMASKED, MASKED_UNMASKED, MASKED_MASKED)
MASK_SUFFIX = "_mask"
#: Masked-crop variants (:mod:`maskstudy.datasets.masked_photos`) -> suffix of their crop names.
MASK_VARIANTS = {
    "shared": "_mask",
    "detected": "_mask_det",
    "detected_eyes": "_mask_deteyes",
    "unseen": "_mask_unseen",
    "unseen_detected": "_mask_unseen_det",
}
#: Scenarios on masked-crop variants: name -> (basic scenario whose pairs and masked sides it keeps, variant).
VARIANT_SCENARIOS = {
    f"{MASKED_UNMASKED}_detected": (MASKED_UNMASKED, "detected"),
    f"{MASKED_MASKED}_detected": (MASKED_MASKED, "detected"),
    f"{MASKED_UNMASKED}_detected_eyes": (MASKED_UNMASKED, "detected_eyes"),
    f"{MASKED_UNMASKED}_unseen": (MASKED_UNMASKED, "unseen"),
    f"{MASKED_UNMASKED}_unseen_detected": (MASKED_UNMASKED, "unseen_detected"),
}


def variant_scenario(basic: str, variant: str) -> str:
    """Name of the :data:`VARIANT_SCENARIOS` scenario that keeps ``basic``'s pairs with ``variant``'s masked crops
    (``("masked_unmasked", "detected")`` -> ``"masked_unmasked_detected"``)."""
    for name, key in VARIANT_SCENARIOS.items():
        if key == (basic, variant):
            return name
    known = ", ".join(f"{b}/{v}" for b, v in VARIANT_SCENARIOS.values())
    raise ValueError(f"no scenario for masked crops {variant!r} on {basic!r} pairs; known: {known}")


def variants_of(basic: str) -> list[str]:
    """The variant scenarios built on ``basic``'s pairs, in :data:`VARIANT_SCENARIOS` order."""
    return [name for name, (base, _) in VARIANT_SCENARIOS.items() if base == basic]


GENERATED_COLUMNS = ["fold", "image_a", "identity_a", "image_b", "identity_b", "label"]


def masked_name(rel: str) -> str:
    """``X/Y.jpg`` -> ``X/Y_mask.jpg`` (the masked twin's relative path).

    Raises ``ValueError`` for a name that is already a masked twin, to catch double masking.
    """
    p = PurePosixPath(str(rel))
    if p.stem.endswith(MASK_SUFFIX):
        raise ValueError(f"{rel!r} is already a masked image name")
    if not p.stem:
        raise ValueError(f"not an image name: {rel!r}")
    return str(p.with_name(p.stem + MASK_SUFFIX + p.suffix))


def masked_images(pairs: pd.DataFrame) -> np.ndarray:
    """The masked image of each pair of a masked–unmasked pair list (columns ``a`` and ``b``): ``b`` where
    ``a`` is not a masked twin."""
    twin = MASK_SUFFIX + ".jpg"
    return np.where(pairs["a"].astype(str).str.endswith(twin), pairs["a"], pairs["b"])


def _pair_columns(df: pd.DataFrame) -> tuple[str, str]:
    if {"image_a", "image_b"} <= set(df.columns):
        return "image_a", "image_b"
    if {"a", "b"} <= set(df.columns):
        return "a", "b"
    raise KeyError(f"pairs need columns image_a/image_b (or a/b); got {list(df.columns)}")


def _mask_a(seed: int, a: str, b: str) -> bool:
    """Deterministic per-pair coin: True -> mask ``a``, False -> mask ``b`` (independent of row order)."""
    digest = hashlib.sha256(f"{int(seed)}\x1f{a}\x1f{b}".encode()).digest()
    return digest[0] & 1 == 0


def scenario_pairs(pairs: pd.DataFrame, scenario: str, seed: int = 0) -> pd.DataFrame:
    """Pairs of one scenario: DataFrame[fold, a, b, label], same folds, labels and order as ``pairs``.

    * ``unmasked_unmasked``: both images unmasked.
    * ``masked_unmasked``: exactly one image of each pair is replaced by its masked twin; which one
      is decided per pair by a hash of (seed, image_a, image_b), so about half the pairs mask ``a``
      and half ``b``, and a pair gets the same choice whatever the other rows are.
    * ``masked_masked``: both images masked.

    ``pairs`` needs ``image_a``/``image_b`` (or ``a``/``b``) and ``label``; ``fold`` defaults to 1.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {SCENARIOS}")
    ca, cb = _pair_columns(pairs)
    a = pairs[ca].astype(str).tolist()
    b = pairs[cb].astype(str).tolist()
    if scenario == MASKED_MASKED:
        a = [masked_name(x) for x in a]
        b = [masked_name(x) for x in b]
    elif scenario == MASKED_UNMASKED:
        new_a, new_b = [], []
        for x, y in zip(a, b):
            if _mask_a(seed, x, y):
                new_a.append(masked_name(x))
                new_b.append(y)
            else:
                new_a.append(x)
                new_b.append(masked_name(y))
        a, b = new_a, new_b
    fold = pairs["fold"].astype(int).to_numpy() if "fold" in pairs.columns else np.ones(len(pairs), int)
    return pd.DataFrame(
        {"fold": fold, "a": a, "b": b, "label": pairs["label"].astype(int).to_numpy()}
    )


def variant_scenario_pairs(pairs: pd.DataFrame, scenario: str, seed: int = 0) -> pd.DataFrame:
    """Pairs of a :data:`VARIANT_SCENARIOS` scenario: the basic scenario's pairs (same pairs, same masked side),
    with each masked crop replaced by the variant's crop (e.g. ``X/Y_mask.jpg`` -> ``X/Y_mask_det.jpg``)."""
    if scenario not in VARIANT_SCENARIOS:
        raise ValueError(f"unknown variant scenario {scenario!r}; expected one of {', '.join(VARIANT_SCENARIOS)}")
    basic, variant = VARIANT_SCENARIOS[scenario]
    out = scenario_pairs(pairs, basic, seed)
    shared, suffix = MASK_VARIANTS["shared"] + ".jpg", MASK_VARIANTS[variant] + ".jpg"

    def swap(name: str) -> str:
        return name[: -len(shared)] + suffix if name.endswith(shared) else name

    out["a"] = out["a"].map(swap)
    out["b"] = out["b"].map(swap)
    return out


# --------------------------------------------------------------------------------------------
# Pair generation for any identity-folder dataset
# --------------------------------------------------------------------------------------------


def _assign_folds(images_by_id: dict[str, list[str]], n_folds: int, rng: np.random.Generator) -> dict[str, int]:
    """Seeded round-robin: multi-image identities first (spread evenly), then single-image ones."""
    multi = sorted(i for i, v in images_by_id.items() if len(v) >= 2)
    single = sorted(i for i, v in images_by_id.items() if len(v) < 2)
    order = [multi[k] for k in rng.permutation(len(multi))] + [single[k] for k in rng.permutation(len(single))]
    return {ident: k % n_folds + 1 for k, ident in enumerate(order)}


def _positives(ids: list[str], images_by_id: dict[str, list[str]], n: int, rng: np.random.Generator):
    """Up to ``n`` distinct same-identity pairs, spread across identities (round-robin)."""
    pools = []
    for ident in ids:
        imgs = images_by_id[ident]
        if len(imgs) < 2:
            continue
        combos = list(itertools.combinations(range(len(imgs)), 2))
        perm = rng.permutation(len(combos))
        pools.append((ident, [combos[k] for k in perm]))
    active = [pools[k] for k in rng.permutation(len(pools))]
    out = []
    depth = 0
    while len(out) < n and active:
        still = []
        for ident, combos in active:
            if len(out) >= n:
                break
            i, j = combos[depth]
            imgs = images_by_id[ident]
            out.append((ident, imgs[i], ident, imgs[j]))
            if depth + 1 < len(combos):
                still.append((ident, combos))
        active = still
        depth += 1
    return out


def _negative_capacity(ids: list[str], images_by_id: dict[str, list[str]]) -> int:
    sizes = np.array([len(images_by_id[i]) for i in ids], dtype=np.int64)
    total = int(sizes.sum())
    return int((total * total - int((sizes**2).sum())) // 2)


def _negatives(ids: list[str], images_by_id: dict[str, list[str]], n: int, rng: np.random.Generator):
    """Up to ``n`` distinct different-identity pairs; identity pairs drawn uniformly."""
    cap = _negative_capacity(ids, images_by_id)
    n = min(n, cap)
    if n <= 0:
        return []
    out = []
    if cap <= 4 * n or cap <= 2000:
        allp = []
        for x, y in itertools.combinations(ids, 2):
            for ia in images_by_id[x]:
                for ib in images_by_id[y]:
                    allp.append((x, ia, y, ib))
        for k in sorted(rng.choice(len(allp), size=n, replace=False)):
            out.append(allp[k])
        order = rng.permutation(len(out))
        return [out[k] for k in order]
    seen = set()
    m = len(ids)
    while len(out) < n:
        i, j = rng.choice(m, size=2, replace=False)
        x, y = ids[i], ids[j]
        if x > y:
            x, y = y, x
        ia = images_by_id[x][rng.integers(len(images_by_id[x]))]
        ib = images_by_id[y][rng.integers(len(images_by_id[y]))]
        if (ia, ib) in seen:
            continue
        seen.add((ia, ib))
        out.append((x, ia, y, ib))
    return out


def generate_pairs(
    images: pd.DataFrame, n_folds: int = 10, pairs_per_fold: int = 300, seed: int = 0
) -> pd.DataFrame:
    """Generate LFW-style verification folds for an identity-folder dataset.

    Identities are assigned to ``n_folds`` folds by a seeded shuffle (identities with at least two
    images are spread first, so every fold gets its share of them); all pairs of a fold use only that
    fold's identities, so the folds are identity-disjoint. Each fold holds ``pairs_per_fold/2``
    positive pairs (two different images of one identity) and as many negative pairs (two
    identities of the fold). Pairs are unique and never pair an image with itself; identities with
    a single image only serve negatives. A fold that cannot supply the requested count gets as many
    as it can with equal positives and negatives, with a warning (``UserWarning``); if no fold can
    supply a pair the result is empty (with a warning). Only an empty ``images`` raises.

    Returns DataFrame[fold, image_a, identity_a, image_b, identity_b, label], positives then negatives
    within each fold, folds in order. Same input and seed -> same output.
    """
    if n_folds < 1:
        raise ValueError("n_folds must be >= 1")
    if pairs_per_fold < 2 or pairs_per_fold % 2:
        raise ValueError(f"pairs_per_fold must be an even number >= 2 (half positive, half negative), got {pairs_per_fold}")
    missing = {"identity", "image"} - set(images.columns)
    if missing:
        raise KeyError(f"images need columns identity and image; missing {sorted(missing)}")
    df = images[["identity", "image"]].astype(str).drop_duplicates()
    clash = df[df["image"].duplicated(keep=False)]
    if len(clash):
        raise ValueError(f"image {clash['image'].iloc[0]!r} is listed under several identities")
    images_by_id = {i: sorted(g["image"].tolist()) for i, g in df.groupby("identity", sort=True)}
    if not images_by_id:
        raise ValueError("no images given to generate pairs from")

    rng = np.random.default_rng(seed)
    folds = _assign_folds(images_by_id, n_folds, rng)
    half = pairs_per_fold // 2
    rows = []
    short: list[str] = []
    for fold in range(1, n_folds + 1):
        ids = sorted(i for i, f in folds.items() if f == fold)
        frng = np.random.default_rng([int(seed), fold])
        pos_cap = sum(len(images_by_id[i]) * (len(images_by_id[i]) - 1) // 2 for i in ids)
        neg_cap = _negative_capacity(ids, images_by_id)
        n = min(half, pos_cap, neg_cap)
        if n < half:
            short.append(
                f"fold {fold}: {len(ids)} identities, {n} positive + {n} negative "
                f"({pos_cap} positive / {neg_cap} negative possible)"
            )
        if n == 0:
            continue
        for ia, a, ib, b in _positives(ids, images_by_id, n, frng):
            rows.append((fold, a, ia, b, ib, 1))
        for ia, a, ib, b in _negatives(ids, images_by_id, n, frng):
            rows.append((fold, a, ia, b, ib, 0))
    if not rows:
        warnings.warn(
            f"no pairs generated: no fold can supply a balanced pair ({len(images_by_id)} identities over "
            f"{n_folds} folds; a fold needs 2+ identities, one of them with 2+ images)",
            stacklevel=2,
        )
    elif short:
        warnings.warn(
            f"{len(short)} of {n_folds} folds cannot supply {half} positive + {half} negative pairs; "
            "they keep what they can, balanced: " + "; ".join(short),
            stacklevel=2,
        )
    out = pd.DataFrame(rows, columns=GENERATED_COLUMNS)
    return out.astype({"fold": int, "label": int})


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _ab_frame(df: pd.DataFrame) -> pd.DataFrame:
    ca, cb = _pair_columns(df)
    out = pd.DataFrame({"a": df[ca].astype(str).to_numpy(), "b": df[cb].astype(str).to_numpy()})
    labels = pd.to_numeric(df["label"], errors="raise").astype(int).to_numpy()
    if not np.isin(labels, [0, 1]).all():
        raise ValueError("labels must be 0 or 1")
    out["label"] = labels
    for col in ("a", "b"):
        bad = out[col][out[col].str.contains(r"\s", regex=True) | (out[col] == "")]
        if len(bad):
            raise ValueError(f"image path {bad.iloc[0]!r} is empty or holds whitespace; pair files are space-separated")
    return out


def write_pairs(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``a b label`` lines atomically (columns a/b or image_a/image_b, and label)."""
    ab = _ab_frame(df)
    text = "".join(f"{a} {b} {lab}\n" for a, b, lab in zip(ab["a"], ab["b"], ab["label"]))
    return write_text(path, text)


def read_pairs(path: str | os.PathLike) -> pd.DataFrame:
    """Read a pair file into DataFrame[a, b, label]; blank lines are skipped.

    Raises ``ValueError`` naming the file and line number for a malformed line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pair file not found: {path}")
    rows = []
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3:
                raise ValueError(
                    f"{path}:{lineno}: expected 'a b label' (3 fields), got {len(fields)}: {line.strip()!r}"
                )
            if fields[2] not in ("0", "1"):
                raise ValueError(f"{path}:{lineno}: label must be 0 or 1, got {fields[2]!r}")
            rows.append((fields[0], fields[1], int(fields[2])))
    return pd.DataFrame(rows, columns=["a", "b", "label"]).astype({"label": int})


def write_pair_folds(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write pairs with their fold as CSV: fold, a, b, label (+ identity_a, identity_b when present)."""
    ab = _ab_frame(df)
    ab.insert(0, "fold", df["fold"].astype(int).to_numpy() if "fold" in df.columns else 1)
    for col in ("identity_a", "identity_b"):
        if col in df.columns:
            ab[col] = df[col].astype(str).to_numpy()
    return write_csv(path, ab)


def read_pair_folds(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV written by ``write_pair_folds``."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"fold", "a", "b", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return df.astype({"fold": int, "label": int})
