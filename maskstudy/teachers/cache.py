"""Teacher embeddings of photo files, computed once and kept on disk.

One file per teacher, ``<cache_dir>/<teacher name>.npz``, holds one row per photo and face box: the photo's digest
(:func:`maskstudy.faces.detect.file_digest`), the face box it was embedded in (one photo may be embedded in several boxes,
e.g. a masked photo inside the clean photo's box and inside the box found on it), whether that box was the
centre-square fallback, and the unit-length embedding; the teacher's :attr:`~maskstudy.teachers.base.Teacher.settings` (name,
embedding size, crop options) are stored inside the same file. A row is reused only when the photo's digest,
its box and the teacher's settings are all unchanged: a changed photo (or box) is embedded again, and a different teacher
(or the same one with other settings) starts from nothing. The file is written atomically
(:func:`maskstudy.core.storage.atomic_path`) every ``checkpoint_every`` photos, so an interrupted run resumes; a
readable summary is written beside it (``<teacher name>.json``).
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import storage
from ..faces.detect import file_digest
from .base import Teacher, check_boxes

logger = logging.getLogger(__name__)

CACHE_FORMAT = "maskstudy-teacher-embeddings-v1"
#: Boxes closer than this (pixels, every coordinate) count as the same box.
BOX_TOLERANCE = 1e-3


@dataclass
class TeacherEmbeddings:
    """Embeddings of the requested photos, in the order given.

    ``keys``: the photos as given (paths, or manifest image names); ``embeddings`` (N, D) float32 unit rows;
    ``fallback`` (N,) whether the centre square stood in for a missing box; ``digests`` the photos' SHA-1;
    ``computed``: how many distinct (photo, box) this call embedded (the rest came from the cache); ``path``: the
    cache file.
    """

    keys: list[str]
    embeddings: np.ndarray
    fallback: np.ndarray
    digests: list[str]
    computed: int
    path: Path

    def as_dict(self) -> dict[str, np.ndarray]:
        """``key -> embedding``."""
        return dict(zip(self.keys, self.embeddings))


def cache_file(cache_dir: str | os.PathLike, teacher: Teacher) -> Path:
    """``<cache_dir>/<teacher.name>.npz``."""
    return Path(cache_dir) / f"{teacher.name}.npz"


def _settings_json(teacher: Teacher) -> str:
    return json.dumps({"format": CACHE_FORMAT, "teacher": teacher.settings}, sort_keys=True)


def _box_key(box: np.ndarray) -> tuple | None:
    """A box as a dict key: coordinates in units of :data:`BOX_TOLERANCE`; ``None`` for no box (NaN)."""
    box = np.asarray(box, dtype=np.float64)
    if not np.isfinite(box).all():
        return None
    return tuple(int(v) for v in np.round(box / BOX_TOLERANCE))


def _load(path: Path, teacher: Teacher) -> dict[tuple, tuple[np.ndarray, np.ndarray, bool]]:
    """``(digest, box key) -> (embedding, box, fallback)`` from the cache file, or ``{}`` when it is absent, unreadable or
    written by another teacher (or other settings)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as stored:
            settings = str(stored["settings"])
            digests, embeddings = stored["digests"], stored["embeddings"]
            boxes, fallback = stored["boxes"], stored["fallback"]
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
        logger.warning("ignoring unreadable teacher cache %s (%s): everything is embedded again", path, error)
        return {}
    if settings != _settings_json(teacher):
        logger.info("teacher cache %s was written with other settings: everything is embedded again", path)
        return {}
    if not (len(digests) == len(embeddings) == len(boxes) == len(fallback)) or \
            embeddings.shape[1:] != (teacher.embedding_size,):
        logger.warning("ignoring inconsistent teacher cache %s: everything is embedded again", path)
        return {}
    return {(str(d), _box_key(b)): (e, b, bool(f)) for d, e, b, f in zip(digests, embeddings, boxes, fallback)}


def _save(path: Path, teacher: Teacher, rows: dict[tuple, tuple[np.ndarray, np.ndarray, bool]]) -> None:
    keys = sorted(rows, key=lambda k: (k[0], k[1] is not None, k[1] or ()))
    dim = teacher.embedding_size
    embeddings = np.stack([rows[k][0] for k in keys]).astype(np.float32) if keys else np.zeros((0, dim), np.float32)
    boxes = np.stack([rows[k][1] for k in keys]).astype(np.float64) if keys else np.zeros((0, 4))
    fallback = np.array([rows[k][2] for k in keys], dtype=bool)
    digests = [k[0] for k in keys]
    with storage.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, settings=np.array(_settings_json(teacher)), digests=np.array(digests, dtype=str),
                 embeddings=embeddings, boxes=boxes, fallback=fallback)
    storage.write_json(path.with_suffix(".json"), {"format": CACHE_FORMAT, "teacher": teacher.settings,
                                                   "photos": len(set(digests)), "photo_boxes": len(keys),
                                                   "fallback": int(fallback.sum()), "file": path.name})


def teacher_embeddings(
    teacher: Teacher,
    paths: Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike,
    boxes=None,
    digests: Sequence[str] | None = None,
    progress: bool = True,
    checkpoint_every: int = 512,
    keys: Sequence[str] | None = None,
    workers: int | None = None,
) -> TeacherEmbeddings:
    """Embeddings of photo files by ``teacher``, from ``<cache_dir>/<teacher.name>.npz`` where possible.

    ``boxes``: (N, 4) face boxes in the photos' pixels (NaN rows or ``None``: the centre-square fallback), see
    :meth:`~maskstudy.teachers.base.Teacher.embed_files`. ``digests``: the photos' SHA-1 when already known
    (else they are computed). Photos with equal digests and boxes are embedded once. A tqdm bar counts the photos
    being embedded when ``progress``. ``workers`` processes (default: the usable cores,
    :func:`maskstudy.core.cpu_threads.available_cores`) share the photos when the teacher can be rebuilt in one
    (:meth:`~maskstudy.teachers.base.Teacher.worker_spec`); the embeddings are the same as in one process.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    paths = [Path(p) for p in paths]
    keys = [str(p) for p in paths] if keys is None else [str(k) for k in keys]
    if len(keys) != len(paths):
        raise ValueError(f"{len(paths)} photos but {len(keys)} keys")
    boxes = check_boxes(boxes, len(paths))
    if digests is None:
        digests = [file_digest(p) for p in paths]
    digests = [str(d) for d in digests]
    if len(digests) != len(paths):
        raise ValueError(f"{len(paths)} photos but {len(digests)} digests")
    path = cache_file(cache_dir, teacher)
    storage.remove_stale_temp_files(path.parent)
    rows = _load(path, teacher)

    wanted = [(digest, _box_key(box)) for digest, box in zip(digests, boxes)]
    todo: dict[tuple, int] = {}  # (digest, box key) -> index of the first photo with it
    for index, key in enumerate(wanted):
        if key not in todo and key not in rows:
            todo[key] = index
    pending = list(todo.items())
    bar = None
    if progress and pending:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), desc=f"{teacher.name} embeddings", unit="photo")
    pool = _worker_pool(teacher, workers, len(pending))
    try:
        for start in range(0, len(pending), checkpoint_every):
            chunk = pending[start:start + checkpoint_every]
            indices = [index for _, index in chunk]
            embeddings, fallbacks = _embed_chunk(teacher, pool, [paths[i] for i in indices], boxes[indices])
            for (key, index), embedding, fallback in zip(chunk, embeddings, fallbacks):
                rows[key] = (embedding, boxes[index], bool(fallback))
            _save(path, teacher, rows)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if not path.is_file():  # nothing to embed and no file yet: leave an empty, valid cache
        _save(path, teacher, rows)

    dim = teacher.embedding_size
    embeddings = np.stack([rows[k][0] for k in wanted]).astype(np.float32) if wanted else np.zeros((0, dim), np.float32)
    fallback = np.array([rows[k][2] for k in wanted], dtype=bool)
    return TeacherEmbeddings(keys, embeddings, fallback, digests, len(pending), path)


_WORKER_TEACHER: Teacher | None = None


def _start_worker(name: str, kwargs: dict) -> None:
    global _WORKER_TEACHER
    from .registry import build_teacher

    _WORKER_TEACHER = build_teacher(name, **kwargs)


def _embed_in_worker(paths: list[Path], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    result = _WORKER_TEACHER.embed_files(paths, boxes)
    return result.embeddings, result.fallback


def _worker_pool(teacher: Teacher, workers: int | None, photos: int):
    """A process pool of teachers rebuilt from :meth:`Teacher.worker_spec` (spawned: no state shared with this
    process's threads), or ``None`` for one process."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from ..core.cpu_threads import available_cores

    spec = teacher.worker_spec()
    workers = available_cores() if workers is None else int(workers)
    workers = min(workers, max(1, photos // max(1, teacher.batch_size)))
    if spec is None or workers < 2:
        return None
    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_start_worker, initargs=spec)


def _embed_chunk(teacher: Teacher, pool, paths: list[Path], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if pool is None:
        result = teacher.embed_files(paths, boxes)
        return result.embeddings, result.fallback
    step = teacher.batch_size
    futures = [pool.submit(_embed_in_worker, paths[i:i + step], boxes[i:i + step]) for i in range(0, len(paths), step)]
    parts = [future.result() for future in futures]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def manifest_teacher_embeddings(
    teacher: Teacher,
    manifest: pd.DataFrame,
    source_root: str | os.PathLike,
    cache_dir: str | os.PathLike,
    progress: bool = True,
    **kw,
) -> TeacherEmbeddings:
    """Teacher embeddings of the source photos of manifest rows (``image``, ``sha1``, ``status`` and the box
    columns of :func:`maskstudy.datasets.build.build_aligned_dataset`), keyed by ``image``.

    Each photo is embedded inside the face box of the data build (the face the study aligned) when its status is
    ``ok``, else inside the centre square. Pass the rows to embed, e.g. the cleaned training manifest's kept
    rows. Raises ``ValueError`` when a photo changed since the build (its digest differs from ``sha1``): its
    box may no longer fit; rebuild the data (notebook 01) first.
    """
    from ..datasets.build import BOX_COLUMNS

    missing = {"image", "sha1", "status", *BOX_COLUMNS} - set(manifest.columns)
    if missing:
        raise KeyError(f"the manifest lacks columns {sorted(missing)}")
    root = Path(source_root)
    images = manifest["image"].astype(str).tolist()
    paths = [root / image for image in images]
    digests = [file_digest(p) for p in paths]
    stale = [image for image, digest, recorded in zip(images, digests, manifest["sha1"].astype(str))
             if digest != recorded]
    if stale:
        shown = ", ".join(stale[:5]) + (" ..." if len(stale) > 5 else "")
        raise ValueError(f"{len(stale)} photo(s) changed since the data build (digest differs from the manifest's "
                         f"sha1): {shown}; rebuild the data (notebook 01) before embedding them")
    boxes = manifest[BOX_COLUMNS].astype(float).to_numpy(copy=True)
    boxes[manifest["status"].astype(str).to_numpy() != "ok"] = np.nan
    return teacher_embeddings(teacher, paths, cache_dir, boxes=boxes, digests=digests, progress=progress,
                              keys=images, **kw)
