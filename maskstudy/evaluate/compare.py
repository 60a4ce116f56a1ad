"""``python -m maskstudy compare a.jpg b.jpg``: are two photos the same person? With any network of the study
(:func:`maskstudy.models.model_file.load_model`): the similarity, the threshold and where it comes from, and, with the
mask-aware recogniser, whether a mask was found on each photo."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .recognizer import FaceRecognizer

#: Exit codes: bad input (missing file, damaged or foreign model file, bad option); a photo without a face.
BAD_INPUT, NO_FACE = 2, 3


class NoFaceError(ValueError):
    """A photo in which the detector found no face."""


def compare_command(photo_a: str | os.PathLike, photo_b: str | os.PathLike, checkpoint: str | os.PathLike,
                    threshold: float | None = None, device: str | None = None, detector=None,
                    log: Callable[[str], None] | None = print) -> dict:
    """Compare two photos with the model in ``checkpoint``: detect and align each face, encode it as the study
    does, score the pair. ``threshold`` overrides the model file's own (the mask-aware recogniser and the track's
    fine-tunes carry one, chosen on held-out training identities); without either, no decision is made. A
    missing or unreadable photo raises ``ValueError``/``FileNotFoundError``, a photo without a face
    :class:`NoFaceError`."""
    photos = [Path(photo_a), Path(photo_b)]
    for photo in photos:
        if not photo.is_file():
            raise FileNotFoundError(f"photo not found: {photo}")
    recognizer = FaceRecognizer.from_checkpoint(checkpoint, device=device, detector=detector)
    result = recognizer.embed(photos)
    missing = [str(p) for p, found, fallback in zip(photos, result.face_found, result.fallback) if fallback or not found]
    if missing:
        raise NoFaceError(f"no face found in {' and '.join(missing)}: nothing to compare (use a photo where the face "
                          "is visible and at least 20 px wide)")
    score = float(recognizer.scorer.pairs(result.embeddings[:1], result.embeddings[1:2])[0])
    loaded = recognizer.loaded
    source = "given with --threshold" if threshold is not None else (loaded.threshold_source if loaded else "")
    threshold = threshold if threshold is not None else (loaded.threshold if loaded else None)
    masks = recognizer.mask_probability(result.embeddings)
    out = {"model": loaded.description if loaded else str(checkpoint), "kind": loaded.kind if loaded else "",
           "photos": [str(p) for p in photos], "similarity": score, "threshold": threshold,
           "threshold_source": source, "same_person": None if threshold is None else bool(score > threshold),
           "mask_probability": None if masks is None else [float(p) for p in masks],
           "score": loaded.similarity.description if loaded else "cosine similarity"}
    if log is not None:
        _log_comparison(out, log)
    return out


def _log_comparison(out: dict, log: Callable[[str], None]) -> None:
    log(f"model: {out['model']}")
    for label, photo, index in zip("ab", out["photos"], range(2)):
        mask = ("mask: not assessed by this model (the mask-aware recogniser detects masks)"
                if out["mask_probability"] is None else
                f"mask: {'yes' if out['mask_probability'][index] > 0.5 else 'no'} "
                f"(probability {out['mask_probability'][index]:.2f})")
        log(f"photo {label}: {photo}: face found; {mask}")
    log(f"similarity: {out['similarity']:.4f} ({out['score']})")
    if out["threshold"] is None:
        log("threshold: none in this model file; pass --threshold to decide")
        return
    log(f"threshold: {out['threshold']:.4f} ({out['threshold_source']})")
    log(f"decision: {'same person' if out['same_person'] else 'different people'}")


def add_compare_arguments(parser: argparse.ArgumentParser, default_checkpoint: Callable[[], Path]) -> None:
    """Options of ``python -m maskstudy compare`` on ``parser``; ``default_checkpoint`` gives the model used when
    none is named (the mask-aware recogniser of the last cpu run)."""
    parser.add_argument("photo_a", help="first photo (any size; the face is detected and aligned)")
    parser.add_argument("photo_b", help="second photo")
    parser.add_argument("--checkpoint", default=None,
                        help="any model file of the study, or 'pretrained' (default: the mask-aware recogniser of "
                             "the last cpu run, reports/cpu/outputs/checkpoints/ft_mask_aware.pt)")
    parser.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=lambda args: run_compare(args, default_checkpoint))


def run_compare(args: argparse.Namespace, default_checkpoint: Callable[[], Path]) -> int:
    """:func:`compare_command` from parsed arguments: 0 on success, :data:`BAD_INPUT` or :data:`NO_FACE` with a
    one-line message."""
    import json

    try:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = default_checkpoint()
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(f"no --checkpoint given and the last cpu run's mask-aware recogniser "
                                        f"({checkpoint}) does not exist: run `make study`, or pass --checkpoint "
                                        "(a model file, or 'pretrained')")
        out = compare_command(args.photo_a, args.photo_b, checkpoint, args.threshold, args.device,
                              log=None if args.json else print)
        if args.json:
            print(json.dumps(out, indent=2, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))
    except NoFaceError as error:
        print(f"maskstudy compare: {error}", file=sys.stderr)
        return NO_FACE
    except (FileNotFoundError, ValueError, KeyError, ImportError) as error:
        print(f"maskstudy compare: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
              file=sys.stderr)
        return BAD_INPUT
    return 0
