"""Channel / spatial attention blocks inserted into the IR-ResNet residual branch.

Both modules keep the input's shape and work with contiguous or ``channels_last`` tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .registry import lookup


def _hidden_width(channels: int, reduction: int, min_hidden: int) -> int:
    if channels < 1 or reduction < 1 or min_hidden < 1:
        raise ValueError(
            f"channels, reduction and min_hidden must be >= 1, got {channels}, {reduction}, {min_hidden}"
        )
    # Narrow stages (width multipliers like 0.125) would otherwise get a 0-2 unit bottleneck.
    return max(channels // reduction, min_hidden)


def _channel_mlp(channels: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))


class SEModule(nn.Module):
    """Squeeze-and-Excitation (Hu et al., CVPR 2018).

    ``x * sigmoid(FC(ReLU(FC(avgpool(x)))))``, one gate per channel.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8):
        super().__init__()
        self.channels = channels
        self.hidden = _hidden_width(channels, reduction, min_hidden)
        self.mlp = _channel_mlp(channels, self.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))))
        return x * gate[:, :, None, None]


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel then spatial attention.

    Channel: ``Mc = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``, ``x' = Mc * x``.
    Spatial: ``Ms = sigmoid(conv_k([mean_c(x'); max_c(x')]))``, output ``Ms * x'``.
    The spatial conv follows the paper's formula (no BatchNorm, no bias).
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7, min_hidden: int = 8):
        super().__init__()
        if spatial_kernel < 1 or spatial_kernel % 2 == 0:
            raise ValueError(f"spatial_kernel must be a positive odd integer, got {spatial_kernel}")
        self.channels = channels
        self.hidden = _hidden_width(channels, reduction, min_hidden)
        self.mlp = _channel_mlp(channels, self.hidden)
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        # One MLP call on [avg; max] stacked along the batch: a single pair of matmuls instead of two.
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=0)
        avg_out, max_out = self.mlp(pooled).split(b, dim=0)
        x = x * torch.sigmoid(avg_out + max_out)[:, :, None, None]

        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(descriptor))


def _no_attention(channels: int, **_: object) -> nn.Module:
    return nn.Identity()


ATTENTION: dict[str, Callable[..., nn.Module]] = {
    "none": _no_attention,
    "se": SEModule,
    "cbam": CBAM,
}


def build_attention(name: str, channels: int, **kwargs) -> nn.Module:
    """Build the attention module registered as ``name`` ("none", "se", "cbam") for ``channels``.

    Unknown names raise :class:`~maskstudy.models.registry.UnknownNameError` listing the known ones.
    """
    return lookup(ATTENTION, name, "attention")(channels, **kwargs)
