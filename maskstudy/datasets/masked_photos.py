"""Masked evaluation photos as a user meets them: masks the models never saw, and masks seen through a detector.

The data build (:mod:`maskstudy.datasets.build`) aligns each masked twin with the *clean* photo's landmarks ("shared"
alignment): an idealised test, since a recogniser given a masked photo must find the face itself, and MTCNN's
nose and mouth landmarks are guesses under a mask. For every evaluation image this module writes, beside the
twins of :mod:`maskstudy.datasets.build`, the crops of four more variants (suffixes of :data:`VARIANTS`):

* ``detected``: the full masked photo (training styles) detected and aligned by itself
  (:func:`maskstudy.faces.align.detect_and_align`: MTCNN, 5-point similarity, centre-crop fallback);
* ``detected_eyes``: the same detection aligned with :data:`maskstudy.faces.align.EYE_WEIGHTED` landmark weights
  (stable when the lower landmarks are guessed under a mask);
* ``unseen``: a twin in one of :data:`maskstudy.faces.masks.drawing.UNSEEN_STYLES` (never used in training), shared alignment;
* ``unseen_detected``: that unseen-style photo detected and aligned by itself.

One row per image in ``<data_dir>/<dataset>/masked_variants.csv`` records the styles, whether MTCNN found the
masked face, and how far its landmarks moved from the clean photo's (in inter-ocular distances); rows are reused
when the image's digest, seed and styles are unchanged. Rows finished since the table was last saved are appended
after every batch to ``masked_variants.journal`` (JSON lines), so that a killed run resumes with them.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..core import storage
from ..faces.align import CROP_SIZE, EYE_WEIGHTED, align_detections, estimate_alignment, warp
from ..faces.detect import load_image
from ..faces.masks.drawing import TRAINING_STYLES, UNSEEN_STYLES, choose_style, draw_mask
from .build import BUILD_WORKERS, LANDMARK_COLUMNS, file_seed, row_landmarks
from .pairs import MASK_VARIANTS

#: Variant -> suffix of its crop name (``<stem><suffix>.jpg`` next to the aligned crops).
VARIANTS = MASK_VARIANTS
#: A detected masked face whose landmarks moved more than this many inter-ocular distances (mean over the 5
#: points) from the clean photo's counts as misplaced.
MISPLACED_IOD = 0.25

COLUMNS = ["image", "sha1", "aligned", "seen_style", "unseen_style", "seen_found", "seen_fallback",
           "seen_landmark_error", "unseen_found", "unseen_fallback", "unseen_landmark_error", "settings"]


def variant_name(aligned: str, variant: str) -> str:
    """``a/b.jpg`` -> ``a/b_mask_det.jpg`` for ``variant="detected"`` (see :data:`VARIANTS`)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown masked variant {variant!r}; known: {', '.join(VARIANTS)}")
    stem, _ = os.path.splitext(aligned)
    return f"{stem}{VARIANTS[variant]}.jpg"


def landmark_error(detected: np.ndarray, reference: np.ndarray) -> float:
    """Mean distance of the 5 detected landmarks from the reference ones, in the reference's inter-ocular
    distances (NaN when either is missing)."""
    if not (np.all(np.isfinite(detected)) and np.all(np.isfinite(reference))):
        return float("nan")
    iod = float(np.hypot(*(reference[1] - reference[0])))
    return float(np.linalg.norm(detected - reference, axis=1).mean() / max(iod, 1e-6))


def _settings_key(seed: int, crop_size: int, styles: tuple, unseen: tuple, detector=None) -> str:
    """What a cached row depends on; the detector's settings (pyramid, thresholds) when it states them."""
    key = f"v1|seed={seed}|crop={crop_size}|styles={','.join(styles)}|unseen={','.join(unseen)}"
    settings = getattr(detector, "settings", None)
    if settings:
        key += "|detector=" + ",".join(f"{name}={settings[name]}" for name in sorted(settings))
    return key


def build_masked_variants(
    manifest: pd.DataFrame,
    source_root: str | os.PathLike,
    out: str | os.PathLike,
    detector,
    seed: int = 0,
    crop_size: int = CROP_SIZE,
    styles: tuple[str, ...] = TRAINING_STYLES,
    unseen_styles: tuple[str, ...] = UNSEEN_STYLES,
    batch_size: int = 32,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Write the :data:`VARIANTS` crops for every manifest row with an aligned crop; returns the variants table.

    ``manifest``: rows of one dataset's manifest (``image``, ``sha1``, ``aligned``, landmarks). ``out``: that
    dataset's build folder (``<data_dir>/<dataset>``); crops go to ``out/aligned``, full masked photos in unseen
    styles to ``out/masked_photos``. Images aligned by the fallback (no landmarks) keep their shared twin as
    the unseen variant (``unseen_style`` empty) but are still detected like the others. ``unseen_styles=()``
    (training sets) writes only the detected variants of the training styles' masked photos.

    Rows are reused only under the same ``detector.settings`` (when the detector states them). Each batch's
    masked photos are drawn, and its crops aligned and written, in threads while ``detector`` (called from this
    thread, once a batch for both styles) works on the next. Finished rows are journaled after every batch (and
    when an exception stops the run), the table is saved every 20 batches.
    """
    from tqdm import tqdm

    out = Path(out)
    root = Path(source_root)
    unseen_styles = tuple(unseen_styles)
    for folder in ("aligned", "masked_photos"):  # files a killed run was writing: written again below
        storage.remove_stale_temp_files(out / folder, recursive=True)
    table_path = out / "masked_variants.csv"
    key = _settings_key(seed, crop_size, tuple(styles), unseen_styles, detector)
    wanted = [v for v in VARIANTS if unseen_styles or not v.startswith("unseen")]
    journal = table_path.with_suffix(".journal")  # rows finished since the table was saved; each names its settings
    previous = storage.read_csv_cache(table_path, COLUMNS)  # None: absent or damaged
    previous = ([] if previous is None else previous.to_dict("records")) + storage.read_json_lines(journal)
    cached = {r["image"]: r for r in previous if r.get("settings") == key}
    rows = manifest[manifest["aligned"].astype(str) != ""]
    done, todo = [], []
    for row in rows.to_dict("records"):
        hit = cached.get(row["image"])
        if hit and hit["sha1"] == row["sha1"] and all(
                (out / "aligned" / variant_name(row["aligned"], v)).is_file() for v in wanted):
            done.append(hit)
        else:
            todo.append(row)
    log(f"masked variants: {len(done)} images reused, {len(todo)} to build")
    bar = tqdm(total=len(todo), desc="masked variants", unit="img", disable=not progress)
    batches = [todo[start:start + batch_size] for start in range(0, len(todo), batch_size)]
    styles = tuple(styles)
    # a pipeline: the next batch's masked photos are drawn while MTCNN runs on this one's, and the detected crops
    # are aligned and written while MTCNN runs on the next
    with ThreadPoolExecutor(max_workers=BUILD_WORKERS) as pool:
        preparing = pool.submit(_prepare_batch, batches[0], root, out, seed, crop_size, styles, unseen_styles,
                                key) if batches else None
        writing: deque = deque()

        journaled = len(done)  # done[journaled:] are not in the journal yet

        def collect(wait_for: int = 0) -> None:
            while writing and (len(writing) > wait_for or writing[0].done()):
                done.extend(writing.popleft().result())

        try:
            for number, batch in enumerate(batches):
                records, seen_photos, unseen_photos = preparing.result()
                if number + 1 < len(batches):
                    preparing = pool.submit(_prepare_batch, batches[number + 1], root, out, seed, crop_size, styles,
                                            unseen_styles, key)
                detections = detector.detect(seen_photos + unseen_photos)  # one call: R-Net and O-Net batch both
                writing.append(pool.submit(_finish_batch, records, seen_photos, unseen_photos, detections, out,
                                           crop_size, bool(unseen_styles)))
                collect(wait_for=2)
                storage.append_json_lines(journal, done[journaled:])
                journaled = len(done)
                bar.update(len(batch))
                if (number + 1) % 20 == 0:  # resumable
                    collect()
                    storage.write_csv(table_path, pd.DataFrame(done, columns=COLUMNS))
                    journal.unlink(missing_ok=True)
                    journaled = len(done)
            collect()
        finally:  # stopped by an exception: keep the rows whose crops were written
            for future in writing:
                if future.exception() is None:
                    done.extend(future.result())
            storage.append_json_lines(journal, done[journaled:])
    bar.close()
    table = pd.DataFrame(done, columns=COLUMNS)
    order = {image: i for i, image in enumerate(rows["image"])}
    table = table.sort_values("image", key=lambda s: s.map(order)).reset_index(drop=True)
    storage.write_csv(table_path, table)
    journal.unlink(missing_ok=True)  # its rows are in the table now
    return read_variants(table_path)


def _masked_photos(row: dict, image, landmarks, root_out: Path, seed: int, crop_size: int, styles: tuple,
                   unseen_styles: tuple) -> tuple:
    """The photo in its training style (the build's own masked photo when it was saved) and, when unseen styles
    are asked for, in an unseen style (its shared-alignment crop and full photo are written here)."""
    name_seed = int(file_seed(row["image"], seed))
    seen = choose_style(row["image"], seed, styles)
    saved = root_out / "masked_photos" / row.get("masked", "")
    if row.get("masked") and row.get("mask_style") == seen and saved.is_file():
        seen_photo = Image.open(saved).convert("RGB")
    else:
        seen_photo = draw_mask(image, landmarks, seen, seed=name_seed)
    if not unseen_styles:
        return seen, seen_photo, "", None
    unseen = choose_style(row["image"], seed, unseen_styles)
    unseen_photo = draw_mask(image, landmarks, unseen, seed=name_seed)
    storage.save_image(root_out / "aligned" / variant_name(row["aligned"], "unseen"),
                       warp(unseen_photo, estimate_alignment(landmarks, crop_size), crop_size))
    storage.save_image(root_out / "masked_photos" / variant_name(row["aligned"], "unseen"), unseen_photo, quality=92)
    return seen, seen_photo, unseen, unseen_photo


def _prepare_batch(batch: list[dict], root: Path, out: Path, seed: int, crop_size: int, styles: tuple,
                   unseen_styles: tuple, key: str) -> tuple[list[dict], list, list]:
    """The records of a batch and its masked photos to detect: training style, and unseen style when asked for
    (whose shared-alignment crops are written here)."""
    aligned_dir = out / "aligned"
    seen_photos, unseen_photos, records = [], [], []
    for row in batch:
        image = load_image(root / row["image"]).image
        landmarks = row_landmarks(row) if all(pd.notna(row.get(c)) and row.get(c) != "" for c in LANDMARK_COLUMNS) \
            else None
        record = {"image": row["image"], "sha1": row["sha1"], "aligned": row["aligned"], "settings": key}
        if image is None or landmarks is None or row.get("aligned_by") == "fallback":
            # no landmarks of its own: the masked photo is the fallback-aligned twin itself
            twin = Image.open(aligned_dir / variant_name(row["aligned"], "shared")).convert("RGB")
            seen_photos.append(twin)
            if unseen_styles:
                unseen_photos.append(twin)
                storage.save_image(aligned_dir / variant_name(row["aligned"], "unseen"), twin)
            record.update(seen_style=row.get("mask_style", ""), unseen_style="", reference=None)
        else:
            seen, seen_photo, unseen, unseen_photo = _masked_photos(row, image, landmarks, out, seed, crop_size,
                                                                    styles, unseen_styles)
            seen_photos.append(seen_photo)
            if unseen_photo is not None:
                unseen_photos.append(unseen_photo)
            record.update(seen_style=seen, unseen_style=unseen, reference=landmarks)
        records.append(record)
    return records, seen_photos, unseen_photos


def _finish_batch(records: list[dict], seen_photos: list, unseen_photos: list, detections: list, out: Path,
                  crop_size: int, with_unseen: bool) -> list[dict]:
    """Align the masked photos by their own detections (the seen photos' first, then the unseen ones'), write
    the crops and complete the records."""
    aligned_dir = out / "aligned"
    seen_crops, seen_found, seen_fallback, seen_marks = align_detections(seen_photos, detections[:len(seen_photos)],
                                                                         crop_size)
    if with_unseen:
        unseen_crops, unseen_found, unseen_fallback, unseen_marks = align_detections(
            unseen_photos, detections[len(seen_photos):], crop_size)
    else:  # training sets: no unseen styles
        unseen_found = unseen_fallback = np.zeros(len(records), bool)
        unseen_marks = np.full((len(records), 5, 2), np.nan)
    for i, (record, photo) in enumerate(zip(records, seen_photos)):
        aligned = record["aligned"]
        storage.save_image(aligned_dir / variant_name(aligned, "detected"), Image.fromarray(seen_crops[i]))
        if with_unseen:
            storage.save_image(aligned_dir / variant_name(aligned, "unseen_detected"), Image.fromarray(unseen_crops[i]))
        eyes = Image.fromarray(seen_crops[i])
        if seen_found[i] and not seen_fallback[i]:
            eyes = warp(photo, estimate_alignment(seen_marks[i], crop_size, EYE_WEIGHTED), crop_size)
        storage.save_image(aligned_dir / variant_name(aligned, "detected_eyes"), eyes)
        reference = record.pop("reference")
        ref = reference if reference is not None else np.full((5, 2), np.nan)
        record.update(seen_found=bool(seen_found[i]), seen_fallback=bool(seen_fallback[i]),
                      seen_landmark_error=landmark_error(seen_marks[i], ref),
                      unseen_found=bool(unseen_found[i]) if with_unseen else "",
                      unseen_fallback=bool(unseen_fallback[i]) if with_unseen else "",
                      unseen_landmark_error=landmark_error(unseen_marks[i], ref))
    return records


def read_variants(path: str | os.PathLike) -> pd.DataFrame:
    """The variants table with typed columns (booleans, floats)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in ("seen_found", "seen_fallback", "unseen_found", "unseen_fallback"):
        table[column] = table[column].map({"True": True, "False": False})  # empty (no unseen styles) -> NaN
    for column in ("seen_landmark_error", "unseen_landmark_error"):
        table[column] = pd.to_numeric(table[column].replace("", np.nan), errors="coerce")
    return table


def detection_summary(variants: pd.DataFrame) -> pd.DataFrame:
    """How MTCNN fares on masked photos, per variant (seen / unseen styles): face found, misplaced landmarks
    (mean error above :data:`MISPLACED_IOD` inter-ocular distances) and the median landmark error."""
    rows = []
    for kind in ("seen", "unseen"):
        if variants[f"{kind}_found"].isna().all():
            continue
        error = variants[f"{kind}_landmark_error"]
        found = variants[f"{kind}_found"].astype(bool)
        rows.append({"mask_styles": kind, "images": len(variants), "face_found": float(found.mean()),
                     "missed": float(1 - found.mean()),
                     "misplaced": float((error[found] > MISPLACED_IOD).mean()) if found.any() else float("nan"),
                     "median_landmark_error_iod": float(error.median()),
                     "p90_landmark_error_iod": float(error.quantile(0.9))})
    return pd.DataFrame(rows)
