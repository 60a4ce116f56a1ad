"""Evaluation embeddings kept on disk, so that a rerun of the study embeds nothing it has embedded before.

One file per (model weights, input size, flip setting, crop folder): ``<folder>/<key>.npz`` with the crops'
relative paths, their file size and modification time when embedded, and the embeddings. An entry is used
again only while its crop file is unchanged (same size and mtime); new or changed crops are embedded and the
file is rewritten atomically. The key hashes every tensor of the model's ``state_dict``, so a retrained model
(same name, other weights) never meets another model's embeddings.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core import storage

STORE_VERSION = 1

logger = logging.getLogger(__name__)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's class name and every ``state_dict`` entry (name, dtype, shape, bytes)."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_stats(root: Path, rels: list[str]) -> np.ndarray:
    stats = np.zeros((len(rels), 2), dtype=np.int64)
    for i, rel in enumerate(rels):
        st = os.stat(root / rel)
        stats[i] = (st.st_size, st.st_mtime_ns)
    return stats


class EmbeddingStore:
    """The saved evaluation embeddings of one model for the crops under one folder.

    >>> store = EmbeddingStore(folder, model, input_size=56, crop_root=aligned_root)
    >>> cache = store.load()          # rel -> embedding, only for crops unchanged since they were embedded
    >>> evaluate_pairs(model, 56, pairs, aligned_root, cache)   # embeds only what is missing
    >>> store.save(cache)
    """

    def __init__(self, folder: str | os.PathLike, model: nn.Module, input_size: int, crop_root: str | os.PathLike,
                 flip: bool = True, variant: str = ""):
        """``variant`` names anything else the embeddings depend on (e.g. the pretrained track's cached features)."""
        self.crop_root = Path(crop_root)
        key = (f"v{STORE_VERSION}|{model_fingerprint(model)}|{input_size}|{flip}|{self.crop_root.resolve()}"
               + (f"|{variant}" if variant else ""))
        key = hashlib.sha256(key.encode()).hexdigest()[:24]
        self.path = Path(folder) / f"{key}.npz"

    def load(self) -> dict[str, np.ndarray]:
        """Embeddings of the crops that are unchanged since they were stored; ``{}`` when none (or unreadable)."""
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                rels = [str(r) for r in saved["rels"]]
                stats, embeddings = saved["stats"], saved["embeddings"]
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as error:
            logger.warning("ignoring unreadable embedding store %s (%s): its crops are embedded again", self.path,
                           error)
            return {}  # a damaged store only costs a recomputation
        present = [i for i, rel in enumerate(rels) if (self.crop_root / rel).is_file()]
        if not present:
            return {}
        now = _file_stats(self.crop_root, [rels[i] for i in present])
        keep = [i for i, row in zip(present, now) if (stats[i] == row).all()]
        return {rels[i]: embeddings[i] for i in keep}

    def save(self, cache: dict[str, np.ndarray]) -> Path | None:
        """Write every entry of ``cache`` (rel -> embedding) whose crop exists; atomic."""
        rels = [rel for rel in cache if (self.crop_root / rel).is_file()]
        if not rels:
            return None
        embeddings = np.stack([np.asarray(cache[rel], dtype=np.float32) for rel in rels])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with storage.atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, rels=np.array(rels, dtype=str), stats=_file_stats(self.crop_root, rels),
                     embeddings=embeddings)
        return self.path
