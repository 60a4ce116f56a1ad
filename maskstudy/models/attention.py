"""Channel / spatial attention blocks inserted into the IR-ResNet residual branch.

Both modules keep the input's shape and work with contiguous or ``channels_last`` tensors.

Training on the CPU runs each block as one autograd node (:class:`_SEFunction`, :class:`_CBAMFunction`) with a
hand-written backward. Autograd's own graph of these few elementwise operations writes and re-reads the whole
feature map many times (a gradient per use of the map, then their sums; ``amax``'s backward alone takes four
passes). The fused backward computes the same gradients, summed in another order, so equal up to float rounding,
in fewer passes; the forward is the reference computation, so outputs are bitwise the same. One difference at
ties: the gradient of CBAM's spatial max pooling goes to the one position that
:func:`~torch.nn.functional.adaptive_max_pool2d` reports (as max pooling's backward does), not split evenly
between tied positions as autograd's ``amax`` (a subgradient too; ties of float feature maps after BatchNorm are
rare, and sending the gradient to one index spares three passes over the map). Its channel max still splits ties
evenly. Measured on one CPU thread at the cpu profile's sizes (IR-ResNet-18, width 0.25,
56 px, batch 64): the eight CBAM blocks' forward + backward from about 58 to 38 ms per step, the SE blocks' from
11 to 8 ms. Evaluation, ``torch.compile`` (Inductor fuses the reference operations itself), autocast and other
devices run :meth:`SEModule.reference_forward` / :meth:`CBAM.reference_forward` with autograd.

``start_open``: both modules can start close to the identity (for insertion into a pretrained network at full
strength): the weights feeding each sigmoid start at 0 and its bias at ``start_open``, so every gate is
``sigmoid(start_open)`` at step 0 and ``A(x) = sigmoid(start_open) x`` (SE) or ``sigmoid(start_open)**2 x`` (CBAM);
CBAM's spatial convolution then has a bias (the paper's has none). The gates themselves are read by
:meth:`SEModule.gate`, :meth:`CBAM.channel_gate` and :meth:`CBAM.spatial_gate` (what
:mod:`maskstudy.explain.attention_readout` reports).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

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


_fused_backward_on = True


@contextlib.contextmanager
def reference_backward() -> Iterator[None]:
    """Inside the block the modules here (and the IR-ResNet's PReLU) train with autograd's backward of their
    reference operations, not their fused CPU backward: for tests and benchmarks."""
    global _fused_backward_on
    previous, _fused_backward_on = _fused_backward_on, False
    try:
        yield
    finally:
        _fused_backward_on = previous


def fused_backward_applies(x: torch.Tensor) -> bool:
    """Whether a module here trains with its fused CPU backward: gradients on, a 4-D CPU tensor, no autocast,
    not being traced by ``torch.compile``, not inside :func:`reference_backward`."""
    return (_fused_backward_on and torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 4
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def _hw_max(x: torch.Tensor) -> torch.Tensor:
    """``x.amax(dim=(2, 3))``; without gradients through adaptive max pooling: the same values, many times faster
    on ``channels_last`` maps (its backward would send a tie's gradient to one element, amax's splits it)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return x.amax(dim=(2, 3))
    return F.adaptive_max_pool2d(x, 1).flatten(1)


def _mlp_forward(pooled: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                 b2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``_channel_mlp``'s output for ``pooled`` (rows), and its hidden layer before the ReLU."""
    hidden = F.linear(pooled, w1, b1)
    return F.linear(F.relu(hidden), w2, b2), hidden


def _mlp_backward(grad: torch.Tensor, pooled: torch.Tensor, hidden: torch.Tensor, w1: torch.Tensor,
                  w2: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Gradients of :func:`_mlp_forward` (pooled, w1, b1, w2, b2) given the output's, as autograd computes them."""
    grad_hidden = torch.ops.aten.threshold_backward(grad.mm(w2), hidden, 0)
    return (grad_hidden.mm(w1), grad_hidden.t().mm(pooled), grad_hidden.sum(0), grad.t().mm(F.relu(hidden)),
            grad.sum(0))


def _add_max_gradient(grad: torch.Tensor, x: torch.Tensor, maximum: torch.Tensor, grad_max: torch.Tensor,
                      dims: int | tuple[int, ...]) -> None:
    """Add to ``grad`` the gradient of ``maximum = x.amax(dims, keepdim=True)`` given ``grad_max``: it goes to the
    elements that attain the maximum, split evenly between ties (as ``amax``'s backward)."""
    hit = torch.eq(x, maximum, out=torch.empty_like(x))  # 0/1 in x's dtype, without a bool intermediate
    grad.addcmul_(hit, grad_max / hit.sum(dims, keepdim=True))


def _spatial_conv(descriptor: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int],
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """CBAM's 2 -> 1 channel spatial convolution, computed in the contiguous format whatever the module's format:
    on the CPU oneDNN's channels-last forward of this shape is slower (about 1.3x at 28 px; measured with torch
    2.14), and its channels-last backward several times faster (see :class:`_CBAMFunction`)."""
    return F.conv2d(descriptor.contiguous(), weight.contiguous(), bias, padding=padding)


def _scatter_hw_max_gradient(grad: torch.Tensor, index: torch.Tensor, grad_max: torch.Tensor) -> None:
    """Add ``grad_max`` (N, C) to ``grad`` (N, C, H, W) at the position ``index`` (N, C, 1, 1) of each plane's
    maximum, as :func:`torch.nn.functional.adaptive_max_pool2d` returns it."""
    b, c, _, w = grad.shape
    index = index.view(b, c)
    rows = torch.arange(b, device=grad.device)[:, None].expand(b, c)
    channels = torch.arange(c, device=grad.device)[None, :].expand(b, c)
    # 4-D indices: right for any memory layout of grad (a flattened view exists only for some)
    grad.index_put_((rows, channels, index // w, index % w), grad_max.to(grad.dtype), accumulate=True)


class _SEFunction(torch.autograd.Function):
    """:meth:`SEModule.reference_forward` with a fused backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        pooled = x.mean(dim=(2, 3))
        logits, hidden = _mlp_forward(pooled, w1, b1, w2, b2)
        gate = torch.sigmoid(logits)
        ctx.save_for_backward(x, pooled, hidden, gate, w1, w2)
        return x * gate[:, :, None, None]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, pooled, hidden, gate, w1, w2 = ctx.saved_tensors
        grad_gate = (grad_out * x).sum(dim=(2, 3))
        grad_pooled, *grad_params = _mlp_backward(torch.ops.aten.sigmoid_backward(grad_gate, gate), pooled, hidden,
                                                  w1, w2)
        hw = x.shape[2] * x.shape[3]
        grad_x = torch.addcmul(grad_pooled.div(hw)[:, :, None, None], grad_out, gate[:, :, None, None])
        return (grad_x, *grad_params)


class _CBAMFunction(torch.autograd.Function):
    """:meth:`CBAM.reference_forward` with a fused backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, spatial_weight, spatial_bias, padding):
        b = x.shape[0]
        # adaptive max pooling: amax's values, and where each maximum is (its backward sends the gradient there)
        hw_max, hw_index = F.adaptive_max_pool2d(x, 1, return_indices=True)
        pooled = torch.cat([x.mean(dim=(2, 3)), hw_max.flatten(1)], dim=0)
        logits, hidden = _mlp_forward(pooled, w1, b1, w2, b2)
        avg_out, max_out = logits.split(b, dim=0)
        channel_gate = torch.sigmoid(avg_out + max_out)
        gated = x * channel_gate[:, :, None, None]
        c_max = gated.amax(dim=1, keepdim=True)
        descriptor = torch.cat([gated.mean(dim=1, keepdim=True), c_max], dim=1)
        spatial_gate = torch.sigmoid(_spatial_conv(descriptor, spatial_weight, padding, spatial_bias))
        ctx.padding, ctx.has_bias = padding, spatial_bias is not None
        ctx.save_for_backward(x, hw_index, pooled, hidden, channel_gate, gated, c_max, descriptor, spatial_gate,
                              w1, w2, spatial_weight)
        return gated * spatial_gate

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (x, hw_index, pooled, hidden, channel_gate, gated, c_max, descriptor, spatial_gate, w1, w2,
         spatial_weight) = ctx.saved_tensors
        b, c, h, w = x.shape
        # out = gated * spatial_gate; spatial_gate = sigmoid(conv([mean_c(gated); max_c(gated)]))
        grad_conv = torch.ops.aten.sigmoid_backward((grad_out * gated).sum(dim=1, keepdim=True), spatial_gate)
        # oneDNN's backward of this 2 -> 1 channel convolution is several times faster channels-last
        cl = torch.channels_last
        grad_descriptor, grad_spatial_weight, grad_spatial_bias = torch.ops.aten.convolution_backward(
            grad_conv.contiguous(memory_format=cl), descriptor.contiguous(memory_format=cl),
            spatial_weight.contiguous(memory_format=cl), [1] if ctx.has_bias else None, [1, 1], list(ctx.padding),
            [1, 1], False, [0, 0], 1, [True, True, ctx.has_bias])
        grad_mean, grad_max = grad_descriptor[:, :1], grad_descriptor[:, 1:]
        grad_gated = torch.addcmul(grad_mean.div(c), grad_out, spatial_gate)
        _add_max_gradient(grad_gated, gated, c_max, grad_max, 1)
        # gated = x * channel_gate; channel_gate = sigmoid(MLP(mean_hw(x)) + MLP(max_hw(x)))
        grad_logits = torch.ops.aten.sigmoid_backward((grad_gated * x).sum(dim=(2, 3)), channel_gate)
        grad_pooled, *grad_params = _mlp_backward(torch.cat([grad_logits, grad_logits]), pooled, hidden, w1, w2)
        grad_avg, grad_hw_max = grad_pooled.split(b, dim=0)
        grad_x = torch.addcmul(grad_avg.div(h * w)[:, :, None, None], grad_gated, channel_gate[:, :, None, None])
        _scatter_hw_max_gradient(grad_x, hw_index, grad_hw_max)
        return (grad_x, *grad_params, grad_spatial_weight.view_as(spatial_weight),
                grad_spatial_bias if ctx.has_bias else None, None)


class SEModule(nn.Module):
    """Squeeze-and-Excitation (Hu et al., CVPR 2018).

    ``x * sigmoid(FC(ReLU(FC(avgpool(x)))))``, one gate per channel.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8, start_open: float | None = None):
        super().__init__()
        self.channels = channels
        self.hidden = _hidden_width(channels, reduction, min_hidden)
        self.mlp = _channel_mlp(channels, self.hidden)
        self.start_open = start_open
        if start_open is not None:
            _open_start(self.mlp[2], start_open)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_backward_applies(x):
            return _SEFunction.apply(x, self.mlp[0].weight, self.mlp[0].bias, self.mlp[2].weight, self.mlp[2].bias)
        return self.reference_forward(x)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) channel gate of input ``x``."""
        return torch.sigmoid(self.mlp(x.mean(dim=(2, 3))))

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)[:, :, None, None]


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel then spatial attention.

    Channel: ``Mc = sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``, ``x' = Mc * x``.
    Spatial: ``Ms = sigmoid(conv_k([mean_c(x'); max_c(x')]))``, output ``Ms * x'``.
    The spatial conv follows the paper's formula (no BatchNorm, no bias).
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7, min_hidden: int = 8,
                 start_open: float | None = None):
        super().__init__()
        if spatial_kernel < 1 or spatial_kernel % 2 == 0:
            raise ValueError(f"spatial_kernel must be a positive odd integer, got {spatial_kernel}")
        self.channels = channels
        self.hidden = _hidden_width(channels, reduction, min_hidden)
        self.mlp = _channel_mlp(channels, self.hidden)
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=start_open is not None)
        self.start_open = start_open
        if start_open is not None:
            _open_start(self.mlp[2], start_open / 2)  # the MLP's output is added twice (average and max pooling)
            _open_start(self.spatial, start_open)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused_backward_applies(x):
            return _CBAMFunction.apply(x, self.mlp[0].weight, self.mlp[0].bias, self.mlp[2].weight,
                                       self.mlp[2].bias, self.spatial.weight, self.spatial.bias, self.spatial.padding)
        return self.reference_forward(x)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) channel gate ``Mc`` of input ``x``."""
        b = x.shape[0]
        # One MLP call on [avg; max] stacked along the batch: a single pair of matmuls instead of two.
        pooled = torch.cat([x.mean(dim=(2, 3)), _hw_max(x)], dim=0)
        avg_out, max_out = self.mlp(pooled).split(b, dim=0)
        return torch.sigmoid(avg_out + max_out)

    def spatial_logits(self, descriptor: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) logits of the spatial map from the (N, 2, H, W) descriptor ``[mean_c; max_c]``."""
        return _spatial_conv(descriptor, self.spatial.weight, self.spatial.padding, self.spatial.bias)

    def spatial_gate(self, gated: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) spatial map ``Ms`` of the channel-gated input ``x' = Mc * x``: CBAM's own answer to where
        to look, one weight in (0, 1) per position."""
        descriptor = torch.cat([gated.mean(dim=1, keepdim=True), gated.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial_logits(descriptor))

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_gate(x)[:, :, None, None]
        return x * self.spatial_gate(x)


def _open_start(layer: nn.Module, logit: float) -> None:
    """``layer``'s weights to 0 and its bias to ``logit``: the sigmoid after it starts at ``sigmoid(logit)`` for
    every input."""
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(float(logit))


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
