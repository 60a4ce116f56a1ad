"""The study's design in one place: which models are trained, with which seeds, under which names.

Notebooks 03-06 take every model name, seed and checkpoint folder from here, so that removing ``se`` from
``attention_variants`` or adding a seed runs through all of them without edits.
"""

from __future__ import annotations

from collections.abc import Mapping
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
