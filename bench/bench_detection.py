"""Benchmark: the kit's face detection and per-photo build against facenet-pytorch's MTCNN, in one run.

    python bench/bench_detection.py --out reports/bench            # LFW 256 + CelebA 64 photos, 800 compared
    python bench/bench_detection.py --quick --out reports/bench    # a few minutes

One run measures, on the same decoded photos and with the same torch threads:

* ``facenet``: facenet-pytorch's ``MTCNN.detect`` called one photo at a time (the reference);
* ``kit detection``: :class:`maskstudy.faces.detect.FaceDetector` with the build's settings, in the build's batches;
* ``aligned build``: ``build_aligned_dataset`` (read, hash, detect, align, mask, write), one detection a photo;
* ``whole build``: that plus ``build_masked_variants`` as notebook 01 runs it (LFW photos: the masked photo in a
  training and an unseen style detected again; CelebA photos: the training style), so 2-3 detections a photo.

The stages run in interleaved rounds, so that a change of the machine's load weighs on all alike. Ratios: kit
detection / facenet (target >= 2), aligned build / kit detection and the whole build's detections per second /
kit detection (targets >= 0.8); ``mask drawing`` times ``draw_mask`` alone, the largest part of the rest.

Then (unless ``--no-compare``) 500 LFW + 300 CelebA photos, 200 LFW photos with a drawn mask and MFR2's 269
photos of real masks are detected by facenet (the kit's detector before) and with the kit's settings: faces
found, the same face chosen, and how far the chosen face's landmarks moved. On a shared machine only the ratios within one run mean anything.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maskstudy.core import storage
from maskstudy.core.allocator import keep_freed_memory
from maskstudy.datasets.build import BuildSettings, build_aligned_dataset, file_seed, find_dataset
from maskstudy.datasets.masked_photos import build_masked_variants
from maskstudy.datasets.protocol import scan_identity_folders
from maskstudy.faces.detect import Detection, FaceDetector, choose_face, load_image
from maskstudy.faces.masks.drawing import TRAINING_STYLES, choose_style, draw_mask
from maskstudy.report import outputs

TARGETS = {"kit_detection_vs_facenet": 2.0, "aligned_build_vs_kit_detection": 0.8,
           "whole_build_vs_kit_detection": 0.8}


def spread(frame: pd.DataFrame, count: int, offset: int = 0) -> pd.DataFrame:
    """``count`` rows spread evenly over ``frame`` (many identities, not the first few)."""
    if count <= 0:
        return frame.iloc[:0]
    step = max(1, len(frame) // count)
    return frame.iloc[offset % step::step].head(count).reset_index(drop=True)


def facenet_reference(device: str = "cpu"):
    """facenet-pytorch's MTCNN with the settings the kit used before its own cascade (20 px, one pass)."""
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, min_face_size=20, thresholds=[0.6, 0.7, 0.7], device=device,
                 select_largest=False, post_process=False)


def facenet_detect(mtcnn, image, min_prob: float = 0.9) -> Detection:
    """One photo through facenet's ``MTCNN.detect``, as a :class:`Detection` (same face choice as the kit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # facenet-pytorch's deprecated numpy / torch calls
        boxes, probs, landmarks = mtcnn.detect(image, landmarks=True)
    if boxes is None:
        boxes, probs, landmarks = np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    boxes, probs, landmarks = np.asarray(boxes, float), np.asarray(probs, float), np.asarray(landmarks, float)
    return Detection(boxes, probs, landmarks, choose_face(boxes, probs, image.size, min_prob))


def timed(function, *args, **kwargs):
    began = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - began


def facenet_each(mtcnn, images: list, min_prob: float = 0.9) -> list[Detection]:
    return [facenet_detect(mtcnn, image, min_prob) for image in images]


def draw_masks(images: list, detections: list[Detection]) -> list:
    """A training-style mask on every photo with a face (the styles in turn)."""
    return [draw_mask(image, found.landmarks[found.chosen], TRAINING_STYLES[k % len(TRAINING_STYLES)], seed=k)
            for k, (image, found) in enumerate(zip(images, detections)) if found.chosen is not None]


def detect_in_batches(detector: FaceDetector, images: list, batch_size: int) -> list[Detection]:
    found = []
    for start in range(0, len(images), batch_size):
        found += detector.detect(images[start:start + batch_size])
    return found


# ------------------------------------------------------------------------------------------------------------
# speed
# ------------------------------------------------------------------------------------------------------------


class CountingDetector:
    """The detector as the build uses it, counting the photos it is given."""

    def __init__(self, inner: FaceDetector):
        self.inner, self.seen, self.settings = inner, 0, inner.settings

    def detect(self, images):
        self.seen += len(images)
        return self.inner.detect(images)


def whole_build(sources: dict[str, tuple[Path, pd.DataFrame]], out: str, settings: BuildSettings,
                detector: CountingDetector, batch_size: int) -> tuple[float, float, int]:
    """Notebook 01's per-photo work on ``sources``: seconds of the aligned build, seconds of the whole build, and
    the photos the detector saw in the aligned build."""
    quiet = {"batch_size": batch_size, "progress": False, "log": lambda *_: None}
    began = time.perf_counter()
    manifests = {name: build_aligned_dataset(name, root, frame, out, settings, detector=detector,
                                             record_skipped_files=False, **quiet)
                 for name, (root, frame) in sources.items()}
    aligned_seconds, aligned_detections = time.perf_counter() - began, detector.seen
    for name, (root, _) in sources.items():  # notebook 01: unseen styles for LFW's evaluation photos only
        ok = manifests[name][manifests[name]["aligned"] != ""]
        build_masked_variants(ok, root, Path(out) / name, detector, seed=settings.seed,
                              **({} if name == "lfw" else {"unseen_styles": ()}), **quiet)
    return aligned_seconds, time.perf_counter() - began, aligned_detections


STAGES = {
    "facenet": "facenet MTCNN.detect, one photo at a time (reference: facenet-pytorch, 20 px, one pass)",
    "kit": "kit detection (FaceDetector with the build's settings), in the build's batches",
    "kit_one_pass": "kit detection, one pass (facenet's results), in the build's batches",
    "kit_single": "kit detection, one photo at a time",
    "masks": "mask drawing alone (draw_mask, one training style a photo; part of the builds)",
    "aligned": "aligned build: read, hash, detect, align, mask, write (build_aligned_dataset)",
    "whole": "whole build: aligned build + build_masked_variants (notebook 01)",
}


def measure_speed(sources: dict[str, tuple[Path, pd.DataFrame]], settings: BuildSettings, batch_size: int,
                  rounds: int, log, device: str = "cpu") -> tuple[list[dict], dict]:
    """Each stage on the same photos, in ``rounds`` interleaved rounds (every stage runs on a share of the photos
    in turn), so that a change of the machine's load mid-run weighs on all stages alike."""
    reference = facenet_reference(device)
    detector = settings.detector(device=device)
    one_pass = FaceDetector(device=device, min_face_size=settings.min_face_size, min_prob=settings.min_prob,
                            factor=settings.pyramid_factor, first_pass_face_size=None)
    wall, cpu, detections = dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0.0), dict.fromkeys(STAGES, 0)
    root, frame = next(iter(sources.values()))
    warm = load_image(root / frame["image"].iloc[0]).image
    facenet_detect(reference, warm), detector.detect([warm]), one_pass.detect([warm])  # first calls allocate

    def clock(stage: str, function, *args) -> None:
        began, began_cpu = time.perf_counter(), time.process_time()
        function(*args)
        wall[stage] += time.perf_counter() - began
        cpu[stage] += time.process_time() - began_cpu

    photos = 0
    for number in range(rounds):
        share = {name: (root, frame.iloc[number::rounds].reset_index(drop=True))
                 for name, (root, frame) in sources.items()}
        images = [load_image(root / relative).image for root, frame in share.values() for relative in frame["image"]]
        photos += len(images)
        clock("facenet", facenet_each, reference, images)
        clock("kit", detect_in_batches, detector, images, batch_size)
        clock("masks", draw_masks, images, detect_in_batches(detector, images, batch_size))
        clock("kit_one_pass", detect_in_batches, one_pass, images, batch_size)
        clock("kit_single", detect_in_batches, detector, images, 1)
        for stage in ("facenet", "kit", "kit_one_pass", "kit_single", "masks"):
            detections[stage] += len(images)
        with tempfile.TemporaryDirectory() as tmp:
            counting = CountingDetector(detector)
            began_cpu = time.process_time()
            aligned_seconds, whole_seconds, aligned_seen = whole_build(share, tmp, settings, counting, batch_size)
            cpu["whole"] += time.process_time() - began_cpu
        wall["aligned"] += aligned_seconds
        wall["whole"] += whole_seconds
        detections["aligned"] += aligned_seen
        detections["whole"] += counting.seen
        log(f"round {number + 1}/{rounds}: {len(images)} photos; " + ", ".join(
            f"{stage} {photos / wall[stage]:.1f}" for stage in STAGES) + " photos/s so far")
    cpu["aligned"] = float("nan")  # inside the whole build's
    rows = [{"stage": label, "photos": photos, "seconds": round(wall[stage], 2), "photos_per_s": photos / wall[stage],
             "detections_per_photo": detections[stage] / photos, "detections_per_s": detections[stage] / wall[stage],
             "cpu_seconds": round(cpu[stage], 2)} for stage, label in STAGES.items()]
    rate = {stage: detections[stage] / wall[stage] for stage in STAGES}
    ratios = {"kit_detection_vs_facenet": rate["kit"] / rate["facenet"],
              "aligned_build_vs_kit_detection": rate["aligned"] / rate["kit"],
              "whole_build_vs_kit_detection": rate["whole"] / rate["kit"],
              "whole_build_photos_vs_kit_detection": photos / wall["whole"] / rate["kit"],
              "kit_one_pass_vs_facenet": rate["kit_one_pass"] / rate["facenet"],
              "kit_one_photo_at_a_time_vs_facenet": rate["kit_single"] / rate["facenet"]}
    return rows, ratios


# ------------------------------------------------------------------------------------------------------------
# the same faces?
# ------------------------------------------------------------------------------------------------------------


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def compare_detections(old: list[Detection], new: list[Detection]) -> dict:
    """Faces found by each, the same face chosen (box IoU >= 0.5), and the chosen landmarks' movement in pixels
    and in inter-ocular distances (of the old landmarks)."""
    pixels, iods, same, other, lost, gained = [], [], 0, 0, 0, 0
    for a, b in zip(old, new):
        if a.chosen is None or b.chosen is None:
            lost += a.chosen is not None
            gained += b.chosen is not None
            continue
        if box_iou(a.boxes[a.chosen], b.boxes[b.chosen]) < 0.5:
            other += 1
            continue
        same += 1
        before, after = a.landmarks[a.chosen], b.landmarks[b.chosen]
        moved = float(np.linalg.norm(after - before, axis=1).mean())
        pixels.append(moved)
        iods.append(moved / max(float(np.hypot(*(before[1] - before[0]))), 1e-6))
    pixels, iods = np.array(pixels or [np.nan]), np.array(iods or [np.nan])
    return {"photos": len(old), "found_old": sum(d.chosen is not None for d in old),
            "found_new": sum(d.chosen is not None for d in new), "same_face": same, "other_face": other,
            "lost": lost, "gained": gained, "landmark_shift_mean_px": float(np.nanmean(pixels)),
            "landmark_shift_max_px": float(np.nanmax(pixels)), "landmark_shift_mean_iod": float(np.nanmean(iods)),
            "landmark_shift_p99_iod": float(np.nanpercentile(iods, 99)),
            "changed_photos": int(np.sum(pixels > 1e-3))}


def masked_versions(images: list, detections: list[Detection], names: list[str], seed: int) -> list:
    """The photos with a training-style mask drawn on their (old) landmarks, as the build draws them."""
    masked = []
    for image, detection, name in zip(images, detections, names):
        if detection.chosen is not None:
            masked.append(draw_mask(image, detection.landmarks[detection.chosen],
                                    choose_style(name, seed, TRAINING_STYLES), seed=file_seed(name, seed)))
    return masked


def compare_settings(sets: dict[str, list], settings: BuildSettings, batch_size: int, log) -> list[dict]:
    reference = facenet_reference()
    kit_settings = {
        "kit default (two passes)": dict(first_pass_face_size=settings.first_pass_face_size),
        "kit one pass": dict(first_pass_face_size=None),
        "min_face_size 40, one pass": dict(min_face_size=40, first_pass_face_size=None),
    }
    detectors = {label: FaceDetector(device="cpu", min_prob=settings.min_prob, factor=settings.pyramid_factor,
                                     **{"min_face_size": settings.min_face_size, **kw})
                 for label, kw in kit_settings.items()}
    rows = []
    for name, images in sets.items():
        old, seconds = timed(facenet_each, reference, images, settings.min_prob)
        log(f"compare {name}: facenet {len(images) / seconds:.2f} photos/s")
        for label, detector in detectors.items():
            new, new_seconds = timed(detect_in_batches, detector, images, batch_size)
            row = {"photos_set": name, "setting": label, **compare_detections(old, new),
                   "speedup_vs_facenet": seconds / new_seconds}
            rows.append(row)
            log(f"  {label}: found {row['found_new']}/{row['found_old']}, same face {row['same_face']}, "
                f"other {row['other_face']}, landmark shift {row['landmark_shift_mean_px']:.3f} px mean")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default=None, help="LFW folder (default: $MASKSTUDY_LFW or ../shared/data/lfw)")
    parser.add_argument("--celeba", default=None, help="CelebA identity folders (default: $MASKSTUDY_CELEBA or "
                        "../shared/data/celeba; absent: LFW only)")
    parser.add_argument("--images", type=int, default=256, help="LFW photos for the speed runs")
    parser.add_argument("--celeba-images", type=int, default=64, help="CelebA photos for the speed runs")
    parser.add_argument("--compare-lfw", type=int, default=500, help="LFW photos for the same-faces check")
    parser.add_argument("--compare-celeba", type=int, default=300, help="CelebA photos for the same-faces check")
    parser.add_argument("--compare-masked", type=int, default=200, help="masked LFW photos for that check")
    parser.add_argument("--compare-mfr2", type=int, default=269, help="MFR2 photos (real masks) for that check")
    parser.add_argument("--no-compare", action="store_true", help="speed only")
    parser.add_argument("--quick", action="store_true",
                        help="48 LFW + 16 CelebA photos for speed, 100 + 60 + 40 + 40 compared")
    parser.add_argument("--batch-size", type=int, default=32, help="the build's batch (profile detect_batch_size)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the speed stages")
    parser.add_argument("--device", default="cpu", help="cpu | cuda: where both MTCNNs run")
    parser.add_argument("--out", default="reports/bench")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.celeba_images, args.rounds = 48, 16, 2
        args.compare_lfw, args.compare_celeba, args.compare_masked, args.compare_mfr2 = 100, 60, 40, 40
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as every notebook does (maskstudy.report.pipeline.start_notebook)

    lfw = find_dataset("lfw", args.lfw)
    if lfw is None:
        parser.error("LFW not found: pass --lfw or set MASKSTUDY_LFW")
    celeba = find_dataset("celeba", args.celeba)
    lfw_frame, celeba_frame = scan_identity_folders(lfw), scan_identity_folders(celeba) if celeba else None
    settings = BuildSettings()
    sources = {"lfw": (lfw, spread(lfw_frame, args.images))}
    if celeba_frame is not None and args.celeba_images:
        sources["celeba"] = (celeba, spread(celeba_frame, args.celeba_images))
    rows, ratios = measure_speed(sources, settings, args.batch_size, args.rounds, print, args.device)

    compared = []
    if not args.no_compare:
        sets, names = {}, {}
        lfw_sample = spread(lfw_frame, args.compare_lfw, offset=1)
        sets["LFW photos"] = [load_image(lfw / p).image for p in lfw_sample["image"]]
        names["LFW photos"] = list(lfw_sample["image"])
        if celeba_frame is not None and args.compare_celeba:
            sample = spread(celeba_frame, args.compare_celeba, offset=1)
            sets["CelebA photos"] = [load_image(celeba / p).image for p in sample["image"]]
        if args.compare_masked:
            pick = slice(0, args.compare_masked)
            reference = facenet_reference()
            base = [facenet_detect(reference, image) for image in sets["LFW photos"][pick]]
            sets["masked LFW photos"] = masked_versions(sets["LFW photos"][pick], base, names["LFW photos"][pick],
                                                        settings.seed)
        mfr2 = find_dataset("mfr2")
        if mfr2 is not None and args.compare_mfr2:
            sample = spread(scan_identity_folders(mfr2), args.compare_mfr2)
            sets["MFR2 photos (real masks)"] = [load_image(mfr2 / p).image for p in sample["image"]]
        compared = compare_settings(sets, settings, args.batch_size, print)

    met = {key: bool(ratios[key] >= target) for key, target in TARGETS.items()}
    summary = {"device": outputs.device_description(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "settings": settings.as_dict(), "batch_size": args.batch_size,
               "quick": args.quick, "speed": rows, "ratios": ratios, "targets": TARGETS, "targets_met": met,
               "compare": compared}
    out = Path(args.out)
    storage.write_json(out / "bench_detection.json", summary)
    ratio_table = pd.DataFrame([{"ratio": key, "value": value, "target": f">= {TARGETS[key]:g}" if key in TARGETS
                                 else "", "met": met.get(key, "")} for key, value in ratios.items()])
    text = [f"# Detection benchmark\n\nDevice: {summary['device']}; torch {torch.__version__}; "
            f"{summary['threads']} intra-op threads; build batch {args.batch_size}; settings {settings.as_dict()}."
            " One run: only the ratios are comparable across machines.\n",
            "## Speed\n", outputs.to_markdown(pd.DataFrame(rows)), "\n## Ratios\n", outputs.to_markdown(ratio_table)]
    if compared:
        text += ["\n## Same faces as facenet's MTCNN.detect (20 px, one pass)\n",
                 outputs.to_markdown(pd.DataFrame(compared))]
    storage.write_text(out / "bench_detection.md", "\n".join(text) + "\n")
    print("\n".join(f"{key}: {value:.2f}" + (f" (target >= {TARGETS[key]:g})" if key in TARGETS else "")
                    for key, value in ratios.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
