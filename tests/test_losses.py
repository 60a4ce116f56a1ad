"""Combined-margin head (SphereFace / CosFace / ArcFace) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from maskstudy.train.losses import MARGIN_PRESETS, MarginHead, build_margin_head

S = 64.0
DEG = math.pi / 180


def _toy_head(name: str) -> MarginHead:
    """2-D toy: class 0's centre at 0 deg, class 1's at 90 deg (deliberately not unit length)."""
    head = build_margin_head(name, embedding_size=2, num_classes=2, s=S)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))
    return head


def _at(angle_deg: float, norm: float = 5.0) -> list[float]:
    return [norm * math.cos(angle_deg * DEG), norm * math.sin(angle_deg * DEG)]


def _margin(name: str, theta: float) -> float:
    """Target cosine with the preset's margin, written out per loss."""
    if name == "softmax":
        return math.cos(theta)
    if name == "sphereface":
        return math.cos(1.35 * theta)
    if name == "cosface":
        return math.cos(theta) - 0.35
    if name == "arcface":
        return math.cos(theta + 0.5)
    if name == "combined":
        return math.cos(theta + 0.3) - 0.2
    raise AssertionError(name)


def _ce(target: float, other: float) -> float:
    # -log(e^t / (e^t + e^o)), stable form
    return math.log1p(math.exp(other - target)) if other < target else (other - target) + math.log1p(
        math.exp(target - other)
    )


@pytest.mark.parametrize("name", sorted(MARGIN_PRESETS))
def test_toy_logits_and_loss_by_hand(name):
    head = _toy_head(name)
    # Row 0: 30 deg from class 0, 60 deg from class 1, label 0. Row 1: same embedding, label 1.
    emb = torch.tensor([_at(30), _at(30)])
    labels = torch.tensor([0, 1])
    loss, logits = head(emb, labels)

    t0, o0 = S * _margin(name, 30 * DEG), S * math.cos(60 * DEG)
    t1, o1 = S * _margin(name, 60 * DEG), S * math.cos(30 * DEG)
    expected = torch.tensor([[t0, o0], [o1, t1]])
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-4)
    assert loss.item() == pytest.approx((_ce(t0, o0) + _ce(t1, o1)) / 2, rel=1e-4)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))


def test_named_presets_hand_values():
    theta = 30 * DEG
    cases = {
        "arcface": S * math.cos(theta + 0.5),
        "cosface": S * (math.cos(theta) - 0.35),
        "sphereface": S * math.cos(1.35 * theta),
        "softmax": S * math.cos(theta),
    }
    for name, value in cases.items():
        _, logits = _toy_head(name)(torch.tensor([_at(30)]), torch.tensor([0]))
        assert logits[0, 0].item() == pytest.approx(value, rel=1e-5), name
        assert logits[0, 1].item() == pytest.approx(S * 0.5, rel=1e-5), name  # non-target: s*cos(60)


def test_arcface_fallback_beyond_pi_minus_m():
    head = _toy_head("arcface")
    # 170 deg from class 0: theta + 0.5 > pi, so the target logit is s*(cos(theta) - m*sin(m)).
    loss, logits = head(torch.tensor([_at(170)]), torch.tensor([0]))
    theta = 170 * DEG
    assert logits[0, 0].item() == pytest.approx(S * (math.cos(theta) - 0.5 * math.sin(0.5)), rel=1e-5)
    assert torch.isfinite(loss) and torch.isfinite(logits).all()


CONFIGS = [MARGIN_PRESETS[n] for n in sorted(MARGIN_PRESETS)] + [(1.35, 0.5, 0.0), (2.0, 0.0, 0.0), (0.8, 0.5, 0.1)]


@pytest.mark.parametrize("m", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_target_logit_monotonic_in_theta(m):
    head = MarginHead(4, 3, m1=m[0], m2=m[1], m3=m[2])
    theta = torch.linspace(0, math.pi, 4001, dtype=torch.float64)
    target = head.target_cosine(torch.cos(theta))
    assert torch.isfinite(target).all()
    assert (target.diff() <= 1e-9).all()  # non-increasing everywhere (flat only at the acos clamp)
    assert target[0] - target[-1] > 1.0


def test_gradients_finite_at_extremes():
    head = build_margin_head("arcface", embedding_size=8, num_classes=5)
    emb = torch.randn(6, 8)
    centres = F.normalize(head.weight.detach(), dim=1)
    emb[0] = centres[1] * 3  # cos = 1 with its target
    emb[1] = -centres[2]  # cos = -1 with its target
    emb.requires_grad_(True)
    labels = torch.tensor([1, 2, 0, 3, 4, 0])
    loss, _ = head(emb, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()
    for name in ("sphereface", "cosface", "softmax"):
        other = build_margin_head(name, embedding_size=8, num_classes=5)
        other(emb.detach().clone().requires_grad_(True), labels)[0].backward()
        assert torch.isfinite(other.weight.grad).all()


def test_fp32_under_autocast():
    head = build_margin_head("arcface", embedding_size=8, num_classes=4)
    emb = torch.randn(3, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logits = head(emb, torch.tensor([0, 1, 2]))
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32


def test_cosine_is_normalised_and_unscaled():
    head = build_margin_head("cosface", embedding_size=8, num_classes=4)
    cos = head.cosine(torch.randn(5, 8) * 10)
    assert cos.shape == (5, 4) and cos.abs().max() <= 1 + 1e-6


def test_overrides_and_validation():
    head = build_margin_head("arcface", 8, 4, s=30.0, m2=0.4)
    assert (head.s, head.m1, head.m2, head.m3) == (30.0, 1.0, 0.4, 0.0)
    assert head.weight.shape == (4, 8)
    with pytest.raises(ValueError, match="m1"):
        MarginHead(8, 4, m1=0.0)
    with pytest.raises(ValueError, match="m2"):
        MarginHead(8, 4, m2=4.0)
    with pytest.raises(ValueError, match="embeddings"):
        head(torch.randn(2, 7), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        head(torch.randn(2, 8), torch.tensor([0, 1, 2]))


def test_unknown_margin_lists_known_names():
    with pytest.raises(KeyError) as err:
        build_margin_head("arcfce", 8, 4)
    message = str(err.value)
    assert all(name in message for name in MARGIN_PRESETS)
    assert "Did you mean 'arcface'" in message
    with pytest.raises(ValueError):
        build_margin_head("adaface", 8, 4)
