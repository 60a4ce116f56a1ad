"""Randomness: seeding the global generators, seeds derived for separate streams, and saving RNG states.

Training draws every random choice from its own seeded stream (``derive_seed(seed, stream, epoch)``), so a run is
reproducible on the CPU and a resumed run continues exactly; the notebooks seed the global generators once at
their start (:func:`seed_everything`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed mixed from ``seed`` and stream / epoch keys (numpy ``SeedSequence``)."""
    state = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def seeded_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``seed`` and ``keys``."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), Python's ``random`` and numpy's global generator (with ``seed mod 2**32``,
    the range numpy accepts, so that 63-bit derived seeds work too)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors / lists / numbers (loadable with ``weights_only=True``)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": int(py_version), "state": [int(x) for x in py_state], "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`rng_state` (CUDA's only with as many devices)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
