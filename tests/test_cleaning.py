"""Side-face rule, yaw estimate, manifest cleaning and its summary, on constructed landmarks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from maskstudy.datasets.cleaning import (
    boxes_from_manifest,
    clean_manifest,
    cleaning_summary,
    estimate_yaw,
    eye_centre_deviation,
    landmarks_from_manifest,
)

TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
W = 112.0
CENTRED_BOX = np.array([0.0, 0.0, W, W])  # eyes' centre x = 55.91, box centre 56.0


def _rotate(points: np.ndarray, degrees: float, centre=(56.0, 56.0)) -> np.ndarray:
    t = np.radians(degrees)
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    c = np.asarray(centre)
    return (points - c) @ r.T + c


def _row(image, status="ok", prob=0.99, landmarks=TEMPLATE, box=CENTRED_BOX, aligned_by="landmarks", dataset="lfw"):
    row = {
        "dataset": dataset,
        "identity": image.split("/")[0],
        "image": image,
        "status": status,
        "reason": "" if status == "ok" else f"{status} detail",
        "prob": prob,
        "aligned_by": aligned_by,
        "mask_style": "surgical",
    }
    box = box if box is not None else [np.nan] * 4
    for name, v in zip(["box_x1", "box_y1", "box_x2", "box_y2"], box):
        row[name] = v
    lm = landmarks if landmarks is not None else np.full((5, 2), np.nan)
    for i in range(5):
        row[f"lm{i}_x"], row[f"lm{i}_y"] = lm[i]
    return row


def test_deviation_frontal_and_shifted():
    dev = eye_centre_deviation(TEMPLATE[None], CENTRED_BOX[None])
    assert dev.shape == (1,) and dev[0] < 0.01
    shifted = TEMPLATE.copy()
    shifted[:2, 0] += 0.2 * W
    assert eye_centre_deviation(shifted[None], CENTRED_BOX[None])[0] == pytest.approx(0.2, abs=0.002)
    left = TEMPLATE.copy()
    left[:2, 0] -= 0.15 * W
    assert eye_centre_deviation(left[None], CENTRED_BOX[None])[0] == pytest.approx(0.15, abs=0.002)
    # scale and translation invariant: same face in a box twice as large, elsewhere
    big = TEMPLATE * 2 + 100
    assert eye_centre_deviation(big[None], (CENTRED_BOX * 2 + 100)[None])[0] == pytest.approx(dev[0])
    # degenerate box -> NaN
    assert np.isnan(eye_centre_deviation(TEMPLATE[None], np.array([[10.0, 0, 10.0, 5]]))[0])
    with pytest.raises(ValueError):
        eye_centre_deviation(TEMPLATE[None], CENTRED_BOX[None, :3])


def test_yaw_frontal_sign_and_roll_invariance():
    assert abs(estimate_yaw(TEMPLATE[None])[0]) < 5
    right = TEMPLATE.copy()
    right[2, 0] += 8  # nose towards the image's right
    left = TEMPLATE.copy()
    left[2, 0] -= 8
    yr, yl = estimate_yaw(np.stack([right, left]))
    assert yr > 15 and yl < -15 and yr == pytest.approx(-yl, abs=0.5)
    for angle in (30, -30, 60):
        assert abs(estimate_yaw(_rotate(TEMPLATE, angle)[None])[0]) < 5
        assert estimate_yaw(_rotate(right, angle)[None])[0] == pytest.approx(yr, abs=1e-6)
    # extreme offsets saturate at 90 degrees rather than failing
    far = TEMPLATE.copy()
    far[2, 0] += 200
    assert estimate_yaw(far[None])[0] == pytest.approx(90.0)
    assert np.isnan(estimate_yaw(np.full((1, 5, 2), np.nan))[0])


def _manifest() -> pd.DataFrame:
    shifted = TEMPLATE.copy()
    shifted[:2, 0] += 0.2 * W
    rows = [
        _row("A/A_0001.jpg"),
        _row("A/A_0002.jpg", landmarks=shifted),
        _row("B/B_0001.jpg", prob=0.5),
        _row("B/B_0002.jpg", aligned_by="fallback"),
        _row("C/C_0001.jpg", status="no_face", prob=np.nan, landmarks=None, box=None, aligned_by=""),
        _row("C/C_0002.jpg", status="unreadable", prob=np.nan, landmarks=None, box=None, aligned_by=""),
        _row("7201/000001.jpg", dataset="celeba"),
        _row("7201/000002.jpg", dataset="celeba", status="truncated", landmarks=None, box=None),
        _row("7201/000003.jpg", dataset="celeba", landmarks=None),
        _row("7201/000004.jpg", dataset="celeba", status="low_prob", prob=0.3),
    ]
    return pd.DataFrame(rows)


def test_manifest_arrays():
    m = _manifest()
    lm = landmarks_from_manifest(m)
    bx = boxes_from_manifest(m)
    assert lm.shape == (10, 5, 2) and bx.shape == (10, 4)
    np.testing.assert_allclose(lm[0], TEMPLATE)
    assert np.isnan(lm[4]).all()
    with pytest.raises(KeyError, match="landmark"):
        landmarks_from_manifest(m.drop(columns=["lm3_y"]))


def test_clean_manifest_reasons_and_input_untouched():
    m = _manifest()
    before = m.copy(deep=True)
    c = clean_manifest(m)
    pd.testing.assert_frame_equal(m, before)
    assert c is not m
    for col in ("deviation_rate", "yaw_deg", "keep", "drop_reason"):
        assert col in c.columns and col not in m.columns
    assert c["drop_reason"].tolist() == [
        "", "side_face", "low_prob", "fallback_alignment", "no_face", "unreadable",
        "", "truncated", "missing_landmarks", "low_prob",
    ]
    assert c["keep"].dtype == bool
    assert c["keep"].tolist() == [r == "" for r in c["drop_reason"]]
    assert c.loc[1, "deviation_rate"] == pytest.approx(0.2, abs=0.002)
    assert c.loc[0, "deviation_rate"] < 0.01 and abs(c.loc[0, "yaw_deg"]) < 5
    # thresholds are parameters
    loose = clean_manifest(m, max_deviation=0.3, min_prob=0.4)
    assert loose.loc[1, "drop_reason"] == "" and loose.loc[2, "drop_reason"] == ""
    # the original columns survive unchanged
    pd.testing.assert_frame_equal(c[m.columns], m)


def test_cleaning_summary_adds_up():
    c = clean_manifest(_manifest())
    s = cleaning_summary(c)
    assert list(s.columns) == ["dataset", "drop_reason", "count", "share"]
    assert list(dict.fromkeys(s.dataset)) == ["celeba", "lfw", "all"]
    for ds, g in s.groupby("dataset"):
        n = len(c) if ds == "all" else int((c.dataset == ds).sum())
        assert g["count"].sum() == n
        assert g["share"].sum() == pytest.approx(1.0)
        assert g["drop_reason"].iloc[0] == "kept"
    all_rows = s[s.dataset == "all"].set_index("drop_reason")["count"]
    assert all_rows["kept"] == 2 and all_rows["low_prob"] == 2 and all_rows["side_face"] == 1
    per_ds = s[s.dataset != "all"].groupby("drop_reason")["count"].sum()
    pd.testing.assert_series_equal(per_ds.sort_index(), all_rows.sort_index(), check_names=False)


def test_clean_empty_manifest():
    empty = _manifest().iloc[:0]
    c = clean_manifest(empty)
    assert len(c) == 0 and "keep" in c.columns
    assert len(cleaning_summary(c)) == 0
