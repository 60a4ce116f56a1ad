"""The study's design in one place: which models are trained, with which seeds, under which names.

Notebooks 03-06 take every model name, seed and checkpoint folder from here, so that removing ``se`` from
``attention_variants`` or adding a seed runs through all of them without edits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Display name of each attention variant (``attention_variants`` in the profile).
ATTENTION_NAMES = {"none": "plain", "se": "se", "cbam": "cbam"}


def attention_models(config: Mapping[str, Any]) -> dict[str, str]:
    """Model name -> attention block, in the profile's order: ``{"plain": "none", "se": "se", "cbam": "cbam"}``."""
    return {ATTENTION_NAMES.get(a, a): a for a in config["attention_variants"]}


def seeds(config: Mapping[str, Any]) -> list[int]:
    """Training seeds of the attention variants: ``seed`` first, then ``extra_seeds`` (distinct, in order)."""
    chosen = [int(config["seed"])]
    for seed in config.get("extra_seeds") or []:
        if int(seed) not in chosen:
            chosen.append(int(seed))
    return chosen


def run_name(model: str, seed: int, config: Mapping[str, Any]) -> str:
    """Name of one training run: the model's name for the main seed, ``<model>_seed<k>`` for the others."""
    return model if int(seed) == int(config["seed"]) else f"{model}_seed{int(seed)}"


def checkpoint(outputs: str | Path, run: str) -> Path:
    """The final checkpoint of training run ``run`` under a run folder's ``outputs/``."""
    return Path(outputs) / "checkpoints" / run / "last.pt"


@dataclass(frozen=True)
class TrainingRun:
    """One network notebook 03 trains: its model name, seed, kind and TrainConfig fields.

    ``kind``: ``attention`` (the compared variants, repeated over seeds), ``baseline`` (no masks in training),
    ``leave_out`` (trained without one mask style's twins), ``twins`` (trained on masked twins detected and
    aligned on the masked photo, ``masked_variant``, as they are met at test time) or ``margin`` (another margin
    head on the plain net).
    """

    name: str
    model: str
    seed: int
    kind: str
    settings: dict
    left_out_style: str | None = None
    masked_variant: str = "shared"


def training_runs(config: Mapping[str, Any]) -> dict[str, TrainingRun]:
    """Every training run of notebook 03, by run name, in training order (main seed first)."""
    from .config import train_settings

    runs: dict[str, TrainingRun] = {}
    attention = attention_models(config)
    for seed in seeds(config):
        for model, block in attention.items():
            name = run_name(model, seed, config)
            runs[name] = TrainingRun(name, model, seed, "attention", train_settings(config, block, seed=seed))
    main = int(config["seed"])
    if config.get("nomask_baseline"):
        runs["plain_nomask"] = TrainingRun("plain_nomask", "plain_nomask", main, "baseline",
                                           train_settings(config, "none", masked_share=0.0))
    style = config.get("leave_out_style")
    if style and style not in config["mask_styles"]:
        raise ValueError(f"leave_out_style={style!r} is not one of the training styles {config['mask_styles']}")
    if style:
        name = f"plain_without_{style}"
        runs[name] = TrainingRun(name, name, main, "leave_out", train_settings(config, "none"), style)
    variant = config.get("detected_twins_run")
    if variant and variant not in ("detected", "detected_eyes"):
        raise ValueError(f"detected_twins_run={variant!r}: expected 'detected', 'detected_eyes' or null")
    if variant:
        name = f"plain_{variant}_twins"
        runs[name] = TrainingRun(name, name, main, "twins", train_settings(config, "none"), masked_variant=variant)
    for margin in config.get("margin_losses") or []:
        name = f"plain_{margin}"
        runs[name] = TrainingRun(name, name, main, "margin", train_settings(config, "none", margin=margin))
    return runs


def attention_comparisons(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Pairs ``(a, b)`` of attention models compared as a - b: each block against plain, then the blocks
    against each other (e.g. se - plain, cbam - plain, cbam - se)."""
    names = list(attention_models(config))
    base = "plain" if "plain" in names else names[0]
    others = [n for n in names if n != base]
    return [(n, base) for n in others] + [(b, a) for i, a in enumerate(others) for b in others[i + 1:]]


def without_style(rows, style: str):
    """Training rows whose twins of ``style`` are removed (those photos are always used unmasked): the
    leave-one-style-out run never sees that mask."""
    rows = rows.copy()
    rows.loc[rows["mask_style"] == style, "masked"] = ""
    return rows


def with_masked_variant(rows, variant: str, data_dir):
    """Training rows whose masked twins are replaced by their ``variant`` crops (e.g. ``detected``: the masked
    photo detected and aligned by itself) where notebook 01 built them; other rows keep their shared twin."""
    from pathlib import Path

    from .masked_photos import variant_name

    rows = rows.copy()
    data_dir = Path(data_dir)

    def swap(row):
        if not row["masked"]:
            return row["masked"]
        candidate = variant_name(row["aligned"], variant)
        return candidate if (data_dir / row["dataset"] / "aligned" / candidate).is_file() else row["masked"]

    rows["masked"] = rows.apply(swap, axis=1)
    return rows


def display_name(run: str) -> str:
    """Readable label of a run or model name for tables and figures."""
    return run.replace("_seed", " seed ").replace("plain_without_", "plain without ").replace("_", " ")
