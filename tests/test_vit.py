"""ViT and hybrid IR-ResNet + ViT backbones: shapes, errors, Grad-CAM hooks, counting, a few training steps.

Everything runs on one CPU thread with tiny models (width 0.25-0.5, 1-2 blocks, 32/56-pixel inputs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from maskstudy.models import available_backbones, build_backbone, count_flops, count_parameters
from maskstudy.models.iresnet import STAGE_LAYERS, IResNet
from maskstudy.models.vit import (
    HYBRID_VARIANTS,
    VIT_VARIANTS,
    FaceViT,
    IRConvStem,
    default_patch_size,
    scaled_embed_dim,
)
from maskstudy.train.losses import build_margin_head

VIT_NAMES = sorted(VIT_VARIANTS)
HYBRID_NAMES = sorted(HYBRID_VARIANTS)
NEW_NAMES = VIT_NAMES + HYBRID_NAMES

# Pinned counts: width 0.25, depth 2, embedding 16.
PINNED_PARAMS = {
    ("vit_tiny", 56): 69_168,
    ("vit_tiny", 32): 67_584,
    ("vit_small", 56): 248_880,
    ("vit_small", 32): 245_712,
    ("hybrid_ir18_vit", 56): 109_552,
    ("hybrid_ir18_vit", 32): 107_968,
    ("hybrid_ir18_se_vit", 56): 111_216,
    ("hybrid_ir18_cbam_vit", 56): 111_608,
}


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _tiny(name: str, input_size: int = 32, embedding_size: int = 16, **kw) -> FaceViT:
    kw.setdefault("width", 0.25)
    kw.setdefault("depth", 2)
    return build_backbone(name, input_size=input_size, embedding_size=embedding_size, **kw)


# --- registry, shapes, errors -----------------------------------------------------------------


def test_new_names_are_registered():
    assert set(NEW_NAMES) <= set(available_backbones())
    assert {"vit_tiny", "vit_small", "hybrid_ir18_vit", "hybrid_ir18_cbam_vit"} <= set(NEW_NAMES)


@pytest.mark.parametrize("name", NEW_NAMES)
@pytest.mark.parametrize("input_size", [32, 56])
def test_forward_shape_train_and_eval(name, input_size):
    model = _tiny(name, input_size=input_size)
    x = torch.randn(2, 3, input_size, input_size)
    out = model(x)
    assert out.shape == (2, 16) and torch.isfinite(out).all()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert model.input_size == input_size and model.embedding_size == 16
    # 56 -> 7x7 tokens (patch 8 / stem 56 -> 14 -> 2x2 patches), 32 -> 4x4
    assert model.grid_size == {32: 4, 56: 7}[input_size]


def test_widths_heads_and_patch_sizes():
    assert [default_patch_size(s) for s in (32, 56, 64, 96, 112)] == [8, 8, 8, 16, 16]
    assert scaled_embed_dim(192, 0.5, 3) == 96
    assert scaled_embed_dim(192, 0.25, 3) == 48
    assert scaled_embed_dim(384, 0.5, 6) == 192
    assert scaled_embed_dim(192, 0.3, 3) == 57  # 57.6 -> 19 per head
    assert scaled_embed_dim(192, 0.01, 3) == 24  # at least 8 per head

    tiny = build_backbone("vit_tiny", width=0.5, input_size=112, embedding_size=8, depth=1)
    assert tiny.embed_dim == 96 and tiny.blocks[0].attn.num_heads == 3 and len(tiny.blocks) == 1
    assert tiny.patch_embed.proj.kernel_size == (16, 16) and tiny.grid_size == 7
    assert tiny.pos_embed.shape == (1, 1 + 49, 96)
    small = build_backbone("vit_small", width=0.5, input_size=56, embedding_size=8, depth=1)
    assert small.embed_dim == 192 and small.blocks[0].attn.num_heads == 6
    assert small.patch_embed.proj.kernel_size == (8, 8) and small.grid_size == 7
    assert len(build_backbone("vit_tiny", width=0.25, input_size=32).blocks) == 12  # default depth


def test_hybrid_structure():
    model = build_backbone("hybrid_ir18_cbam_vit", width=0.25, input_size=56, embedding_size=8)
    stem = model.patch_embed.backbone
    assert isinstance(stem, IRConvStem) and [n for n, _ in stem.named_children()] == [
        "conv1", "bn1", "prelu", "layer1", "layer2"
    ]
    assert len(stem.layer1) == STAGE_LAYERS[18][0] and stem.attention == "cbam"
    assert stem.out_channels == 32 and stem.feature_map_size == 14  # 128 * 0.25; 56 -> 28 -> 14
    assert model.patch_embed.proj.kernel_size == (2, 2) and model.grid_size == 7
    assert len(model.blocks) == 4 and model.embed_dim == 48 and model.blocks[0].attn.num_heads == 3
    with torch.no_grad():
        assert stem(torch.randn(1, 3, 56, 56)).shape == (1, 32, 14, 14)

    three = build_backbone("hybrid_ir18_vit", width=0.25, input_size=112, embedding_size=8, depth=1, cnn_stages=3)
    assert three.patch_embed.backbone.feature_map_size == 14 and three.patch_embed.proj.kernel_size == (1, 1)
    assert three.grid_size == 14 and three.patch_embed.backbone.out_channels == 64
    one = build_backbone("hybrid_ir18_vit", width=0.25, input_size=32, embedding_size=8, depth=1, cnn_stages=1)
    assert one.patch_embed.proj.kernel_size == (4, 4) and one.grid_size == 4
    assert build_backbone("hybrid_ir18_vit", width=0.25, input_size=56, depth=1, patch_size=1).grid_size == 14


def test_hybrid_stem_keeps_iresnet_init():
    """timm's ViT init re-draws every nn.Linear; the stem's SE/CBAM MLPs must keep the IResNet's default init."""
    torch.manual_seed(1)
    model = build_backbone("hybrid_ir18_se_vit", width=0.25, input_size=32, depth=1)
    torch.manual_seed(1)
    ir = IResNet(STAGE_LAYERS[18], width=0.25, input_size=32, embedding_size=1, attention="se")
    stem_state = model.patch_embed.backbone.state_dict()
    for key, value in stem_state.items():
        torch.testing.assert_close(value, ir.state_dict()[key], rtol=0, atol=0)
    bn = model.patch_embed.backbone.layer1[0].bn1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))


def test_head_dropout_and_feature_scale():
    model = _tiny("vit_tiny", dropout=0.3, drop_path_rate=0.1)
    assert model.fc.in_features == model.embed_dim and model.fc.out_features == 16
    assert isinstance(model.features, nn.BatchNorm1d)
    assert model.dropout.p == 0.3 and model.head_drop is model.dropout
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert not model.features.weight.requires_grad and model.features.bias.requires_grad
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - 16
    loose = _tiny("vit_tiny", freeze_feature_scale=False)
    assert loose.features.weight.requires_grad


def test_global_average_pooling_option():
    model = _tiny("vit_tiny", global_pool="avg")
    assert model.cls_token is None and model.num_prefix_tokens == 0
    assert model.pos_embed.shape[1] == 16
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    hybrid = _tiny("hybrid_ir18_vit", global_pool="avg")
    assert hybrid.num_prefix_tokens == 0 and hybrid(torch.randn(2, 3, 32, 32)).shape == (2, 16)
    with pytest.raises(ValueError, match="global_pool"):
        _tiny("vit_tiny", global_pool="max")


def test_input_size_errors():
    model = _tiny("vit_tiny").eval()
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        model(torch.randn(1, 3, 64, 64))
    hybrid = _tiny("hybrid_ir18_vit").eval()
    with pytest.raises(ValueError, match="input_size"):
        hybrid(torch.randn(1, 3, 56, 56))
    with pytest.raises(ValueError, match="multiple of patch_size 8"):
        build_backbone("vit_tiny", width=0.25, input_size=60)
    with pytest.raises(ValueError, match="multiple of patch_size 16"):
        build_backbone("vit_small", width=0.25, input_size=100)
    with pytest.raises(ValueError, match="input_size"):
        build_backbone("vit_tiny", width=0.25, input_size=56.0)
    with pytest.raises(ValueError, match="patch_size"):
        build_backbone("hybrid_ir18_vit", width=0.25, input_size=36)  # 36 -> 18 -> 9, not a multiple of 2
    with pytest.raises(ValueError, match="cnn_stages"):
        build_backbone("hybrid_ir18_vit", width=0.25, input_size=32, cnn_stages=4)
    with pytest.raises(ValueError, match="depth"):
        build_backbone("vit_tiny", width=0.25, input_size=32, depth=0)
    with pytest.raises(ValueError, match="width"):
        build_backbone("vit_small", width=0.0, input_size=32)


def test_unknown_name_lists_new_backbones():
    with pytest.raises(KeyError) as err:
        build_backbone("vit_tiy")
    message = str(err.value)
    assert all(name in message for name in NEW_NAMES)
    assert "Did you mean 'vit_tiny'" in message
    with pytest.raises(ValueError, match="hybrid_ir18_cbam_vit"):
        build_backbone("hybrid_ir18_cbma_vit")


# --- Grad-CAM hooks ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit_tiny", "hybrid_ir18_cbam_vit"])
@pytest.mark.parametrize("global_pool", ["token", "avg"])
def test_cam_target_layer_and_reshape_transform(name, global_pool):
    model = _tiny(name, input_size=56, global_pool=global_pool).eval()
    assert model.cam_target_layer is model.blocks[-1].norm1
    seen = {}
    handle = model.cam_target_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("tokens", o))
    try:
        with torch.no_grad():
            model(torch.randn(3, 3, 56, 56))
    finally:
        handle.remove()
    tokens = seen["tokens"]
    assert tokens.shape == (3, model.num_prefix_tokens + 49, model.embed_dim)
    fmap = model.reshape_transform(tokens)
    assert fmap.shape == (3, model.embed_dim, 7, 7)
    # Patch token k sits at row k // 7, column k % 7.
    patches = tokens[:, model.num_prefix_tokens :]
    torch.testing.assert_close(fmap[:, :, 2, 5], patches[:, 2 * 7 + 5])
    with pytest.raises(ValueError, match="tokens"):
        model.reshape_transform(tokens[:, 1:] if global_pool == "token" else tokens[:, :-1])


def test_pytorch_grad_cam_runs_on_vit():
    cam_lib = pytest.importorskip("pytorch_grad_cam")

    class EmbeddingUnit:
        def __call__(self, output):
            return output[..., 0]

    model = _tiny("vit_tiny", input_size=32).eval()
    cam = cam_lib.GradCAM(
        model=model, target_layers=[model.cam_target_layer], reshape_transform=model.reshape_transform
    )
    with cam:
        heat = cam(input_tensor=torch.randn(2, 3, 32, 32), targets=[EmbeddingUnit(), EmbeddingUnit()])
    assert heat.shape == (2, 32, 32) and np.isfinite(heat).all()
    assert heat.max() > 0  # gradients reach the patch tokens through the class token's attention


# --- parameter and FLOP counts ----------------------------------------------------------------


def _vit_params(dim: int, depth: int, patch: int, tokens: int, prefix: int, emb: int) -> int:
    block = 12 * dim * dim + 13 * dim  # 2 LayerNorms, qkv, proj, fc1 (4x), fc2
    return (3 * patch * patch * dim + dim) + prefix * dim + (tokens + prefix) * dim + depth * block + 2 * dim + (
        dim * emb + emb
    ) + 2 * emb


@pytest.mark.parametrize("name", VIT_NAMES)
@pytest.mark.parametrize(("input_size", "global_pool"), [(32, "token"), (56, "token"), (56, "avg")])
def test_vit_parameter_count_by_hand(name, input_size, global_pool):
    model = _tiny(name, input_size=input_size, global_pool=global_pool)
    prefix = 1 if global_pool == "token" else 0
    expected = _vit_params(model.embed_dim, 2, 8, model.grid_size**2, prefix, 16)
    assert count_parameters(model) == expected


def test_hybrid_parameter_count_by_hand():
    model = _tiny("hybrid_ir18_cbam_vit", input_size=56)
    stem = IRConvStem(18, 2, width=0.25, input_size=56, attention="cbam")
    d, c = model.embed_dim, stem.out_channels
    transformer = _vit_params(d, 2, 2, 49, 1, 16) - (3 * 2 * 2 * d + d)
    assert count_parameters(model) == count_parameters(stem) + (c * 2 * 2 * d + d) + transformer


@pytest.mark.parametrize(("name", "input_size"), sorted(PINNED_PARAMS))
def test_pinned_parameter_counts(name, input_size):
    assert count_parameters(_tiny(name, input_size=input_size)) == PINNED_PARAMS[(name, input_size)]


def test_count_flops_includes_attention():
    """FLOPs by hand: patch conv, per-block linears (24 T D^2) and attention matmuls (4 T^2 D), head."""
    model = _tiny("vit_tiny", input_size=56)  # D = 48, 7x7 patches + class token
    d, t, n, p = model.embed_dim, 50, 49, 8
    patch = 2 * n * d * 3 * p * p
    block = 24 * t * d * d + 4 * t * t * d
    head = 2 * d * 16
    assert count_flops(model) == patch + 2 * block + head
    assert model.training  # mode restored


@pytest.mark.parametrize("name", ["vit_small", "hybrid_ir18_se_vit"])
def test_count_flops_fused_equals_explicit_attention(name):
    model = _tiny(name, input_size=56)
    fused = count_flops(model)
    for block in model.blocks:
        block.attn.fused_attn = False  # q @ k^T, softmax, @ v as plain bmm
    assert count_flops(model) == fused


def test_flop_counter_counts_cpu_attention_backward():
    from torch.utils.flop_counter import FlopCounterMode

    model = _tiny("vit_tiny", input_size=32, depth=1)
    x = torch.randn(2, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    fused = counter.get_total_flops()
    model.zero_grad()
    model.blocks[0].attn.fused_attn = False
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    assert fused == counter.get_total_flops()


def test_hybrid_flops_exceed_stem_flops():
    model = _tiny("hybrid_ir18_vit", input_size=56)
    stem = model.patch_embed.backbone
    d, t = model.embed_dim, 50
    proj = 2 * 49 * d * stem.out_channels * 2 * 2
    transformer = 2 * (24 * t * d * d + 4 * t * t * d) + 2 * d * 16
    assert count_flops(model) == count_flops(stem, input_size=56) + proj + transformer


# --- a few training steps ---------------------------------------------------------------------


def _colour_blobs(num_classes: int = 4, per_class: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_classes`` colours, each a Gaussian blob at a class-specific place, plus noise."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
    centres = [(8, 8), (8, 24), (24, 8), (24, 24)]
    images, labels = [], []
    for k in range(num_classes):
        cy, cx = centres[k]
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 5.0**2))
        for _ in range(per_class):
            images.append(colours[k][:, None, None] * blob + 0.2 * torch.randn(3, size, size, generator=g))
            labels.append(k)
    return torch.stack(images), torch.tensor(labels)


@pytest.mark.parametrize("name", NEW_NAMES)
def test_arcface_training_lowers_loss(name):
    """Build and train a few steps: SGD + ArcFace (s=64, m=0.5), the backbone's gradient clipped at norm 5 as in
    ``maskstudy.train`` (without clipping, ViTs under s=64 oscillate for the first dozen steps)."""
    model = _tiny(name, input_size=32, width=0.5)
    head = build_margin_head("arcface", 16, 4)
    images, labels = _colour_blobs()
    backbone_params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD([*backbone_params, *head.parameters()], lr=0.02, momentum=0.9)
    model.train()
    losses = []
    for _ in range(15):
        loss, _ = head(model(images), labels)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(backbone_params, 5.0)
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.2 * losses[0], losses
