"""Vision Transformer face backbones: plain ViT and a hybrid IR-ResNet-stem + ViT, both built on timm.

Both follow Dosovitskiy et al., ICLR 2021, "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale": the image (plain ViT) or a CNN feature map (hybrid, their §3.1 "Hybrid
Architecture") is cut into patches, each linearly projected to a token; a learnt class token is
prepended, learnt 1-D position embeddings are added, and pre-norm transformer blocks
(``x + MSA(LN(x))``, ``x + MLP(LN(x))``) follow. The trunk is ``timm``'s
:class:`~timm.models.vision_transformer.VisionTransformer` (its ``Block``, ``PatchEmbed`` and, for
the hybrid, ``HybridEmbed``), so state-dict keys match timm's (``patch_embed.proj.weight``,
``cls_token``, ``pos_embed``, ``blocks.N.attn.qkv.weight``...). Nothing is ever downloaded: the
weights are initialised as timm does (``pretrained=False``).

Registered names (``build_backbone(name, width=..., input_size=..., embedding_size=..., dropout=...)``):

* ``vit_tiny``  -- embed dim 192, 12 blocks, 3 heads (DeiT-Ti / timm ``vit_tiny_patch16_224``);
* ``vit_small`` -- embed dim 384, 12 blocks, 6 heads (timm ``vit_small_patch16_224``);
* ``hybrid_ir18_vit``, ``hybrid_ir18_se_vit``, ``hybrid_ir18_cbam_vit`` -- the IR-ResNet-18 stem and
  first ``cnn_stages`` stages (no / SE / CBAM attention) as a convolutional stem, then a 192-dim,
  3-head, 4-block transformer.

**Patch size.** ``patch_size`` defaults to 8 for ``input_size <= 64`` and 16 above, so that 112-pixel
faces give 112/16 = 7x7 tokens and 56-pixel faces 56/8 = 7x7 tokens (the same 7x7 grid as the
IR-ResNet's last feature map). ``input_size`` must be a multiple of ``patch_size``.

**Width and depth.** ``width`` scales the embedding dimension, rounded to a multiple of the head count
with at least 8 dimensions per head (vit_tiny at width 0.5: 96 = 3 heads x 32; at width 0.25: 48).
The MLP hidden size is ``mlp_ratio`` (4) times that. ``depth`` (default 12; 4 for hybrids) allows
fewer blocks for CPU profiles.

**Embedding head.** The transformer's class token, after the final LayerNorm, goes through
``Dropout(dropout) -> Linear(embed_dim, embedding_size) -> BatchNorm1d(embedding_size)``: the
IR-ResNet's output layers (``fc``, ``features``, with the BN scale frozen at 1 by default, as in
arcface_torch). Class-token pooling is the default because (i) it is the ViT paper's default and the
hybrid of §3.1 uses it too; (ii) the class token's last attention is a learnt, input-dependent
weighting of the face regions -- with the mouth and nose masked it can attend to the periocular
tokens, whereas global average pooling weighs every token equally (the paper's Appendix D.3 finds
both heads equally good *with tuned learning rates* on ImageNet); (iii) it keeps the patch tokens
of the last block free for Grad-CAM, as in pytorch-grad-cam's ViT recipe. ``global_pool="avg"``
switches to average pooling of the patch tokens (then no class token is created and the final
LayerNorm is applied after pooling, timm's ``fc_norm``). arcface_torch's own ViTs instead flatten
all patch tokens into the Linear layer (no class token), the transformer analogue of the
IR-ResNet's flatten -> FC; that makes the head ``N`` times larger and is not offered here.

**Grad-CAM.** Every model here has ``model.cam_target_layer`` (the last block's first LayerNorm,
``blocks[-1].norm1``, whose output is ``(B, prefix + g*g, C)``) and ``model.reshape_transform`` which
drops the class token and reshapes the tokens to ``(B, C, g, g)``; pass both to pytorch-grad-cam::

    GradCAM(model, target_layers=[model.cam_target_layer], reshape_transform=model.reshape_transform)

IR-ResNets are hooked at ``model.layer4`` (a 4-D feature map; no reshape needed).

**FLOPs.** On CPU, ``F.scaled_dot_product_attention`` (used by timm's ``Attention``) dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which torch's ``FlopCounterMode`` has no
formula for: the attention matmuls (``Q K^T`` and ``A V``) would silently count as 0 FLOPs. Importing
this module registers the missing formulas (forward and backward, same convention as torch's
CUDA SDPA formulas), so :func:`~maskstudy.models.registry.count_flops` counts attention on every
device.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch
from timm.layers import HybridEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils import flop_counter

from .iresnet import STAGE_LAYERS, IResNet, feature_map_size
from .registry import register_backbone

#: name -> (embed dim, depth, heads) at width 1.
VIT_VARIANTS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
}
#: Hybrid transformer defaults at width 1: (embed dim, depth, heads).
HYBRID_DEFAULTS: tuple[int, int, int] = (192, 4, 3)
#: Registered hybrids: name -> (IR-ResNet depth, attention).
HYBRID_VARIANTS: dict[str, tuple[int, str]] = {
    "hybrid_ir18_vit": (18, "none"),
    "hybrid_ir18_se_vit": (18, "se"),
    "hybrid_ir18_cbam_vit": (18, "cbam"),
}
GLOBAL_POOLS = ("token", "avg")
MIN_HEAD_DIM = 8


# --- FLOP formulas for CPU fused attention ---------------------------------------------------


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``Q K^T`` plus ``softmax(.) V``: ``2*b*h*s_q*s_k*(d_qk + d_v)`` FLOPs (2 per multiply-add)."""
    b, h, s_q, d_qk = query_shape
    s_k = key_shape[-2]
    d_v = value_shape[-1]
    return 2 * b * h * s_q * s_k * (d_qk + d_v)


def _sdpa_cpu_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    """The four backward matmuls (grad V, grad A, grad Q, grad K): twice the forward, as torch counts on CUDA."""
    return 2 * _sdpa_cpu_flops(query_shape, key_shape, value_shape)


def _register_cpu_sdpa_flops() -> None:
    """Teach ``FlopCounterMode`` the CPU flash-attention ops (no-op where torch already knows them)."""
    aten = torch.ops.aten
    known = getattr(flop_counter, "flop_registry", {})
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_cpu_backward_flops),
    ):
        op = getattr(aten, name, None)
        if op is None or op in known:
            continue
        try:
            flop_counter.register_flop_formula(op)(formula)
        except (RuntimeError, ValueError):  # already registered (a newer torch) or an API change: keep torch's
            pass


_register_cpu_sdpa_flops()


# --- helpers ---------------------------------------------------------------------------------


def default_patch_size(input_size: int) -> int:
    """8 for inputs up to 64 pixels, 16 above (112 -> 7x7 tokens, 56 -> 7x7, 32 -> 4x4)."""
    return 8 if input_size <= 64 else 16


def scaled_embed_dim(embed_dim: int, width: float, num_heads: int, min_head_dim: int = MIN_HEAD_DIM) -> int:
    """``embed_dim * width`` rounded to the nearest multiple of ``num_heads``, at least ``min_head_dim`` per head."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    return max(min_head_dim, int(round(embed_dim * width / num_heads))) * num_heads


def _check_common(input_size: Any, embedding_size: int, dropout: float, depth: int, min_input: int) -> None:
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < min_input:
        raise ValueError(f"input_size must be an integer >= {min_input}, got {input_size!r}")
    if embedding_size < 1:
        raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth (number of transformer blocks) must be an integer >= 1, got {depth!r}")


# --- models ----------------------------------------------------------------------------------


class FaceViT(VisionTransformer):
    """timm ``VisionTransformer`` trunk plus the IR-ResNet's embedding head; maps ``(B, 3, S, S)`` to ``(B, E)``.

    ``forward(x) = features(fc(head_drop(pool(forward_features(x)))))`` where ``forward_features``
    returns the normalised tokens ``(B, prefix + g*g, embed_dim)`` and ``pool`` takes the class token
    (``global_pool="token"``) or the patch-token mean (``"avg"``). Inputs of any size other than
    ``input_size`` raise ``ValueError``. Extra keyword arguments go to ``VisionTransformer``
    (``embed_layer`` for hybrids, ``drop_path_rate``, ``attn_drop_rate``, ``proj_drop_rate``,
    ``pos_drop_rate``, ``mlp_ratio``, ``qkv_bias``...).

    Attributes shared with :class:`~maskstudy.models.iresnet.IResNet`: ``input_size``,
    ``embedding_size``, ``width``, ``fc``, ``features``, ``forward_features``. Grad-CAM:
    ``cam_target_layer`` and ``reshape_transform`` (see the module docstring).
    """

    def __init__(
        self,
        input_size: int,
        embedding_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        dropout: float = 0.0,
        global_pool: str = "token",
        freeze_feature_scale: bool = True,
        width: float = 1.0,
        **vit_kw: Any,
    ):
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        super().__init__(
            img_size=input_size,
            patch_size=patch_size,
            num_classes=0,
            global_pool=global_pool,
            class_token=global_pool == "token",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            drop_rate=dropout,
            **vit_kw,
        )
        self.input_size = input_size
        self.embedding_size = embedding_size
        self.width = width
        self.num_heads = num_heads
        self.depth = depth
        self.patch_size = patch_size
        grid = tuple(self.patch_embed.grid_size)
        if grid[0] != grid[1] or grid[0] < 1:
            raise ValueError(f"expected a square token grid, got {grid}")
        self.grid_size: int = grid[0]
        self.num_patches: int = self.patch_embed.num_patches
        self.dropout = self.head_drop  # same name as IResNet's head dropout
        self.fc = nn.Linear(embed_dim, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)
        if freeze_feature_scale:
            self.features.weight.requires_grad_(False)

    @property
    def cam_target_layer(self) -> nn.Module:
        """The module to hook for Grad-CAM: the last transformer block's first LayerNorm (``blocks[-1].norm1``)."""
        return self.blocks[-1].norm1

    def reshape_transform(self, tensor: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, prefix + g*g, C)`` -> patch map ``(B, C, g, g)``, class token dropped (for pytorch-grad-cam)."""
        expected = self.num_prefix_tokens + self.grid_size**2
        if tensor.dim() != 3 or tensor.shape[1] != expected:
            raise ValueError(
                f"expected (B, {expected}, C) tokens ({self.num_prefix_tokens} prefix + "
                f"{self.grid_size}x{self.grid_size} patches), got {tuple(tensor.shape)}"
            )
        tokens = tensor[:, self.num_prefix_tokens :]
        b, _, c = tokens.shape
        return tokens.reshape(b, self.grid_size, self.grid_size, c).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        """Images -> normalised tokens ``(B, prefix + g*g, embed_dim)``; rejects inputs not ``input_size`` square."""
        if x.dim() != 4 or tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(
                f"expected (B, 3, {self.input_size}, {self.input_size}) inputs (the model's input_size), "
                f"got {tuple(x.shape)}"
            )
        return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_head(self.forward_features(x), pre_logits=True)  # pool -> fc_norm -> dropout
        return self.features(self.fc(x))


class IRConvStem(nn.Module):
    """The IR-ResNet's stem (conv3x3 + BN + PReLU) and its first ``num_stages`` stages, as a CNN stem.

    Built from an :class:`~maskstudy.models.iresnet.IResNet` (same module names ``conv1``, ``bn1``,
    ``prelu``, ``layer1``...; same widths, attention and initialisation); its later stages and head
    are discarded. Maps ``(B, 3, S, S)`` to ``(B, out_channels, s, s)`` with ``s = ceil(S / 2**num_stages)``.
    """

    def __init__(
        self,
        ir_depth: int = 18,
        num_stages: int = 2,
        width: float = 1.0,
        input_size: int = 112,
        attention: str = "none",
        attention_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        if ir_depth not in STAGE_LAYERS:
            raise ValueError(f"ir_depth must be one of {sorted(STAGE_LAYERS)}, got {ir_depth!r}")
        if isinstance(num_stages, bool) or num_stages not in (1, 2, 3):
            raise ValueError(f"cnn_stages must be 1, 2 or 3, got {num_stages!r}")
        ir = IResNet(
            STAGE_LAYERS[ir_depth],
            width=width,
            input_size=input_size,
            embedding_size=1,  # head discarded
            attention=attention,
            attention_kwargs=attention_kwargs,
        )
        self.ir_depth = ir_depth
        self.num_stages = num_stages
        self.attention = attention
        self.conv1, self.bn1, self.prelu = ir.conv1, ir.bn1, ir.prelu
        for i in range(1, num_stages + 1):
            self.add_module(f"layer{i}", getattr(ir, f"layer{i}"))
        self.out_channels = ir.stage_channels[num_stages - 1]
        self.num_features = self.out_channels  # read by timm's HybridEmbed
        self.feature_map_size = feature_map_size(input_size, num_stages)

    def feature_layers(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i}") for i in range(1, self.num_stages + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        for layer in self.feature_layers():
            x = layer(x)
        return x


# --- builders --------------------------------------------------------------------------------


def _transformer_shape(defaults: tuple[int, int, int], depth: int | None, num_heads: int | None, input_size: int,
                       embedding_size: int, dropout: float, min_input: int) -> tuple[int, int, int]:
    """``(base dim, depth, heads)`` from a family's defaults and the caller's overrides, after the common checks."""
    base_dim, base_depth, base_heads = defaults
    depth = base_depth if depth is None else depth
    num_heads = base_heads if num_heads is None else num_heads
    _check_common(input_size, embedding_size, dropout, depth, min_input=min_input)
    return base_dim, depth, num_heads


def _checked_patch_size(patch_size: Any) -> int:
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
    return patch_size


def build_vit(
    variant: str,
    width: float = 1.0,
    input_size: int = 112,
    embedding_size: int = 512,
    dropout: float = 0.0,
    depth: int | None = None,
    num_heads: int | None = None,
    patch_size: int | None = None,
    **kw: Any,
) -> FaceViT:
    """A plain ViT from :data:`VIT_VARIANTS`; see the module docstring for the arguments."""
    base_dim, depth, num_heads = _transformer_shape(VIT_VARIANTS[variant], depth, num_heads, input_size,
                                                    embedding_size, dropout, min_input=8)
    patch_size = _checked_patch_size(default_patch_size(input_size) if patch_size is None else patch_size)
    if input_size % patch_size:
        raise ValueError(
            f"input_size {input_size} is not a multiple of patch_size {patch_size} "
            f"(e.g. 112 with patch 16, 56 or 64 with patch 8)"
        )
    embed_dim = scaled_embed_dim(base_dim, width, num_heads)
    return FaceViT(
        input_size=input_size,
        embedding_size=embedding_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        patch_size=patch_size,
        dropout=dropout,
        width=width,
        **kw,
    )


def build_hybrid_vit(
    ir_depth: int = 18,
    attention: str = "none",
    width: float = 1.0,
    input_size: int = 112,
    embedding_size: int = 512,
    dropout: float = 0.0,
    cnn_stages: int = 2,
    cnn_width: float | None = None,
    depth: int | None = None,
    num_heads: int | None = None,
    patch_size: int | None = None,
    attention_kwargs: dict[str, Any] | None = None,
    **kw: Any,
) -> FaceViT:
    """Hybrid CNN + ViT (Dosovitskiy et al. 2021, §3.1): IR-ResNet stem + ``cnn_stages`` stages -> tokens -> blocks.

    The stem's feature map (``S / 2**cnn_stages`` pixels a side, ``ceil`` per stage) is cut into
    ``patch_size`` x ``patch_size`` patches by a conv with that kernel and stride (timm's
    ``HybridEmbed``); ``patch_size`` defaults to ``2**(3 - cnn_stages)`` so the token grid is always
    ``S / 8`` a side (112 -> 14x14 tokens: 28x28 map with 2x2 patches, or 14x14 with 1x1 after three
    stages; 56 -> 7x7; 32 -> 4x4). The transformer is ``HYBRID_DEFAULTS`` (192 dims x ``width``, 4
    blocks, 3 heads) unless ``depth`` / ``num_heads`` say otherwise. ``cnn_width`` (default:
    ``width``) is the IR-ResNet width multiplier of the stem. The stem keeps the IR-ResNet's
    initialisation (timm's ViT init would re-draw its SE/CBAM Linear layers).
    """
    base_dim, depth, num_heads = _transformer_shape(HYBRID_DEFAULTS, depth, num_heads, input_size, embedding_size,
                                                    dropout, min_input=16)
    if isinstance(cnn_stages, bool) or cnn_stages not in (1, 2, 3):
        raise ValueError(f"cnn_stages must be 1, 2 or 3, got {cnn_stages!r}")
    patch_size = _checked_patch_size(2 ** (3 - cnn_stages) if patch_size is None else patch_size)
    side = feature_map_size(input_size, cnn_stages)
    if side % patch_size:
        raise ValueError(
            f"the CNN stem's {side}x{side} feature map (input {input_size}, {cnn_stages} stride-2 stages) "
            f"is not a multiple of patch_size {patch_size}"
        )
    embed_dim = scaled_embed_dim(base_dim, width, num_heads)
    stem = IRConvStem(
        ir_depth,
        cnn_stages,
        width=width if cnn_width is None else cnn_width,
        input_size=input_size,
        attention=attention,
        attention_kwargs=attention_kwargs,
    )
    stem_state = copy.deepcopy(stem.state_dict())
    # Given feature_size, HybridEmbed skips its probing forward and reads the stem's ``num_features``.
    embed = partial(HybridEmbed, backbone=stem, feature_size=side, feature_ratio=input_size // side)
    model = FaceViT(
        input_size=input_size,
        embedding_size=embedding_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        patch_size=patch_size,
        dropout=dropout,
        width=width,
        embed_layer=embed,
        **kw,
    )
    model.patch_embed.backbone.load_state_dict(stem_state)  # undo timm's re-init of the stem's Linears
    model.cnn_stages = cnn_stages
    model.ir_depth = ir_depth
    model.attention = attention
    return model


def _vit_builder(variant: str):
    def build(**kw: Any) -> FaceViT:
        return build_vit(variant, **kw)

    dim, depth, heads = VIT_VARIANTS[variant]
    build.__name__ = variant
    build.__doc__ = f"ViT ({dim} dims x width, {depth} blocks, {heads} heads); keyword arguments go to build_vit."
    return build


def _hybrid_builder(name: str, ir_depth: int, attention: str):
    def build(**kw: Any) -> FaceViT:
        return build_hybrid_vit(ir_depth, attention, **kw)

    build.__name__ = name
    build.__doc__ = (
        f"IR-ResNet-{ir_depth} stem ({attention} attention) + ViT; keyword arguments go to build_hybrid_vit."
    )
    return build


for _name in VIT_VARIANTS:
    register_backbone(_name)(_vit_builder(_name))
for _name, (_ir_depth, _attention) in HYBRID_VARIANTS.items():
    register_backbone(_name)(_hybrid_builder(_name, _ir_depth, _attention))
del _name, _ir_depth, _attention
