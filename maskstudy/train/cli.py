"""``python -m maskstudy.train``: one training run from the command line (the ``torchrun`` entry point)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from .config import TrainConfig
from .loop import train


def _parse_setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set expects KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskstudy.train",
        description="Train a face-recognition backbone (ArcFace recipe); run under torchrun for several processes.")
    parser.add_argument("--config", help="JSON file of TrainConfig settings (e.g. a run's config.json)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting (JSON value, e.g. epochs=5, max_steps=null), repeatable")
    parser.add_argument("--train-csv", required=True, help="train_clean.csv")
    parser.add_argument("--data-dir", required=True, help="folder holding <dataset>/aligned/")
    parser.add_argument("--out-dir", required=True, help="run folder for config.json, log.csv, last.pt")
    parser.add_argument("--no-resume", action="store_true", help="start over even if out-dir holds a checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        values = json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
        values.update(dict(_parse_setting(s) for s in args.set))
        config = TrainConfig.from_dict(values)
        result = train(config, args.train_csv, args.data_dir, args.out_dir, resume=not args.no_resume,
                       progress=not args.no_progress, log=lambda line: print(line, flush=True))
    except (ValueError, KeyError, FileNotFoundError) as error:
        print(f"maskstudy.train: {error}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        last = result.history.iloc[-1] if len(result.history) else None
        summary = {"checkpoint": str(result.checkpoint), "epochs": len(result.history),
                   "loss": None if last is None else float(last["loss"]),
                   "val_acc": None if last is None or pd.isna(last["val_acc"]) else float(last["val_acc"]),
                   "seconds": round(result.seconds, 2), "images_per_s": round(result.images_per_s, 1)
                   if math.isfinite(result.images_per_s) else None}
        print(json.dumps(summary), flush=True)
    return 0
