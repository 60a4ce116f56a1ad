"""Explanations kept on disk, so that a rerun of notebook 05 recomputes no map and no curve whose inputs are unchanged.

Each result is one file named by a hash of everything it depends on: the model's weights
(:func:`maskstudy.evaluate.store.model_fingerprint`), the bytes of the crops and references, the method and every
setting. A retrained model, another crop or another setting therefore never meets a stale result; a damaged file
costs a recomputation (with a warning), never the run. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from ..core import storage
from ..evaluate.store import model_fingerprint
from .cams import compute_grid_cams
from .faithfulness import deletion_insertion_curves

CACHE_VERSION = 1
#: The columns of :func:`~maskstudy.explain.deletion_insertion_curves` and their types (the CSV is read as text).
CURVE_TYPES = {"image": "int64", "ranking": "str", "curve": "str", "fraction": "float64", "similarity": "float64"}

logger = logging.getLogger(__name__)


def _digest(*parts) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for part in parts:
        if isinstance(part, np.ndarray) or hasattr(part, "numpy"):
            array = np.ascontiguousarray(np.asarray(part))
            digest.update(f"|{array.dtype}|{array.shape}|".encode())
            digest.update(array.tobytes())
        else:
            digest.update(f"|{part!r}".encode())
    return digest.hexdigest()[:32]


class ExplanationCache:
    """Grad-CAM maps and faithfulness curves of :mod:`maskstudy.explain`, computed once per distinct input.

    >>> cache = ExplanationCache(run_outputs / "explanations")
    >>> maps = cache.grid_cams(model, crops, references, input_size=56)   # computes, then reads from disk
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def _load_maps(self, path: Path, rows: int) -> np.ndarray | None:
        """The saved maps, or ``None`` when absent, unreadable or not of ``rows`` maps (a file cut short)."""
        if not path.is_file():
            return None
        try:
            maps = np.load(path, allow_pickle=False)
            if len(maps) != rows:
                raise ValueError(f"{len(maps)} maps, expected {rows}")
            return maps
        except (OSError, EOFError, ValueError) as error:
            logger.warning("ignoring unreadable explanation %s (%s): computing it again", path, error)
            return None

    def grid_cams(self, model: nn.Module, crops, references, input_size: int, method: str = "hirescam",
                  batch_size: int = 16) -> np.ndarray:
        """:func:`~maskstudy.explain.compute_grid_cams` of these arguments, from disk when computed before."""
        key = _digest("grid_cams", model_fingerprint(model), np.asarray(crops), np.asarray(references), input_size,
                      method, batch_size)
        path = self.folder / f"cams_{key}.npy"
        maps = self._load_maps(path, len(crops))
        if maps is not None:
            self.hits += 1
            return maps
        self.misses += 1
        maps = compute_grid_cams(model, crops, references, input_size, method=method, batch_size=batch_size)
        with storage.atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, maps, allow_pickle=False)
        return maps

    def deletion_insertion_curves(self, model: nn.Module, crops, references, rankings: dict[str, np.ndarray],
                                  input_size: int, fractions, seed: int = 0, batch_size: int = 64) -> pd.DataFrame:
        """:func:`~maskstudy.explain.deletion_insertion_curves` of these arguments, from disk when computed before."""
        parts = [np.asarray(rankings[name]) for name in sorted(rankings)]
        key = _digest("curves", model_fingerprint(model), np.asarray(crops), np.asarray(references),
                      sorted(rankings), *parts, input_size, np.asarray(fractions, dtype=np.float64), seed, batch_size)
        path = self.folder / f"curves_{key}.csv"
        rows = len(crops) * len(rankings) * 2 * len(np.atleast_1d(fractions))  # deletion and insertion
        table = storage.read_csv_cache(path, list(CURVE_TYPES))  # None, with a warning, when damaged
        if table is not None and len(table) != rows:
            logger.warning("ignoring explanation %s (%d rows, expected %d): computing it again", path, len(table), rows)
            table = None
        if table is not None:
            self.hits += 1
            return table.astype(CURVE_TYPES)
        self.misses += 1
        table = deletion_insertion_curves(model, crops, references, rankings, input_size, fractions, seed=seed,
                                          batch_size=batch_size)
        storage.write_csv(path, table)
        return table
