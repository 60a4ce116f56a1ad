"""``python -m maskstudy verify``: verification accuracy of a checkpoint on a pair file of crops or raw photos."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..datasets.pairs import read_pair_folds, read_pairs
from ..faces.align import CROP_SIZE
from ..models.checkpoint import CheckpointError
from .metrics import kfold_accuracy, roc_metrics
from .recognizer import FaceRecognizer

#: Folds of a pair file in LFW's ``pairs.txt`` format (LFW View 2; MFR2 uses the same lines without a header).
NAME_INDEX_FOLDS = 10
#: Photo extensions tried for the ``name i j`` lines of LFW-format pair files (LFW: .jpg, MFR2: .png).
PHOTO_EXTENSIONS = (".jpg", ".png", ".jpeg")


def read_any_pairs(path: str | os.PathLike, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """Pairs as DataFrame[fold, a, b, label] from the seed format (``a b 1|0`` lines, all fold 1), the CSV with
    folds (``fold,a,b,label`` header), or LFW's ``pairs.txt`` format (``name i j`` and ``name1 i name2 j`` lines,
    an optional ``sets n`` header; MFR2's pairs file has the same lines): 10 folds cut in file order, photos
    ``<name>/<name>_<iiii>`` with the extension found under ``root``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pair file not found: {path}")
    with path.open("r", encoding="utf-8") as handle:
        lines = [line.split() for line in handle if line.strip()]
    first = lines[0] if lines else []
    if first and " ".join(first).lower().startswith("fold,"):
        pairs = read_pair_folds(path)[["fold", "a", "b", "label"]]
    elif first and (len(first) == 4 or (len(first) in (2, 3) and all(f.isdigit() for f in first[1:]))):
        pairs = _read_name_index_pairs(path, lines, root)
    else:
        pairs = read_pairs(path)
        pairs.insert(0, "fold", 1)
    if len(pairs) == 0:
        raise ValueError(f"{path} holds no pairs")
    return pairs.reset_index(drop=True)


def _read_name_index_pairs(path: Path, lines: list[list[str]], root: str | os.PathLike | None) -> pd.DataFrame:
    if lines and len(lines[0]) == 2 and all(f.isdigit() for f in lines[0]):
        lines = lines[1:]  # LFW's "sets pairs-per-set" header
    rows = []
    for number, fields in enumerate(lines, start=1):
        try:
            if len(fields) == 3:
                rows.append((fields[0], int(fields[1]), fields[0], int(fields[2]), 1))
            elif len(fields) == 4:
                rows.append((fields[0], int(fields[1]), fields[2], int(fields[3]), 0))
            else:
                raise ValueError(f"{len(fields)} fields")
        except ValueError as error:
            raise ValueError(f"{path}: pair {number}: expected 'name i j' or 'name1 i name2 j' ({error})") from None
    extension = _photo_extension(rows[0][0], rows[0][1], root) if rows else PHOTO_EXTENSIONS[0]
    pairs = pd.DataFrame({"a": [f"{n}/{n}_{i:04d}{extension}" for n, i, _, _, _ in rows],
                          "b": [f"{n}/{n}_{j:04d}{extension}" for _, _, n, j, _ in rows],
                          "label": [label for *_, label in rows]})
    fold = np.empty(len(pairs), dtype=np.int64)
    for k, chunk in enumerate(np.array_split(np.arange(len(pairs)), NAME_INDEX_FOLDS), start=1):
        fold[chunk] = k
    pairs.insert(0, "fold", fold)
    return pairs


def _photo_extension(name: str, index: int, root: str | os.PathLike | None) -> str:
    if root is None:
        return PHOTO_EXTENSIONS[0]
    for extension in PHOTO_EXTENSIONS:
        if (Path(root) / name / f"{name}_{index:04d}{extension}").is_file():
            return extension
    raise FileNotFoundError(f"no photo {name}/{name}_{index:04d} with any of {', '.join(PHOTO_EXTENSIONS)} under "
                            f"{root}")


def resolve_inside(root: Path, rel: str) -> Path:
    """``root / rel`` after checking that it stays inside ``root``; a path that leads out is a ``ValueError``."""
    from ..core.storage import UnsafePathError, path_inside

    try:
        return path_inside(root, rel)
    except UnsafePathError:
        raise ValueError(f"the pair file names {rel!r}, outside --root {root}") from None


def _image_size(path: Path) -> tuple[int, int]:
    """Size of an image file; an aligned crop (112x112) is decoded fully so that a truncated one is named here."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as handle:
            if handle.size == (CROP_SIZE, CROP_SIZE):
                handle.load()
            return handle.size
    except FileNotFoundError as error:
        raise ValueError(f"cannot read image {path}: file not found") from error
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {type(error).__name__}: {error}") from error


def verify_command(
    checkpoint: str | os.PathLike,
    pairs_file: str | os.PathLike,
    root: str | os.PathLike,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    detector=None,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Verification accuracy of a checkpoint on a pair list (``python -m maskstudy verify``).

    ``pairs_file``: the seed format (``a b 1|0``, read as one fold, so :func:`kfold_accuracy` uses its
    internal 10-fold split) or the CSV with folds. Paths are relative to ``root``. A 112x112 image is taken as
    an aligned crop; any other image is a raw photo and goes through :class:`FaceRecognizer` (detect + align,
    centre-crop fallback). Prints the k-fold accuracy (mean +- std), AUC and EER through ``log`` and returns
    the metrics with per-pair ``scores``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image root not found: {root}")
    pairs = read_any_pairs(pairs_file, root)
    rels = list(dict.fromkeys(pairs["a"].tolist() + pairs["b"].tolist()))
    for rel in rels:
        resolve_inside(root, rel)
    try:
        recognizer = FaceRecognizer.from_checkpoint(checkpoint, device=device, detector=detector,
                                                    batch_size=batch_size)
    except TypeError as error:  # backbone_kwargs the model's builder does not take
        raise CheckpointError(f"{checkpoint}: the stored backbone settings do not build a model: {error}") from None
    embeddings, counts = _embed_images(recognizer, root, rels, progress)
    ea = np.stack([embeddings[r] for r in pairs["a"]])
    eb = np.stack([embeddings[r] for r in pairs["b"]])
    scores = recognizer.scorer.pairs(ea, eb)
    labels = pairs["label"].to_numpy()
    accuracy = kfold_accuracy(scores, labels, pairs["fold"].to_numpy())
    roc = roc_metrics(scores, labels)
    out = {
        "checkpoint": str(checkpoint),
        "model": recognizer.loaded.description if recognizer.loaded is not None else str(checkpoint),
        "pairs_file": str(pairs_file),
        "pairs": int(len(pairs)),
        "positives": int(labels.sum()),
        **counts,
        "accuracy_mean": accuracy["mean"],
        "accuracy_std": accuracy["std"],
        "per_fold": accuracy["per_fold"],
        "thresholds": accuracy["thresholds"],
        "note": accuracy["note"],
        "auc": roc["auc"],
        "eer": roc["eer"],
        "tar_at_far_1e-2": roc["tar_at_far_1e-2"],
        "tar_at_far_1e-3": roc["tar_at_far_1e-3"],
        "scores": scores,
    }
    if log is not None:
        _log_verification(out, log)
    return out


def _embed_images(recognizer: FaceRecognizer, root: Path, rels: list[str],
                  progress: bool) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Embeddings of the images ``root/rel`` keyed by ``rel``: a 112x112 image as an aligned crop, any other as
    a raw photo (detect + align, centre-crop fallback); with the counts of each kind."""
    aligned, raw = [], []
    for rel in rels:
        (aligned if _image_size(root / rel) == (CROP_SIZE, CROP_SIZE) else raw).append(rel)
    embeddings: dict[str, np.ndarray] = {}
    if aligned:
        embeddings.update(zip(aligned, recognizer.embed_aligned([root / r for r in aligned], progress=progress)))
    n_found = n_fallback = 0
    without_face: list[str] = []
    if raw:
        result = recognizer.embed([root / r for r in raw], progress=progress)
        embeddings.update(zip(raw, result.embeddings))
        n_found, n_fallback = int(result.face_found.sum()), int(result.fallback.sum())
        without_face = [r for r, fallback in zip(raw, result.fallback) if fallback]
    counts = {"images": len(rels), "aligned_images": len(aligned), "raw_images": len(raw),
              "faces_found": n_found, "fallback_crops": n_fallback, "photos_without_face": without_face}
    return embeddings, counts


def _log_verification(out: dict, log: Callable[[str], None]) -> None:
    raw = out["raw_images"]
    log(f"pairs: {out['pairs']} ({out['positives']} same, {out['pairs'] - out['positives']} different); "
        f"images: {out['images']} ({out['aligned_images']} aligned crops, {raw} raw photos"
        + (f": {out['faces_found']} faces found, {out['fallback_crops']} centre-crop fallbacks" if raw else "")
        + ")")
    if out.get("photos_without_face"):
        shown = out["photos_without_face"]
        log(f"no face found in {len(shown)} photo(s), compared by their centre crop (as the study does): "
            + ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else ""))
    log(f"model: {out['model']}")
    log(f"accuracy ({len(out['per_fold'])}-fold): {out['accuracy_mean']:.4f} +- {out['accuracy_std']:.4f}")
    if out["note"]:
        log(f"note: {out['note']}")
    log(f"AUC: {out['auc']:.4f}  EER: {out['eer']:.4f}  "
        f"TAR@FAR=1e-2: {out['tar_at_far_1e-2']:.4f}  TAR@FAR=1e-3: {out['tar_at_far_1e-3']:.4f}")


def add_verify_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``python -m maskstudy verify`` on ``parser`` (a subparser); sets ``handler=run_verify``."""
    parser.add_argument("--checkpoint", required=True,
                        help="any model file of the study (from-scratch checkpoint, fine-tune of the pretrained "
                             "track, mask-aware recogniser), or 'pretrained' for dlib's network as it is")
    parser.add_argument("--pairs", required=True,
                        help="pair file: 'a b 1|0' lines (seed format), CSV with columns fold,a,b,label, or LFW's "
                             "pairs.txt format ('name i j' / 'name1 i name2 j': LFW, MFR2)")
    parser.add_argument("--root", required=True, help="folder the image paths in the pair file are relative to")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch (default: 128)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when present)")
    parser.add_argument("--output", default=None, help="also write the metrics as JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_verify)
    return parser


def run_verify(args: argparse.Namespace) -> int:
    """Run :func:`verify_command` from parsed arguments; 0 on success, 2 with a one-line message on bad input."""
    try:
        _check_verify_arguments(args)
        result = verify_command(args.checkpoint, args.pairs, args.root, batch_size=args.batch_size,
                                device=args.device, progress=not getattr(args, "no_progress", False))
        if getattr(args, "output", None):
            from ..core.storage import write_json

            write_json(args.output, {k: v for k, v in result.items() if k != "scores"})
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"maskstudy verify: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
              file=sys.stderr)
        return 2
    return 0


def _check_verify_arguments(args: argparse.Namespace) -> None:
    """Refuse bad options before any work: batch size, device, an ``--output`` that is a folder."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            raise ValueError(f"--device {args.device!r} is not a device: {str(error).splitlines()[0]}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: CUDA is not available on this machine (use cpu)")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {args.device}: there are {torch.cuda.device_count()} CUDA device(s)")
        if device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"--device {args.device}: use cpu or cuda[:N]")
    output = getattr(args, "output", None)
    if output and Path(output).is_dir():
        raise ValueError(f"--output {output} is a folder; give a file name such as {Path(output) / 'verify.json'}")
