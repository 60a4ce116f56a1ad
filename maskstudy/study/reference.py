"""A pretrained teacher as the study's reference row: every test of :mod:`maskstudy.study.testsets`, on exactly the same
pairs, probes and gallery, with the teacher's embeddings in place of a trained model's.

A teacher embeds photos inside face boxes (:mod:`.base`), not the kit's aligned crops, so each crop named by a
test is traced back to the photo and box it came from (:func:`lfw_crop_photos`):

* an aligned crop ``X/Y.jpg``: the source photo inside its MTCNN box from the data build's manifest (no box, i.e.
  the build's fallback alignment: the centre square);
* its masked twin ``X/Y_mask.jpg`` (shared alignment): the full masked photo the build drew
  (``masked_photos/``), inside the *clean* photo's box, as the twin reuses the clean photo's landmarks;
* ``_mask_unseen``: the photo masked in the unseen style, inside the clean photo's box;
* ``_mask_det``, ``_mask_deteyes``, ``_mask_unseen_det`` (detected on the masked photo): the same masked photos
  inside the box MTCNN finds on the masked photo itself (the eye-weighted variant changes only the kit's
  alignment, so a teacher scores it like ``_mask_det``); no face found: the centre square;
* MFR2: each photo inside the box MTCNN finds on it (:func:`detected_boxes`), the user's path.

A masked photo the build did not keep is drawn again, deterministically, from the recorded landmarks, style and
seed (:func:`maskstudy.faces.masks.drawing.draw_mask`) into the cache folder. Boxes found by MTCNN and the teacher's embeddings
are cached on disk (keyed by photo digest). :func:`evaluate_embeddings` then computes the tables with the study's
own metric functions, their embedding caches prefilled, so folds, thresholds and bootstraps are those of
:func:`maskstudy.study.testsets.evaluate_model`.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import storage
from ..datasets.build import BOX_COLUMNS, LANDMARK_COLUMNS, file_seed, read_manifest, row_landmarks
from ..datasets.pairs import MASK_VARIANTS
from ..faces.detect import file_digest, load_image
from ..teachers.base import Teacher
from ..teachers.cache import teacher_embeddings
from . import testsets
from .testsets import ModelResults, TestSets

logger = logging.getLogger(__name__)

BOXES_FORMAT = "maskstudy-detected-boxes-v1"
#: Columns of :func:`lfw_crop_photos` (besides the box columns).
PHOTO_COLUMNS = ["rel", "variant", "image", "photo", "detect", "redrawn"]
#: Variants whose masked photo is detected by itself (no box from the clean photo).
DETECTED_VARIANTS = ("detected", "detected_eyes", "unseen_detected")


@dataclass
class TeacherResults(ModelResults):
    """:class:`~maskstudy.study.testsets.ModelResults` of a teacher, plus ``coverage``: per test set, the photos embedded,
    how many had a face box (given or found by MTCNN), the centre-square fallbacks, and the masked photos drawn
    again because the build had not kept them."""

    coverage: pd.DataFrame | None = None


# --------------------------------------------------------------------------------------------
# Which photo and box each crop comes from
# --------------------------------------------------------------------------------------------


def _build_seed(dataset_dir: Path, seed: int | None) -> int:
    if seed is not None:
        return int(seed)
    settings = dataset_dir / "manifest.json"
    if not settings.is_file():
        raise FileNotFoundError(f"{settings} is missing: run notebook 01 (data build) first, or pass seed=")
    return int(json.loads(settings.read_text(encoding="utf-8"))["seed"])


def _variant_rels(aligned: str, masked: str) -> dict[str, str]:
    """crop rel -> variant for one manifest row (``clean`` is the aligned crop itself)."""
    from ..datasets.masked_photos import variant_name

    rels = {aligned: "clean"}
    if masked:
        rels[masked] = "shared"
    for variant in MASK_VARIANTS:
        if variant != "shared":
            rels[variant_name(aligned, variant)] = variant
    return rels


class _MaskedPhotos:
    """Full masked photos of one dataset: the build's saved file when there is one, else drawn again (once)."""

    def __init__(self, manifest: pd.DataFrame, dataset_dir: Path, source_root: Path, seed: int, redraw_dir: Path):
        self.manifest, self.dataset_dir, self.source_root = manifest, dataset_dir, source_root
        self.seed, self.redraw_dir = seed, redraw_dir
        self._median: np.ndarray | None = None

    def median_landmarks(self) -> np.ndarray:
        """The build's fallback landmarks: the median of the detected faces' landmarks relative to the photo size
        (as :func:`maskstudy.datasets.build.build_aligned_dataset` aligns photos without a usable face)."""
        if self._median is None:
            ok = self.manifest[(self.manifest["status"] == "ok") & self.manifest[LANDMARK_COLUMNS].notna().all(axis=1)]
            if ok.empty:
                raise ValueError("cannot redraw a fallback-aligned masked photo: no detected face in the manifest")
            relative = np.stack([row_landmarks(r) / [r["width"], r["height"]] for r in ok.to_dict("records")])
            self._median = np.median(relative, axis=0)
        return self._median

    def get(self, row: Mapping, style: str, saved_rel: str, use_saved: bool) -> tuple[Path, bool]:
        """(path of the photo masked in ``style``, whether it was drawn again)."""
        from ..faces.masks.drawing import draw_mask

        saved = self.dataset_dir / "masked_photos" / saved_rel
        if use_saved and saved.is_file():
            return saved, False
        # the photo's digest in the name: a changed source photo is drawn again
        name = f"{style}/{os.path.splitext(str(row['image']))[0]}.{str(row.get('sha1', ''))[:12]}.png"
        target = storage.path_inside(self.redraw_dir, name)
        if target.is_file():
            return target, True
        loaded = load_image(self.source_root / str(row["image"]))
        if loaded.image is None:
            raise ValueError(f"cannot redraw the masked photo of {row['image']}: {loaded.status}: {loaded.reason}")
        if row.get("aligned_by") == "fallback" or not all(np.isfinite(float(row[c])) for c in LANDMARK_COLUMNS):
            landmarks = self.median_landmarks() * [row["width"], row["height"]]
        else:
            landmarks = row_landmarks(row)
        photo = draw_mask(loaded.image, landmarks, style, seed=int(file_seed(str(row["image"]), self.seed)))
        storage.save_image(target, photo)
        return target, True


def lfw_crop_photos(
    rels: Sequence[str],
    data_dir: str | os.PathLike,
    source_root: str | os.PathLike,
    dataset: str = "lfw",
    seed: int | None = None,
    redraw_dir: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """For each aligned crop ``rel`` (relative to ``<data_dir>/<dataset>/aligned``), the photo and box a teacher
    embeds instead (rules in the module docstring).

    Returns DataFrame[rel, variant, image, photo, detect, redrawn, box_x1..box_y2] in the order of ``rels``:
    ``photo`` the file to embed, the box in its pixels (NaN: none, the centre square unless ``detect``),
    ``detect`` whether MTCNN must find the face on that photo, ``redrawn`` whether the masked photo was drawn
    again. ``seed`` defaults to the data build's (``manifest.json``); ``redraw_dir`` to
    ``<data_dir>/teachers/masked_photos/<dataset>``. A crop that no manifest row produced raises ``KeyError``.
    """
    data_dir = Path(data_dir)
    dataset_dir = data_dir / dataset
    manifest = read_manifest(dataset_dir / "manifest.csv")
    manifest = manifest[manifest["aligned"].astype(str) != ""].reset_index(drop=True)
    seed = _build_seed(dataset_dir, seed)
    variants_path = dataset_dir / "masked_variants.csv"
    variants = None
    if variants_path.is_file():
        from ..datasets.masked_photos import read_variants

        variants = read_variants(variants_path).set_index("image", drop=False)
    redraw_dir = Path(redraw_dir) if redraw_dir is not None else data_dir / "teachers" / "masked_photos" / dataset
    photos = _MaskedPhotos(manifest, dataset_dir, Path(source_root), seed, redraw_dir)

    origin: dict[str, tuple[int, str]] = {}
    for index, (aligned, masked) in enumerate(zip(manifest["aligned"].astype(str), manifest["masked"].astype(str))):
        for rel, variant in _variant_rels(aligned, masked).items():
            origin.setdefault(rel, (index, variant))
    unknown = [r for r in dict.fromkeys(str(r) for r in rels) if r not in origin]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise KeyError(f"{len(unknown)} crop(s) of the tests come from no row of {dataset_dir / 'manifest.csv'}: "
                       f"{shown}")
    records = []
    for rel in rels:
        index, variant = origin[str(rel)]
        row = manifest.iloc[index].to_dict()
        records.append(_photo_record(str(rel), variant, row, variants, photos, dataset_dir))
    return pd.DataFrame(records, columns=PHOTO_COLUMNS + BOX_COLUMNS)


def _photo_record(rel: str, variant: str, row: dict, variants: pd.DataFrame | None, photos: _MaskedPhotos,
                  dataset_dir: Path) -> dict:
    from ..datasets.masked_photos import variant_name

    landmarks_row = row.get("aligned_by") == "landmarks" and row.get("status") == "ok"
    box = [float(row[c]) for c in BOX_COLUMNS] if landmarks_row else [np.nan] * 4
    record = {"rel": rel, "variant": variant, "image": row["image"], "detect": variant in DETECTED_VARIANTS,
              "redrawn": False}
    info = variants.loc[row["image"]].to_dict() if variants is not None and row["image"] in variants.index else {}
    seen_style = str(info.get("seen_style") or row["mask_style"])
    unseen_style = str(info.get("unseen_style") or "")
    if variant == "clean":
        record["photo"] = photos.source_root / row["image"]
    elif not landmarks_row and variant in DETECTED_VARIANTS:
        # as masked_photos.py: without landmarks of its own, the masked photo is the fallback-aligned twin itself
        record["photo"] = dataset_dir / "aligned" / row["masked"]
    elif variant in ("unseen", "unseen_detected") and unseen_style:
        record["photo"], record["redrawn"] = photos.get(row, unseen_style, variant_name(row["aligned"], "unseen"),
                                                        use_saved=True)
    else:  # shared, the training-style photo of the detected variants, and unseen without an unseen style
        style = seen_style if variant in DETECTED_VARIANTS else str(row["mask_style"])
        record["photo"], record["redrawn"] = photos.get(row, style, row["masked"],
                                                        use_saved=style == row["mask_style"])
    record["photo"] = str(record["photo"])
    if record["detect"]:
        box = [np.nan] * 4
    record.update(zip(BOX_COLUMNS, box))
    return record


def mfr2_crop_photos(photos: pd.DataFrame, source_root: str | os.PathLike) -> pd.DataFrame:
    """The MFR2 photo of each aligned crop (``photos`` as :func:`maskstudy.datasets.mfr2.prepare` returns it), to be
    detected by itself; same columns as :func:`lfw_crop_photos`."""
    used = photos[photos["aligned"].astype(str) != ""]
    frame = pd.DataFrame({"rel": used["aligned"].astype(str), "variant": "mfr2", "image": used["image"].astype(str),
                          "photo": [str(Path(source_root) / i) for i in used["image"].astype(str)], "detect": True,
                          "redrawn": False})
    for column in BOX_COLUMNS:
        frame[column] = np.nan
    return frame.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Faces found by MTCNN, cached
# --------------------------------------------------------------------------------------------


def _detector_settings(detector) -> str:
    return json.dumps({"format": BOXES_FORMAT, "detector": getattr(detector, "settings", type(detector).__name__)},
                      sort_keys=True, default=str)


def detected_boxes(paths: Sequence[str | os.PathLike], detector, cache_dir: str | os.PathLike,
                   batch_size: int = 32, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The face MTCNN chooses on each photo (:func:`maskstudy.faces.detect.choose_face`, as
    :func:`maskstudy.faces.align.detect_and_align` does): (N, 4) boxes, NaN rows where no face qualifies, and ``found``.

    Results are kept in ``<cache_dir>/detected_boxes.npz`` by photo digest and detector settings, written
    atomically after every batch; equal photos are detected once.
    """
    paths = [Path(p) for p in paths]
    cache_path = Path(cache_dir) / "detected_boxes.npz"
    settings = _detector_settings(detector)
    known: dict[str, np.ndarray] = {}
    if cache_path.is_file():
        try:
            with np.load(cache_path, allow_pickle=False) as stored:
                if str(stored["settings"]) == settings:
                    known = dict(zip((str(d) for d in stored["digests"]), stored["boxes"]))
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
            logger.warning("ignoring unreadable box cache %s (%s)", cache_path, error)
    digests = [file_digest(p) for p in paths]
    todo = list(dict.fromkeys(d for d in digests if d not in known))
    first = {d: p for d, p in zip(reversed(digests), reversed(paths))}
    from tqdm import tqdm

    with tqdm(total=len(todo), desc="MTCNN (teacher boxes)", unit="photo", disable=not progress or not todo) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images = []
            for digest in chunk:
                loaded = load_image(first[digest])
                if loaded.image is None:
                    raise ValueError(f"cannot read image {first[digest]}: {loaded.status}: {loaded.reason}")
                images.append(loaded.image)
            for digest, detection in zip(chunk, detector.detect(images)):
                chosen = detection.chosen
                known[digest] = (np.asarray(detection.boxes[chosen], dtype=np.float64) if chosen is not None
                                 else np.full(4, np.nan))
            _save_boxes(cache_path, settings, known)
            bar.update(len(chunk))
    if not cache_path.is_file():
        _save_boxes(cache_path, settings, known)
    boxes = np.stack([known[d] for d in digests]) if digests else np.zeros((0, 4))
    return boxes, np.isfinite(boxes).all(axis=1)


def _save_boxes(path: Path, settings: str, known: Mapping[str, np.ndarray]) -> None:
    digests = sorted(known)
    boxes = np.stack([known[d] for d in digests]) if digests else np.zeros((0, 4))
    with storage.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, settings=np.array(settings), digests=np.array(digests, dtype=str), boxes=boxes)


# --------------------------------------------------------------------------------------------
# Embeddings and tables
# --------------------------------------------------------------------------------------------


@dataclass
class CropEmbeddings:
    """A teacher's embedding of each crop of the tests (``lfw``: rel -> embedding; ``mfr2`` likewise, or None),
    the photo table behind them, and the ``coverage`` summary of :class:`TeacherResults`."""

    lfw: dict[str, np.ndarray]
    mfr2: dict[str, np.ndarray] | None
    photos: pd.DataFrame
    coverage: pd.DataFrame


def embed_photo_table(teacher: Teacher, table: pd.DataFrame, cache_dir: str | os.PathLike, detector=None,
                      progress: bool = True) -> pd.DataFrame:
    """``table`` (:func:`lfw_crop_photos` / :func:`mfr2_crop_photos`) with the boxes of ``detect`` rows found by
    MTCNN (``detector``, default the teacher's), ``face_found`` and ``fallback`` columns and the teacher's
    ``embedding`` (one array per row), through the caches in ``cache_dir``."""
    table = table.reset_index(drop=True).copy()
    boxes = table[BOX_COLUMNS].to_numpy(dtype=np.float64, copy=True)
    detect = table["detect"].to_numpy(dtype=bool)
    found = np.isfinite(boxes).all(axis=1)
    if detect.any():
        found_boxes, found_detect = detected_boxes(table.loc[detect, "photo"].tolist(), detector or teacher.detector,
                                                   cache_dir, progress=progress)
        boxes[detect], found[detect] = found_boxes, found_detect
    result = teacher_embeddings(teacher, table["photo"].tolist(), cache_dir, boxes=boxes, progress=progress)
    table[BOX_COLUMNS] = boxes
    table["face_found"] = found
    table["fallback"] = result.fallback
    table["embedding"] = list(result.embeddings)
    return table


def _coverage(table: pd.DataFrame, name_of: Callable[[str], str]) -> pd.DataFrame:
    rows = []
    for variant, part in table.groupby("variant", sort=False):
        rows.append({"test_set": name_of(variant), "crops": len(part), "photos": part["photo"].nunique(),
                     "face_box": int(part["face_found"].sum()), "fallback": int(part["fallback"].sum()),
                     "detected_on_photo": bool(part["detect"].all()), "redrawn": int(part["redrawn"].sum())})
    return pd.DataFrame(rows, columns=["test_set", "crops", "photos", "face_box", "fallback", "detected_on_photo",
                                       "redrawn"])


def crops_of_tests(tests: TestSets, scenarios: Sequence[str] | None = None, identification: bool = True) -> list[str]:
    """Every LFW crop a run of :func:`evaluate_embeddings` reads (pair ends, identification gallery, probes,
    distractors), each once, in first-use order."""
    rels: list[str] = []
    for scenario in tests.scenarios if scenarios is None else scenarios:
        pairs = testsets.scenario_pairs(tests, scenario)
        rels += pairs["a"].astype(str).tolist() + pairs["b"].astype(str).tolist()
    if identification:
        images = tests.identification_images
        rels += [r for column in ("aligned", "masked") for r in images[column].astype(str) if r and r != "nan"]
        if tests.distractors is not None and len(tests.distractors):
            rels += [r for r in tests.distractors["aligned"].astype(str) if r]
    return list(dict.fromkeys(rels))


def teacher_crop_embeddings(
    teacher: Teacher,
    tests: TestSets,
    data_dir: str | os.PathLike,
    source_root: str | os.PathLike | None = None,
    mfr2_source: str | os.PathLike | None = None,
    detector=None,
    cache_dir: str | os.PathLike | None = None,
    scenarios: Sequence[str] | None = None,
    identification: bool = True,
    progress: bool = True,
) -> CropEmbeddings:
    """The teacher's embedding of every crop the tests read (LFW: :func:`lfw_crop_photos`; MFR2, when ``tests``
    has it and ``mfr2_source`` names the MFR2 folder: :func:`mfr2_crop_photos`). ``source_root``: the LFW photos
    (default: ``lfw`` of ``<data_dir>/sources.json``); ``cache_dir``: ``<data_dir>/teachers/cache``."""
    from ..teachers.training import read_sources

    data_dir = Path(data_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else data_dir / "teachers" / "cache"
    source_root = Path(source_root) if source_root is not None else read_sources(data_dir)["lfw"]
    rels = crops_of_tests(tests, list(scenarios or tests.scenarios), identification)  # as evaluate_embeddings
    table = embed_photo_table(teacher, lfw_crop_photos(rels, data_dir, source_root), cache_dir, detector, progress)
    names = {"clean": "lfw unmasked", "shared": "lfw masked (clean photo's box)"}
    coverage = [_coverage(table, lambda v: names.get(v, f"lfw masked {v}"))]
    lfw = dict(zip(table["rel"], table["embedding"]))
    mfr2 = None
    if tests.mfr2_pairs is not None and tests.mfr2_photos is not None:
        if mfr2_source is None:
            raise ValueError("the tests include MFR2: pass mfr2_source (the MFR2 folder) to embed its photos")
        wanted = set(tests.mfr2_pairs["a"].astype(str)) | set(tests.mfr2_pairs["b"].astype(str))
        photos = tests.mfr2_photos[tests.mfr2_photos["aligned"].astype(str).isin(wanted)]
        mfr2_table = embed_photo_table(teacher, mfr2_crop_photos(photos, mfr2_source), cache_dir, detector, progress)
        coverage.append(_coverage(mfr2_table, lambda v: "mfr2"))
        mfr2 = dict(zip(mfr2_table["rel"], mfr2_table["embedding"]))
        table = pd.concat([table, mfr2_table], ignore_index=True)
    return CropEmbeddings(lfw, mfr2, table, pd.concat(coverage, ignore_index=True))


def _check_covered(cache: Mapping[str, np.ndarray], rels, what: str) -> None:
    missing = [r for r in dict.fromkeys(str(r) for r in rels) if r not in cache]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise KeyError(f"{len(missing)} {what} crop(s) have no embedding: {shown}")


def evaluate_embeddings(tests: TestSets, lfw: Mapping[str, np.ndarray], mfr2: Mapping[str, np.ndarray] | None = None,
                        scenarios: Sequence[str] | None = None, identification: bool = True, use_mfr2: bool = True,
                        fixed_fmr: Sequence[float] = (1e-3, 1e-2), n_boot: int = 2000,
                        seed: int = 0, similarity=None) -> ModelResults:
    """:func:`maskstudy.study.testsets.evaluate_embeddings` on given embeddings (crop rel -> vector) instead of a
    model: the same pairs, folds, thresholds, bootstraps and tables; a crop without an embedding raises
    ``KeyError``. ``similarity``: how two vectors are compared (default: cosine)."""
    needed = crops_of_tests(tests, scenarios=scenarios, identification=identification)
    _check_covered(lfw, needed, "LFW")
    with_mfr2 = use_mfr2 and tests.mfr2_pairs is not None
    if with_mfr2:
        if mfr2 is None:
            raise ValueError("the tests include MFR2 but no MFR2 embeddings were given (or use_mfr2=False)")
        _check_covered(mfr2, tests.mfr2_pairs["a"].tolist() + tests.mfr2_pairs["b"].tolist(), "MFR2")
    return testsets.evaluate_embeddings(tests, dict(lfw), dict(mfr2) if with_mfr2 else None, None, 0, scenarios,
                                        identification, use_mfr2, fixed_fmr, n_boot=n_boot, seed=seed,
                                        similarity=similarity)


def evaluate_teacher(
    teacher: Teacher,
    tests: TestSets,
    data_dir: str | os.PathLike,
    mfr2_source: str | os.PathLike | None = None,
    detector=None,
    source_root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    scenarios: Sequence[str] | None = None,
    identification: bool = True,
    use_mfr2: bool = True,
    fixed_fmr: Sequence[float] = (1e-3, 1e-2),
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], object] | None = print,
) -> TeacherResults:
    """Every test of ``tests`` for a teacher, as :func:`maskstudy.study.testsets.evaluate_model` gives them for a trained
    model (same pairs and tables), plus the ``coverage`` of faces found.

    ``detector``: the MTCNN for the photos detected by themselves (use the study's, with its ``min_face_size``
    and ``min_prob``; default: the teacher's). ``mfr2_source``: the MFR2 folder when ``tests`` includes MFR2 (as
    given to :meth:`~maskstudy.study.testsets.TestSets.from_run`); ``use_mfr2=False`` skips it.
    """
    embedded = teacher_crop_embeddings(teacher, tests if use_mfr2 else _without_mfr2(tests), data_dir, source_root,
                                       mfr2_source if use_mfr2 else None, detector, cache_dir, scenarios,
                                       identification, progress)
    results = evaluate_embeddings(tests, embedded.lfw, embedded.mfr2, scenarios, identification, use_mfr2,
                                  fixed_fmr, n_boot, seed)
    if log:
        for row in embedded.coverage.to_dict("records"):
            log(f"{teacher.name}: {row['test_set']}: {row['photos']} photos, {row['face_box']} with a face box, "
                f"{row['fallback']} centre-square fallbacks" + (f", {row['redrawn']} redrawn" if row["redrawn"] else ""))
    return TeacherResults(results.verification, results.per_pair, results.fnmr, results.identification,
                          results.mfr2, coverage=embedded.coverage)


def _without_mfr2(tests: TestSets) -> TestSets:
    return TestSets(tests.pairs_dir, tests.aligned_root, tests.scenarios, tests.identification_images,
                    tests.distractors)
