"""A teacher's embeddings of the training photos: the targets of distillation (:mod:`maskstudy.train.distill`).

:func:`embed_training_photos` embeds the source photo of every row of ``train_clean.csv`` (notebook 02) inside the
face box of the data build (``<data_dir>/<dataset>/manifest.csv``, the face the study aligned; the photos' folders
come from ``<data_dir>/sources.json``), through the teacher's on-disk cache (:mod:`.cache`), and writes one
``.npz`` (atomically) holding one row per photo, keyed by ``<dataset>/<image>``: the clean photo's embedding
is the target of both the aligned crop and its masked twin. :func:`load_training_targets` reads it back for any
list of training rows (reordered or filtered: rows are matched by key, never by position) and refuses a file
that lacks one of them.

File fields: ``format`` (:data:`TRAINING_FORMAT`), ``teacher`` (name), ``settings`` (the teacher's settings,
JSON), ``keys``, ``digests`` (SHA-1 of each photo), ``embeddings`` (N, D) float32 unit rows, ``fallback``
(the photo had no face box and its centre square was embedded).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import storage
from .base import Teacher, normalise_rows
from .cache import manifest_teacher_embeddings

logger = logging.getLogger(__name__)

TRAINING_FORMAT = "maskstudy-teacher-training-v1"


def training_keys(rows: pd.DataFrame) -> list[str]:
    """``<dataset>/<image>`` of each row: a training photo's key in the teacher file."""
    missing = {"dataset", "image"} - set(rows.columns)
    if missing:
        raise ValueError(f"training rows need columns dataset and image (the source photo, as in train_clean.csv); "
                         f"missing {sorted(missing)}")
    return (rows["dataset"].astype(str) + "/" + rows["image"].astype(str)).tolist()


def default_training_file(data_dir: str | os.PathLike, teacher_name: str) -> Path:
    """``<data_dir>/teachers/<teacher>_train.npz``."""
    return Path(data_dir) / "teachers" / f"{teacher_name}_train.npz"


def read_sources(data_dir: str | os.PathLike) -> dict[str, Path]:
    """Dataset name -> folder of its source photos, from ``<data_dir>/sources.json`` (notebook 01)."""
    path = Path(data_dir) / "sources.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebook 01 (data build) first, or pass sources=")
    return {str(name): Path(folder) for name, folder in json.loads(path.read_text(encoding="utf-8")).items()}


@dataclass
class TrainingTeacherPass:
    """What :func:`embed_training_photos` did: the file written, its rows and photos, how many photos this call
    embedded (``computed``; the others came from the cache), fallbacks, and the time (``photos_per_s`` counts
    the embedded photos over the whole call's seconds; NaN when nothing was embedded)."""

    path: Path
    teacher: str
    rows: int
    photos: int
    computed: int
    fallback: int
    seconds: float
    photos_per_s: float

    def summary(self) -> str:
        speed = f", {self.photos_per_s:.1f} photos/s" if np.isfinite(self.photos_per_s) else ""
        return (f"{self.teacher}: {self.photos} training photos ({self.rows} rows), {self.computed} embedded now, "
                f"{self.photos - self.computed} from the cache, {self.fallback} without a face box, "
                f"{self.seconds:.1f} s{speed} -> {self.path}")


def embed_training_photos(
    teacher: Teacher,
    train_csv: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    sources: Mapping[str, str | os.PathLike] | None = None,
    progress: bool = True,
    log: Callable[[str], object] | None = print,
    checkpoint_every: int = 512,
) -> TrainingTeacherPass:
    """Embed the source photo of every row of ``train_csv`` (columns ``dataset``, ``image``) with ``teacher``.

    Boxes and digests come from ``<data_dir>/<dataset>/manifest.csv``; photos from ``sources`` (default
    :func:`read_sources`). Embeddings are cached in ``cache_dir`` (default ``<data_dir>/teachers/cache``, see
    :func:`~maskstudy.teachers.cache.teacher_embeddings`), so a rerun embeds only new or changed photos. Writes
    ``out_path`` (default :func:`default_training_file`) atomically and a readable summary beside it (``.json``).

    Raises ``ValueError`` for a row whose photo is not in its dataset's manifest or changed since the build, and
    ``FileNotFoundError`` for a missing manifest or sources file.
    """
    started = time.perf_counter()
    data_dir = Path(data_dir)
    rows = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    keys = training_keys(rows)
    folders = {k: Path(v) for k, v in (sources or read_sources(data_dir)).items()}
    cache_dir = Path(cache_dir) if cache_dir is not None else data_dir / "teachers" / "cache"
    out_path = Path(out_path) if out_path is not None else default_training_file(data_dir, teacher.name)

    from ..datasets.build import read_manifest

    unique = rows[["dataset", "image"]].astype(str).drop_duplicates()
    parts, computed = [], 0
    for dataset, group in unique.groupby("dataset", sort=True):
        if dataset not in folders:
            raise ValueError(f"{train_csv}: dataset {dataset!r} has no photo folder in the sources "
                             f"({', '.join(sorted(folders)) or 'none'})")
        manifest = read_manifest(data_dir / dataset / "manifest.csv").drop_duplicates("image").set_index(
            "image", drop=False)
        absent = sorted(set(group["image"]) - set(manifest.index))
        if absent:
            shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
            raise ValueError(f"{len(absent)} training photo(s) of {dataset!r} are not in its manifest: {shown}; "
                             "rebuild the data (notebooks 01-02)")
        chosen = manifest.loc[group["image"].tolist()].reset_index(drop=True)
        result = manifest_teacher_embeddings(teacher, chosen, folders[dataset], cache_dir, progress=progress,
                                             checkpoint_every=checkpoint_every)
        computed += result.computed
        parts.append(([f"{dataset}/{image}" for image in result.keys], result.digests, result.embeddings,
                      result.fallback))
    all_keys = [k for part in parts for k in part[0]]
    digests = [d for part in parts for d in part[1]]
    embeddings = (np.concatenate([part[2] for part in parts]) if parts
                  else np.zeros((0, teacher.embedding_size), np.float32))
    fallback = np.concatenate([part[3] for part in parts]) if parts else np.zeros(0, bool)
    write_training_file(out_path, teacher, all_keys, digests, embeddings, fallback)
    seconds = time.perf_counter() - started
    done = TrainingTeacherPass(out_path, teacher.name, len(keys), len(all_keys), computed, int(fallback.sum()),
                               seconds, computed / seconds if computed and seconds > 0 else float("nan"))
    storage.write_json(out_path.with_suffix(".json"), {
        "format": TRAINING_FORMAT, "teacher": teacher.name, "settings": teacher.settings, "rows": done.rows,
        "photos": done.photos, "fallback": done.fallback, "train_csv": str(train_csv), "file": out_path.name})
    if log:
        log(done.summary())
    return done


def write_training_file(path: str | os.PathLike, teacher: Teacher, keys: list[str], digests: list[str],
                        embeddings: np.ndarray, fallback: np.ndarray) -> Path:
    """Write the teacher file (fields in the module docstring) atomically."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape != (len(keys), teacher.embedding_size) or len(digests) != len(keys) \
            or len(fallback) != len(keys):
        raise ValueError(f"{len(keys)} keys, {len(digests)} digests, {len(fallback)} fallback flags and embeddings "
                         f"of shape {embeddings.shape}: expected one row each, {teacher.embedding_size} wide")
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys in a teacher file")
    path = Path(path)
    with storage.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, format=np.array(TRAINING_FORMAT), teacher=np.array(teacher.name),
                 settings=np.array(json.dumps(teacher.settings, sort_keys=True)), keys=np.array(keys, dtype=str),
                 digests=np.array(digests, dtype=str), embeddings=embeddings,
                 fallback=np.asarray(fallback, dtype=bool))
    return path


@dataclass
class TrainingTargets:
    """Teacher embeddings of given training rows, in the rows' order: ``embeddings`` (N, D) float32 unit rows
    (centred, see :func:`load_training_targets`);
    ``fingerprint``: SHA-1 over the teacher's name and settings and the (key, embedding) pairs of the distinct
    photos used, sorted by key (equal for the same photos and embeddings in any row order); ``fallback``: rows
    whose photo had no face box."""

    path: Path
    teacher: str
    settings: dict
    embeddings: np.ndarray
    fallback: int
    fingerprint: str

    @property
    def embedding_size(self) -> int:
        return int(self.embeddings.shape[1])


def load_training_targets(path: str | os.PathLike | None, rows: pd.DataFrame, centre: bool = True) -> TrainingTargets:
    """The teacher embedding of each of ``rows`` (columns ``dataset`` and ``image``) from a file of
    :func:`embed_training_photos`, matched by key.

    With ``centre`` (what training uses) the embeddings are centred on their mean over the distinct photos of
    ``rows`` and scaled back to unit length. A cosine target should carry who is shown, and a teacher's unit
    embeddings may share a large common direction that says nothing about identity: dlib's, compared by
    Euclidean distance, which ignores any offset, have a mean of norm 0.94 over 60 CelebA training photos (raw
    cosines 0.95 within and 0.82 across identities; centred 0.60 and -0.40), so ``1 - cos`` to the raw vectors
    would mostly teach that one direction.

    Raises ``FileNotFoundError`` (no such file) and ``ValueError`` (not a teacher file, or rows without an
    embedding: the file was made for another training list) with what to run.
    """
    if path is None:
        raise ValueError("no teacher embeddings file given (teacher_embeddings)")
    path = Path(path)
    hint = "compute it with maskstudy.teachers.training.embed_training_photos(teacher, train_csv, data_dir)"
    if not path.is_file():
        raise FileNotFoundError(f"teacher embeddings file not found: {path}; {hint}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            found = str(stored["format"]) if "format" in stored.files else None
            if found == TRAINING_FORMAT:
                teacher, settings = str(stored["teacher"]), str(stored["settings"])
                keys, embeddings, fallback = stored["keys"], stored["embeddings"], stored["fallback"]
    except (OSError, EOFError, ValueError, KeyError, AttributeError, TypeError, zipfile.BadZipFile) as error:
        raise ValueError(f"cannot read teacher embeddings {path} ({type(error).__name__}: {error}); {hint}") from error
    if found != TRAINING_FORMAT:
        raise ValueError(f"{path} has format {found!r}, expected {TRAINING_FORMAT!r}; {hint}")
    if embeddings.ndim != 2 or len(keys) != len(embeddings) or len(fallback) != len(keys):
        raise ValueError(f"{path}: inconsistent teacher file ({len(keys)} keys, embeddings {embeddings.shape}); {hint}")
    index = {str(k): i for i, k in enumerate(keys)}
    wanted = training_keys(rows)
    absent = [k for k in dict.fromkeys(wanted) if k not in index]
    if absent:
        shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise ValueError(f"{len(absent)} of {len(set(wanted))} training photos have no teacher embedding in {path} "
                         f"(e.g. {shown}): the file was made for another training list; {hint}")
    positions = np.array([index[k] for k in wanted], dtype=np.int64)
    distinct = sorted(set(wanted))
    digest = hashlib.sha1(f"{teacher}\n{settings}\ncentre={centre}\n".encode())
    for key in distinct:
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(embeddings[index[key]], dtype=np.float32).tobytes())
    targets = np.asarray(embeddings[positions], dtype=np.float64)
    if centre and len(distinct):
        targets = normalise_rows(targets - embeddings[[index[k] for k in distinct]].astype(np.float64).mean(axis=0))
    return TrainingTargets(path, teacher, json.loads(settings), np.asarray(targets, dtype=np.float32),
                           int(np.asarray(fallback, bool)[positions].sum()), digest.hexdigest())
