"""LFW View 2 protocol files and the study's train/evaluation splits.

Conventions
-----------
An image is named by its path relative to its dataset root, POSIX style, e.g.
``Aaron_Peirsol/Aaron_Peirsol_0001.jpg`` (LFW) or ``7201/001085.jpg`` (CelebA).

LFW file formats (see ``SOURCE.md`` beside the data):

* ``pairs.txt`` (View 2): first line ``10\\t300`` (folds, pairs per half fold); then for each fold
  300 matched lines ``name i j`` followed by 300 mismatched lines ``name1 i name2 j``.
  ``pairsDevTrain.txt`` / ``pairsDevTest.txt`` (View 1) start with a single count ``1100``:
  that many matched lines then as many mismatched lines (one fold).
* ``people.txt``: first line = number of folds; for each fold a count line then ``name n`` lines.
  ``peopleDevTrain.txt`` / ``peopleDevTest.txt`` have a single count line then ``name n`` lines.

Index ``i`` maps to the file ``name/name_%04d.jpg``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .storage import write_csv, write_json

PAIR_COLUMNS = ["fold", "pair_index", "identity_a", "image_a", "identity_b", "image_b", "label"]
PEOPLE_COLUMNS = ["fold", "identity", "n_images"]
TRAIN_COLUMNS = ["dataset", "identity", "image"]

PROTOCOL_EXTRA = "extra-train/lfw-10fold"
PROTOCOL_LFW = "lfw-folds2-10/fold1"


def unsafe_name_reason(name: str) -> str | None:
    """Why ``name`` (an identity or a relative image path) cannot be used safely, or ``None`` when it can.

    Unsafe: empty, absolute, a ``..`` or empty component, a backslash or NUL, or not valid UTF-8 (the reason
    shows the bytes escaped). Such a name could read or write outside the data folders.
    """
    if not name:
        return "empty name"
    shown = printable_name(name)
    if shown != name:
        return f"name is not valid UTF-8: {shown!r}"
    if "\x00" in name or "\\" in name:
        return f"name holds a NUL or backslash: {name!r}"
    if name.startswith("/") or os.path.isabs(name):
        return f"absolute path: {name!r}"
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return f"'..', '.' or empty path component: {name!r}"
    return None


def printable_name(name: str) -> str:
    """``name`` with bytes that are not valid UTF-8 (surrogate escapes from the file system) shown as ``\\xNN``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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


# --------------------------------------------------------------------------------------------
# Parsing helpers
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Identity-folder datasets
# --------------------------------------------------------------------------------------------


def _is_mask_file(name: str) -> bool:
    return Path(name).stem.endswith("_mask")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp")
SCAN_COLUMNS = ["identity", "image", "status", "reason"]


def _entry_problem(entry: os.DirEntry) -> tuple[str, str] | None:
    """``(status, reason)`` for a directory entry that cannot be read as a file or folder, else ``None``."""
    try:
        entry.stat()
    except OSError as error:
        if entry.is_symlink():
            kind = "symlink loop" if error.errno == 40 else "dangling symlink"
            return "unreadable", f"{kind}: {error.strerror}"
        return "unreadable", f"{type(error).__name__}: {error.strerror}"
    return None


def _file_status(ident: str, entry: os.DirEntry, exts: tuple[str, ...]) -> tuple[str, str]:
    """``("", "")`` for a usable photo, else the status and reason the manifest records for it."""
    name = entry.name
    problem = unsafe_name_reason(f"{ident}/{name}")
    if problem:
        return "bad_name", problem
    if name.startswith("."):
        return "skipped", "hidden file"
    unreadable = _entry_problem(entry)
    if unreadable:
        return unreadable
    if entry.is_dir():
        if name.lower().endswith(exts):
            return "unreadable", "a folder named like an image"
        return "skipped", "sub-folder inside an identity folder (only <identity>/<image> is scanned)"
    if not entry.is_file():
        return "unreadable", "not a regular file"
    if not name.lower().endswith(exts):
        return "skipped", f"not an image extension ({', '.join(exts)})"
    if _is_mask_file(name):
        return "skipped", "a masked twin supplied by the user (*_mask.*), not a photo"
    return "", ""


def scan_all_files(root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> pd.DataFrame:
    """Every entry of ``<root>/<identity>/``: DataFrame[identity, image, status, reason] sorted by image.

    ``status`` is "" for a usable photo, else ``bad_name`` (unsafe or non-UTF-8 name, shown escaped),
    ``unreadable`` (dangling symlink, symlink loop, folder named like an image) or ``skipped`` (hidden file,
    other extension, user-supplied ``*_mask.*`` twin, deeper sub-folder, file directly in ``root``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder does not exist or is not a folder: {root}")
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    rows = []
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for top in entries:
        shown = printable_name(top.name)
        if top.name.startswith("."):
            continue  # hidden folders at the top (.cache, .git) are not identities
        problem = _entry_problem(top)
        if problem or not top.is_dir():
            status, reason = problem or ("skipped", "not inside an identity folder")
            rows.append(("", shown, status, reason))
            continue
        rows += _scan_folder(root, top.name, exts)
    frame = pd.DataFrame(rows, columns=SCAN_COLUMNS)
    return frame.sort_values("image", kind="stable").reset_index(drop=True)


def _scan_folder(root: Path, ident: str, exts: tuple[str, ...]) -> list[tuple[str, str, str, str]]:
    shown = printable_name(ident)
    try:
        with os.scandir(root / ident) as it:
            files = sorted(it, key=lambda e: e.name)
    except OSError as error:
        return [(shown, shown + "/", "unreadable", f"{type(error).__name__}: {error.strerror}")]
    return [(shown, f"{shown}/{printable_name(entry.name)}", *_file_status(ident, entry, exts)) for entry in files]


def skipped_files(root: str | os.PathLike, identities, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> pd.DataFrame:
    """The entries of the identity folders ``identities`` under ``root`` that are not usable photos
    (:func:`scan_all_files` columns and statuses), so that a build records them beside the photos it detects."""
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    rows = []
    for ident in sorted(set(identities)):
        if not unsafe_name_reason(ident) and "/" not in ident and (Path(root) / ident).is_dir():
            rows += [row for row in _scan_folder(Path(root), ident, exts) if row[2]]
    return pd.DataFrame(rows, columns=SCAN_COLUMNS)


def scan_identity_folders(
    root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS, include_skipped: bool = False
) -> pd.DataFrame:
    """List ``<root>/<identity>/<file>`` images as a DataFrame[identity, image] sorted by image.

    ``image`` is the POSIX path relative to ``root``. Hidden files and folders, files directly in
    ``root``, files in deeper sub-folders, masked twins (``*_mask.*``), other extensions
    (case-insensitive), unsafe or non-UTF-8 names and unreadable entries are left out; with
    ``include_skipped`` they are kept with a ``status`` and ``reason`` (see :func:`scan_all_files`), so that
    the build records them in the manifest.
    """
    frame = scan_all_files(root, extensions)
    usable = frame[frame["status"] == ""]
    if usable.empty:
        n_folders = frame.loc[frame["identity"] != "", "identity"].nunique()
        raise ValueError(
            f"no identity folder with images ({', '.join(extensions)}) under {root} "
            f"({n_folders} sub-folders); expected <root>/<identity>/<image>"
        )
    chosen = frame if include_skipped else usable
    columns = SCAN_COLUMNS if include_skipped else ["identity", "image"]
    return chosen[columns].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


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

    if extra_images:
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
        description = (
            f"The networks train on {ds_text} only, and are evaluated on the {len(eval_pairs):,} pairs of "
            f"{eval_text} ({n_eval_ids:,} identities), none of which is used for training."
        )
    else:
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
        description = (
            f"The networks train on {train['identity'].nunique():,} LFW identities ({len(train):,} images) "
            f"from {' and from '.join(sources) or 'no fold'}, and are evaluated on the {len(eval_pairs):,} "
            f"pairs of {eval_text} ({n_eval_ids:,} identities), whose identities are all excluded from training."
        )
    return Split(
        protocol=protocol,
        description=description,
        train=train[TRAIN_COLUMNS].reset_index(drop=True),
        eval_pairs=eval_pairs,
        eval_folds=list(eval_folds),
    )
