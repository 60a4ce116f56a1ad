"""Identity-folder datasets: the photos of ``<root>/<identity>/<image>``, and the entries that are not photos.

An image is named by its path relative to its dataset root, POSIX style, e.g. ``Aaron_Peirsol/Aaron_Peirsol_0001.jpg``
(LFW) or ``7201/001085.jpg`` (CelebA). Names that could read or write outside the data folders are refused
(:func:`unsafe_name_reason`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


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

