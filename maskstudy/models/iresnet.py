"""IR-ResNet face backbones (ArcFace: Deng et al., CVPR 2019), optionally with SE or CBAM attention.

The "improved residual" (IR) unit is a pre-activation residual block (He et al., ECCV 2016,
"Identity Mappings in Deep Residual Networks") adapted to 112x112 faces by ArcFace:
``BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN`` with no activation after the add. Module
names follow insightface's arcface_torch, so the plain variants' state-dict keys match its
``iresnet`` checkpoints.

Registered names: ``ir{18,34,50,100}`` and ``ir{18,34,50,100}_{se,cbam}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .attention import build_attention, fused_backward_applies
from .registry import register_backbone

STAGE_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}
BASE_WIDTHS = (64, 128, 256, 512)


def scaled_channels(channels: int, width: float, divisor: int = 8, min_channels: int = 8) -> int:
    """``channels * width`` rounded to the nearest multiple of ``divisor``, at least ``min_channels``."""
    return max(min_channels, int(round(channels * width / divisor)) * divisor)


def feature_map_size(input_size: int, num_stride2: int = 4) -> int:
    """Side of the last feature map: each stride-2 conv (k3 p1 or k1 p0) maps ``n`` to ``ceil(n/2)``."""
    for _ in range(num_stride2):
        input_size = (input_size + 1) // 2
    return input_size


class _PReLUFunction(torch.autograd.Function):
    """``F.prelu`` with a backward of vectorised tensor operations. Torch's own CPU backward of PReLU took about
    20x the time of an elementwise add on the same map (measured with torch 2.14; about a fifth of an
    IR-ResNet-18 training step at width 0.25). Here the input's gradient is ``grad * slope`` with ``slope``
    exactly 1 or the channel's weight, and the weight's is ``sum(grad * min(x, 0))`` over all but the channel
    dimension (the same sum, added in another order)."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        per_channel = weight.numel() > 1
        w = weight.view([1, -1] + [1] * (x.dim() - 2)) if per_channel else weight.reshape(())
        positive = torch.gt(x, 0, out=torch.empty_like(x))  # 1.0 / 0.0 in x's dtype
        # lerp(w, 1, t) is exactly w at t = 0 and exactly 1 at t = 1 (torch evaluates it from the nearer end)
        grad_x = grad * torch.lerp(w, torch.ones((), dtype=x.dtype), positive)
        dims = [d for d in range(x.dim()) if not (per_channel and d == 1)]
        grad_weight = (grad * x.clamp(max=0)).sum(dims).view_as(weight)
        return grad_x, grad_weight


class FastPReLU(nn.PReLU):
    """:class:`torch.nn.PReLU` (same parameter, same outputs) that trains on the CPU through the vectorised
    backward of :class:`_PReLUFunction`; elsewhere (evaluation, ``torch.compile``, autocast, GPUs) it is
    ``nn.PReLU``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_backward_applies(x):
            return _PReLUFunction.apply(x, self.weight)
        return super().forward(x)


class ShortcutConv(nn.Conv2d):
    """The shortcut's 1x1 convolution, stride ``s``: computed as ``conv1x1(x[:, :, ::s, ::s])``, the same outputs
    (exactly: a 1x1 kernel without padding reads only those pixels) and the same parameters as ``nn.Conv2d``.

    Why not the strided convolution itself: torch 2.14's CPU backward of a strided 1x1 convolution on channels-last
    input corrupts the heap (``double free``, then an abort or silent damage) when it has fewer than 16 input
    channels and an odd batch, with more than one thread (e.g. the ir18 at width 0.125 of the smoke profile, batch
    11); the subsampled form runs the stride-1 kernel, which is safe, at the same speed.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, *args, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride, *args, **kwargs)
        if self.kernel_size != (1, 1) or self.padding != (0, 0) or self.dilation != (1, 1):
            raise ValueError(f"ShortcutConv is a 1x1 convolution without padding or dilation, got kernel "
                             f"{self.kernel_size}, padding {self.padding}, dilation {self.dilation}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step_h, step_w = self.stride
        if (step_h, step_w) != (1, 1):
            x = x[:, :, ::step_h, ::step_w]
        return F.conv2d(x, self.weight, self.bias, 1, 0, 1, self.groups)


class IRBlock(nn.Module):
    """IR residual unit: ``BN-conv3x3-BN-PReLU-conv3x3(stride)-BN-[attention]`` + shortcut.

    The attention module (SE / CBAM / identity) refines the residual branch after its last BN and
    before the add, as in SE-ResNet (Hu et al., CVPR 2018) and CBAM (Woo et al., ECCV 2018).
    The shortcut is the identity, or conv1x1(stride)+BN (:class:`ShortcutConv`) when the shape changes.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        stride: int = 1,
        attention: str = "none",
        attention_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.prelu = FastPReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.attn = build_attention(attention, channels, **(attention_kwargs or {}))
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                ShortcutConv(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.prelu(self.bn2(self.conv1(self.bn1(x))))
        out = self.attn(self.bn3(self.conv2(out)))
        return out + shortcut


class IResNet(nn.Module):
    """ArcFace IR-ResNet: stem, four stages (``layer1..layer4``, each opening with stride 2), embedding head.

    Stem: conv3x3(3 -> 64w, stride 1) + BN + PReLU. Stage widths: ``(64, 128, 256, 512) * width``
    rounded to multiples of 8 (min 8). Head: BN -> Dropout -> flatten -> Linear -> BatchNorm1d.

    ``input_size`` is the side of the square input (112 in ArcFace; smaller sizes such as 96, 64,
    56 or 32 work: each stride-2 stage rounds up, so 56 -> 28 -> 14 -> 7 -> 4). The Linear layer is
    sized for it, and ``forward`` rejects other sizes with a ``ValueError``.

    With ``freeze_feature_scale`` (default, as arcface_torch) the embedding BN's scale is fixed at 1
    and only its shift is learnt. The model never autocasts internally: wrap calls in
    ``torch.autocast`` for mixed precision.

    For Grad-CAM, the last convolutional stage is ``model.layer4`` (``model.feature_layers()[-1]``).
    """

    def __init__(
        self,
        layers: Sequence[int],
        width: float = 1.0,
        input_size: int = 112,
        embedding_size: int = 512,
        dropout: float = 0.0,
        attention: str = "none",
        attention_kwargs: dict[str, Any] | None = None,
        freeze_feature_scale: bool = True,
    ):
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {tuple(layers)}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 16:
            raise ValueError(f"input_size must be an integer >= 16 (four stride-2 stages), got {input_size!r}")
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")

        self.layers = tuple(int(n) for n in layers)
        self.width = width
        self.input_size = input_size
        self.embedding_size = embedding_size
        self.attention = attention
        self.stage_channels = tuple(scaled_channels(c, width) for c in BASE_WIDTHS)
        self.feature_map_size = feature_map_size(input_size)
        stem_channels = self.stage_channels[0]

        self.conv1 = nn.Conv2d(3, stem_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.prelu = FastPReLU(stem_channels)

        in_channels = stem_channels
        for i, (n_blocks, channels) in enumerate(zip(self.layers, self.stage_channels), start=1):
            blocks = [IRBlock(in_channels, channels, 2, attention, attention_kwargs)]
            blocks += [IRBlock(channels, channels, 1, attention, attention_kwargs) for _ in range(n_blocks - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_channels = channels
        self.out_channels = in_channels

        self.bn2 = nn.BatchNorm2d(in_channels)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_channels * self.feature_map_size**2, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        self._init_weights()
        if freeze_feature_scale:
            self.features.weight.requires_grad_(False)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def attention_crop_centres(self, stage: int, block: int, grid: tuple[int, int],
                               crop_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
        """(row centres, column centres) in crop pixels of the cells of stage ``stage``'s maps (``layer<stage>``,
        1..4; every ``block`` of a stage works on its output grid; ``grid``: its rows and columns), where the
        attention of its blocks acts. The stem has stride 1 and each stage's stride-2 convolution (3x3 padding 1, or
        the 1x1 shortcut) maps output index ``j`` to input index ``2 j``, so cell ``j`` is centred on input pixel
        ``2**stage j`` (continuous ``2**stage j + 0.5``), scaled from ``input_size`` to ``crop_size``."""
        if not 1 <= stage <= 4:
            raise ValueError(f"stage must be 1..4 (layer1..layer4), got {stage}")
        scale = crop_size / self.input_size
        rows, columns = ((2.0**stage * np.arange(n) + 0.5) * scale for n in grid)
        return rows, columns

    def feature_layers(self) -> list[nn.Module]:
        """The four stages ``[layer1, layer2, layer3, layer4]``; the last is the Grad-CAM target."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> last stage's feature map ``(B, out_channels, s, s)``, ``s = feature_map_size``."""
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(
                f"expected {self.input_size}x{self.input_size} inputs (the model's input_size), "
                f"got {tuple(x.shape[-2:])}"
            )
        x = self.prelu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.bn2(self.forward_features(x)))
        return self.features(self.fc(torch.flatten(x, 1)))


def _ir_builder(depth: int, attention: str):
    layers = STAGE_LAYERS[depth]

    def build(**kw: Any) -> IResNet:
        return IResNet(layers, attention=attention, **kw)

    suffix = "" if attention == "none" else f" with {attention.upper()} attention"
    build.__name__ = f"ir{depth}" + ("" if attention == "none" else f"_{attention}")
    build.__doc__ = f"IR-ResNet-{depth} (stages {layers}){suffix}; keyword arguments go to IResNet."
    return build


for _depth in STAGE_LAYERS:
    for _attention in ("none", "se", "cbam"):
        _builder = _ir_builder(_depth, _attention)
        register_backbone(_builder.__name__)(_builder)
del _depth, _attention, _builder
