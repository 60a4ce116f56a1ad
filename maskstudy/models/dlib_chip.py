"""dlib's face-chip geometry cut from the kit's aligned crops, so that dlib's network sees the kit's alignment.

dlib's recogniser expects a 150x150 chip cut by its own 5-point shape model (eye corners and nose base, padding
0.25). The kit aligns every photo once, from MTCNN's five landmarks onto the ArcFace 112x112 template
(:mod:`maskstudy.faces.align`): clean photos, masked twins (with the clean photo's landmarks or detected on the masked
photo) and MFR2 alike. :class:`ChipFromCrop` maps such a crop onto dlib's chip geometry with one fixed
similarity, so the pretrained network needs no second alignment and no dlib at run time.

The fit (``bench/fit_dlib_chip_template.py``, 300 LFW photos, the first photo of the first 300 people): each
photo's MTCNN landmarks carried into dlib's own chip of that photo have the mean :data:`CHIP_TEMPLATE` (spread
over photos, RMS: eyes 2.5 and 2.8 px, nose 7.8 px, mouth corners 6.9 px at 150 px: MTCNN's nose and mouth
points are not dlib's). The least-squares similarity from the ArcFace template onto it,
:data:`CROP_TO_CHIP`, has scale 1.504 (a chip pixel is 0.66 crop pixels) and misses the template by 0.71 and
0.77 px at the eyes, 1.86 px at the nose and 2.22 / 2.27 px at the mouth corners (RMS 1.71 px), well inside the
photo-to-photo spread. The chip covers crop columns 5.8 to 105.5 and rows 21.6 to 121.3: its last 14 rows
(below the chin) lie outside the 112-pixel crop and are filled with dlib's mean colour, i.e. zero input.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Side and padding of dlib's face chip (``dlib.get_face_chip``), as its recogniser was trained.
CHIP_SIZE = 150
CHIP_PADDING = 0.25
#: Mean position of the MTCNN landmarks (left eye, right eye, nose, mouth corners) in dlib's 150-pixel chip.
CHIP_TEMPLATE = np.array([[47.8336, 46.0766], [102.0435, 46.0111], [74.7124, 77.7594], [51.0782, 105.4977],
                          [98.5505, 105.4238]])
#: 2x3 similarity from the ArcFace 112x112 crop's pixel coordinates onto the chip's (fitted, module docstring).
CROP_TO_CHIP = np.array([[1.5044, -0.0094, -8.7646], [0.0094, 1.5044, -32.5361]])
#: dlib's mean input colour (its input layer subtracts it): the fill of chip pixels outside the crop.
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
#: Side of the kit's crops this geometry is given for.
CROP_SIDE = 112


def chip_grid(size: int = CHIP_SIZE, matrix: np.ndarray = CROP_TO_CHIP, crop_side: int = CROP_SIDE) -> torch.Tensor:
    """``(1, size, size, 2)`` sampling grid for ``F.grid_sample`` (``align_corners=False``): where each chip pixel
    centre lies in the crop, in the crop's normalised coordinates (so any resolution of the crop works)."""
    linear, shift = matrix[:, :2] * (size / CHIP_SIZE), matrix[:, 2] * (size / CHIP_SIZE)
    inverse = np.linalg.inv(linear)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    chip = np.stack([u.ravel(), v.ravel()], axis=1)
    crop = (chip - shift) @ inverse.T  # pixel-centre coordinates in the 112-pixel crop
    normalised = (2.0 * crop + 1.0) / crop_side - 1.0
    return torch.from_numpy(normalised.reshape(1, size, size, 2)).float()


class ChipFromCrop(nn.Module):
    """Kit crops ``(B, 3, H, W)`` of any resolution -> dlib's chip geometry ``(B, 3, 150, 150)`` (bilinear);
    chip pixels outside the crop take ``fill`` (by default dlib's mean colour on the 0-255 scale)."""

    def __init__(self, fill: tuple[float, float, float] = DLIB_MEAN_RGB):
        super().__init__()
        self.register_buffer("grid", chip_grid(), persistent=False)
        self.register_buffer("fill", torch.tensor(fill, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.grid.to(dtype=x.dtype).expand(x.shape[0], -1, -1, -1)
        # sample x - fill with zero padding, then add fill back: outside pixels become fill, edges blend into it
        fill = self.fill.to(dtype=x.dtype)
        return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
