"""Dataset build: find the photos, detect faces, align them, draw masked twins, keep a cached manifest.

One manifest row per source image (``<data_dir>/<dataset>/manifest.csv``) records what happened to it: the
file's digest, the faces MTCNN found and which one was chosen, its box, probability and 5 landmarks, the
status and reason, the aligned crop and its masked twin (``<name>_mask.jpg``, the seed study's naming) and the
mask style. Re-runs reuse rows whose image digest and settings are unchanged. While photos are detected, the rows
finished since the manifest was last saved are appended after every batch to ``manifest.journal`` (JSON lines),
so that a build that is killed resumes with every photo whose crops were written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import storage
from ..core.cpu_threads import available_cores
from ..faces.align import CROP_SIZE, estimate_alignment, warp
from ..faces.detect import FIRST_PASS_FACE_SIZE, PYRAMID_FACTOR, STATUSES, FaceDetector, file_digest, load_image
from ..faces.masks.drawing import TRAINING_STYLES, choose_style, draw_mask
from .pairs import masked_name
from .protocol import printable_name, skipped_files, unsafe_name_reason

#: Bump when the way crops or masks are drawn changes: cached rows from an older version are rebuilt.
BUILD_VERSION = 1

LANDMARK_COLUMNS = [f"lm{i}_{axis}" for i in range(5) for axis in ("x", "y")]
BOX_COLUMNS = ["box_x1", "box_y1", "box_x2", "box_y2"]
MANIFEST_COLUMNS = [
    "dataset", "identity", "image", "sha1", "width", "height", "load_notes", "status", "reason",
    "n_faces", "face_index", "prob", *BOX_COLUMNS, *LANDMARK_COLUMNS,
    "aligned_by", "aligned", "masked", "mask_style",
]

ENV_VARS = {"lfw": "MASKSTUDY_LFW", "celeba": "MASKSTUDY_CELEBA"}

#: The first line of ``manifest.journal``: the journal's format and the settings its rows were made with.
JOURNAL_FORMAT = "maskstudy-build-journal-v1"

logger = logging.getLogger(__name__)


class DataNotFoundError(FileNotFoundError):
    """A dataset folder is missing; the message says where it was looked for and how to provide it."""


def project_root() -> Path:
    """The repository root: the nearest folder above the working directory holding maskstudy's pyproject.toml,
    else the folder above the installed package (an editable install)."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file() and 'name = "maskstudy"' in candidate.read_text(encoding="utf-8", errors="ignore"):
            return folder
    return Path(__file__).resolve().parents[2]  # maskstudy/datasets/build.py -> the checkout


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout: the read-only photos for development and CI."""
    return project_root().parent / "shared" / "data"


def find_dataset(name: str, explicit: str | os.PathLike | None = None) -> Path | None:
    """Locate a dataset folder: the explicit path, else ``$MASKSTUDY_<NAME>``, else ``../shared/data/<name>``.

    An explicit path or environment variable that does not exist is an error (a typo should not silently fall
    back to other data); ``None`` means nothing was given and nothing was found.
    """
    env_var = ENV_VARS.get(name, f"MASKSTUDY_{name.upper()}")
    for source, value in (("parameter", explicit), (f"${env_var}", os.environ.get(env_var))):
        if value:
            path = Path(value).expanduser()
            if not path.is_dir():
                raise DataNotFoundError(f"{name}: the folder given by {source} does not exist: {path}")
            return path.resolve()
    fallback = shared_data_dir() / name
    return fallback.resolve() if fallback.is_dir() else None


@dataclass
class BuildSettings:
    """Everything that changes a manifest row; a cached row is reused only under equal settings.

    Detection (:class:`maskstudy.faces.detect.FaceDetector`): MTCNN's pyramid reaches faces of ``min_face_size``
    pixels in steps of ``pyramid_factor``; ``first_pass_face_size`` first searches only the levels for faces of
    at least that size, and the rest only in photos without such a face of probability ``min_prob``. LFW's faces
    are 79 px and more, in-the-wild CelebA's down to 16 px: with 36 px, 500 LFW photos keep their faces and
    landmarks exactly, 300 CelebA photos but one keep their face (landmarks moved 0.05 px on average), and
    detection runs 2-3 times faster than in one pass (``bench/bench_detection.py``). ``None``: one pass,
    facenet-pytorch's results.
    """

    crop_size: int = CROP_SIZE
    min_face_size: float = 20
    min_prob: float = 0.9
    seed: int = 0
    version: int = BUILD_VERSION
    pyramid_factor: float = PYRAMID_FACTOR
    first_pass_face_size: float | None = FIRST_PASS_FACE_SIZE

    @classmethod
    def from_config(cls, config: Mapping) -> BuildSettings:
        """The settings of a resolved profile (``crop_size``, ``min_face_size``, ``min_prob``, ``seed``,
        ``pyramid_factor``, ``first_pass_face_size``)."""
        return cls(crop_size=config["crop_size"], min_face_size=config["min_face_size"], min_prob=config["min_prob"],
                   seed=config["seed"], pyramid_factor=config["pyramid_factor"],
                   first_pass_face_size=config["first_pass_face_size"])

    def detector(self, device: str | None = None) -> FaceDetector:
        """The MTCNN these settings describe."""
        return FaceDetector(device=device, min_face_size=self.min_face_size, min_prob=self.min_prob,
                            factor=self.pyramid_factor, first_pass_face_size=self.first_pass_face_size)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


#: Threads that read, hash, align, mask and write photos while MTCNN runs (in the main thread): two on a 2-core
#: machine, more where there are cores to spare (up to 8).
BUILD_WORKERS = max(2, min(8, available_cores() - 1))


def _digest_or_error(path: Path | None) -> tuple[str, OSError | None]:
    if path is None:
        return "", None
    try:
        return file_digest(path), None
    except OSError as error:
        return "", error


def _load_batch(root: Path, batch: list[tuple[str, dict]]) -> list:
    return [load_image(root / relative) for relative, _ in batch]


def _finish_row(row: dict, image, relative: str, out: Path, settings: BuildSettings, save_masked_photo: bool,
                mask_styles: tuple[str, ...]) -> dict:
    """The row of a detected face once its aligned crop and masked twin are written (or why they could not be)."""
    row = dict(row)
    try:
        row.update(_write_crops(image, row_landmarks(row), relative, out, settings, save_masked_photo, mask_styles),
                   aligned_by="landmarks")
    except storage.UnsafePathError as error:
        row.update(status="bad_name", reason=str(error))
    except ValueError as error:  # degenerate landmarks
        row.update(status="no_face", reason=f"alignment failed: {error}")
    return row


def _row_from_detection(base: dict, detection, settings: BuildSettings) -> dict:
    row = dict(base)
    row["n_faces"] = detection.n_faces
    if detection.n_faces == 0:
        row.update(status="no_face", reason="MTCNN found no face")
        return row
    index = detection.chosen
    if index is None:
        index = int(np.argmax(detection.probs))
        row.update(status="low_prob",
                   reason=f"best face probability {detection.probs[index]:.3f} < {settings.min_prob}")
    else:
        row.update(status="ok", reason="")
    row["face_index"] = index
    if detection.n_faces > 1 and row["status"] == "ok":
        row["reason"] = several_faces_note(detection, index, settings.min_prob)
    row["prob"] = float(detection.probs[index])
    row.update(dict(zip(BOX_COLUMNS, map(float, detection.boxes[index]))))
    row.update(dict(zip(LANDMARK_COLUMNS, map(float, detection.landmarks[index].ravel()))))
    return row


#: The chosen face of a photo with several must be this many times larger (box area) than any other confident
#: face; below that the row is marked ``ambiguous_face: ...`` in ``reason`` and the cleaning step drops it.
CLEAR_FACE_AREA_RATIO = 2.0


def several_faces_note(detection, index: int, min_prob: float) -> str:
    """The choice among several faces and its margin (area ratio to the next largest confident face)."""
    boxes = np.asarray(detection.boxes, float)
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    others = [k for k in range(detection.n_faces) if k != index and detection.probs[k] >= min_prob]
    if not others:
        return f"{detection.n_faces} faces: chose face {index}, the only one with probability >= {min_prob}"
    ratio = float(areas[index] / max(areas[others].max(), 1e-9))
    text = f"{detection.n_faces} faces: chose face {index} (nearest the centre), area {ratio:.2f}x the next"
    if ratio < CLEAR_FACE_AREA_RATIO:
        return f"ambiguous_face: {text} (< {CLEAR_FACE_AREA_RATIO:g}x, possibly another person)"
    return text


def row_landmarks(row) -> np.ndarray:
    return np.array([row[c] for c in LANDMARK_COLUMNS], dtype=float).reshape(5, 2)


def _write_crops(image, landmarks: np.ndarray, relative: str, out: Path, settings: BuildSettings,
                 save_masked_photo: bool, styles: tuple[str, ...] = TRAINING_STYLES) -> dict:
    """Align ``image`` and its masked version with the same transform and save both (atomically)."""
    aligned_rel = aligned_name(relative)
    masked_rel = masked_name(aligned_rel)
    style = choose_style(relative, settings.seed, styles)
    masked_photo = draw_mask(image, landmarks, style, seed=int(file_seed(relative, settings.seed)))
    targets = [storage.path_inside(out / "aligned", aligned_rel), storage.path_inside(out / "aligned", masked_rel)]
    if save_masked_photo:
        targets.append(storage.path_inside(out / "masked_photos", masked_rel))
    matrix = estimate_alignment(landmarks, settings.crop_size)
    # an unchanged crop keeps its file (and time): the embedding and feature caches keyed by it stay valid
    storage.save_image(targets[0], warp(image, matrix, settings.crop_size), keep_identical=True)
    storage.save_image(targets[1], warp(masked_photo, matrix, settings.crop_size), keep_identical=True)
    if save_masked_photo:
        storage.save_image(targets[2], masked_photo, quality=92, keep_identical=True)
    return {"aligned": aligned_rel, "masked": masked_rel, "mask_style": style}


def file_seed(relative: str, seed: int) -> int:
    """A per-image seed that depends only on the image's name and the study seed (stable across runs)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{relative}".encode()).digest()[:4], "little")


TEXT_COLUMNS = ["dataset", "identity", "image", "sha1", "load_notes", "status", "reason", "aligned_by", "aligned",
                "masked", "mask_style"]


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest (or a cleaned manifest) with stable types: text columns as strings ('' when empty),
    everything else numeric (NaN when empty)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebook 01 (data build) first")
    return _typed(pd.read_csv(path, dtype=str, keep_default_na=False))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """A manifest read as text, with :func:`read_manifest`'s types."""
    for column in frame.columns:
        if column in TEXT_COLUMNS or column == "drop_reason":
            continue
        if column == "keep":
            frame[column] = frame[column].map({"True": True, "False": False})
        else:
            frame[column] = pd.to_numeric(frame[column].replace("", np.nan), errors="coerce")
    return frame


def _load_cache(manifest_path: Path, settings: BuildSettings) -> pd.DataFrame | None:
    """The rows of earlier builds under ``settings``: the manifest (or its last checkpoint) and the rows journaled
    since, indexed by ``image``; ``None`` when there are none."""
    frames = [frame for frame in (_cached_manifest(manifest_path, settings),
                                  _BuildJournal(manifest_path, settings).frame()) if frame is not None]
    if not frames:
        return None
    cached = pd.concat(frames, ignore_index=True).drop_duplicates("image", keep="last")
    return cached.set_index("image", drop=False)


def _cached_manifest(manifest_path: Path, settings: BuildSettings) -> pd.DataFrame | None:
    """The saved manifest when it was made with ``settings``; a damaged one (or damaged settings file) costs a
    redetection of its photos, with a warning (:func:`maskstudy.core.storage.read_csv_cache`)."""
    settings_path = manifest_path.with_suffix(".json")
    if not manifest_path.is_file() or not settings_path.is_file():
        return None
    try:
        if json.loads(settings_path.read_text(encoding="utf-8")) != settings.as_dict():
            return None
    except (OSError, ValueError) as error:  # ValueError: also JSON and UTF-8 errors
        logger.warning("ignoring the unreadable build settings %s (%s): every photo is detected again",
                       settings_path, error)
        return None
    cached = storage.read_csv_cache(manifest_path, MANIFEST_COLUMNS)
    return None if cached is None else _typed(cached)


def _manifest_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """Rows as the manifest's columns, with the text the manifest file holds."""
    frame = pd.DataFrame(list(rows)).reindex(columns=MANIFEST_COLUMNS)
    frame[TEXT_COLUMNS] = frame[TEXT_COLUMNS].fillna("")  # as read_manifest gives them back
    for column in ("identity", "image", "reason", "load_notes"):  # a name the file system gave as bytes
        frame[column] = frame[column].map(printable_name)
    return frame


def _save_manifest(rows: Iterable[dict], manifest_path: Path, settings: BuildSettings) -> pd.DataFrame:
    frame = _manifest_frame(rows)
    storage.write_csv(manifest_path, frame)
    storage.write_json(manifest_path.with_suffix(".json"), settings.as_dict())
    return frame


class _BuildJournal:
    """``manifest.journal``: the rows finished since the manifest was last saved, appended after every batch
    (:func:`maskstudy.core.storage.append_json_lines`) below a first line naming the settings they were made with."""

    def __init__(self, manifest_path: Path, settings: BuildSettings):
        self.path = manifest_path.with_suffix(".journal")
        self.header = {"format": JOURNAL_FORMAT, "settings": settings.as_dict()}

    def _records(self) -> list[dict] | None:
        """The journaled rows; ``None`` without a journal of these settings."""
        records = storage.read_json_lines(self.path)
        return records[1:] if records and records[0] == self.header else None

    def frame(self) -> pd.DataFrame | None:
        """The journaled rows with :func:`read_manifest`'s types; ``None`` when there are none."""
        records = self._records()
        if not records:
            return None
        frame = pd.DataFrame(records).reindex(columns=MANIFEST_COLUMNS)
        frame[TEXT_COLUMNS] = frame[TEXT_COLUMNS].fillna("").astype(str)
        return _typed(frame)

    def open(self) -> None:
        """Continue the journal of these settings, else start an empty one."""
        if self._records() is None:
            self.restart()

    def restart(self) -> None:
        """An empty journal (written atomically): its rows are in the manifest just saved."""
        storage.write_text(self.path, json.dumps(self.header, sort_keys=True) + "\n")

    def append(self, rows: list[dict]) -> None:
        if rows:
            storage.append_json_lines(self.path, _manifest_frame(rows).to_dict("records"))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _file_error_reason(path: Path, error: OSError) -> str:
    """Why a listed source could not be read, in words (dangling symlink, symlink loop, folder, missing)."""
    if isinstance(error, IsADirectoryError):
        return "a folder, not a file"
    if error.errno == 40:  # ELOOP
        return "symlink loop"
    if isinstance(error, FileNotFoundError):
        return "dangling symlink" if path.is_symlink() else "file not found"
    return f"{type(error).__name__}: {error.strerror or error}"


def aligned_name(relative: str) -> str:
    """The aligned crop's name of a source image: ``p/x.png`` -> ``p/x.jpg``."""
    return os.path.splitext(relative)[0] + ".jpg"


def skip_reasons(images: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """``image -> (status, reason)`` for the rows of ``images`` that must not be detected.

    A ``status`` column (from ``scan_identity_folders(..., include_skipped=True)``) is honoured; an unsafe or
    non-UTF-8 name is ``bad_name``; a user-supplied ``*_mask.*`` twin is ``skipped``; sources whose aligned
    crops would share one name (``p/x.jpg``, ``p/x.png``) are ``name_collision`` except the first in sorted
    order, which keeps its name.
    """
    statuses = images["status"] if "status" in images else pd.Series("", index=images.index)
    reasons = images["reason"] if "reason" in images else pd.Series("", index=images.index)
    skipped: dict[str, tuple[str, str]] = {}
    claimed: dict[str, str] = {}
    for relative, status, reason in sorted(zip(images["image"], statuses, reasons), key=lambda item: item[0]):
        problem = unsafe_name_reason(relative)
        if isinstance(status, str) and status:
            skipped[relative] = (status, str(reason))
        elif problem:
            skipped[relative] = ("bad_name", problem)
        elif Path(relative).stem.endswith("_mask"):
            skipped[relative] = ("skipped", "a masked twin supplied by the user (*_mask.*), not a photo")
        elif aligned_name(relative) in claimed:
            skipped[relative] = ("name_collision", f"its aligned crop {aligned_name(relative)} is already "
                                 f"{claimed[aligned_name(relative)]}'s; rename one of the two files")
        else:
            claimed[aligned_name(relative)] = relative
    return skipped


def build_aligned_dataset(
    name: str,
    root: str | os.PathLike,
    images: pd.DataFrame,
    data_dir: str | os.PathLike,
    settings: BuildSettings | None = None,
    detector: FaceDetector | None = None,
    batch_size: int = 32,
    fallback_alignment: bool = False,
    save_masked_photos: bool = True,
    progress: bool = True,
    checkpoint_every: int = 20,
    log: Callable[[str], None] = print,
    mask_styles: tuple[str, ...] = TRAINING_STYLES,
    record_skipped_files: bool = True,
) -> pd.DataFrame:
    """Detect, align and mask every image of ``images`` (columns ``identity``, ``image`` relative to ``root``).

    Each twin's style is chosen among ``mask_styles`` from the image name and seed; a cached row whose style is
    no longer the one chosen (a style was added or removed) gets its twin drawn again from the cached landmarks.

    Writes ``<data_dir>/<name>/manifest.csv`` (+ ``.json`` settings), aligned crops and masked twins under
    ``<data_dir>/<name>/aligned/`` and, optionally, the full masked photos under ``masked_photos/``.
    ``fallback_alignment`` (for evaluation sets of pre-aligned photos such as deep-funneled LFW) aligns images
    without a usable face with the mean landmarks of the detected ones, marked ``aligned_by='fallback'``, so that
    every protocol pair stays evaluable. Returns the manifest (one row per requested image, in order).

    Nothing is ever written outside ``<data_dir>/<name>``, and no source file is changed. Images that cannot be
    used get a status and reason instead of stopping the build (see :data:`maskstudy.faces.detect.STATUSES` and
    :func:`skip_reasons`); with ``record_skipped_files`` the other entries of the requested identity folders
    (other extensions, ``*_mask.*`` twins, links that lead nowhere, ...) are appended as ``skipped`` /
    ``unreadable`` / ``bad_name`` rows, so that no file vanishes without a reason.

    Without a ``detector``, ``settings.detector()`` is used (pass one made with the same settings: the cache is
    keyed on ``settings``). MTCNN runs in the calling thread while :data:`BUILD_WORKERS` threads hash and read the
    photos ahead of it and align, mask and write the crops of the faces it found; the rows and files are those
    of a sequential build.
    """
    settings = settings or BuildSettings()
    job = _BuildJob(name, Path(root), Path(data_dir) / name, settings, save_masked_photos, tuple(mask_styles))
    manifest_path = job.out / "manifest.csv"
    started = time.perf_counter()
    for folder in ("aligned", "masked_photos"):  # crops a killed build was writing: written again below
        storage.remove_stale_temp_files(job.out / folder, recursive=True)
    with ThreadPoolExecutor(max_workers=BUILD_WORKERS) as pool:
        rows, todo, redraw = _plan_rows(job, images, _load_cache(manifest_path, settings), pool)
        if record_skipped_files:
            identities = {str(relative).split("/", 1)[0] for relative in images["image"] if "/" in str(relative)}
            for entry in skipped_files(job.root, identities).itertuples(index=False):
                rows.setdefault(entry.image, {"dataset": name, "identity": entry.identity, "image": entry.image,
                                              "status": entry.status, "reason": entry.reason, "n_faces": 0})
        log(f"{name}: {len(rows)} images, {len(rows) - len(todo)} reused from the cache, {len(todo)} to detect"
            + (f", {len(redraw)} twins to redraw (mask styles changed)" if redraw else ""))
        list(pool.map(job.redraw_twin, redraw))
        if todo:
            _detect_and_write(job, todo, rows, detector if detector is not None else settings.detector(), pool, batch_size, checkpoint_every,
                              manifest_path, progress)

    if fallback_alignment:
        _align_with_mean_landmarks(rows, job.root, job.out, settings, save_masked_photos, log, job.mask_styles)
    frame = _save_manifest(rows.values(), manifest_path, settings)
    _BuildJournal(manifest_path, settings).remove()  # its rows are in the manifest now
    elapsed = time.perf_counter() - started
    if todo:
        log(f"{name}: detected {len(todo)} images in {elapsed:.0f} s ({len(todo) / max(elapsed, 1e-9):.1f} img/s)")
    return frame


@dataclass
class _BuildJob:
    """One dataset's build: where photos come from and crops go, and how they are made."""

    name: str
    root: Path
    out: Path
    settings: BuildSettings
    save_masked_photos: bool
    mask_styles: tuple[str, ...]

    def redraw_twin(self, row: dict) -> None:
        """Draw a cached row's twin again (its style changed) from its cached landmarks."""
        entry = load_image(self.root / row["image"])
        row.update(_write_crops(entry.image, row_landmarks(row), row["image"], self.out, self.settings,
                                self.save_masked_photos, self.mask_styles))


def _plan_rows(job: _BuildJob, images: pd.DataFrame, cache: pd.DataFrame | None,
               pool: ThreadPoolExecutor) -> tuple[dict[str, dict], list[tuple[str, dict]], list[dict]]:
    """Rows settled without detection (skipped, unreadable, reused from the cache), the photos to detect, and the
    cached rows whose twin must be drawn again; photos are hashed in ``pool``."""
    rows: dict[str, dict] = {}
    todo: list[tuple[str, dict]] = []
    redraw: list[dict] = []
    skipped = skip_reasons(images)
    wanted = [(str(identity), relative) for identity, relative in zip(images["identity"], images["image"])]
    digests = pool.map(_digest_or_error, [job.root / relative if relative not in skipped else None
                                          for _, relative in wanted])
    for (identity, relative), (digest, error) in zip(wanted, digests):
        path = job.root / relative
        base = {"dataset": job.name, "identity": identity, "image": relative, "sha1": "",
                "load_notes": "", "aligned_by": "", "aligned": "", "masked": "", "mask_style": ""}
        if relative in skipped:
            status, reason = skipped[relative]
            rows[relative] = dict(base, status=status, reason=reason, n_faces=0)
            continue
        if error is not None:
            rows[relative] = dict(base, status="unreadable", reason=_file_error_reason(path, error), n_faces=0)
            continue
        base["sha1"] = digest
        if cache is not None and relative in cache.index:
            cached = cache.loc[relative].to_dict()
            usable = (cached["sha1"] == base["sha1"] and cached["status"] in STATUSES
                      and (not cached["aligned"] or (job.out / "aligned" / cached["aligned"]).is_file()))
            if usable and cached["aligned_by"] != "fallback":
                rows[relative] = cached
                if cached["aligned"] and cached["mask_style"] != choose_style(relative, job.settings.seed,
                                                                              job.mask_styles):
                    redraw.append(cached)
                continue
        rows[relative] = base
        todo.append((relative, base))
    return rows, todo, redraw


def _detect_and_write(job: _BuildJob, todo: list[tuple[str, dict]], rows: dict[str, dict], detector,
                      pool: ThreadPoolExecutor, batch_size: int, checkpoint_every: int, manifest_path: Path,
                      progress: bool) -> None:
    """MTCNN over ``todo`` in batches, as a pipeline: the next batch is read while MTCNN runs on this one, and the
    crops of the detected faces are aligned, masked and written while MTCNN runs on the next. Fills ``rows``.

    Finished rows (a face's only once its crops are written) go to the journal after every batch, and also when
    the build stops on an exception; every ``checkpoint_every`` batches the manifest is saved and the journal
    emptied. A rerun reuses them all."""
    from tqdm import tqdm  # text bars: they render in terminals, notebooks and the exported HTML alike

    bar = tqdm(total=len(todo), desc=f"MTCNN {job.name}", unit="img", disable=not progress)
    batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
    journal = _BuildJournal(manifest_path, job.settings)
    journal.open()
    loading = pool.submit(_load_batch, job.root, batches[0])
    writing: deque = deque()  # (relative, future of its finished row)
    finished: list[dict] = []  # rows finished since the journal was last written

    def settle(relative: str, row: dict) -> None:
        rows[relative] = row
        finished.append(row)

    def collect(wait_for: int = 0) -> None:
        """Store the finished rows, waiting until at most ``wait_for`` are still being written."""
        while writing and (len(writing) > wait_for or writing[0][1].done()):
            relative, future = writing.popleft()
            settle(relative, future.result())

    try:
        for batch_number, batch in enumerate(batches):
            loaded = loading.result()
            if batch_number + 1 < len(batches):
                loading = pool.submit(_load_batch, job.root, batches[batch_number + 1])
            usable = [(item, entry) for item, entry in zip(batch, loaded) if entry.image is not None]
            detections = detector.detect([entry.image for _, entry in usable]) if usable else []
            found = {relative: (entry, det) for ((relative, _), entry), det in zip(usable, detections)}
            for (relative, base), entry in zip(batch, loaded):
                base = dict(base, load_notes="; ".join(entry.notes))
                if entry.image is None:
                    settle(relative, dict(base, status=entry.status, reason=entry.reason, n_faces=0))
                    continue
                image, detection = found[relative]
                row = _row_from_detection(dict(base, width=entry.image.size[0], height=entry.image.size[1]),
                                          detection, job.settings)
                if row["status"] == "ok":  # until its crops are written, the row stays without a status
                    writing.append((relative, pool.submit(_finish_row, row, entry.image, relative, job.out,
                                                          job.settings, job.save_masked_photos, job.mask_styles)))
                else:
                    settle(relative, row)
            collect(wait_for=2 * batch_size)  # at most two batches of photos held in memory for writing
            journal.append(finished)
            finished.clear()
            bar.update(len(batch))
            if (batch_number + 1) % checkpoint_every == 0:
                collect()
                _save_manifest((r for r in rows.values() if r.get("status")), manifest_path, job.settings)
                journal.restart()
                finished.clear()
        collect()
    finally:  # stopped by an exception: keep the rows whose crops were written
        for relative, future in writing:
            if future.exception() is None:
                settle(relative, future.result())
        journal.append(finished)
        bar.close()


def _align_with_mean_landmarks(rows: dict, root: Path, out: Path, settings: BuildSettings,
                               save_masked_photos: bool, log, mask_styles: tuple[str, ...] = TRAINING_STYLES) -> None:
    detected = [r for r in rows.values() if r.get("status") == "ok"]
    missing = [r for r in rows.values() if r.get("status") in ("no_face", "low_prob") and r.get("width")]
    if not missing:
        return
    if not detected:
        log("fallback alignment skipped: no detected face to average landmarks over")
        return
    # landmarks relative to the image size, so that images of any size share one mean
    relative_landmarks = np.stack([row_landmarks(r) / [r["width"], r["height"]] for r in detected])
    mean_landmarks = np.median(relative_landmarks, axis=0)
    for row in missing:
        entry = load_image(root / row["image"])
        if entry.image is None:
            continue
        landmarks = mean_landmarks * [row["width"], row["height"]]
        row.update(_write_crops(entry.image, landmarks, row["image"], out, settings, save_masked_photos, mask_styles),
                   aligned_by="fallback")
    log(f"fallback alignment (median landmarks of {len(detected)} detected faces) for {len(missing)} images")
