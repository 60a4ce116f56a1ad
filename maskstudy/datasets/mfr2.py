"""MFR2: real people wearing real masks (Anwar and Raychowdhury, "Masked Face Recognition for Secure
Authentication", arXiv:2008.11104, 2020). Evaluation only: never trained or tuned on.

Layout (see ``../shared/data/mfr2/SOURCE.md``): ``<Name>/<Name>_NNNN.png`` photos, ``pairs.txt`` in LFW format
without a header (``name i j`` or ``name1 i name2 j``, mixed), and ``mfr2_labels.txt`` (``Name, N, mask_type``).
The set has no official folds: pairs are cut into 10 folds in file order (84-85 pairs each).

Every photo goes through the path a user has (:func:`maskstudy.faces.align.detect_and_align`: MTCNN on the photo itself,
5-point alignment, centre-crop fallback), once, into ``<data_dir>/mfr2/aligned``; models are then evaluated on
those crops with the LFW protocol's 10-fold accuracy, ROC AUC, accuracy per pair kind and the detector's
face-found rate.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..core import storage
from ..faces.align import CROP_SIZE, detect_and_align
from ..faces.detect import file_digest, load_image

N_FOLDS = 10
PAIR_KINDS = ("both_masked", "one_masked", "none_masked")
#: Columns of ``photos.csv`` (:func:`prepare`).
PHOTO_COLUMNS = ["image", "identity", "mask_type", "masked", "sha1", "aligned", "face_found", "fallback"]


class MFR2FormatError(ValueError):
    """A malformed MFR2 protocol file; the message names the file and line."""


def image_name(name: str, index: int) -> str:
    return f"{name}/{name}_{int(index):04d}.png"


def read_labels(root: str | os.PathLike) -> pd.DataFrame:
    """``mfr2_labels.txt`` as DataFrame[image, identity, mask_type, masked]."""
    path = Path(root) / "mfr2_labels.txt"
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3 or not fields[1].isdigit():
            raise MFR2FormatError(f"{path}:{lineno}: expected 'Name, N, mask_type', got {line!r}")
        rows.append({"image": image_name(fields[0], int(fields[1])), "identity": fields[0], "mask_type": fields[2],
                     "masked": fields[2] != "no-mask"})
    return pd.DataFrame(rows)


def read_pairs(root: str | os.PathLike, n_folds: int = N_FOLDS) -> pd.DataFrame:
    """``pairs.txt`` as DataFrame[fold, identity_a, image_a, identity_b, image_b, label], in file order, with
    folds 1..``n_folds`` cut in file order."""
    path = Path(root) / "pairs.txt"
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) == 3:
                rows.append((fields[0], image_name(fields[0], int(fields[1])),
                             fields[0], image_name(fields[0], int(fields[2])), 1))
            elif len(fields) == 4:
                rows.append((fields[0], image_name(fields[0], int(fields[1])),
                             fields[2], image_name(fields[2], int(fields[3])), 0))
            else:
                raise ValueError(f"{len(fields)} fields")
        except ValueError as error:
            raise MFR2FormatError(f"{path}:{lineno}: expected 'name i j' or 'name1 i name2 j' ({error})") from None
    pairs = pd.DataFrame(rows, columns=["identity_a", "image_a", "identity_b", "image_b", "label"])
    fold = np.empty(len(pairs), dtype=np.int64)
    for k, chunk in enumerate(np.array_split(np.arange(len(pairs)), n_folds), start=1):
        fold[chunk] = k
    pairs.insert(0, "fold", fold)
    return pairs


def pair_kinds(pairs: pd.DataFrame, labels: pd.DataFrame) -> pd.Series:
    """Per pair: ``both_masked``, ``one_masked`` or ``none_masked`` (from the photos' mask labels)."""
    masked = labels.set_index("image")["masked"]
    unknown = sorted((set(pairs["image_a"]) | set(pairs["image_b"])) - set(masked.index))
    if unknown:
        raise MFR2FormatError(f"pairs use photos without a mask label: {unknown[:5]}")
    count = pairs["image_a"].map(masked).astype(int) + pairs["image_b"].map(masked).astype(int)
    return count.map({2: "both_masked", 1: "one_masked", 0: "none_masked"})


def aligned_name(image: str) -> str:
    """The crop's name: lossless (PNG), so that a model evaluated on the crops gives what it gives on the photos
    themselves (``python -m maskstudy verify`` on MFR2's raw photos reproduces the study's MFR2 numbers)."""
    return os.path.splitext(image)[0] + ".png"


def prepare(root: str | os.PathLike, out: str | os.PathLike, detector, crop_size: int = CROP_SIZE,
            batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """Detect and align every labelled MFR2 photo once (the user's path), into ``out/aligned``; returns and
    writes ``out/photos.csv`` [image, identity, mask_type, masked, sha1, aligned, face_found, fallback].

    Rows are reused while the photo's digest is unchanged and its crop exists. A photo that cannot be read is
    recorded with ``aligned`` empty and never stops the others.
    """
    from tqdm import tqdm

    root, out = Path(root), Path(out)
    labels = read_labels(root)
    table_path = out / "photos.csv"
    previous = storage.read_csv_cache(table_path, PHOTO_COLUMNS)  # None: absent or damaged
    cached = {} if previous is None else {r["image"]: r for r in previous.to_dict("records")}
    rows, todo = [], []
    for row in labels.to_dict("records"):
        row["sha1"] = file_digest(root / row["image"]) if (root / row["image"]).is_file() else ""
        hit = cached.get(row["image"])
        if (hit and hit["sha1"] == row["sha1"] and hit["aligned"] == aligned_name(row["image"])
                and (out / "aligned" / hit["aligned"]).is_file()):
            rows.append({**row, "aligned": hit["aligned"], "face_found": hit["face_found"] == "True",
                         "fallback": hit["fallback"] == "True"})
        else:
            todo.append(row)
    bar = tqdm(total=len(todo), desc="MFR2 detect+align", unit="img", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        loaded = [load_image(root / r["image"]) if r["sha1"] else None for r in batch]
        usable = [(r, entry.image) for r, entry in zip(batch, loaded) if entry is not None and entry.image is not None]
        crops, found, fallback, _ = detect_and_align([image for _, image in usable], detector, crop_size)
        done = {r["image"]: i for i, (r, _) in enumerate(usable)}
        for r in batch:
            if r["image"] not in done:
                rows.append({**r, "aligned": "", "face_found": False, "fallback": False})
                continue
            i = done[r["image"]]
            storage.save_image(out / "aligned" / aligned_name(r["image"]), Image.fromarray(crops[i]))
            rows.append({**r, "aligned": aligned_name(r["image"]), "face_found": bool(found[i]),
                         "fallback": bool(fallback[i])})
        bar.update(len(batch))
    bar.close()
    table = pd.DataFrame(rows, columns=PHOTO_COLUMNS)
    storage.write_csv(table_path, table)
    return table


def protocol_pairs(pairs: pd.DataFrame, photos: pd.DataFrame) -> pd.DataFrame:
    """Pairs as DataFrame[fold, a, b, label, kind, cluster] over the aligned crops (``a``/``b`` relative to
    ``<data_dir>/mfr2/aligned``); ``cluster`` is the first photo's identity (the bootstrap's resampling unit)."""
    aligned = photos.set_index("image")["aligned"]
    missing = sorted(i for i in set(pairs["image_a"]) | set(pairs["image_b"]) if not aligned.get(i, ""))
    if missing:
        raise FileNotFoundError(f"{len(missing)} MFR2 photos of the pairs have no crop: {missing[:5]}")
    return pd.DataFrame({"fold": pairs["fold"], "a": pairs["image_a"].map(aligned),
                         "b": pairs["image_b"].map(aligned), "label": pairs["label"],
                         "kind": pair_kinds(pairs, photos), "cluster": pairs["identity_a"]})


def summarise(result: dict, pairs: pd.DataFrame, photos: pd.DataFrame) -> dict:
    """One table row from :func:`maskstudy.evaluate.evaluate_pairs`'s result on :func:`protocol_pairs` (run with
    ``clusters=pairs["cluster"]``, so that its interval resamples identities): 10-fold accuracy with spread, the
    interval, AUC, accuracy per pair kind, and the detector's face-found rate (all photos, masked photos alone)."""
    correct = np.asarray(result["correct"], dtype=bool)
    low, high = result["acc_ci"]
    row = {"pairs": int(len(pairs)), "accuracy_mean": result["accuracy"]["mean"],
           "accuracy_std": result["accuracy"]["std"], "acc_ci_low": low, "acc_ci_high": high,
           "auc": result["roc"]["auc"], "eer": result["roc"]["eer"]}
    for kind in PAIR_KINDS:
        chosen = (pairs["kind"] == kind).to_numpy()
        row[f"acc_{kind}"] = float(correct[chosen].mean()) if chosen.any() else float("nan")
        row[f"pairs_{kind}"] = int(chosen.sum())
    used = photos[photos["aligned"].isin(set(pairs["a"]) | set(pairs["b"]))]
    row["face_found"] = float(used["face_found"].astype(bool).mean())
    masked = used[used["masked"].astype(str) == "True"]
    row["face_found_masked"] = float(masked["face_found"].astype(bool).mean()) if len(masked) else float("nan")
    return row
