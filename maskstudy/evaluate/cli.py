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


def read_any_pairs(path: str | os.PathLike) -> pd.DataFrame:
    """Pairs as DataFrame[fold, a, b, label] from either the seed format (``a b 1|0`` lines, all fold 1) or the
    CSV with folds (``fold,a,b,label`` header)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pair file not found: {path}")
    with path.open("r", encoding="utf-8") as handle:
        first = next((line for line in handle if line.strip()), "")
    if first.strip().lower().startswith("fold,"):
        pairs = read_pair_folds(path)[["fold", "a", "b", "label"]]
    else:
        pairs = read_pairs(path)
        pairs.insert(0, "fold", 1)
    if len(pairs) == 0:
        raise ValueError(f"{path} holds no pairs")
    return pairs.reset_index(drop=True)


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
    pairs = read_any_pairs(pairs_file)
    try:
        recognizer = FaceRecognizer.from_checkpoint(checkpoint, device=device, detector=detector,
                                                    batch_size=batch_size)
    except TypeError as error:  # backbone_kwargs the model's builder does not take
        raise CheckpointError(f"{checkpoint}: the stored backbone settings do not build a model: {error}") from None
    rels = list(dict.fromkeys(pairs["a"].tolist() + pairs["b"].tolist()))
    embeddings, counts = _embed_images(recognizer, root, rels, progress)
    ea = np.stack([embeddings[r] for r in pairs["a"]]).astype(np.float64)
    eb = np.stack([embeddings[r] for r in pairs["b"]])
    scores = np.sum(ea * eb, axis=1)
    labels = pairs["label"].to_numpy()
    accuracy = kfold_accuracy(scores, labels, pairs["fold"].to_numpy())
    roc = roc_metrics(scores, labels)
    out = {
        "checkpoint": str(checkpoint),
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
    if raw:
        result = recognizer.embed([root / r for r in raw], progress=progress)
        embeddings.update(zip(raw, result.embeddings))
        n_found, n_fallback = int(result.face_found.sum()), int(result.fallback.sum())
    counts = {"images": len(rels), "aligned_images": len(aligned), "raw_images": len(raw),
              "faces_found": n_found, "fallback_crops": n_fallback}
    return embeddings, counts


def _log_verification(out: dict, log: Callable[[str], None]) -> None:
    raw = out["raw_images"]
    log(f"pairs: {out['pairs']} ({out['positives']} same, {out['pairs'] - out['positives']} different); "
        f"images: {out['images']} ({out['aligned_images']} aligned crops, {raw} raw photos"
        + (f": {out['faces_found']} faces found, {out['fallback_crops']} centre-crop fallbacks" if raw else "")
        + ")")
    log(f"accuracy ({len(out['per_fold'])}-fold): {out['accuracy_mean']:.4f} +- {out['accuracy_std']:.4f}")
    if out["note"]:
        log(f"note: {out['note']}")
    log(f"AUC: {out['auc']:.4f}  EER: {out['eer']:.4f}  "
        f"TAR@FAR=1e-2: {out['tar_at_far_1e-2']:.4f}  TAR@FAR=1e-3: {out['tar_at_far_1e-3']:.4f}")


def add_verify_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``python -m maskstudy verify`` on ``parser`` (a subparser); sets ``handler=run_verify``."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint file written by training")
    parser.add_argument("--pairs", required=True,
                        help="pair file: 'a b 1|0' lines (seed format) or CSV with columns fold,a,b,label")
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
