"""Atomic writes: every file the study produces appears whole or not at all (temp file + rename); journals
(JSON lines appended as work finishes) keep every whole line."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()

logger = logging.getLogger(__name__)


def _umask() -> int:
    # reading the umask means setting it: two threads doing so at once could leave it at 0 for good
    with _UMASK_LOCK:
        current = os.umask(0)
        os.umask(current)
    return current


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else remove it.

    The temp file lives in the same folder so that ``os.replace`` is atomic on POSIX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600 files; results should read like any other file
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def save_image(path: str | os.PathLike, image, quality: int = 95, keep_identical: bool = False) -> Path:
    """Save a PIL image atomically; the format follows the final file's extension. With ``keep_identical`` a file
    that already holds exactly these bytes is left alone (its modification time too), so that caches keyed by the
    file's size and time stay valid when a rebuild produces the same image."""
    from PIL import Image

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell an image format from the name {path.name!r}")
    encoded = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(encoded, format=fmt, quality=quality)
    else:
        image.save(encoded, format=fmt)
    data = encoded.getvalue()
    if keep_identical and path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return path
    return write_bytes(path, data)


def append_json_lines(path: str | os.PathLike, records: list[dict]) -> None:
    """Append ``records`` to a journal, one JSON object a line, in one write flushed to disk. A line cut short by a
    kill is ended first, so that it cannot swallow the next record; :func:`read_json_lines` skips it."""
    text = "".join(json.dumps(record, sort_keys=True, default=str) + "\n" for record in records)
    if not text:
        return
    path = Path(path)
    with open(path, "ab") as handle:
        if handle.tell() and not ends_with_newline(path):
            text = "\n" + text
        handle.write(text.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def ends_with_newline(path: str | os.PathLike) -> bool:
    """Whether the file's last byte is a newline (a text file cut short mid-line ends without one)."""
    with open(path, "rb") as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """The records of a journal of :func:`append_json_lines` (``[]`` when it is absent); a line that is not a whole
    JSON object (cut short by a kill, damaged) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n")[:-1]:  # [-1]: after the last newline
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_csv_cache(path: str | os.PathLike, columns: list[str]):
    """A CSV table the kit keeps to skip work next time, as text (``''`` when empty); ``None`` when it is absent,
    and, with a warning, when it is damaged (not CSV, without one of ``columns``): its work is then done again.
    A last row cut short mid-line is left out."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = sorted(set(columns) - set(table.columns))
        if missing:
            raise ValueError(f"no column {', '.join(missing)}")
    except (OSError, ValueError) as error:  # ValueError: also pandas' CSV errors and UTF-8 errors
        logger.warning("ignoring unreadable cache %s (%s): its work is done again", path, error)
        return None
    return table if ends_with_newline(path) else table.iloc[:-1]


class UnsafePathError(ValueError):
    """An output path would land outside the folder it must stay in."""


def path_inside(root: str | os.PathLike, relative: str) -> Path:
    """``root / relative``, resolved, after checking that it stays inside ``root`` (no ``..``, absolute path or
    symlink that leads out); raises :class:`UnsafePathError` otherwise. Every writer of names that come from
    data (protocol files, folder names) goes through it."""
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"output {relative!r} would be written outside {base}")
    return target


def remove_stale_temp_files(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the temp files :func:`atomic_path` left in ``folder`` (and its subfolders with ``recursive``) when a
    process was killed mid-write (``.<name>.<random>.tmp``); call it when a writer starts, before it writes
    there. Returns what it removed."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for stale in (folder.rglob if recursive else folder.glob)(".*.tmp"):
            if stale.is_file() and not stale.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
                    removed.append(stale)
    return removed
