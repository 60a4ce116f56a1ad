"""The seed study's side-face rule, a landmark-only yaw estimate, and cleaning reports.

Landmarks follow MTCNN's order: 0 left eye, 1 right eye, 2 nose tip, 3 left mouth corner,
4 right mouth corner, where left/right are as seen in the image (image-left has the smaller x).
Boxes are ``(x1, y1, x2, y2)`` in pixels.

Side-face rule (seed study): with ``ex`` the x of the eyes' centre (mean of the two eye landmarks),
``bx = (x1 + x2) / 2`` the x of the detection window's centre and ``w = x2 - x1`` its width, the
deviation rate is

    deviation = |ex - bx| / w

and a face whose deviation exceeds ``max_deviation`` (0.1 by default) is dropped as a side face.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .build import BOX_COLUMNS, LANDMARK_COLUMNS  # the manifest's columns, defined with the manifest

# Reasons besides a failed status (which is reported as the status itself), in priority order.
RULE_REASONS = ("low_prob", "side_face", "fallback_alignment", "ambiguous_face", "missing_landmarks")


def _require(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"manifest lacks the {what} columns {missing}")


def landmarks_from_manifest(df: pd.DataFrame) -> np.ndarray:
    """The ``lm0_x, lm0_y, ..., lm4_x, lm4_y`` columns as a float array (N, 5, 2); NaN where missing."""
    _require(df, LANDMARK_COLUMNS, "landmark")
    values = df[LANDMARK_COLUMNS].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return values.reshape(len(df), 5, 2)


def boxes_from_manifest(df: pd.DataFrame) -> np.ndarray:
    """The ``box_x1, box_y1, box_x2, box_y2`` columns as a float array (N, 4); NaN where missing."""
    _require(df, BOX_COLUMNS, "box")
    return df[BOX_COLUMNS].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float).reshape(len(df), 4)


def _as_landmarks(landmarks) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=float)
    if lm.shape == (5, 2):
        lm = lm[None]
    if lm.ndim != 3 or lm.shape[1:] != (5, 2):
        raise ValueError(f"landmarks must have shape (N, 5, 2), got {lm.shape}")
    return lm


def eye_centre_deviation(landmarks, boxes) -> np.ndarray:
    """Horizontal deviation rate of the eyes' centre from the detection window's centre.

    ``deviation = |ex - bx| / w`` with ``ex = (lm0_x + lm1_x) / 2``, ``bx = (x1 + x2) / 2`` and
    ``w = x2 - x1``. Shapes: landmarks (N, 5, 2), boxes (N, 4) -> (N,). NaN where an input is missing
    or the box has no positive width.
    """
    lm = _as_landmarks(landmarks)
    bx = np.asarray(boxes, dtype=float)
    if bx.shape == (4,):
        bx = bx[None]
    if bx.ndim != 2 or bx.shape[1] != 4 or len(bx) != len(lm):
        raise ValueError(f"boxes must have shape ({len(lm)}, 4), got {bx.shape}")
    ex = (lm[:, 0, 0] + lm[:, 1, 0]) / 2.0
    centre = (bx[:, 0] + bx[:, 2]) / 2.0
    width = bx[:, 2] - bx[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        dev = np.abs(ex - centre) / width
    dev[~(width > 0)] = np.nan
    return dev


def estimate_yaw(landmarks) -> np.ndarray:
    """Landmark-only yaw estimate in degrees, shape (N,).

    1. Remove in-plane roll: rotate the five points about the eyes' midpoint so that the line from
       the left eye (lm0) to the right eye (lm1) is horizontal and points to +x.
    2. ``offset = nose_x - (eye_centre_x + mouth_centre_x) / 2`` (eye centre = mean of the eyes,
       mouth centre = mean of the mouth corners), in the rotated frame.
    3. ``yaw = degrees(arcsin(clip(offset / (iod / 2), -1, 1)))`` with ``iod`` the inter-ocular distance.

    Sign: positive when the nose tip lies to the image's right of the eye/mouth midline, i.e. the face
    is turned towards the image's right (the subject's own left); negative for the image's left.
    A frontal face gives about 0. NaN where landmarks are missing or the eyes coincide.
    """
    lm = _as_landmarks(landmarks)
    left, right = lm[:, 0], lm[:, 1]
    d = right - left
    iod = np.hypot(d[:, 0], d[:, 1])
    angle = np.arctan2(d[:, 1], d[:, 0])
    cos, sin = np.cos(-angle), np.sin(-angle)
    origin = (left + right) / 2.0
    rel = lm - origin[:, None, :]
    x = rel[..., 0] * cos[:, None] - rel[..., 1] * sin[:, None]  # rotated x of all points
    eye_cx = (x[:, 0] + x[:, 1]) / 2.0
    mouth_cx = (x[:, 3] + x[:, 4]) / 2.0
    offset = x[:, 2] - (eye_cx + mouth_cx) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = offset / (iod / 2.0)
    ratio = np.clip(ratio, -1.0, 1.0)
    yaw = np.degrees(np.arcsin(ratio))
    yaw[~(iod > 0)] = np.nan
    return yaw


def clean_manifest(manifest: pd.DataFrame, max_deviation: float = 0.1, min_prob: float = 0.9) -> pd.DataFrame:
    """Return a copy of ``manifest`` with ``deviation_rate``, ``yaw_deg``, ``keep`` and ``drop_reason``.

    Each dropped row gets one reason, the first that applies in this order:

    1. ``status`` is not "ok": the status itself (e.g. "no_face", "unreadable"; "unknown_status" if empty);
    2. ``prob`` below ``min_prob`` (or missing): "low_prob";
    3. ``deviation_rate`` above ``max_deviation``: "side_face";
    4. ``aligned_by == "fallback"``: "fallback_alignment";
    5. the build marked the chosen face of several as not clearly the main one (``reason`` starts with
       "ambiguous_face"): "ambiguous_face";
    6. landmarks or box missing, so the side-face rule cannot be checked: "missing_landmarks".

    ``drop_reason`` is "" for kept rows. Neither the input frame nor any file is modified.
    """
    _require(manifest, ["status", "prob"], "status/prob")
    out = manifest.copy(deep=True)
    n = len(out)
    dev = eye_centre_deviation(landmarks_from_manifest(out), boxes_from_manifest(out)) if n else np.zeros(0)
    yaw = estimate_yaw(landmarks_from_manifest(out)) if n else np.zeros(0)
    status = out["status"].astype("string").fillna("").str.strip().to_numpy(dtype=object)
    prob = pd.to_numeric(out["prob"], errors="coerce").to_numpy(dtype=float)
    if "aligned_by" in out.columns:
        fallback = (out["aligned_by"].astype("string").fillna("").str.strip() == "fallback").to_numpy(dtype=bool)
    else:
        fallback = np.zeros(n, dtype=bool)

    reasons = np.full(n, "", dtype=object)
    # the build marks a photo whose chosen face is not clearly the main one (several faces) in its reason
    note = (out["reason"].astype("string").fillna("") if "reason" in out else pd.Series("", index=out.index))
    note = note.to_numpy(dtype=object)
    for k in range(n):
        if status[k] != "ok":
            reasons[k] = status[k] or "unknown_status"
        elif not prob[k] >= min_prob:
            reasons[k] = "low_prob"
        elif dev[k] > max_deviation:
            reasons[k] = "side_face"
        elif fallback[k]:
            reasons[k] = "fallback_alignment"
        elif note[k].startswith("ambiguous_face"):
            reasons[k] = "ambiguous_face"
        elif np.isnan(dev[k]):
            reasons[k] = "missing_landmarks"
    out["deviation_rate"] = dev
    out["yaw_deg"] = yaw
    out["drop_reason"] = pd.Series(reasons, index=out.index, dtype=object)
    out["keep"] = out["drop_reason"] == ""
    return out


def cleaning_summary(cleaned: pd.DataFrame) -> pd.DataFrame:
    """Counts per dataset and outcome: DataFrame[dataset, drop_reason, count, share].

    ``drop_reason`` is "kept" for kept rows; ``share`` is the count over the dataset's total. The
    datasets come in sorted order followed by an "all" group totalling every dataset; within a
    dataset "kept" comes first, then the reasons alphabetically.
    """
    _require(cleaned, ["drop_reason"], "cleaning (run clean_manifest first)")
    reason = cleaned["drop_reason"].astype("string").fillna("").replace("", "kept")
    dataset = cleaned["dataset"].astype(str) if "dataset" in cleaned.columns else pd.Series("unknown", index=cleaned.index)
    frame = pd.DataFrame({"dataset": dataset.to_numpy(), "drop_reason": reason.to_numpy(dtype=object)})
    blocks = []
    groups = [(ds, g) for ds, g in frame.groupby("dataset", sort=True)] + [("all", frame)]
    for ds, g in groups:
        counts = g["drop_reason"].value_counts()
        order = (["kept"] if "kept" in counts.index else []) + sorted(r for r in counts.index if r != "kept")
        total = int(len(g))
        for r in order:
            c = int(counts[r])
            blocks.append((ds, r, c, c / total if total else 0.0))
    return pd.DataFrame(blocks, columns=["dataset", "drop_reason", "count", "share"]).astype({"count": int})
