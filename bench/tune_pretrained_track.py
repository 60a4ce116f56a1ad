"""Choose the pretrained track's fine-tuning settings on held-out training identities (never LFW's test folds or MFR2).

Each candidate fine-tunes the plain network (main seed) on the training rows of a finished data build (notebooks
01-02) and is scored on the masked-unmasked validation pairs of the held-out training identities
(:class:`maskstudy.train.finetune.FinetuneValidation`): best-threshold accuracy after each epoch. The pretrained
network as it is gives the starting point. Writes a markdown table (``--out``) with every candidate tried, with
``--append`` as a new section after what the file holds. For candidates with attention, the table gives the mean
strength of the inserted blocks after fine-tuning (``|A(x) - x| / |x|`` on the validation identities' masked twins,
:mod:`maskstudy.explain.attention_readout`) and, for gated ones, the range of the gates.

Usage: python bench/tune_pretrained_track.py [--data-dir data/processed] [--out bench/tune_pretrained_track.md]
       [--only 0 3] [--append] [--title "..."]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import pandas as pd

#: Candidates: changes to the profile's defaults (maskstudy.core.profiles BASE, pretrained_*).
CANDIDATES = [
    {},
    {"lr": 3e-4},
    {"lr": 3e-5},
    {"epochs": 3},
    {"margin_weight": 0.1},
    {"twins": "shared"},
    {"frozen_stages": 2},
    {"attention": "cbam", "attention_form": "gated", "attention_lr_scale": 10.0},
    {"attention": "cbam", "attention_form": "gated", "attention_lr_scale": 100.0},
    # full strength (started near the identity): the inserted modules' learning-rate multiplier
    {"attention": "se", "attention_lr_scale": 10.0},
    {"attention": "se", "attention_lr_scale": 100.0},
    {"attention": "se", "attention_lr_scale": 1000.0},
    {"attention": "cbam", "attention_lr_scale": 10.0},
    {"attention": "cbam", "attention_lr_scale": 100.0},
    {"attention": "cbam", "attention_lr_scale": 1000.0},
]


def strength(model, features, start: int) -> str:
    """Mean strength of the model's attention blocks on ``features`` (cached frozen-stage features), by kind."""
    from maskstudy.explain.attention_readout import AttentionRecorder
    from maskstudy.train.finetune import head_embeddings

    with AttentionRecorder(model) as recorder:
        head_embeddings(model, features, start)
    readout = recorder.readout()
    if readout.blocks.empty:
        return ""
    short = {b: b.replace("stages.", "stage ").replace(".attention", "") for b in readout.strength}
    return ", ".join(f"{short[b]}: {100 * v.mean():.2f} %" for b, v in readout.strength.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/processed")
    parser.add_argument("--out", default="bench/tune_pretrained_track.md")
    parser.add_argument("--only", type=int, nargs="*", help="indices of CANDIDATES to run")
    parser.add_argument("--append", action="store_true", help="add a section to --out instead of replacing it")
    parser.add_argument("--title", default="Pretrained track: settings tried on held-out training identities")
    args = parser.parse_args()
    from maskstudy.core.profiles import resolve_config
    from maskstudy.report.outputs import to_markdown
    from maskstudy.study import pretrained_track as track
    from maskstudy.train.finetune import build_student, finetune

    config = resolve_config("cpu")
    data_dir = Path(args.data_dir)
    store = data_dir / "pretrained_track" / "features"
    rows_by_twins, features = {}, {}
    results = []
    chosen = args.only if args.only else range(len(CANDIDATES))
    for index in chosen:
        changes = dict(CANDIDATES[index])
        twins = changes.pop("twins", config["pretrained_twins"])
        settings = track.finetune_config(config, changes.pop("attention", "none"), **changes)
        key = (twins, settings.frozen_stages)
        if key not in features:
            if twins not in rows_by_twins:
                rows_by_twins[twins] = track.training_rows(data_dir / "split" / "train_clean.csv", data_dir, twins)
            features[key] = track.training_features(rows_by_twins[twins], data_dir, store / twins,
                                                    settings.frozen_stages, False, config["train_val_identities"],
                                                    config["train_val_pairs"], int(config["seed"]))
            start_acc = features[key].validation.accuracy(build_student(settings), settings.frozen_stages)
            results.append({"candidate": f"pretrained, no fine-tuning ({twins} twins, k={settings.frozen_stages})",
                            "val_acc_by_epoch": f"{start_acc:.4f}", "seconds": 0.0})
            print(results[-1], flush=True)
        train = features[key]
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            result = finetune(settings, train.clean, train.masked, train.labels, Path(tmp) / "run.pt",
                              train.validation, log=print)
        gates = result.history["gates"].iloc[-1]
        described = ", ".join(f"{k}={v}" for k, v in {**CANDIDATES[index]}.items()) or "profile defaults"
        results.append({"candidate": described, "val_acc_by_epoch": " / ".join(f"{v:.4f}" for v in
                                                                               result.history["val_acc"]),
                        "seconds": time.perf_counter() - started, "rows": train.rows,
                        "val_pairs": train.validation.size, "gates": gates,
                        "strength_on_masked_val": strength(result.model, train.validation.masked,
                                                           settings.frozen_stages)})
        print(results[-1], flush=True)
    table = pd.DataFrame(results)
    defaults = dataclasses.asdict(track.finetune_config(config))
    text = (f"{'##' if args.append else '#'} {args.title}\n\n"
            f"Profile defaults: {defaults}, twins {config['pretrained_twins']}.\n\n" + to_markdown(table)
            + "\n")
    out = Path(args.out)
    if args.append and out.is_file():
        text = out.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + text
    out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
