"""Training data: the rows of ``train_clean.csv``, the held-out identities, decoded crops, and each epoch's
seeded order and augmentation (a function of ``(seed, epoch)`` only, the same on every process)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.seeding import seeded_generator
from ..faces.align import CROP_SIZE
from ..faces.preprocess import load_crops, to_input
from .config import AUGMENT_STREAM, SAMPLER_STREAM, SAMPLERS, VALSPLIT_STREAM, Log, TrainConfig, no_log

#: Columns of a training list (``train_clean.csv``, written by notebook 02): :func:`read_rows` needs dataset,
#: identity and aligned; masked (the twin) and mask_style may be empty.
TRAIN_LIST_COLUMNS = ["dataset", "identity", "image", "aligned", "masked", "mask_style"]


def read_rows(train_csv: str | os.PathLike) -> pd.DataFrame:
    rows = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    missing = {"dataset", "identity", "aligned"} - set(rows.columns)
    if missing:
        raise ValueError(f"{train_csv}: missing columns {sorted(missing)} (expected dataset, identity, aligned, masked)")
    if "masked" not in rows.columns:
        rows["masked"] = ""
    return rows


def class_key(rows: pd.DataFrame) -> pd.Series:
    """Identity key ``dataset/identity`` (identities of different datasets never merge)."""
    return rows["dataset"].astype(str) + "/" + rows["identity"].astype(str)


def split_identities(rows: pd.DataFrame, config: TrainConfig, log: Log = no_log) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop identities with fewer than ``min_images_per_identity`` images, then hold out
    ``val_identities`` of the rest (a seeded choice among those with 2+ images and masked twins).

    Returns ``(train_rows, val_rows)``; ``val_rows`` is empty when nothing is held out.
    """
    rows = rows.reset_index(drop=True).copy()
    rows["_class"] = class_key(rows)
    counts = rows["_class"].value_counts()
    keep = set(counts.index[counts >= config.min_images_per_identity])
    dropped = len(counts) - len(keep)
    if dropped:
        log(f"train: dropping {dropped} identities with fewer than {config.min_images_per_identity} images")
    rows = rows[rows["_class"].isin(keep)].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"no identity has {config.min_images_per_identity}+ images in the training list")

    v = config.val_identities
    n_ids = len(keep)
    n_val = 0 if v == 0 else (int(round(v * n_ids)) if v < 1 else int(v))
    if v > 0:
        n_val = max(n_val, 2)  # negatives need two identities
    with_twin = rows[rows["masked"].astype(str) != ""]
    twin_counts = with_twin["_class"].value_counts()
    candidates = sorted(twin_counts.index[twin_counts >= 2])
    if n_val and n_ids - n_val < 2:
        raise ValueError(f"val_identities={v} would hold out {n_val} of {n_ids} identities, leaving fewer than 2 to train")
    if n_val > len(candidates):
        log(f"train: only {len(candidates)} identities can give validation pairs; holding out {len(candidates)}, "
            f"not {n_val}")
        n_val = len(candidates) if len(candidates) >= 2 else 0
    if n_val == 0:
        return rows, rows.iloc[:0].copy()
    perm = torch.randperm(len(candidates), generator=seeded_generator(config.seed, VALSPLIT_STREAM)).tolist()
    val_ids = {candidates[i] for i in perm[:n_val]}
    is_val = rows["_class"].isin(val_ids)
    val_rows = rows[is_val & (rows["masked"].astype(str) != "")].reset_index(drop=True)
    return rows[~is_val].reset_index(drop=True), val_rows


def _decode(paths: list[Path], crop_size: int, threads: int, progress: bool, desc: str) -> np.ndarray:
    """Decode crops into one uint8 array, in chunks on a thread pool (PIL releases the GIL)."""
    out = np.empty((len(paths), crop_size, crop_size, 3), dtype=np.uint8)
    chunk = 256
    starts = list(range(0, len(paths), chunk))

    def work(start: int) -> int:
        out[start:start + chunk] = load_crops(paths[start:start + chunk], crop_size)
        return min(chunk, len(paths) - start)

    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for done in pool.map(work, starts):
            bar.update(done)
    return out


class FaceCropDataset:
    """Aligned crops and their masked twins from ``train_clean.csv`` rows.

    Labels are contiguous ids of the sorted identity keys ``dataset/identity`` (``class_names``).
    All crops that can be sampled (aligned, plus masked when ``masked_share > 0``) are decoded once
    into uint8 arrays held in memory (``cached``), unless that would need more than
    ``cache_limit_gb`` (counted for ``copies`` processes on this machine), in which case
    :meth:`crops` decodes from disk on every call. A row without a masked twin always yields its
    aligned crop.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        data_dir: str | os.PathLike,
        *,
        masked_share: float = 0.5,
        crop_size: int = CROP_SIZE,
        cache_limit_gb: float | None = 8.0,
        copies: int = 1,
        class_names: list[str] | None = None,
        log: Log = no_log,
        progress: bool = False,
    ):
        if not 0.0 <= masked_share <= 1.0:
            raise ValueError(f"masked_share must be in [0, 1], got {masked_share}")
        rows = rows.reset_index(drop=True)
        if rows.empty:
            raise ValueError("no training images")
        data_dir = Path(data_dir)
        self.masked_share = float(masked_share)
        self.crop_size = int(crop_size)
        keys = class_key(rows)
        self.class_names = sorted(keys.unique()) if class_names is None else list(class_names)
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted(set(keys) - set(index))
        if unknown:
            raise ValueError(f"identities missing from class_names: {unknown[:5]}")
        self.labels = keys.map(index).to_numpy(dtype=np.int64)
        root = [data_dir / d / "aligned" for d in rows["dataset"].astype(str)]
        self.aligned_paths = [r / a for r, a in zip(root, rows["aligned"].astype(str))]
        masked = rows["masked"].astype(str).tolist() if "masked" in rows.columns else [""] * len(rows)
        self.has_masked = np.array([m != "" for m in masked], dtype=bool)
        self.masked_paths = [r / m if m else p for r, m, p in zip(root, masked, self.aligned_paths)]

        need_masked = self.masked_share > 0 and self.has_masked.any()
        n_crops = len(rows) * (2 if need_masked else 1)
        self.crop_bytes = self.crop_size * self.crop_size * 3
        self.memory_bytes = n_crops * self.crop_bytes
        limit = None if cache_limit_gb is None else float(cache_limit_gb) * 1e9
        self.cached = limit is None or self.memory_bytes * max(1, copies) <= limit
        where = f" x {copies} processes" if copies > 1 else ""
        if (~self.has_masked).any() and self.masked_share > 0:
            log(f"train: {int((~self.has_masked).sum())} of {len(rows)} images have no masked twin; "
                "they are always used unmasked")
        self._aligned: np.ndarray | None = None
        self._masked: np.ndarray | None = None
        if self.cached:
            log(f"train: caching {n_crops} crops of {len(rows)} images, {self.num_classes} identities in memory: "
                f"{self.memory_bytes / 2**20:.0f} MiB{where} ({self.crop_bytes / 1024:.0f} KiB per crop)")
            threads = min(8, os.cpu_count() or 1)
            self._aligned = _decode(self.aligned_paths, self.crop_size, threads, progress, "decode aligned")
            if need_masked:
                self._masked = _decode(self.masked_paths, self.crop_size, threads, progress, "decode masked")
        else:
            log(f"train: {n_crops} crops would need {self.memory_bytes / 2**30:.1f} GiB{where} "
                f"(> cache_limit_gb={cache_limit_gb}); decoding on the fly")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def choose_masked(self, indices: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """The sampling of twins: True where the sample at ``indices[i]`` is its masked twin
        (probability ``masked_share``; never for a row without a twin). Draws ``len(indices)`` uniforms."""
        indices = np.asarray(indices, dtype=np.int64)
        draw = torch.rand(len(indices), generator=generator).numpy()
        return (draw < self.masked_share) & self.has_masked[indices]

    def crops(self, indices: np.ndarray, masked: np.ndarray | None = None) -> np.ndarray:
        """``(N, crop, crop, 3)`` uint8 crops of ``indices``, masked twins where ``masked``."""
        indices = np.asarray(indices, dtype=np.int64)
        masked = np.zeros(len(indices), bool) if masked is None else np.asarray(masked, dtype=bool)
        if self.cached:
            out = self._aligned[indices]
            if masked.any():
                if self._masked is None:
                    raise ValueError("masked crops requested but none were cached (masked_share=0)")
                out[masked] = self._masked[indices[masked]]
            return out
        paths = [self.masked_paths[i] if m else self.aligned_paths[i] for i, m in zip(indices.tolist(), masked)]
        return load_crops(paths, self.crop_size)


# --------------------------------------------------------------------------------------------
# Sampling and augmentation
# --------------------------------------------------------------------------------------------


def epoch_order(labels: np.ndarray, sampler: str, seed: int, epoch: int,
                max_per_identity: int | None = None) -> np.ndarray:
    """The epoch's sample order (dataset indices), a function of ``(seed, epoch)`` only.

    * ``uniform``: a shuffle of all samples.
    * ``capped``: at most ``max_per_identity`` images of each identity (a fresh random subset every
      epoch), shuffled; without a cap it is ``uniform``.
    * ``balanced``: every identity appears exactly ``k`` times (``max_per_identity``, or the mean
      number of images per identity), cycling through a random order of its images; shuffled.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    g = seeded_generator(seed, SAMPLER_STREAM, epoch)
    perm = torch.randperm(n, generator=g).numpy()
    if sampler == "uniform" or (sampler == "capped" and not max_per_identity):
        return perm
    grouped = perm[np.argsort(labels[perm], kind="stable")]  # identity-major, random order within
    _, starts, counts = np.unique(labels[grouped], return_index=True, return_counts=True)
    if sampler == "capped":
        rank = np.arange(n) - np.repeat(starts, counts)
        chosen = grouped[rank < max_per_identity]
    else:
        k = int(max_per_identity) if max_per_identity else max(1, int(round(n / len(counts))))
        positions = starts[:, None] + np.arange(k)[None, :] % counts[:, None]
        chosen = grouped[positions.ravel()]
    return chosen[torch.randperm(len(chosen), generator=g).numpy()]


@dataclass
class EpochPlan:
    """One epoch's global sample order and per-sample augmentation choices (same on every rank)."""

    order: np.ndarray  # dataset indices
    masked: np.ndarray  # bool: use the masked twin
    flip: np.ndarray  # bool: horizontal flip
    brightness: np.ndarray  # float32 factors
    contrast: np.ndarray  # float32 factors

    def __len__(self) -> int:
        return len(self.order)

    def slice(self, lo: int, hi: int) -> EpochPlan:
        return EpochPlan(self.order[lo:hi], self.masked[lo:hi], self.flip[lo:hi], self.brightness[lo:hi],
                         self.contrast[lo:hi])


def epoch_plan(dataset: FaceCropDataset, config: TrainConfig, epoch: int) -> EpochPlan:
    """Order (:func:`epoch_order`) and augmentation draws of ``epoch``, from ``(seed, epoch)``."""
    order = epoch_order(dataset.labels, config.sampler, config.seed, epoch, config.max_per_identity)
    g = seeded_generator(config.seed, AUGMENT_STREAM, epoch)
    n = len(order)
    masked = dataset.choose_masked(order, g)
    flip = torch.rand(n, generator=g).numpy() < 0.5
    jitter = float(config.color_jitter)
    brightness = (1.0 + jitter * (2.0 * torch.rand(n, generator=g) - 1.0)).numpy().astype(np.float32)
    contrast = (1.0 + jitter * (2.0 * torch.rand(n, generator=g) - 1.0)).numpy().astype(np.float32)
    if not config.flip:
        flip[:] = False
    return EpochPlan(order, masked, flip, brightness, contrast)


def augment_batch(crops: torch.Tensor, input_size: int, *, flip: torch.Tensor | None = None,
                  brightness: torch.Tensor | None = None, contrast: torch.Tensor | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` crops -> augmented model input ``(N, 3, input_size, input_size)`` in [-1, 1].

    On ``device``, batched: horizontal flip (on the uint8 crops), :func:`~maskstudy.faces.preprocess.to_input`,
    then brightness (``x * b``) and contrast (``(x - mean) * c + mean``, per-image grey mean) in
    [0, 1] pixel space, clipped to [0, 1].
    """
    crops = torch.as_tensor(crops)
    if device is not None:
        crops = crops.to(device, non_blocking=True)
    if flip is not None and bool(flip.any()):
        flip = flip.to(crops.device)
        crops = torch.where(flip[:, None, None, None], crops.flip(2), crops)
    x = to_input(crops, input_size)
    if brightness is None and contrast is None:
        return x
    v = x.mul(0.5).add_(0.5)  # back to [0, 1]
    if brightness is not None:
        v = v * brightness.to(v.device, v.dtype)[:, None, None, None]
    if contrast is not None:
        mean = v.mean(dim=(1, 2, 3), keepdim=True)
        v = (v - mean) * contrast.to(v.device, v.dtype)[:, None, None, None] + mean
    return v.clamp_(0.0, 1.0).sub_(0.5).div_(0.5)


class EpochBatches(torch.utils.data.Dataset):
    """Batch ``k`` of one rank's share of an epoch plan, as uint8 crops (for a ``DataLoader``)."""

    def __init__(self, dataset: FaceCropDataset, plan: EpochPlan, batches: list[tuple[int, int]]):
        self.dataset, self.plan, self.batches = dataset, plan, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> torch.Tensor:
        lo, hi = self.batches[k]
        return torch.from_numpy(self.dataset.crops(self.plan.order[lo:hi], self.plan.masked[lo:hi]))
