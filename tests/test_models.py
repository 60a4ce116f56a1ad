"""Backbones, attention blocks, the backbone registry, parameter and FLOP counting."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskstudy.models import (
    UnknownNameError,
    available_backbones,
    build_backbone,
    count_flops,
    count_parameters,
    register_backbone,
    registry,
)
from maskstudy.models.attention import ATTENTION, CBAM, SEModule, build_attention, reference_backward
from maskstudy.models.iresnet import BASE_WIDTHS, STAGE_LAYERS, IRBlock, IResNet, feature_map_size, scaled_channels

IR_NAMES = [f"ir{d}{suffix}" for d in (18, 34, 50, 100) for suffix in ("", "_se", "_cbam")]

# Pinned counts (embedding 512, width 0.25). Plain ir50/ir100 at width 1.0 match arcface_torch's r50/r100.
PINNED_PARAMS = {
    ("ir18", 112): 3_914_752,
    ("ir18_se", 112): 3_922_976,
    ("ir18_cbam", 112): 3_923_760,
    ("ir18", 56): 1_752_064,
    ("ir18_se", 56): 1_760_288,
    ("ir18_cbam", 56): 1_761_072,
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry_lists_every_ir_variant():
    names = available_backbones()
    assert names == sorted(names)
    assert set(IR_NAMES) <= set(names)


@pytest.mark.parametrize("name", [n for n in IR_NAMES if n.startswith(("ir18", "ir34"))])
def test_forward_shape_modes_and_channels_last(name):
    model = build_backbone(name, width=0.125, input_size=32, embedding_size=32)
    x = torch.randn(2, 3, 32, 32)

    model.train()
    out = model(x)
    assert out.shape == (2, 32) and torch.isfinite(out).all()

    model.eval()
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(ref, model(x))  # eval is deterministic (running BN stats, no dropout)
        model_cl = model.to(memory_format=torch.channels_last)
        out_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("name", [n for n in IR_NAMES if n.startswith(("ir50", "ir100"))])
def test_deep_variants_forward_shape(name):
    model = build_backbone(name, width=0.125, input_size=32, embedding_size=16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 16) and torch.isfinite(out).all()
    assert len(model.layer3) == STAGE_LAYERS[int(name[2:].split("_")[0])][2]


def _plain_ir_params(depth: int, width: float, input_size: int, embedding_size: int) -> int:
    """Parameter count of a plain IR-ResNet, by hand from the architecture."""
    stem = scaled_channels(64, width)
    total = 3 * 9 * stem + 2 * stem + stem  # conv, BN, PReLU
    c_in = stem
    for n_blocks, base in zip(STAGE_LAYERS[depth], BASE_WIDTHS):
        c = scaled_channels(base, width)
        for i in range(n_blocks):
            total += 2 * c_in + 9 * c_in * c + 2 * c + c + 9 * c * c + 2 * c
            if c_in != c or i == 0:  # first block of a stage has stride 2 -> conv1x1 + BN shortcut
                total += c_in * c + 2 * c
            c_in = c
    side = feature_map_size(input_size)
    total += 2 * c_in + (c_in * side * side + 1) * embedding_size + 2 * embedding_size
    return total


def _attention_params(depth: int, width: float, kind: str) -> int:
    total = 0
    for n_blocks, base in zip(STAGE_LAYERS[depth], BASE_WIDTHS):
        c = scaled_channels(base, width)
        h = max(c // 16, 8)
        mlp = c * h + h + h * c + c
        total += n_blocks * (mlp + (2 * 7 * 7 if kind == "cbam" else 0))
    return total


@pytest.mark.parametrize("depth", [18, 34, 50, 100])
@pytest.mark.parametrize("input_size", [112, 56])
def test_parameter_counts_match_hand_count(depth, input_size):
    width, emb = 0.25, 512
    counts = {
        kind: count_parameters(build_backbone(f"ir{depth}{suffix}", width=width, input_size=input_size))
        for kind, suffix in (("none", ""), ("se", "_se"), ("cbam", "_cbam"))
    }
    plain = _plain_ir_params(depth, width, input_size, emb)
    assert counts["none"] == plain
    assert counts["se"] == plain + _attention_params(depth, width, "se")
    assert counts["cbam"] == plain + _attention_params(depth, width, "cbam")
    assert counts["none"] < counts["se"] < counts["cbam"]


@pytest.mark.parametrize(("name", "input_size"), sorted(PINNED_PARAMS))
def test_pinned_parameter_counts(name, input_size):
    model = build_backbone(name, width=0.25, input_size=input_size, embedding_size=512)
    assert count_parameters(model) == PINNED_PARAMS[(name, input_size)]


def test_full_width_counts_match_arcface_torch():
    assert count_parameters(build_backbone("ir50")) == 43_590_848
    assert count_parameters(build_backbone("ir100")) == 65_156_160


def test_one_forward_at_112():
    model = build_backbone("ir18_cbam", width=0.125, input_size=112, embedding_size=16).eval()
    assert model.feature_map_size == 7
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 112, 112))
        out = model(torch.randn(1, 3, 112, 112))
    assert feats.shape == (1, model.out_channels, 7, 7)
    assert out.shape == (1, 16)


def test_width_rounding_and_feature_map_size():
    assert scaled_channels(64, 0.125) == 8
    assert scaled_channels(64, 0.1) == 8  # min 8
    assert scaled_channels(64, 0.3) == 16  # 19.2 -> nearest multiple of 8
    assert scaled_channels(512, 0.25) == 128
    assert build_backbone("ir18", width=0.5, input_size=32).stage_channels == (32, 64, 128, 256)
    assert [feature_map_size(n) for n in (112, 96, 64, 56, 32)] == [7, 6, 4, 4, 2]


def test_input_size_errors():
    with pytest.raises(ValueError, match="input_size"):
        build_backbone("ir18", width=0.125, input_size=8)
    with pytest.raises(ValueError, match="input_size"):
        build_backbone("ir18", width=0.125, input_size=56.0)
    model = build_backbone("ir18", width=0.125, input_size=32).eval()
    with pytest.raises(ValueError, match="32x32"):
        model(torch.randn(1, 3, 64, 64))


def test_stage_names_head_and_feature_scale():
    model = build_backbone("ir18_se", width=0.125, input_size=32, embedding_size=24, dropout=0.2)
    assert model.feature_layers() == [model.layer1, model.layer2, model.layer3, model.layer4]
    assert model.feature_layers()[-1] is model.layer4
    assert model.dropout.p == 0.2
    assert model.fc.out_features == 24 and model.fc.in_features == model.out_channels * 2 * 2
    assert not model.features.weight.requires_grad and model.features.bias.requires_grad
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - 24
    loose = build_backbone("ir18", width=0.125, input_size=32, freeze_feature_scale=False)
    assert loose.features.weight.requires_grad


def test_init_and_backward():
    model = build_backbone("ir18_cbam", width=0.125, input_size=32, embedding_size=16)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in bns)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in bns)
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


# --- attention placement --------------------------------------------------------------------


def test_block_module_order():
    block = build_backbone("ir18_cbam", width=0.125, input_size=32).layer2[0]
    assert list(block._modules) == ["bn1", "conv1", "bn2", "prelu", "conv2", "bn3", "attn", "downsample"]
    assert isinstance(block.attn, CBAM) and block.downsample is not None
    plain = build_backbone("ir18", width=0.125, input_size=32).layer2[1]
    assert isinstance(plain.attn, nn.Identity) and plain.downsample is None


@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_attention_after_last_bn_before_add(attention):
    block = IRBlock(8, 16, stride=2, attention=attention).eval()
    seen = {}
    block.bn3.register_forward_hook(lambda m, i, o: seen.__setitem__("bn3", o))
    block.attn.register_forward_hook(lambda m, i, o: seen.update(attn_in=i[0], attn_out=o))
    block.downsample.register_forward_hook(lambda m, i, o: seen.__setitem__("shortcut", o))
    with torch.no_grad():
        out = block(torch.randn(2, 8, 6, 6))
    assert seen["attn_in"] is seen["bn3"]
    torch.testing.assert_close(out, seen["attn_out"] + seen["shortcut"])
    assert not torch.allclose(seen["attn_out"], seen["bn3"])  # the attention actually reweights


# --- attention formulas ---------------------------------------------------------------------


def _mlp(v, mlp):
    return F.linear(F.relu(F.linear(v, mlp[0].weight, mlp[0].bias)), mlp[2].weight, mlp[2].bias)


def test_se_matches_formula():
    se = SEModule(4, reduction=2, min_hidden=1).double()
    assert se.hidden == 2
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    gate = torch.sigmoid(_mlp(x.mean(dim=(2, 3)), se.mlp))
    torch.testing.assert_close(se(x), x * gate.view(1, 4, 1, 1))


def test_se_by_hand_numbers():
    se = SEModule(2, reduction=1, min_hidden=1).double()
    with torch.no_grad():
        se.mlp[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
        se.mlp[0].bias.zero_()
        se.mlp[2].weight.copy_(torch.eye(2))
        se.mlp[2].bias.copy_(torch.tensor([0.0, 1.0]))
    x = torch.tensor([[[[1.0, 3.0]], [[-2.0, -4.0]]]], dtype=torch.float64)  # channel means 2, -3
    # hidden = relu([2, 3]) = [2, 3]; logits = [2, 4]
    expected = x * torch.sigmoid(torch.tensor([2.0, 4.0], dtype=torch.float64)).view(1, 2, 1, 1)
    torch.testing.assert_close(se(x), expected)


def test_cbam_matches_formula():
    cbam = CBAM(4, reduction=2, spatial_kernel=3, min_hidden=1).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    avg, mx = x.mean(dim=(2, 3)), x.amax(dim=(2, 3))
    channel = torch.sigmoid(_mlp(avg, cbam.mlp) + _mlp(mx, cbam.mlp))
    x1 = x * channel[:, :, None, None]
    pooled = torch.cat([x1.mean(dim=1, keepdim=True), x1.amax(dim=1, keepdim=True)], dim=1)
    spatial = torch.sigmoid(F.conv2d(pooled, cbam.spatial.weight, padding=1))
    torch.testing.assert_close(cbam(x), x1 * spatial)


@pytest.mark.parametrize("module", [SEModule(16), CBAM(16)])
def test_attention_channels_last_and_min_hidden(module):
    assert module.hidden == 8  # 16 // 16 = 1, raised to the minimum
    assert SEModule(512).hidden == 32
    x = torch.randn(2, 16, 5, 5)
    ref = module(x)
    out = module(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref)


def test_cbam_kernel_validation():
    with pytest.raises(ValueError, match="odd"):
        CBAM(8, spatial_kernel=4)


# --- errors and registration ----------------------------------------------------------------


def test_unknown_backbone_lists_known_names():
    with pytest.raises(KeyError) as err:
        build_backbone("ir18_sse")
    message = str(err.value)
    assert all(name in message for name in available_backbones())
    assert "Did you mean 'ir18_se'" in message
    with pytest.raises(ValueError):
        build_backbone("resnet18")


def test_unknown_attention_lists_known_names():
    with pytest.raises(UnknownNameError) as err:
        build_attention("eca", 8)
    assert all(name in str(err.value) for name in ATTENTION)
    with pytest.raises(ValueError, match="cbam"):
        IResNet((1, 1, 1, 1), width=0.125, input_size=32, attention="cbma")


def test_register_backbone_decorator():
    seen = {}

    @register_backbone("tiny_test_net")
    def tiny(width, input_size, embedding_size, dropout, **kw):
        seen.update(width=width, input_size=input_size, embedding_size=embedding_size, dropout=dropout, **kw)
        return nn.Linear(3, embedding_size)

    try:
        assert "tiny_test_net" in available_backbones()
        model = build_backbone("tiny_test_net", width=0.5, input_size=64, embedding_size=7, extra=1)
        assert isinstance(model, nn.Linear)
        assert seen == dict(width=0.5, input_size=64, embedding_size=7, dropout=0.0, extra=1)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("tiny_test_net")(tiny)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone("ir18")(tiny)
    finally:
        registry._BACKBONES.pop("tiny_test_net", None)


# --- counting -------------------------------------------------------------------------------


def test_count_flops_hand_count():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),  # 8x8 -> 4x4
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
    )
    model.train()
    conv_macs = 4 * 4 * 4 * (3 * 3 * 3)  # out elements x (in channels x k x k)
    linear_macs = 64 * 10
    assert count_flops(model, input_size=8) == 2 * (conv_macs + linear_macs)
    assert model.training  # mode restored
    assert count_parameters(model) == (4 * 27 + 4) + 8 + (64 * 10 + 10)


def test_count_flops_backbone_ordering():
    plain = count_flops(build_backbone("ir18", width=0.125, input_size=32))
    se = count_flops(build_backbone("ir18_se", width=0.125, input_size=32))
    cbam = count_flops(build_backbone("ir18_cbam", width=0.125, input_size=32))
    assert 0 < plain < se < cbam


# --- fused CPU backward, BatchNorm folding ---------------------------------------------------------


def _grads(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, reference: bool):
    from maskstudy.models.attention import reference_backward

    x = x.detach().clone().requires_grad_()
    with reference_backward() if reference else torch.enable_grad():
        out = module(x)
        grads = torch.autograd.grad(out, [x, *module.parameters()], grad_out)
    return out.detach(), grads


@pytest.mark.parametrize("module", [SEModule(16), CBAM(16), CBAM(32, spatial_kernel=3)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_attention_backward_matches_autograd(module, channels_last):
    """The fused CPU backward of SE / CBAM: the reference forward bitwise, autograd's gradients up to rounding,
    the memory format kept, and several backward passes through one graph (Grad-CAM's retain_graph)."""
    x = torch.randn(4, module.channels, 9, 9)
    x[1, :, 2, 3] = 1.0  # a channel tie at one pixel: its gradient is split evenly, as amax's
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=memory_format)
    grad_out = torch.randn_like(x)
    ref_out, ref_grads = _grads(module, x, grad_out, reference=True)
    out, grads = _grads(module, x, grad_out, reference=False)
    assert torch.equal(out, ref_out) and out.is_contiguous(memory_format=memory_format)
    assert grads[0].is_contiguous(memory_format=memory_format)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())
    with torch.no_grad():
        assert torch.equal(module(x), module.reference_forward(x))
    leaf = x.detach().clone().requires_grad_()
    out = module(leaf)
    first = torch.autograd.grad(out, leaf, grad_out, retain_graph=True)[0]
    assert torch.equal(torch.autograd.grad(out, leaf, grad_out)[0], first)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_cbam_sends_a_spatial_max_tie_to_one_position(channels_last):
    """A constant channel's spatial max is an 81-way tie: autograd's amax splits its gradient evenly, the fused
    backward sends it to the one position adaptive max pooling reports; elsewhere the gradients agree, and the
    plane's total is the same."""
    module = CBAM(16)
    x = torch.randn(4, 16, 9, 9)
    x[0, 1] = 0.5
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    grad_out = torch.randn_like(x)
    _, (ref, *ref_params) = _grads(module, x, grad_out, reference=True)
    _, (got, *got_params) = _grads(module, x, grad_out, reference=False)
    tol = {"rtol": 1e-5, "atol": 1e-6 * ref.abs().max().item()}
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[0, 1] = False
    torch.testing.assert_close(got[outside], ref[outside], **tol)
    torch.testing.assert_close(got[0, 1].sum(), ref[0, 1].sum(), rtol=1e-5, atol=1e-5)
    moved = (got[0, 1] - ref[0, 1]).flatten()
    _, index = torch.nn.functional.adaptive_max_pool2d(x[:1, 1:2], 1, return_indices=True)
    share = moved[index.item()]
    rest = torch.cat([moved[:index.item()], moved[index.item() + 1:]])
    assert share.abs() > 1e-4  # the whole max gradient at one position ...
    torch.testing.assert_close(rest, torch.full_like(rest, -share.item() / 80), rtol=1e-3, atol=1e-7)  # ... not 1/81
    for got_p, ref_p in zip(got_params, ref_params):
        torch.testing.assert_close(got_p, ref_p, rtol=1e-5, atol=1e-6 * ref_p.abs().max().item())


def test_fused_cbam_backward_on_any_layout():
    """A map whose width is outer to its height in memory, and an expanded output gradient (from ``sum``): the
    fused backward still matches autograd's."""
    module = CBAM(16)
    x = torch.randn(4, 16, 7, 9).transpose(2, 3).contiguous().transpose(2, 3)
    got = x.clone().requires_grad_()
    module(got).sum().backward()
    want = x.contiguous().requires_grad_()
    with reference_backward():
        module(want).sum().backward()
    torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["SEModule", "CBAM", "CBAM with spatial bias"])
def test_fused_attention_gradcheck(name):
    from maskstudy.models.attention import _CBAMFunction, _SEFunction

    if name == "SEModule":
        module = SEModule(6, min_hidden=3)
    else:
        module = CBAM(6, min_hidden=3, spatial_kernel=3, start_open=0.5 if "bias" in name else None)
        if "bias" in name:  # away from the open start's zero weights
            torch.nn.init.normal_(module.mlp[2].weight)
            torch.nn.init.normal_(module.spatial.weight)
    module = module.double()
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    params = list(module.parameters())
    if name == "SEModule":
        assert torch.autograd.gradcheck(_SEFunction.apply, (x, *params))
    elif module.spatial.bias is None:
        assert torch.autograd.gradcheck(lambda *t: _CBAMFunction.apply(*t, None, module.spatial.padding), (x, *params))
    else:
        assert torch.autograd.gradcheck(lambda *t: _CBAMFunction.apply(*t, module.spatial.padding), (x, *params))


@pytest.mark.parametrize("module", [SEModule(16, start_open=5.0), CBAM(16, start_open=5.0)])
def test_open_start_is_close_to_the_identity(module):
    """``start_open``: every sigmoid starts at sigmoid(start_open) whatever the input, so the module scales its input
    by that (SE) or its square (CBAM): within 1.4 % of the identity at 5.0; the gates are readable."""
    x = torch.randn(3, 16, 6, 6) * 4
    with torch.no_grad():
        out = module(x)
    scale = torch.sigmoid(torch.tensor(5.0))
    expected = scale if isinstance(module, SEModule) else scale * scale
    torch.testing.assert_close(out, x * expected)
    assert ((out - x).norm() / x.norm()).item() < 0.014
    with torch.no_grad():
        if isinstance(module, CBAM):
            gate = module.channel_gate(x)
            torch.testing.assert_close(module.spatial_gate(x * gate[:, :, None, None]), torch.full((3, 1, 6, 6), scale.item()))
        else:
            gate = module.gate(x)
    torch.testing.assert_close(gate, torch.full((3, 16), scale.item()))


def test_fused_cbam_backward_with_spatial_bias():
    """CBAM started open has a spatial bias: the fused backward gives autograd's gradient for it and the rest."""
    module = CBAM(16, start_open=2.0)
    torch.nn.init.normal_(module.mlp[2].weight, std=0.1)
    torch.nn.init.normal_(module.spatial.weight, std=0.1)
    x = torch.randn(4, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn_like(x)
    ref_out, ref_grads = _grads(module, x, grad_out, reference=True)
    out, grads = _grads(module, x, grad_out, reference=False)
    assert torch.equal(out, ref_out) and len(grads) == 1 + 6
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())


def test_fast_prelu_is_nn_prelu_with_a_vectorised_backward():
    from maskstudy.models.iresnet import FastPReLU, _PReLUFunction

    prelu = FastPReLU(5)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([0.25, -0.5, 0.0, 1.5, 0.1]))
    reference = nn.PReLU(5)
    reference.load_state_dict(prelu.state_dict())  # the same parameter name: checkpoints load either way
    for channels_last in (False, True):
        x = torch.randn(3, 5, 6, 7)
        x[0, 0, 0, :3] = 0.0  # x = 0 takes the weight's slope, as in torch
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        grad = torch.randn_like(x)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, want = prelu(x1), reference(x2)
        assert torch.equal(out, want)
        got_x, got_w = torch.autograd.grad(out, [x1, prelu.weight], grad)
        want_x, want_w = torch.autograd.grad(want, [x2, reference.weight], grad)
        assert torch.equal(got_x, want_x)  # grad * exactly 1 or the weight
        torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-5)
    xd = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    wd = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_PReLUFunction.apply, (xd, wd))
    assert isinstance(build_backbone("ir18", width=0.125, input_size=32).layer1[0].prelu, FastPReLU)


def test_fused_backward_trains_like_autograd():
    """A few SGD steps of a CBAM network with the fused backward (and channels_last) against autograd's
    reference backward in the contiguous format: the losses agree up to rounding."""
    from maskstudy.models.attention import reference_backward

    losses = {}
    for fused, channels_last in ((False, False), (True, False), (True, True)):
        torch.manual_seed(0)
        model = build_backbone("ir18_cbam", width=0.125, input_size=32, embedding_size=16)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=memory_format)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        curve = []
        with contextlib.nullcontext() if fused else reference_backward():
            for _ in range(4):
                x = torch.randn(16, 3, 32, 32, generator=g).contiguous(memory_format=memory_format)
                target = torch.randn(16, 16, generator=g)
                loss = (model(x) - target).square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                curve.append(loss.item())
        losses[fused, channels_last] = curve
    for curve in losses.values():
        np.testing.assert_allclose(curve, losses[False, False], rtol=1e-4)


@pytest.mark.parametrize("name, kw", [("ir18", {}), ("ir18_se", {}), ("ir18_cbam", {}),
                                      ("hybrid_ir18_cbam_vit", {"depth": 1}), ("vit_tiny", {"depth": 1})])
def test_fold_batchnorm_equals_the_model_in_eval(name, kw):
    from maskstudy.models import fold_batchnorm

    model = build_backbone(name, width=0.25, input_size=32, embedding_size=16, **kw)
    with torch.no_grad():  # BatchNorm statistics and affine parameters far from their initial values
        for _ in range(2):
            model(torch.randn(8, 3, 32, 32) * 3 + 1)
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.weight.requires_grad:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.3)
    model.eval()
    folded = fold_batchnorm(model)
    assert not folded.training and folded is not model
    left = [n for n, m in folded.named_modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert all(n.endswith(".bn1") and ".layer" in f".{n}" for n in left)  # only BNs before a convolution remain
    assert sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules()) > len(left)  # untouched
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        for memory_format in (torch.contiguous_format, torch.channels_last):
            got = folded(x.contiguous(memory_format=memory_format))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
            assert (F.normalize(got) - F.normalize(want)).abs().max() < 1e-5
    assert fold_batchnorm(model.train()).training is False and model.training  # the original keeps its mode
