"""GPU check: the gpu profile's build, plain / SE / CBAM training with AMP and channels_last, and their
evaluation, in one short run on one CUDA GPU; writes ``gpu_check.md`` and ``gpu_check.json``.

    python bench/gpu_check.py --out reports/gpu/bench                       # on a machine with CUDA
    python bench/gpu_check.py --pack .gpu_data --lfw-folds 2 --celeba-identities 100   # a subset to carry
    python bench/gpu_check.py --out /tmp/check --profile smoke --device cpu --epochs 1  # the same steps on a CPU

``bench/gpu_check.sh`` runs this after ``bench_backbones.py`` (throughput on synthetic batches). The steps:

1. **Build**: the evaluated LFW photos (the pairs of ``--lfw-folds`` folds of ``pairs.txt``) and the CelebA training
   photos (``--celeba-identities``) detected, aligned and masked by ``build_aligned_dataset`` with the profile's
   detection settings on the GPU; photos/s.
2. **Cleaning**: ``clean_manifest`` with the profile's thresholds; its kept CelebA photos are the training list.
3. **Training**: plain, SE and CBAM at the profile's size for ``--epochs`` epochs (AMP and channels_last are
   the CUDA defaults), each from the same seed; training images/s and the peak GPU memory.
4. **Evaluation**: LFW verification of each network, unmasked and masked-unmasked (10-fold protocol over the
   evaluated folds, bootstrap interval), and the held-out CelebA validation accuracy of its last epoch.

A few epochs on a subset say whether the gpu profile runs, how fast and in how much memory; the accuracies show
that the networks learn, not what the full study would reach.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from maskstudy.core import storage
from maskstudy.core.profiles import resolve_config, train_settings
from maskstudy.datasets.build import BuildSettings, aligned_name, build_aligned_dataset, find_dataset
from maskstudy.datasets.cleaning import clean_manifest
from maskstudy.datasets.identity_folders import scan_identity_folders
from maskstudy.datasets.lfw_files import identity_folds, read_lfw_pairs, write_lfw_pairs
from maskstudy.datasets.pairs import MASKED_UNMASKED, UNMASKED_UNMASKED, scenario_pairs
from maskstudy.datasets.protocol import make_split
from maskstudy.evaluate.verification import evaluate_pairs
from maskstudy.report import outputs
from maskstudy.report.pipeline import parse_parameter
from maskstudy.study.experiment import load_network
from maskstudy.train import TrainConfig, train
from maskstudy.train.data import TRAIN_LIST_COLUMNS

VARIANTS = {"plain": "none", "se": "se", "cbam": "cbam"}
SCENARIOS = (UNMASKED_UNMASKED, MASKED_UNMASKED)


def select_pairs(pairs: pd.DataFrame, folds: int | None, per_fold: int | None = None) -> pd.DataFrame:
    """The pairs of the first ``folds`` folds of ``pairs.txt`` (all with ``None``), and of each fold the first
    ``per_fold`` matched and ``per_fold`` mismatched pairs (all with ``None``)."""
    if folds:
        pairs = pairs[pairs["fold"] <= folds]
    if per_fold:
        pairs = pairs.groupby(["fold", "label"], group_keys=False).head(per_fold)
    return pairs.reset_index(drop=True)


def first_identities(images: pd.DataFrame, count: int | None) -> pd.DataFrame:
    """The photos of the first ``count`` identities in sorted order (all with ``None``)."""
    if not count:
        return images
    kept = sorted(images["identity"].unique())[:count]
    return images[images["identity"].isin(kept)].reset_index(drop=True)


def pack(lfw: Path, celeba: Path, out: Path, lfw_folds: int, per_fold: int | None, celeba_identities: int) -> dict:
    """Copy the photos the check needs into ``out/lfw`` and ``out/celeba``, with a ``pairs.txt`` of the selected
    pairs, so that they can travel to a GPU machine without the whole datasets."""
    pairs = select_pairs(read_lfw_pairs(lfw / "pairs.txt"), lfw_folds, per_fold)
    lfw_photos = sorted(set(pairs["image_a"]) | set(pairs["image_b"]))
    celeba_photos = first_identities(scan_identity_folders(celeba), celeba_identities)["image"].tolist()
    for root, photos, name in ((lfw, lfw_photos, "lfw"), (celeba, celeba_photos, "celeba")):
        for photo in photos:
            target = out / name / photo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / photo, target)
    write_lfw_pairs(pairs, out / "lfw" / "pairs.txt")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"lfw_photos": len(lfw_photos), "celeba_photos": len(celeba_photos), "megabytes": round(size / 2**20, 1)}


def gpu_state(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"device": outputs.device_description()}
    props = torch.cuda.get_device_properties(device)
    return {"device": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}


def peak_memory_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def build(config: dict, lfw: Path, celeba: Path, data_dir: Path, lfw_folds: int | None, per_fold: int | None,
          celeba_identities: int | None, device: torch.device):
    """The split and the aligned crops (step 1); returns the split, the cleaned manifest and the timing rows."""
    all_pairs = read_lfw_pairs(lfw / "pairs.txt")
    pairs = select_pairs(all_pairs, lfw_folds, per_fold)
    celeba_images = first_identities(scan_identity_folders(celeba), celeba_identities)
    split = make_split(scan_identity_folders(lfw), pairs, identity_folds(all_pairs), {"celeba": celeba_images})
    settings = BuildSettings.from_config(config)
    detector = settings.detector(device=str(device))
    jobs = {"lfw": (lfw, split.eval_images), "celeba": (celeba, split.train[["identity", "image"]])}
    manifests, timings = [], []
    for name, (root, wanted) in jobs.items():
        began = time.perf_counter()
        manifests.append(build_aligned_dataset(
            name, root, wanted, data_dir, settings, detector=detector, batch_size=config["detect_batch_size"],
            fallback_alignment=(name == "lfw"), mask_styles=tuple(config["mask_styles"])))
        seconds = time.perf_counter() - began
        timings.append({"dataset": name, "photos": len(wanted), "seconds": round(seconds, 1),
                        "photos_per_s": round(len(wanted) / max(seconds, 1e-9), 1)})
    cleaned = clean_manifest(pd.concat(manifests, ignore_index=True), max_deviation=config["max_deviation"],
                             min_prob=config["min_prob"])
    return split, cleaned, timings


def train_and_evaluate(config: dict, variant: str, train_csv: Path, data_dir: Path, out: Path,
                       eval_pairs: pd.DataFrame, epochs: int, device: torch.device) -> dict:
    """Steps 3 and 4 for one variant."""
    settings = train_settings(config, VARIANTS[variant], epochs=epochs, device=str(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = train(TrainConfig.from_dict(settings), train_csv, data_dir, out / variant, resume=False,
                   log=lambda line: print(f"[{variant}] {line}", flush=True))
    row = {"variant": variant, "backbone": settings["backbone"], "input_size": settings["input_size"],
           "batch_size": settings["batch_size"], "epochs": len(result.history),
           "train_seconds": round(result.seconds, 1), "train_images_per_s": round(result.images_per_s, 1),
           "peak_memory_gb": peak_memory_gb(device),
           "val_acc": float(result.history["val_acc"].iloc[-1]) if len(result.history) else None}
    model, input_size = load_network(result.checkpoint)
    crops: dict = {}
    began = time.perf_counter()
    for scenario in SCENARIOS:
        pairs = scenario_pairs(eval_pairs, scenario, seed=config["seed"])
        scored = evaluate_pairs(model, input_size, pairs, data_dir / "lfw" / "aligned", crops,
                                batch_size=config["eval_batch_size"], device=device,
                                n_boot=config["bootstrap_samples"], seed=config["seed"])
        low, high = scored["acc_ci"]
        row[f"{scenario}_acc"] = round(100 * scored["accuracy"]["mean"], 2)
        row[f"{scenario}_ci"] = f"{100 * low:.1f}-{100 * high:.1f}"
    row["eval_seconds"] = round(time.perf_counter() - began, 1)
    row["eval_crops_per_s"] = round(len(crops) / max(row["eval_seconds"], 1e-9), 1)
    return row


def markdown(summary: dict) -> str:
    env = summary["environment"]
    lines = [
        "# GPU check", "",
        f"{env['device']}; torch {env['torch']}; Python {env['python']}; profile `{summary['profile']}`; "
        f"{summary['lfw_pairs']} LFW pairs ({summary['lfw_folds']} folds), {summary['train_photos']} CelebA training "
        f"photos kept of {summary['celeba_photos']}, {summary['epochs']} epochs; whole check "
        f"{outputs.format_duration(summary['seconds'])}.", "",
        "## Build (detect, align, mask, write)", "", outputs.to_markdown(pd.DataFrame(summary["build"])), "",
        "## Training and evaluation", "", outputs.to_markdown(pd.DataFrame(summary["variants"])), "",
        "LFW accuracies: 10-fold protocol over the evaluated folds, with a bootstrap interval over pairs; "
        "`val_acc`: masked-unmasked pairs of held-out CelebA identities after the last epoch. A few epochs on a "
        "subset: these show that the networks learn, not what the full study would reach.", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports/gpu/bench", help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--work", default=None, help="folder for crops and checkpoints (default: <out>/work)")
    parser.add_argument("--pack", default=None, metavar="DIR",
                        help="only copy the photos the check needs to DIR/lfw and DIR/celeba, then stop")
    parser.add_argument("--lfw", default=None, help="LFW folder (default: $MASKSTUDY_LFW or ../shared/data/lfw)")
    parser.add_argument("--celeba", default=None, help="CelebA identity folders (default: $MASKSTUDY_CELEBA or "
                                                       "../shared/data/celeba)")
    parser.add_argument("--lfw-folds", type=int, default=2, help="folds of pairs.txt evaluated (600 pairs each)")
    parser.add_argument("--pairs-per-fold", type=int, default=None,
                        help="matched and mismatched pairs kept per fold (all 300 by default)")
    parser.add_argument("--celeba-identities", type=int, default=None, help="CelebA identities trained on (all)")
    parser.add_argument("--profile", default="gpu", help="sizes and settings of this profile")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--device", default="auto", help="auto (cuda when present) | cuda | cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="profile parameter as with maskstudy run -p (YAML value), e.g. train_batch_size=256; repeatable")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lfw, celeba = find_dataset("lfw", args.lfw), find_dataset("celeba", args.celeba)
    if lfw is None or celeba is None:
        print("gpu_check: LFW and CelebA are needed: pass --lfw and --celeba (or set MASKSTUDY_LFW and "
              "MASKSTUDY_CELEBA)", file=sys.stderr)
        return 2
    if args.pack:
        print(json.dumps(pack(Path(lfw), Path(celeba), Path(args.pack), args.lfw_folds, args.pairs_per_fold,
                              args.celeba_identities or 100)))
        return 0
    config = resolve_config(args.profile, dict(parse_parameter(text) for text in args.set))
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    data_dir = work / "data"
    began = time.perf_counter()
    split, cleaned, timings = build(config, Path(lfw), Path(celeba), data_dir, args.lfw_folds, args.pairs_per_fold,
                                    args.celeba_identities, device)
    kept = cleaned[cleaned["keep"] & (cleaned["dataset"] == "celeba")]
    train_csv = storage.write_csv(work / "train_clean.csv", kept[TRAIN_LIST_COLUMNS])
    eval_pairs = split.eval_pairs.assign(image_a=split.eval_pairs["image_a"].map(aligned_name),
                                         image_b=split.eval_pairs["image_b"].map(aligned_name))
    rows = [train_and_evaluate(config, variant, train_csv, data_dir, work / "runs", eval_pairs, args.epochs, device)
            for variant in args.variants]
    summary = {"profile": args.profile, "epochs": args.epochs, "lfw_folds": args.lfw_folds,
               "lfw_pairs": len(eval_pairs), "celeba_photos": int((cleaned["dataset"] == "celeba").sum()),
               "train_photos": len(kept), "seconds": round(time.perf_counter() - began, 1),
               "environment": {**gpu_state(device), "torch": torch.__version__, "python": platform.python_version()},
               "build": timings, "variants": rows}
    storage.write_json(out / "gpu_check.json", summary)
    storage.write_text(out / "gpu_check.md", markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
