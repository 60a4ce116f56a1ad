"""Model input: aligned uint8 RGB crops -> normalised float tensors, the same for training and evaluation."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from .align import CROP_SIZE

#: Pixel normalisation of arcface_torch: (x / 255 - 0.5) / 0.5, i.e. to [-1, 1].
MEAN, STD = 0.5, 0.5


def to_input(crops: np.ndarray | torch.Tensor, input_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(N, H, W, 3) uint8 crops -> (N, 3, input_size, input_size) float32 in [-1, 1], resized (bilinear,
    antialiased) when the crop size differs from ``input_size``."""
    tensor = torch.as_tensor(crops)
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) RGB crops, got shape {tuple(tensor.shape)}")
    tensor = tensor.to(device) if device is not None else tensor
    tensor = tensor.permute(0, 3, 1, 2).float().div_(255.0).sub_(MEAN).div_(STD)
    if tensor.shape[-1] != input_size or tensor.shape[-2] != input_size:
        tensor = F.interpolate(tensor, size=(input_size, input_size), mode="bilinear", align_corners=False,
                               antialias=True)
    return tensor.contiguous()


def check_crops(crops: np.ndarray | torch.Tensor, name: str = "crops") -> np.ndarray:
    """``crops`` as a uint8 numpy array ``(N, H, W, 3)`` (one ``(H, W, 3)`` crop becomes ``N = 1``); anything
    else raises ``ValueError`` naming ``name``."""
    array = crops.detach().cpu().numpy() if isinstance(crops, torch.Tensor) else np.asarray(crops)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB crops of shape (N, H, W, 3), got {array.dtype} {array.shape}")
    return array


def load_crops(paths, size: int = CROP_SIZE, cache: DecodedCrops | None = None) -> np.ndarray:
    """Read aligned crops from disk into one (N, size, size, 3) uint8 array (through ``cache`` when given)."""
    if cache is not None:
        return cache.load(paths, size)
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        out[index] = _decode(path, size)
    return out


def _decode(path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as handle:
        image = handle.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(image)


class DecodedCrops:
    """Crop files decoded once and kept in memory, for work that reads the same crops again and again: the
    evaluation of every model of a run reads the same ~38,000 test crops (decoding them took about a fifth of a
    model's evaluation time on 2 cores).

    An entry is used only while its file keeps the size and modification time it was decoded at (a rebuilt crop is
    decoded again). At most ``max_bytes`` of crops are kept (the cpu profile's test crops take 1.4 GB at 112 px);
    crops beyond that are decoded on every read. The arrays returned are the caller's own copies.
    """

    def __init__(self, max_bytes: int = 2 << 30):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[tuple[str, int], tuple[tuple[int, int], np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, paths, size: int = CROP_SIZE) -> np.ndarray:
        """:func:`load_crops` of ``paths``, each decoded only when not kept from an earlier read."""
        out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
        for index, path in enumerate(paths):
            key, stat = (os.fspath(path), size), os.stat(path)
            version = (stat.st_size, stat.st_mtime_ns)
            entry = self._entries.get(key)
            if entry is not None and entry[0] == version:
                out[index] = entry[1]
                self.hits += 1
                continue
            out[index] = _decode(path, size)
            self.misses += 1
            if entry is not None:
                self.nbytes -= entry[1].nbytes
                del self._entries[key]
            if self.nbytes + out[index].nbytes <= self.max_bytes:
                self._entries[key] = (version, out[index].copy())
                self.nbytes += out[index].nbytes
        return out
