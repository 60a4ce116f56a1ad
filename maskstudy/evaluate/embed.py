"""Embedding aligned crops: the one function that runs a backbone on crops, for training, evaluation and Grad-CAM.

All model input goes through :func:`maskstudy.faces.preprocess.load_crops` and :func:`maskstudy.faces.preprocess.to_input`,
exactly as in training. What differs between the callers is explicit in the arguments of
:func:`compute_embeddings`:

* training validation: no flip, the run's autocast dtype, ``channels_last`` when the run uses it, L2-normalised;
* evaluation (:func:`embed_crops`): flip fusion, bf16 autocast on CUDA only, BatchNorm folded into the layers
  before it (:func:`~maskstudy.models.fold_batchnorm`), L2-normalised;
* Grad-CAM references: fp32 (autocast off), no flip, raw (un-normalised) embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..faces.align import CROP_SIZE
from ..faces.preprocess import DecodedCrops, check_crops, load_crops, to_input
from ..models import eval_mode, fold_batchnorm, model_device

#: Device type -> whether evaluation (:func:`embed_crops`) feeds channels-last batches: on the CPU they measured
#: 1.2-1.6x faster for every backbone here (oneDNN's convolutions work in NHWC; ``bench/bench_backbones.py``).
#: Not measured on GPUs, which keep the contiguous format.
EVAL_CHANNELS_LAST = {"cpu": True}

#: Input pixels per forward pass on the CPU (64 crops of 56 px): a batch read from disk is run through the model in
#: chunks of this size. Measured in fresh processes (2 cores, IR-18 at width 0.25 and 56 px; dlib's ResNet at 150 px):
#: 48-96 crops of 56 px and 8-24 of 150 px run at the same best rate, 128 of 56 px at 0.6 of it and 512 (256 crops
#: with their flips) at 0.55-0.65; the cpu study's evaluation went from 91 to 55 s per model with this and
#: :class:`~maskstudy.faces.preprocess.DecodedCrops`. (Inside bench_backbones.py the gap closes.) GPUs take whole
#: batches.
CPU_FORWARD_PIXELS = 64 * 56 * 56


def forward_chunk(device: torch.device, input_size: int) -> int | None:
    """Images per forward pass on ``device`` at ``input_size`` (:data:`CPU_FORWARD_PIXELS`); None: the whole batch."""
    return max(1, CPU_FORWARD_PIXELS // (input_size * input_size)) if device.type == "cpu" else None


def progress_bar(iterable, total: int, enabled: bool, desc: str):
    """``iterable`` wrapped in a tqdm bar of ``total`` batches when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False)


def compute_embeddings(
    model: nn.Module,
    crops: np.ndarray | torch.Tensor | Sequence[str | os.PathLike],
    input_size: int,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    flip: bool = False,
    normalise: bool = True,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: bool = False,
    decoded_crops: DecodedCrops | None = None,
    forward_batch: int | None = None,
) -> torch.Tensor:
    """Embeddings of aligned face crops: ``(N, D)`` float32 on the CPU.

    ``crops``: uint8 RGB crops ``(N, H, W, 3)`` (array or tensor), or crop files (read ``batch_size`` at a
    time with :func:`~maskstudy.faces.preprocess.load_crops` at :data:`~maskstudy.faces.preprocess.CROP_SIZE`). Each batch
    becomes model input through :func:`~maskstudy.faces.preprocess.to_input` (resized to ``input_size`` when needed).

    * ``flip``: the embedding is ``f(x) + f(hflip(x))`` (one forward pass over both), the flip fusion of
      ArcFace's evaluation (Deng et al., CVPR 2019); else ``f(x)``.
    * ``normalise``: rows L2-normalised; else the raw output.
    * ``amp_dtype``: autocast to this dtype (e.g. ``torch.bfloat16``); ``None`` runs in fp32 with autocast
      off (also inside a caller's autocast block). The output is cast to fp32 before the flip sum.
    * ``channels_last``: the input batch in channels-last memory format (:data:`EVAL_CHANNELS_LAST`).

    ``decoded_crops``: crop files are read through this in-memory store (e.g. one shared by every model a run
    evaluates). ``batch_size`` crops are read at a time; the model sees them in chunks of ``forward_batch`` images
    (default :func:`forward_chunk`: on the CPU, small chunks; the rows do not depend on how the batch is cut, up to
    float rounding).

    The model runs in eval mode without gradients (its training flag is restored afterwards). ``device``
    defaults to the model's device; a different device moves the model.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from_paths = not isinstance(crops, (np.ndarray, torch.Tensor))
    crops = [str(p) for p in crops] if from_paths else check_crops(crops)
    if device is None:
        device = model_device(model)
    else:
        device = torch.device(device)
        model.to(device)
    if len(crops) == 0:
        return torch.zeros((0, int(getattr(model, "embedding_size", 0))), dtype=torch.float32)
    precision = torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    chunk_size = forward_batch or forward_chunk(device, input_size) or 2 * batch_size
    outputs = []
    starts = range(0, len(crops), batch_size)
    with eval_mode(model), torch.no_grad(), precision:
        for start in progress_bar(starts, len(starts), progress, "embedding"):
            chunk = crops[start:start + batch_size]
            batch = load_crops(chunk, CROP_SIZE, decoded_crops) if from_paths else chunk
            x = to_input(batch, input_size, device=device)
            n = len(x)
            if flip:
                x = torch.cat([x, x.flip(3)])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out = torch.cat([model(x[i:i + chunk_size]).float() for i in range(0, len(x), chunk_size)])
            if flip:
                out = out[:n] + out[n:]
            if normalise:
                out = nn.functional.normalize(out, dim=1)
            outputs.append(out.cpu())
    return torch.cat(outputs)


def embed_crops(model: nn.Module, crops: np.ndarray | torch.Tensor | Sequence[str | os.PathLike], input_size: int,
                batch_size: int = 256, device: torch.device | str | None = None, flip: bool = True,
                progress: bool = False, decoded_crops: DecodedCrops | None = None) -> np.ndarray:
    """Evaluation embeddings of aligned face crops: (N, D) float32 numpy, each row L2-normalised.

    :func:`compute_embeddings` with flip fusion (``normalise(f(x) + f(hflip(x)))``, Deng et al. 2019; without
    ``flip``, ``normalise(f(x))``), bf16 autocast on CUDA only, the device's memory format
    (:data:`EVAL_CHANNELS_LAST`), on a copy of
    the model with its BatchNorms folded into the layers before them (:func:`~maskstudy.models.fold_batchnorm`:
    the same embeddings up to float rounding, measured within 1e-6, and faster). ``crops`` is a uint8 array
    (N, H, W, 3) of RGB crops or a list of crop files. ``device`` defaults to the model's device; a different
    device moves the model. ``decoded_crops``: see :func:`compute_embeddings`.
    """
    resolved = model_device(model) if device is None else torch.device(device)
    if device is not None:
        model.to(resolved)  # as compute_embeddings does, before the copy
    embeddings = compute_embeddings(fold_batchnorm(model), crops, input_size, batch_size=batch_size, device=device,
                                    flip=flip, amp_dtype=torch.bfloat16 if resolved.type == "cuda" else None,
                                    channels_last=EVAL_CHANNELS_LAST.get(resolved.type, False), progress=progress,
                                    decoded_crops=decoded_crops)
    return embeddings.numpy().astype(np.float32, copy=False)


def _check_files(root: Path, rels: Iterable[str]) -> None:
    missing = [r for r in rels if not (root / r).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} image(s) missing under {root}: {shown}")


def embed_paths(
    model: nn.Module,
    input_size: int,
    rels: Iterable[str],
    aligned_root: str | os.PathLike,
    cache: dict | None = None,
    **embed_kw,
) -> dict[str, np.ndarray]:
    """Embeddings of aligned crops ``aligned_root/rel`` keyed by ``rel``, each unique crop embedded once
    (:func:`embed_crops` with ``embed_kw``); ``cache`` (rel -> embedding, for one model and one set of options)
    is filled and reused."""
    root = Path(aligned_root)
    cache = {} if cache is None else cache
    todo = [r for r in dict.fromkeys(str(r) for r in rels) if r not in cache]
    if todo:
        _check_files(root, todo)
        embeddings = embed_crops(model, [root / r for r in todo], input_size, **embed_kw)
        cache.update(zip(todo, embeddings))
    return cache
