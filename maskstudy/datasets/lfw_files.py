"""LFW View 2 protocol files: the pairs, the people of each fold, and which fold each identity belongs to.

File formats (see ``SOURCE.md`` beside the data):

* ``pairs.txt`` (View 2): first line ``10\\t300`` (folds, pairs per half fold); then for each fold
  300 matched lines ``name i j`` followed by 300 mismatched lines ``name1 i name2 j``.
  ``pairsDevTrain.txt`` / ``pairsDevTest.txt`` (View 1) start with a single count ``1100``:
  that many matched lines then as many mismatched lines (one fold).
* ``people.txt``: first line = number of folds; for each fold a count line then ``name n`` lines.
  ``peopleDevTrain.txt`` / ``peopleDevTest.txt`` have a single count line then ``name n`` lines.

Index ``i`` maps to the file ``name/name_%04d.jpg``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..core.storage import write_text
from .identity_folders import printable_name, unsafe_name_reason

PAIR_COLUMNS = ["fold", "pair_index", "identity_a", "image_a", "identity_b", "image_b", "label"]
PEOPLE_COLUMNS = ["fold", "identity", "n_images"]


def _checked_identity(path, lineno: int, name: str) -> str:
    """An identity name read from a protocol file, refused when it could escape the data folder."""
    problem = None if "/" not in name else f"'/' in identity: {name!r}"
    problem = problem or unsafe_name_reason(name)
    if problem:
        raise ValueError(f"{path}:{lineno}: unsafe identity name ({problem})")
    return name


def lfw_image(name: str, index: int) -> str:
    """Relative path of LFW image ``index`` (1-based) of identity ``name``: ``name/name_%04d.jpg``."""
    return f"{name}/{name}_{int(index):04d}.jpg"



def _read_lines(path: str | os.PathLike) -> list[tuple[int, list[str]]]:
    """Return ``(line_number, fields)`` for every non-blank line (1-based line numbers)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"protocol file not found: {path}")
    out = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            fields = raw.decode("utf-8").split()
        except UnicodeDecodeError as error:
            shown = printable_name(raw.decode("utf-8", "surrogateescape"))
            raise ValueError(f"{path}:{lineno}: not UTF-8 text: {shown!r} ({error.reason})") from None
        if fields:
            out.append((lineno, fields))
    if not out:
        raise ValueError(f"{path}: file is empty")
    return out


def _int_field(path, lineno: int, text: str, what: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: {what} must be an integer, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{path}:{lineno}: {what} must be >= {minimum}, got {value}")
    return value


def read_lfw_pairs(path: str | os.PathLike) -> pd.DataFrame:
    """Parse an LFW pairs file (``pairs.txt`` View 2, or ``pairsDevTrain/DevTest.txt`` View 1).

    Returns a DataFrame with columns ``fold`` (1-based), ``pair_index`` (0-based position of the pair
    within its fold, in file order), ``identity_a``, ``image_a``, ``identity_b``, ``image_b`` and
    ``label`` (1 matched, 0 mismatched), one row per pair in file order.

    Raises ``ValueError`` naming the file and line number for a malformed line, and when the number
    of pair lines does not match the header.
    """
    lines = _read_lines(path)
    hdr_no, header = lines[0]
    if len(header) == 2:
        n_folds = _int_field(path, hdr_no, header[0], "number of folds", 1)
        n_per = _int_field(path, hdr_no, header[1], "pairs per fold half", 1)
    elif len(header) == 1:
        n_folds = 1
        n_per = _int_field(path, hdr_no, header[0], "pair count", 1)
    else:
        raise ValueError(
            f"{path}:{hdr_no}: header must be 'n_folds n_per_half' or 'n_pairs', got {' '.join(header)!r}"
        )
    body = lines[1:]
    expected = n_folds * 2 * n_per
    rows = []
    for k, (lineno, fields) in enumerate(body[:expected]):
        fold = k // (2 * n_per) + 1
        pos = k % (2 * n_per)
        matched = pos < n_per
        if matched:
            if len(fields) != 3:
                raise ValueError(
                    f"{path}:{lineno}: expected a matched pair 'name i j' (fold {fold}), "
                    f"got {len(fields)} fields: {' '.join(fields)!r}"
                )
            name, i, j = fields
            name = _checked_identity(path, lineno, name)
            i = _int_field(path, lineno, i, "image index", 1)
            j = _int_field(path, lineno, j, "image index", 1)
            if i == j:
                raise ValueError(f"{path}:{lineno}: matched pair uses the same image twice")
            rows.append((fold, pos, name, lfw_image(name, i), name, lfw_image(name, j), 1))
        else:
            if len(fields) != 4:
                raise ValueError(
                    f"{path}:{lineno}: expected a mismatched pair 'name1 i name2 j' (fold {fold}), "
                    f"got {len(fields)} fields: {' '.join(fields)!r}"
                )
            n1, i, n2, j = fields
            n1, n2 = _checked_identity(path, lineno, n1), _checked_identity(path, lineno, n2)
            i = _int_field(path, lineno, i, "image index", 1)
            j = _int_field(path, lineno, j, "image index", 1)
            if n1 == n2:
                raise ValueError(f"{path}:{lineno}: mismatched pair names the same identity {n1!r}")
            rows.append((fold, pos, n1, lfw_image(n1, i), n2, lfw_image(n2, j), 0))
    if len(body) < expected:
        last = body[-1][0] if body else hdr_no
        raise ValueError(
            f"{path}:{last}: file ends early: header announces {expected} pairs, found {len(body)}"
        )
    if len(body) > expected:
        raise ValueError(
            f"{path}:{body[expected][0]}: unexpected extra line after the {expected} pairs the header announces"
        )
    df = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    return df.astype({"fold": int, "pair_index": int, "label": int})


def image_index(image: str) -> int:
    """The 1-based index of an LFW image path (``name/name_0003.jpg`` -> 3); the inverse of :func:`lfw_image`."""
    stem = Path(image).stem
    number = stem.rsplit("_", 1)[-1]
    if not number.isdigit():
        raise ValueError(f"not an LFW image name (name/name_NNNN.jpg): {image!r}")
    return int(number)


def write_lfw_pairs(pairs: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write pairs (the frame of :func:`read_lfw_pairs`) as a ``pairs.txt`` that it reads back unchanged: every
    fold must hold as many matched as mismatched pairs, the same number in every fold. Written atomically."""
    counts = pairs.groupby(["fold", "label"]).size()
    if counts.empty or counts.nunique() != 1 or len(counts) != 2 * pairs["fold"].nunique():
        raise ValueError("pairs.txt needs the same number of matched and mismatched pairs in every fold; got "
                         + ", ".join(f"fold {f} label {lab}: {n}" for (f, lab), n in counts.items()))
    lines = [f"{pairs['fold'].nunique()}\t{int(counts.iloc[0])}"]
    for _, fold in pairs.sort_values(["fold", "label", "pair_index"], ascending=[True, False, True]).groupby(
            "fold", sort=True):
        for row in fold.itertuples():
            a, b = image_index(row.image_a), image_index(row.image_b)
            lines.append(f"{row.identity_a}\t{a}\t{b}" if row.label == 1
                         else f"{row.identity_a}\t{a}\t{row.identity_b}\t{b}")
    return write_text(path, "\n".join(lines) + "\n")


def read_lfw_people(path: str | os.PathLike) -> pd.DataFrame:
    """Parse ``people.txt`` (folds) or ``peopleDevTrain/DevTest.txt`` (one list, fold 1).

    Returns a DataFrame with columns ``fold`` (1-based), ``identity``, ``n_images``.
    """
    lines = _read_lines(path)
    hdr_no, header = lines[0]
    if len(header) != 1:
        raise ValueError(f"{path}:{hdr_no}: first line must be a single count, got {' '.join(header)!r}")
    first = _int_field(path, hdr_no, header[0], "count", 1)
    rows = []
    # View 1 files: a single count followed directly by 'name n' lines.
    if len(lines) > 1 and len(lines[1][1]) == 2:
        groups = [(1, first, 1)]  # (fold, count, start position in `lines`)
        n_folds = 1
    else:
        groups = None
        n_folds = first
    pos = 1
    for fold in range(1, n_folds + 1):
        if groups is None:
            if pos >= len(lines):
                raise ValueError(f"{path}:{lines[-1][0]}: file ends before fold {fold}'s count line")
            lineno, fields = lines[pos]
            if len(fields) != 1:
                raise ValueError(
                    f"{path}:{lineno}: expected the count line of fold {fold}, got {' '.join(fields)!r}"
                )
            count = _int_field(path, lineno, fields[0], f"fold {fold} count", 0)
            pos += 1
        else:
            count = first
        for _ in range(count):
            if pos >= len(lines):
                raise ValueError(
                    f"{path}:{lines[-1][0]}: file ends early in fold {fold} (announced {count} names)"
                )
            lineno, fields = lines[pos]
            if len(fields) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'name n', got {' '.join(fields)!r}")
            n = _int_field(path, lineno, fields[1], "image count", 1)
            rows.append((fold, _checked_identity(path, lineno, fields[0]), n))
            pos += 1
    if pos < len(lines):
        raise ValueError(f"{path}:{lines[pos][0]}: unexpected extra line after the last fold")
    df = pd.DataFrame(rows, columns=PEOPLE_COLUMNS).astype({"fold": int, "n_images": int})
    dup = df[df["identity"].duplicated(keep=False)]
    if len(dup):
        name = dup["identity"].iloc[0]
        raise ValueError(f"{path}: identity {name!r} is listed more than once (folds {sorted(dup[dup.identity == name].fold)})")
    return df


def identity_folds(pairs_df: pd.DataFrame, people_df: pd.DataFrame | None = None) -> dict[str, int]:
    """Map identity -> fold.

    With ``people_df`` (``read_lfw_people``) the mapping comes from it (covering identities that appear
    in no pair), after checking that every identity of fold ``k``'s pairs is listed in fold ``k``.
    Without it, the mapping is derived from the pairs: each identity gets the fold whose pairs it
    appears in. Raises ``ValueError`` when the pairs' folds are not identity-disjoint or disagree with
    ``people_df``.
    """
    derived: dict[str, int] = {}
    for col in ("identity_a", "identity_b"):
        for ident, fold in zip(pairs_df[col].astype(str), pairs_df["fold"].astype(int)):
            prev = derived.setdefault(ident, fold)
            if prev != fold:
                raise ValueError(
                    f"folds are not identity-disjoint: {ident!r} appears in the pairs of folds {prev} and {fold}"
                )
    if people_df is None:
        return derived
    mapping: dict[str, int] = {}
    for ident, fold in zip(people_df["identity"].astype(str), people_df["fold"].astype(int)):
        prev = mapping.setdefault(ident, fold)
        if prev != fold:
            raise ValueError(f"people list puts {ident!r} in folds {prev} and {fold}")
    missing = sorted(i for i in derived if i not in mapping)
    if missing:
        raise ValueError(
            f"{len(missing)} identities of the pairs are not in the people list, e.g. {missing[:3]}"
        )
    wrong = sorted(i for i, f in derived.items() if mapping[i] != f)
    if wrong:
        i = wrong[0]
        raise ValueError(
            f"{len(wrong)} identities are in a different fold in the pairs than in the people list, "
            f"e.g. {i!r}: pairs fold {derived[i]}, people fold {mapping[i]}"
        )
    return mapping

