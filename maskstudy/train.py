"""Training: an IR-ResNet backbone and a margin head trained on clean and masked aligned crops.

The recipe follows ArcFace (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
Recognition", CVPR 2019) as implemented in insightface's ``recognition/arcface_torch``: SGD with
momentum 0.9 and weight decay 5e-4 on backbone and class centres alike, a linear warmup then a
per-step decay (arcface_torch's ``PolyScheduler`` uses power 2; cosine is the alternative), the
backbone's gradient norm clipped at 5, mixed precision with a gradient scaler on GPUs, pixels
normalised to [-1, 1] (:func:`maskstudy.preprocess.to_input`), horizontal flips, and one margin head
(:func:`maskstudy.losses.build_margin_head`) replicated on every process. Unlike arcface_torch
(which shards the class centres with Partial FC for millions of identities) the head here is small
and wrapped in ``DistributedDataParallel`` like the backbone.

Additions for the masked-face study: each training sample is the masked twin of its crop with
probability ``masked_share`` (0.0 is the seed study's "unmasked only" baseline), a light
brightness/contrast jitter, an identity-capped or identity-balanced sampler for long-tailed data
(LFW), and a held-out set of identities scored on masked-unmasked pairs after every epoch.

Everything random derives from ``(seed, epoch)``: the epoch's sample order and augmentation choices
come from their own seeded ``torch.Generator``, so a run is deterministic on the CPU and a resumed
run continues exactly where the checkpoint left off (even mid-epoch, after ``max_steps``).

Outputs in ``out_dir``: ``config.json`` (a :class:`TrainConfig`, reusable as ``--config``),
``log.csv`` (one row per epoch) and ``last.pt`` (see :func:`train` for its format), all written
atomically. Load checkpoints with :func:`load_checkpoint` / :func:`load_backbone`, which always use
``torch.load(..., weights_only=True)``.

Multi-GPU (or multi-process CPU) training goes through ``torchrun``::

    torchrun --nproc_per_node 4 -m maskstudy.train --config cfg.json \\
        --train-csv data/processed/split/train_clean.csv --data-dir data/processed --out-dir runs/ir50_se

``batch_size`` is per process (as in arcface_torch); the global batch is ``batch_size * world_size``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .evaluate import CHECKPOINT_FORMAT, load_checkpoint  # one safe loader (weights_only=True) for both
from .losses import build_margin_head
from .models import build_backbone
from .pairs import generate_pairs, masked_name, scenario_pairs
from .preprocess import load_crops, to_input
from .storage import atomic_path, remove_stale_temp_files, write_csv, write_json

__all__ = [
    "CHECKPOINT_FORMAT",
    "CROP_SIZE",
    "LOG_COLUMNS",
    "RUNTIME_KEYS",
    "ConfigMismatchError",
    "EpochPlan",
    "FaceCropDataset",
    "TrainConfig",
    "TrainResult",
    "augment_batch",
    "best_threshold_accuracy",
    "epoch_order",
    "epoch_plan",
    "learning_rate",
    "load_backbone",
    "load_checkpoint",
    "main",
    "split_identities",
    "train",
]

CROP_SIZE = 112
LOG_COLUMNS = ["epoch", "step", "loss", "train_acc", "lr", "val_acc", "images_per_s", "seconds"]
SCHEDULES = ("cosine", "poly")
OPTIMIZERS = ("sgd", "adamw")
SAMPLERS = ("capped", "balanced", "uniform")
AMP_MODES = ("auto", "bf16", "fp16", "none")

#: Settings that may change when a run is resumed: how long to train and on what hardware. Every
#: other setting is part of the recipe and must match the checkpoint's.
RUNTIME_KEYS = frozenset({
    "epochs", "max_steps", "checkpoint_every", "device", "amp", "channels_last", "compile",
    "num_workers", "num_threads", "deterministic", "cache_limit_gb",
})

# Streams of randomness, each its own seeded generator: (seed, stream[, epoch]).
_INIT, _TRAIN_RNG, _SAMPLER, _AUGMENT, _VALSPLIT = 0, 1, 2, 3, 4

Log = Callable[[str], Any]


def _noop(*_: Any, **__: Any) -> None:
    return None


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """All training settings, as plain JSON-able values (``to_dict`` / ``from_dict``)."""

    # model
    backbone: str = "ir18"
    width: float = 0.25
    input_size: int = 112
    embedding_size: int = 512
    dropout: float = 0.0
    backbone_kwargs: dict = field(default_factory=dict)  # extra builder arguments, e.g. {"depth": 6} for a ViT
    # margin head: scale s=64 is ArcFace's; small data sets (a few hundred identities) train better with s~32
    margin: str = "arcface"
    scale: float = 64.0
    # optimisation
    epochs: int = 20
    batch_size: int = 128  # per process
    optimizer: str = "sgd"  # "sgd" (the ArcFace recipe) | "adamw" (for transformers)
    lr: float = 0.1
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # "cosine" | "poly" (power 2, as arcface_torch)
    grad_clip: float | None = 5.0  # max norm of the backbone's gradient; None or 0 = off
    # augmentation
    masked_share: float = 0.5  # probability that a sample is its masked twin; 0.0 = unmasked-only baseline
    flip: bool = True
    color_jitter: float = 0.1  # brightness and contrast factors drawn from [1 - j, 1 + j]
    # sampling and data
    sampler: str = "capped"  # "capped" | "balanced" | "uniform"
    max_per_identity: int | None = 20  # per-epoch cap ("capped"), images per identity ("balanced", None = mean)
    min_images_per_identity: int = 2
    val_identities: float = 0.05  # share (< 1) or count (>= 1) of identities held out for validation; 0 = none
    val_pairs: int = 600  # at most this many masked-unmasked validation pairs (half positive)
    cache_limit_gb: float = 8.0  # decode crops on the fly when caching them all would need more (per machine)
    seed: int = 0
    # runtime
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda" | "cuda:1" ...
    amp: str = "auto"  # "auto" (bf16 on CUDA if supported else fp16; none on CPU) | "bf16" | "fp16" | "none"
    channels_last: bool | str = "auto"  # "auto" = on CUDA
    compile: bool = False
    num_workers: int | str = "auto"  # loader processes for on-the-fly decoding; "auto" = 0 on CPU, 4+ on CUDA
    num_threads: int | None = None  # torch CPU threads while training (None = as set); 1 can be far faster on a busy CPU
    deterministic: bool | str = "auto"  # "auto" = on CPU (deterministic algorithms), off on CUDA (cudnn.benchmark)
    checkpoint_every: int = 1  # epochs
    max_steps: int | None = None  # stop after this many optimizer steps in total (smoke runs)

    def __post_init__(self) -> None:
        def choice(name: str, options: Iterable[Any]) -> None:
            options = tuple(options)
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")

        choice("schedule", SCHEDULES)
        choice("optimizer", OPTIMIZERS)
        choice("sampler", SAMPLERS)
        choice("amp", AMP_MODES)
        choice("channels_last", ("auto", True, False))
        choice("deterministic", ("auto", True, False))
        for name in ("epochs", "batch_size", "embedding_size", "input_size", "min_images_per_identity",
                     "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= float(self.masked_share) <= 1.0:
            raise ValueError(f"masked_share must be in [0, 1], got {self.masked_share}")
        if not 0.0 <= float(self.color_jitter) < 1.0:
            raise ValueError(f"color_jitter must be in [0, 1), got {self.color_jitter}")
        if not float(self.lr) > 0 or float(self.momentum) < 0 or float(self.weight_decay) < 0:
            raise ValueError("lr must be > 0, momentum and weight_decay >= 0")
        if float(self.warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.grad_clip is not None and float(self.grad_clip) < 0:
            raise ValueError(f"grad_clip must be >= 0 or None, got {self.grad_clip}")
        for name in ("max_per_identity", "max_steps", "num_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        v = self.val_identities
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (v >= 1 and v != int(v)):
            raise ValueError(f"val_identities must be 0, a share in (0, 1) or a whole count >= 1, got {v!r}")
        if isinstance(self.val_pairs, bool) or not isinstance(self.val_pairs, int) or self.val_pairs < 0:
            raise ValueError(f"val_pairs must be an integer >= 0, got {self.val_pairs!r}")
        if not (self.num_workers == "auto" or (isinstance(self.num_workers, int)
                                               and not isinstance(self.num_workers, bool)
                                               and self.num_workers >= 0)):
            raise ValueError(f"num_workers must be 'auto' or an integer >= 0, got {self.num_workers!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not float(self.cache_limit_gb) >= 0:
            raise ValueError(f"cache_limit_gb must be >= 0, got {self.cache_limit_gb}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict (missing keys take their defaults); unknown keys are an error naming them."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown TrainConfig setting(s): {', '.join(hints)}. Known settings: {', '.join(known)}")
        return cls(**dict(values))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def recipe(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint (all but :data:`RUNTIME_KEYS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_KEYS}


class ConfigMismatchError(ValueError):
    """``resume=True`` found a checkpoint trained with a different recipe or different identities."""


@dataclass
class TrainResult:
    """What :func:`train` returns. ``seconds`` and ``images_per_s`` cover this call's training only."""

    history: pd.DataFrame
    checkpoint: Path
    seconds: float
    images_per_s: float
    out_dir: Path = field(default_factory=Path)


# --------------------------------------------------------------------------------------------
# Randomness
# --------------------------------------------------------------------------------------------


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed mixed from ``seed`` and stream / epoch keys (numpy ``SeedSequence``)."""
    state = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def _generator(seed: int, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _rng_state() -> dict[str, Any]:
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


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _read_rows(train_csv: str | os.PathLike) -> pd.DataFrame:
    rows = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    missing = {"dataset", "identity", "aligned"} - set(rows.columns)
    if missing:
        raise ValueError(f"{train_csv}: missing columns {sorted(missing)} (expected dataset, identity, aligned, masked)")
    if "masked" not in rows.columns:
        rows["masked"] = ""
    return rows


def _class_key(rows: pd.DataFrame) -> pd.Series:
    """Identity key ``dataset/identity`` (identities of different datasets never merge)."""
    return rows["dataset"].astype(str) + "/" + rows["identity"].astype(str)


def split_identities(rows: pd.DataFrame, config: TrainConfig, log: Log = _noop) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop identities with fewer than ``min_images_per_identity`` images, then hold out
    ``val_identities`` of the rest (a seeded choice among those with 2+ images and masked twins).

    Returns ``(train_rows, val_rows)``; ``val_rows`` is empty when nothing is held out.
    """
    rows = rows.reset_index(drop=True).copy()
    rows["_class"] = _class_key(rows)
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
    perm = torch.randperm(len(candidates), generator=_generator(config.seed, _VALSPLIT)).tolist()
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
        log: Log = _noop,
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
        keys = _class_key(rows)
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
    g = _generator(seed, _SAMPLER, epoch)
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
    g = _generator(config.seed, _AUGMENT, epoch)
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

    On ``device``, batched: horizontal flip (on the uint8 crops), :func:`~maskstudy.preprocess.to_input`,
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


class _Batches(torch.utils.data.Dataset):
    """Batch ``k`` of one rank's share of an epoch plan, as uint8 crops (for a ``DataLoader``)."""

    def __init__(self, dataset: FaceCropDataset, plan: EpochPlan, batches: list[tuple[int, int]]):
        self.dataset, self.plan, self.batches = dataset, plan, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> torch.Tensor:
        lo, hi = self.batches[k]
        return torch.from_numpy(self.dataset.crops(self.plan.order[lo:hi], self.plan.masked[lo:hi]))


# --------------------------------------------------------------------------------------------
# Schedule, validation
# --------------------------------------------------------------------------------------------


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """LR of optimizer step ``step`` (0-based): linear warmup ``base_lr * (step+1) / warmup_steps``,
    then cosine ``0.5 * (1 + cos(pi t))`` or poly ``(1 - t)^2`` decay over the remaining steps."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "poly":
        return base_lr * (1.0 - t) ** 2
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def best_threshold_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Verification accuracy at the best threshold (``score > t`` means same identity), ties respected."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(scores)
    if n == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, lab = scores[order], labels[order]
    tp = np.concatenate([[0], np.cumsum(lab)])  # top-k predicted positive
    fp = np.concatenate([[0], np.cumsum(1 - lab)])
    correct = tp + ((1 - lab).sum() - fp)
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[:-1] > s[1:]  # a split between equal scores is not a threshold
    return float(correct[valid].max() / n)


class _Validation:
    """Masked-unmasked pairs of the held-out identities, with their crops decoded once."""

    def __init__(self, val_rows: pd.DataFrame, data_dir: Path, config: TrainConfig, log: Log):
        self.size = 0
        if val_rows.empty or config.val_pairs < 2:
            return
        keys = (val_rows["dataset"].astype(str) + "/" + val_rows["aligned"].astype(str)).tolist()
        classes = _class_key(val_rows)
        sizes = classes.value_counts().to_numpy()
        pos_cap = int((sizes * (sizes - 1) // 2).sum())
        neg_cap = int((sizes.sum() ** 2 - (sizes ** 2).sum()) // 2)
        n = min(pos_cap, neg_cap, config.val_pairs // 2)
        if n == 0:
            return
        images = pd.DataFrame({"identity": classes.to_numpy(), "image": keys})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pairs = generate_pairs(images, n_folds=1, pairs_per_fold=2 * n, seed=config.seed)
        pairs = scenario_pairs(pairs, "masked_unmasked", seed=config.seed)
        lookup = {}
        for i, key in enumerate(keys):
            lookup[key] = (i, False)
            lookup[masked_name(key)] = (i, True)
        ends = [lookup[x] for x in pairs["a"]] + [lookup[x] for x in pairs["b"]]
        unique = sorted(set(ends))
        position = {e: k for k, e in enumerate(unique)}
        self.a = np.array([position[lookup[x]] for x in pairs["a"]])
        self.b = np.array([position[lookup[x]] for x in pairs["b"]])
        self.labels = pairs["label"].to_numpy()
        root = data_dir
        paths = [root / val_rows["dataset"].iat[i] / "aligned" / val_rows["masked" if m else "aligned"].iat[i]
                 for i, m in unique]
        self.crops = load_crops(paths, CROP_SIZE)
        self.size = len(self.labels)
        log(f"train: validation on {self.size} masked-unmasked pairs of {classes.nunique()} held-out identities "
            f"({len(unique)} crops)")

    @torch.no_grad()
    def accuracy(self, backbone: nn.Module, input_size: int, device: torch.device, autocast, channels_last: bool,
                 batch_size: int) -> float:
        if self.size == 0:
            return float("nan")
        was_training = backbone.training
        backbone.eval()
        embeddings = []
        try:
            for lo in range(0, len(self.crops), batch_size):
                x = to_input(self.crops[lo:lo + batch_size], input_size, device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast():
                    embeddings.append(F.normalize(backbone(x).float(), dim=1).cpu())
        finally:
            backbone.train(was_training)
        emb = torch.cat(embeddings).numpy()
        scores = (emb[self.a] * emb[self.b]).sum(axis=1)
        return best_threshold_accuracy(scores, self.labels)


# --------------------------------------------------------------------------------------------
# Runtime: device, distributed, checkpoints
# --------------------------------------------------------------------------------------------


@dataclass
class _Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owns_process_group: bool = False
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    num_workers: int = 0
    deterministic: bool = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def _runtime(config: TrainConfig) -> _Runtime:
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={config.device!r} but CUDA is not available")
        if world_size > 1 or device.index is None:
            device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    owns = False
    if world_size > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            owns = True
        rank, world_size = dist.get_rank(), dist.get_world_size()
    cuda = device.type == "cuda"
    amp = config.amp
    if amp == "auto":
        amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "none"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    if amp_dtype is torch.float16 and not cuda:
        raise ValueError("amp='fp16' needs CUDA; use 'bf16' or 'none' on the CPU")
    channels_last = cuda if config.channels_last == "auto" else bool(config.channels_last)
    if config.num_workers == "auto":
        workers = max(4, min(8, (os.cpu_count() or 4) // max(1, local_world_size))) if cuda else 0
    else:
        workers = int(config.num_workers)
    deterministic = (not cuda) if config.deterministic == "auto" else bool(config.deterministic)
    return _Runtime(device, rank, world_size, local_rank, local_world_size, owns, amp_dtype, channels_last,
                    workers, deterministic)


def _set_deterministic(mode: bool, warn_only: bool, inductor: bool = False) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=...)``. Unless Inductor is in use (``compile``)
    or already imported, the same global flag is set without the public function's import of
    ``torch._inductor`` (about 2 s per process)."""
    if inductor or "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers (``weights_only`` loading rejects numpy objects)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _checkpoint_config(checkpoint: Mapping[str, Any]) -> TrainConfig:
    values = {k: v for k, v in checkpoint["config"].items() if k not in ("num_classes", "class_names")}
    return TrainConfig.from_dict(values)


def load_backbone(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The trained backbone of a checkpoint (eval mode, on ``map_location``) and its :class:`TrainConfig`."""
    from .evaluate import backbone_from_checkpoint

    checkpoint = load_checkpoint(path, map_location)
    config = _checkpoint_config(checkpoint)
    model = backbone_from_checkpoint(checkpoint, path)
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    return model.to(device).eval(), config


def _check_resumable(checkpoint: Mapping[str, Any], config: TrainConfig, class_names: list[str], path: Path) -> None:
    old = _checkpoint_config(checkpoint).recipe()
    new = config.recipe()
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    hint = ("Use another out_dir, or resume=False (--no-resume) to start over and overwrite it. Only "
            f"{', '.join(sorted(RUNTIME_KEYS))} may change on resume.")
    if diff:
        raise ConfigMismatchError(f"cannot resume from {path}: the config differs from the checkpoint's "
                                  f"({'; '.join(diff)}). {hint}")
    if list(checkpoint["config"].get("class_names", [])) != list(class_names):
        raise ConfigMismatchError(f"cannot resume from {path}: the training identities differ from the "
                                  f"checkpoint's (different train_csv or data). {hint}")


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train(
    config: TrainConfig | Mapping[str, Any],
    train_csv: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    resume: bool = True,
    progress: bool = True,
    log: Log | None = print,
) -> TrainResult:
    """Train ``config.backbone`` with the margin head on ``train_csv`` crops under ``data_dir``.

    Writes ``out_dir/config.json``, and after every epoch ``out_dir/log.csv`` (columns
    :data:`LOG_COLUMNS`; ``val_acc`` is the best-threshold accuracy on masked-unmasked pairs of the
    held-out identities, NaN without them) and, every ``checkpoint_every`` epochs and at the end,
    ``out_dir/last.pt``: a dict with ``format`` (:data:`CHECKPOINT_FORMAT`), ``config`` (the
    config's dict plus ``num_classes`` and ``class_names``), ``model`` and ``head`` (state dicts),
    ``optimizer``, ``scheduler`` (``{"step": ...}``; the LR is a function of the step),
    ``scaler`` (``None`` without fp16), ``rng`` (torch, numpy, python and CUDA states as
    tensors/lists), ``epoch`` (epochs completed), ``step`` (optimizer steps), ``history`` (the log
    rows), ``partial`` (``None``, or the progress inside an epoch stopped by ``max_steps``) and
    ``world_size``. Everything loads with ``torch.load(..., weights_only=True)``.

    With ``resume`` and an existing ``last.pt`` of the same recipe (all settings but
    :data:`RUNTIME_KEYS`) and identities, training continues where it stopped (a finished run
    returns at once); raising ``epochs`` extends the run, the decay then spanning the new total.
    A different recipe raises :class:`ConfigMismatchError`. Under ``torchrun`` (``WORLD_SIZE > 1``)
    every process calls this; rank 0 alone writes files and logs.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    log = log or _noop
    out_dir = Path(out_dir)
    data_dir = Path(data_dir)
    rt = _runtime(config)
    say = log if rt.rank == 0 else _noop
    previous_det = (torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled())
    previous_benchmark = torch.backends.cudnn.benchmark
    previous_threads = torch.get_num_threads()
    try:
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if rt.deterministic:
            _set_deterministic(True, warn_only=True, inductor=config.compile)
        elif rt.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        return _train(config, Path(train_csv), data_dir, out_dir, resume, progress and rt.rank == 0, say, rt)
    finally:
        if rt.deterministic:
            _set_deterministic(*previous_det, inductor=config.compile)
        torch.backends.cudnn.benchmark = previous_benchmark
        if config.num_threads:
            torch.set_num_threads(previous_threads)
        if rt.owns_process_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def train_or_restart(config: TrainConfig | Mapping[str, Any], train_csv: str | os.PathLike,
                     data_dir: str | os.PathLike, out_dir: str | os.PathLike, progress: bool = True,
                     log: Log | None = print) -> TrainResult:
    """:func:`train` for notebooks: resume a run of the same recipe, and start over (saying so) when the recipe
    or the training identities changed since the checkpoint in ``out_dir`` was written."""
    try:
        return train(config, train_csv, data_dir, out_dir, resume=True, progress=progress, log=log)
    except ConfigMismatchError as error:
        (log or _noop)(f"{out_dir}: {error}; training from scratch")
        return train(config, train_csv, data_dir, out_dir, resume=False, progress=progress, log=log)


def _train(config: TrainConfig, train_csv: Path, data_dir: Path, out_dir: Path, resume: bool, progress: bool,
           log: Log, rt: _Runtime) -> TrainResult:
    from tqdm import tqdm

    started = time.perf_counter()
    ckpt_path = out_dir / "last.pt"
    is_main = rt.rank == 0
    if is_main:
        for stale in remove_stale_temp_files(out_dir):  # a kill during torch.save leaves its temp file
            log(f"removed {stale.name}, left by an interrupted checkpoint write")

    train_rows, val_rows = split_identities(_read_rows(train_csv), config, log)
    class_names = sorted(_class_key(train_rows).unique())
    checkpoint = None
    if resume and ckpt_path.is_file():  # checked before the (possibly long) decoding
        checkpoint = load_checkpoint(ckpt_path, map_location="cpu")
        _check_resumable(checkpoint, config, class_names, ckpt_path)
    dataset = FaceCropDataset(train_rows, data_dir, masked_share=config.masked_share,
                              cache_limit_gb=config.cache_limit_gb, copies=rt.local_world_size,
                              class_names=class_names, log=log, progress=progress)
    validation = _Validation(val_rows, data_dir, config, log) if is_main else None

    # Sizes: batch_size per process, whole global batches only (as drop_last).
    n_epoch = len(epoch_order(dataset.labels, config.sampler, config.seed, 0, config.max_per_identity))
    batch = min(config.batch_size, n_epoch // rt.world_size)
    if batch < 2:
        raise ValueError(f"an epoch holds {n_epoch} samples: too few for {rt.world_size} process(es) "
                         "with batches of 2+ (BatchNorm)")
    if batch < config.batch_size:
        log(f"train: an epoch holds only {n_epoch} samples; batch_size {config.batch_size} -> {batch} per process")
    global_batch = batch * rt.world_size
    steps_per_epoch = n_epoch // global_batch
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))

    # Model, head, optimizer (seeded init: the same on every rank).
    _seed_everything(derive_seed(config.seed, _INIT))
    backbone = build_backbone(config.backbone, width=config.width, input_size=config.input_size,
                              embedding_size=config.embedding_size, dropout=config.dropout,
                              **config.backbone_kwargs)
    head = build_margin_head(config.margin, config.embedding_size, dataset.num_classes, s=config.scale)
    if checkpoint is not None:
        backbone.load_state_dict(checkpoint["model"])
        head.load_state_dict(checkpoint["head"])
    backbone.to(rt.device)
    head.to(rt.device)
    if rt.channels_last:
        backbone.to(memory_format=torch.channels_last)
    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad]}, {"params": list(head.parameters())}]
    if config.optimizer == "adamw":  # transformers trained from scratch (Dosovitskiy et al. 2021 used Adam)
        optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    use_scaler = rt.amp_dtype is torch.float16
    scaler = torch.amp.GradScaler(rt.device.type, enabled=use_scaler)

    epoch, step, partial = 0, 0, None
    history: list[dict[str, Any]] = []
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if use_scaler and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        epoch, step = int(checkpoint["epoch"]), int(checkpoint["step"])
        history = [dict(row) for row in checkpoint["history"]]
        partial = checkpoint.get("partial")
        if partial is not None and int(checkpoint.get("world_size", 1)) != rt.world_size:
            raise ConfigMismatchError(
                f"{ckpt_path} stopped inside an epoch with {checkpoint.get('world_size')} processes; resume it "
                f"with as many (now {rt.world_size}), or use another out_dir")
        if partial is not None:
            history = history[:-1]  # the partial epoch's row is replaced when the epoch completes
        if rt.rank == 0:
            _set_rng_state(checkpoint["rng"])
        else:  # the checkpoint holds rank 0's states; the others continue from a fresh seeded stream
            _seed_everything(derive_seed(config.seed, _TRAIN_RNG, rt.rank, step))
        done = epoch >= config.epochs or (config.max_steps is not None and step >= config.max_steps)
        log(f"train: resuming {ckpt_path} at epoch {epoch + 1}, step {step}" + (" (already done)" if done else ""))
        if done:
            return TrainResult(pd.DataFrame([dict(r) for r in checkpoint["history"]], columns=LOG_COLUMNS),
                               ckpt_path, 0.0, float("nan"), out_dir)
    else:  # per rank: dropout masks differ between processes
        _seed_everything(derive_seed(config.seed, _TRAIN_RNG, rt.rank))

    if is_main:
        write_json(out_dir / "config.json", config.to_dict())
    log(f"train: {config.backbone} width {config.width} input {config.input_size}, {config.margin} s={config.scale}, "
        f"{dataset.num_classes} identities, {steps_per_epoch} steps/epoch of {global_batch} "
        f"({rt.world_size} x {batch}), {config.epochs} epochs on {rt.device}"
        + (f", amp {str(rt.amp_dtype).replace('torch.', '')}" if rt.amp_dtype else "")
        + (", channels_last" if rt.channels_last else "")
        + (f", max_steps {config.max_steps}" if config.max_steps else ""))

    raw_backbone, raw_head = backbone, head
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [rt.device.index] if rt.device.type == "cuda" else None
        backbone = DDP(backbone, device_ids=ids)
        head = DDP(head, device_ids=ids)
    if config.compile:
        backbone = torch.compile(backbone)
    clip_params = [p for p in raw_backbone.parameters() if p.requires_grad]
    pin = rt.device.type == "cuda"

    trained_images, trained_seconds = 0, 0.0
    stopped = False
    lr = learning_rate(max(0, step - 1), config.lr, warmup_steps, total_steps, config.schedule)
    backbone.train()
    head.train()
    while epoch < config.epochs and not stopped:
        plan = epoch_plan(dataset, config, epoch)
        first = 0
        sums = torch.zeros(3, dtype=torch.float64, device=rt.device)  # loss * n, correct, seen (this rank)
        seconds = 0.0
        if partial is not None:
            first = int(partial["batch"])
            if rt.rank == 0:  # stored as global sums: rank 0 carries them, the others start from zero
                sums = torch.tensor([partial["loss_sum"], partial["correct"], partial["seen"]],
                                    dtype=torch.float64, device=rt.device)
            seconds = float(partial["seconds"])
            partial = None
        batches = [(k * global_batch + rt.rank * batch, k * global_batch + (rt.rank + 1) * batch)
                   for k in range(first, steps_per_epoch)]
        if config.max_steps is not None:
            batches = batches[:max(0, config.max_steps - step)]
        source = _Batches(dataset, plan, batches)
        if rt.num_workers > 0 and not dataset.cached:
            loader: Iterable[torch.Tensor] = torch.utils.data.DataLoader(
                source, batch_size=None, shuffle=False, num_workers=rt.num_workers, pin_memory=pin,
                prefetch_factor=4, persistent_workers=False)
        else:
            loader = (source[k] for k in range(len(source)))
        t0 = time.perf_counter()
        images = 0
        bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step",
                   disable=not progress, leave=True, dynamic_ncols=True)
        k = first
        for k, ((lo, hi), crops) in enumerate(zip(batches, loader), start=first):
            lr = learning_rate(step, config.lr, warmup_steps, total_steps, config.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            piece = plan.slice(lo, hi)
            labels = torch.from_numpy(dataset.labels[piece.order]).to(rt.device, non_blocking=True)
            x = augment_batch(
                crops.pin_memory() if pin and not crops.is_pinned() else crops, config.input_size,
                flip=torch.from_numpy(piece.flip), brightness=torch.from_numpy(piece.brightness),
                contrast=torch.from_numpy(piece.contrast), device=rt.device)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with rt.autocast():
                embeddings = backbone(x)
            loss, _ = head(embeddings.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(clip_params, float(config.grad_clip))
            scaler.step(optimizer)
            scaler.update()
            step += 1
            n = len(piece.order)
            with torch.no_grad():
                predicted = raw_head.cosine(embeddings.detach()).argmax(dim=1)
                sums += torch.stack([loss.detach().double() * n, (predicted == labels).sum().double(),
                                     torch.tensor(float(n), dtype=torch.float64, device=rt.device)])
            images += n * rt.world_size
            bar.update(1)
            if progress and (k % 10 == 0 or k == steps_per_epoch - 1):
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{(sums[0] / sums[2]).item():.3f}", lr=f"{lr:.4g}",
                                img_s=f"{images / max(elapsed, 1e-9):.0f}", refresh=False)
        bar.close()
        done_batches = first + len(batches)
        epoch_complete = done_batches >= steps_per_epoch
        stopped = not epoch_complete
        if rt.distributed:
            import torch.distributed as dist

            dist.all_reduce(sums)

        loss_sum, correct, seen = (float(v) for v in sums.cpu())
        elapsed = time.perf_counter() - t0
        trained_images += images
        trained_seconds += elapsed
        seconds += elapsed
        if seen and not math.isfinite(loss_sum):
            raise FloatingPointError(f"the training loss is {loss_sum / seen} at epoch {epoch + 1} (step {step}); "
                                     "try a lower lr or margin scale")
        val_acc = float("nan")
        if validation is not None and validation.size:
            val_acc = validation.accuracy(raw_backbone, config.input_size, rt.device, rt.autocast, rt.channels_last,
                                          max(batch, 64))
        history.append({
            "epoch": epoch + 1, "step": step,
            "loss": loss_sum / seen if seen else float("nan"),
            "train_acc": correct / seen if seen else float("nan"),
            "lr": float(lr), "val_acc": val_acc,
            "images_per_s": images / elapsed if elapsed > 0 else float("nan"),
            "seconds": seconds,
        })
        history = [{k: _plain(v) for k, v in row.items()} for row in history]
        row = history[-1]
        log(f"epoch {row['epoch']}/{config.epochs}" + ("" if epoch_complete else f" (stopped at step {step})")
            + f": loss {row['loss']:.4f}, train_acc {row['train_acc']:.3f}, val_acc {row['val_acc']:.3f}, "
            f"lr {row['lr']:.4g}, {row['images_per_s']:.0f} img/s, {row['seconds']:.1f} s")
        if epoch_complete:
            epoch += 1
        if config.max_steps is not None and step >= config.max_steps:
            stopped = True
        if is_main:
            write_csv(out_dir / "log.csv", pd.DataFrame(history, columns=LOG_COLUMNS))
            if stopped or epoch % config.checkpoint_every == 0 or epoch >= config.epochs:
                part = None if epoch_complete else {"batch": done_batches, "loss_sum": loss_sum, "correct": correct,
                                                    "seen": seen, "seconds": seconds}
                _save_checkpoint(ckpt_path, config, dataset, raw_backbone, raw_head, optimizer, scaler, use_scaler,
                                 epoch, step, history, part, rt.world_size)

    seconds = time.perf_counter() - started
    log(f"train: done in {seconds:.1f} s, {trained_images / max(trained_seconds, 1e-9):.0f} img/s -> {ckpt_path}")
    return TrainResult(pd.DataFrame(history, columns=LOG_COLUMNS), ckpt_path, seconds,
                       trained_images / trained_seconds if trained_seconds > 0 else float("nan"), out_dir)


def _save_checkpoint(path: Path, config: TrainConfig, dataset: FaceCropDataset, backbone: nn.Module, head: nn.Module,
                     optimizer: torch.optim.Optimizer, scaler, use_scaler: bool, epoch: int, step: int,
                     history: list[dict], partial: dict | None, world_size: int) -> None:
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "config": {**config.to_dict(), "num_classes": dataset.num_classes, "class_names": list(dataset.class_names)},
        "model": backbone.state_dict(),
        "head": head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"step": step},
        "scaler": scaler.state_dict() if use_scaler else None,
        "rng": _rng_state(),
        "epoch": epoch,
        "step": step,
        "history": [dict(row) for row in history],
        "partial": partial,
        "world_size": world_size,
        "torch_version": str(torch.__version__),
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


# --------------------------------------------------------------------------------------------
# Command line (torchrun entry point)
# --------------------------------------------------------------------------------------------


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


if __name__ == "__main__":
    sys.exit(main())
