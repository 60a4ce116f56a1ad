"""Training checkpoints: the ``maskstudy-checkpoint-v1`` format, written and read in this one module.

A checkpoint (``<out_dir>/last.pt`` of :func:`maskstudy.train.train`) is a dict with ``format``
(:data:`CHECKPOINT_FORMAT`), ``config`` (the :class:`~maskstudy.train.TrainConfig` dict plus ``num_classes``
and ``class_names``), ``model`` and ``head`` (state dicts), ``optimizer``, ``scheduler`` (``{"step": ...}``;
the LR is a function of the step), ``scaler`` (``None`` without fp16), ``rng`` (torch, numpy, python and CUDA
states as tensors/lists, :func:`maskstudy.core.seeding.rng_state`), ``epoch`` (epochs completed), ``step``
(optimizer steps), ``history`` (the log rows), ``partial`` (``None``, or the progress inside an epoch stopped
by ``max_steps``), ``world_size`` and ``torch_version``; a run with distillation adds ``distill`` (the training-only
projection and its teacher's fingerprint, :mod:`maskstudy.train.distill`), which evaluation ignores. It is written atomically with ``torch.save``
(:func:`save_checkpoint`) and read with ``torch.load(..., weights_only=True)`` only (:func:`load_checkpoint`),
so loading never runs code from the file.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.seeding import rng_state
from ..core.storage import atomic_path
from ..faces.align import CROP_SIZE

#: The ``format`` field of a checkpoint written by ``maskstudy.train``.
CHECKPOINT_FORMAT = "maskstudy-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: corrupt, not a maskstudy checkpoint, or not loadable safely."""


def save_checkpoint(path: str | os.PathLike, *, config: Mapping[str, Any], class_names: Iterable[str],
                    model: nn.Module, head: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler_state: Mapping[str, Any] | None, epoch: int, step: int, history: Iterable[Mapping],
                    partial: Mapping[str, Any] | None, world_size: int,
                    distill: Mapping[str, Any] | None = None) -> None:
    """Write a ``maskstudy-checkpoint-v1`` file atomically (see the module docstring for its fields); the RNG
    states are this process's global ones at the time of the call."""
    class_names = list(class_names)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "config": {**config, "num_classes": len(class_names), "class_names": class_names},
        "model": model.state_dict(),
        "head": head.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"step": step},
        "scaler": scaler_state,
        "rng": rng_state(),
        "epoch": epoch,
        "step": step,
        "history": [dict(row) for row in history],
        "partial": partial,
        "world_size": world_size,
        "torch_version": str(torch.__version__),
    }
    if distill is not None:
        checkpoint["distill"] = dict(distill)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load and validate a ``maskstudy-checkpoint-v1`` file with ``torch.load(..., weights_only=True)``.

    Only tensors and plain Python containers are unpickled: a file holding any other object is refused
    (:class:`CheckpointError`), so loading never runs code from the file. A missing file raises
    ``FileNotFoundError``; a corrupt file, another format or missing fields raise :class:`CheckpointError`.
    """
    path = Path(path)
    checkpoint = read_torch_file(path, map_location)
    check_fields(checkpoint, path)
    return checkpoint


def read_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """What ``torch.load(path, weights_only=True)`` reads, with one clear error for every way it fails: a missing
    file raises ``FileNotFoundError``, a corrupt file or one holding other objects than tensors and plain
    containers :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}" if not path.exists() else
                                f"checkpoint {path} is not a file")
    is_zip = zipfile.is_zipfile(path)  # torch.save writes zip archives (since torch 1.6)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not is_zip:
            raise CheckpointError(f"cannot load checkpoint {path}: corrupt or not a torch file "
                                  f"(not a torch.save zip archive)") from error
        detail = next((line.strip() for line in str(error).splitlines() if "Unsupported" in line), "")
        detail = detail.split(". Please use")[0].replace("WeightsUnpickler error: ", "")
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain containers, which "
            f"weights_only=True loading rejects" + (f" ({detail})" if detail else "")
        ) from error
    except Exception as error:  # zip/EOF errors of a damaged or truncated file
        raise CheckpointError(f"cannot load checkpoint {path}: corrupt or not a torch file "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from error
    return checkpoint


def check_fields(checkpoint: Any, path: Path) -> None:
    """Refuse (:class:`CheckpointError`) anything but a ``maskstudy-checkpoint-v1`` dict with its fields."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a maskstudy checkpoint: expected a dict, got {type(checkpoint).__name__}")
    found = checkpoint.get("format")
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has format {found!r}, expected {CHECKPOINT_FORMAT!r}")
    for key, kind in (("config", dict), ("model", dict)):
        if not isinstance(checkpoint.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint field {key!r} is missing or not a {kind.__name__}")
    if "backbone" not in checkpoint["config"]:
        raise CheckpointError(f"{path}: checkpoint config has no 'backbone' name")


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) key prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def backbone_from_checkpoint(checkpoint: Mapping, path: str | os.PathLike = "checkpoint") -> nn.Module:
    """Rebuild the backbone named in ``checkpoint["config"]`` and load its weights (strictly)."""
    from . import build_backbone

    config = checkpoint["config"]
    model = build_backbone(
        config["backbone"],
        width=float(config.get("width", 1.0)),
        input_size=int(config.get("input_size", CROP_SIZE)),
        embedding_size=int(config.get("embedding_size", 512)),
        **dict(config.get("backbone_kwargs") or {}),
    )
    try:
        model.load_state_dict(_strip_prefixes(checkpoint["model"]), strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the weights do not fit backbone {config['backbone']!r} with "
                              f"width={config.get('width')}, input_size={config.get('input_size')}, "
                              f"embedding_size={config.get('embedding_size')}: {error}") from error
    return model
