"""What the attention blocks themselves do on a set of crops: how strongly each one changes its input, and, for
CBAM, its own spatial map (Woo et al., ECCV 2018: ``Ms = sigmoid(conv([mean_c; max_c]))``), read directly instead
of through Grad-CAM.

* **Strength** of a block: ``|A(x) - x| / |x|`` per image (norms over the whole map), where ``x`` enters the block's
  attention and ``A(x)`` leaves it, gate included when the attention sits behind one
  (:class:`maskstudy.models.dlib_resnet.GatedAttention`). 0 means the block does nothing; an SE block whose channel
  gates are all ``g`` has strength ``1 - g``.
* **Spatial map** of a CBAM block: ``Ms`` on the block's own grid, and its mean weight on the eye band and on the mask
  region of the aligned crop (:func:`spatial_region_weights`): each cell sits at the centre of its receptive field
  (the backbone's ``attention_crop_centres``), and the map is brought to the crop by linear interpolation between
  the centres (:func:`maskstudy.explain.geometry.grid_to_crop`), so a region's weight is the mean of the interpolated
  map over the region's pixels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..faces.preprocess import check_crops, to_input
from ..models.attention import CBAM, SEModule
from ..models.registry import model_device
from .geometry import eye_band_mask, interpolation_matrix, mask_region

#: ``layer2.0.attn`` (IR-ResNet: stage 2, block 0) or ``stages.3.1.attention`` (dlib's ResNet: stage 3, block 1).
_BLOCK_NAME = re.compile(r"(?:layer|stages\.)(\d+)\.(\d+)\.")


def block_label(name: str) -> str:
    """``"layer2.1.attn"`` / ``"stages.3.1.attention"`` -> ``"stage 2 block 1"`` / ``"stage 3 block 1"``."""
    found = _BLOCK_NAME.search(name + ".")
    return f"stage {found[1]} block {found[2]}" if found else name


@dataclass
class AttentionBlock:
    """One attention module of a backbone: its name, kind (``se`` / ``cbam``), stage and block index, the module
    whose input and output are compared (the gate wrapper when there is one) and the SE / CBAM module itself."""

    name: str
    kind: str
    stage: int
    block: int
    outer: nn.Module
    attention: nn.Module

    @property
    def gate(self) -> float:
        """The scalar gate in front of the attention (NaN when it acts without one)."""
        gate = getattr(self.outer, "gate", None)
        return float(gate.detach()) if isinstance(gate, torch.Tensor) else float("nan")


def attention_blocks(model: nn.Module) -> list[AttentionBlock]:
    """The SE and CBAM modules of ``model``, input side first (empty for a network without attention)."""
    modules = dict(model.named_modules())
    blocks = []
    for name, module in modules.items():
        if not isinstance(module, (SEModule, CBAM)):
            continue
        parent_name = name.rpartition(".")[0]
        parent = modules.get(parent_name)
        outer, outer_name = (parent, parent_name) if isinstance(getattr(parent, "gate", None), torch.Tensor) \
            else (module, name)
        found = _BLOCK_NAME.search(outer_name + ".")
        if found is None:
            raise ValueError(f"attention module {name!r} is not inside a stage's block ('layerK.I.' or 'stages.K.I.')")
        blocks.append(AttentionBlock(outer_name, "cbam" if isinstance(module, CBAM) else "se", int(found[1]),
                                     int(found[2]), outer, module))
    return blocks


@dataclass
class AttentionReadout:
    """What :func:`read_attention` measured: ``blocks`` (one row per block: block, kind, stage, index, gate, grid
    rows and columns), per block the per-image ``strength`` ``(N,)`` and, for CBAM blocks, the ``spatial`` maps
    ``(N, rows, columns)``."""

    blocks: pd.DataFrame
    strength: dict[str, np.ndarray] = field(default_factory=dict)
    spatial: dict[str, np.ndarray] = field(default_factory=dict)


class AttentionRecorder:
    """Records what every attention block of ``model`` does in the forward passes run inside ``with`` (hooks on the
    blocks, removed on exit, also on errors); :meth:`readout` gives the result. For forwards other than a plain
    call, e.g. the pretrained track's upper stages on cached features."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.blocks = attention_blocks(model)
        self._strength: dict[str, list[np.ndarray]] = {b.name: [] for b in self.blocks}
        self._spatial: dict[str, list[np.ndarray]] = {b.name: [] for b in self.blocks if b.kind == "cbam"}
        self._handles: list = []

    def _hook(self, block: AttentionBlock):
        def record(_module, inputs, output):
            with torch.no_grad():
                x = inputs[0].float()
                change = (output.float() - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)
                self._strength[block.name].append(change.cpu().numpy())
                if block.kind == "cbam":
                    cbam = block.attention
                    gated = x * cbam.channel_gate(x)[:, :, None, None]
                    self._spatial[block.name].append(cbam.spatial_gate(gated)[:, 0].float().cpu().numpy())
        return record

    def __enter__(self) -> AttentionRecorder:
        self._handles = [b.outer.register_forward_hook(self._hook(b)) for b in self.blocks]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def readout(self) -> AttentionReadout:
        rows = []
        for b in self.blocks:
            parts = self._spatial.get(b.name)
            grid = parts[0].shape[1:] if parts else (np.nan, np.nan)
            rows.append({"block": b.name, "kind": b.kind, "stage": b.stage, "index": b.block, "gate": b.gate,
                         "grid_rows": grid[0], "grid_columns": grid[1]})
        return AttentionReadout(
            pd.DataFrame(rows, columns=["block", "kind", "stage", "index", "gate", "grid_rows", "grid_columns"]),
            {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in self._strength.items()},
            {name: np.concatenate(parts) for name, parts in self._spatial.items() if parts})


@torch.no_grad()
def read_attention(model: nn.Module, crops, input_size: int, batch_size: int = 64) -> AttentionReadout:
    """Strength of every attention block of ``model`` and CBAM's spatial maps on ``crops`` (uint8 ``(N, H, W, 3)``
    aligned crops), in eval mode on the model's device; the training flag is restored and the hooks removed, also on
    errors."""
    crops = check_crops(crops)
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with AttentionRecorder(model) as recorder:
            for start in range(0, len(crops), batch_size):
                model(to_input(crops[start:start + batch_size], input_size, device=device))
    finally:
        model.train(was_training)
    return recorder.readout()


def region_weight_matrices(centres: tuple[np.ndarray, np.ndarray], crop_size: int = 112) -> dict[str, np.ndarray]:
    """``{"eye": Q, "mask": Q}``: ``(rows, columns)`` weights such that ``(Q * map).sum()`` is the mean over the
    region's pixels of the map interpolated to the crop between the cell ``centres`` (crop pixels); each ``Q`` sums
    to 1."""
    rows, columns = (np.asarray(c, dtype=np.float64) for c in centres)
    row_weights, column_weights = interpolation_matrix(rows, crop_size), interpolation_matrix(columns, crop_size)
    out = {}
    for name, region in (("eye", eye_band_mask(crop_size)), ("mask", mask_region(crop_size))):
        out[name] = row_weights.T @ region.astype(np.float64) @ column_weights / region.sum()
    return out


def spatial_region_weights(maps, centres: tuple[np.ndarray, np.ndarray], crop_size: int = 112) -> pd.DataFrame:
    """Per map (``(N, rows, columns)`` spatial attention on a block's grid), its mean weight on the eye band and on
    the mask region (columns ``eye_weight``, ``mask_weight``; :func:`region_weight_matrices`)."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (N, rows, columns), got shape {maps.shape}")
    weights = region_weight_matrices(centres, crop_size)
    if weights["eye"].shape != maps.shape[1:]:
        raise ValueError(f"maps of grid {maps.shape[1:]} do not match {weights['eye'].shape} cell centres")
    return pd.DataFrame({"eye_weight": np.einsum("nkl,kl->n", maps, weights["eye"]),
                         "mask_weight": np.einsum("nkl,kl->n", maps, weights["mask"])})


def block_centres(model: nn.Module, block: AttentionBlock, grid: tuple[int, int],
                  crop_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """(row centres, column centres) in crop pixels of the map ``block`` sees, from the backbone's
    ``attention_crop_centres(stage, block, grid, crop_size)``."""
    locate = getattr(model, "attention_crop_centres", None)
    if not callable(locate):
        raise ValueError(f"{type(model).__name__} does not say where its attention maps' cells lie "
                         "(no attention_crop_centres)")
    return locate(block.stage, block.block, tuple(int(g) for g in grid), crop_size)
