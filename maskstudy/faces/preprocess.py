"""Model input: aligned uint8 RGB crops -> normalised float tensors, the same for training and evaluation."""

from __future__ import annotations

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


def load_crops(paths, size: int = CROP_SIZE) -> np.ndarray:
    """Read aligned crops from disk into one (N, size, size, 3) uint8 array."""
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        with Image.open(path) as handle:
            image = handle.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            out[index] = np.asarray(image)
    return out
