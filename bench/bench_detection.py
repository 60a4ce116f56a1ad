"""Benchmark: MTCNN detection and the whole per-image build (detect + align + mask + save) on real photos.

    python bench/bench_detection.py --images 256 --out reports/cpu/bench

Reports images/s for detection alone at several batch sizes and for the full build of notebook 01, measured in
one run on this machine, as JSON and markdown.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from maskstudy import report, storage
from maskstudy.data import BuildSettings, build_aligned_dataset, find_dataset
from maskstudy.detect import FaceDetector, load_image
from maskstudy.protocol import scan_identity_folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default=None, help="LFW folder (default: $MASKSTUDY_LFW or ../shared/data/lfw)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 32])
    parser.add_argument("--out", default="reports/bench")
    args = parser.parse_args(argv)

    root = find_dataset("lfw", args.lfw)
    if root is None:
        parser.error("LFW not found: pass --lfw or set MASKSTUDY_LFW")
    images = scan_identity_folders(root).iloc[:: max(1, 11817 // args.images)].head(args.images).reset_index(drop=True)
    loaded = [load_image(root / p).image for p in images["image"]]
    detector = FaceDetector()
    detector.detect(loaded[:4])  # warm-up
    rows = []
    for batch_size in args.batch_sizes:
        began = time.perf_counter()
        for start in range(0, len(loaded), batch_size):
            detector.detect(loaded[start:start + batch_size])
        rate = len(loaded) / (time.perf_counter() - began)
        rows.append({"stage": f"MTCNN detection, batch {batch_size}", "images": len(loaded), "images_per_s": rate})
        print(f"{rows[-1]['stage']}: {rate:.1f} img/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        build_aligned_dataset("bench", root, images, tmp, BuildSettings(), detector=detector, batch_size=32,
                              progress=False, log=lambda *_: None)
        rate = len(images) / (time.perf_counter() - began)
    rows.append({"stage": "full build (read, hash, detect, align, mask, save), batch 32", "images": len(images),
                 "images_per_s": rate})
    print(f"{rows[-1]['stage']}: {rate:.1f} img/s")
    table = pd.DataFrame(rows)
    out = Path(args.out)
    storage.write_json(out / "bench_detection.json", {"device": report.device_description(),
                                                      "threads": torch.get_num_threads(), "rows": rows})
    storage.write_text(out / "bench_detection.md", f"Device: {report.device_description()}\n\n" + report.to_markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
