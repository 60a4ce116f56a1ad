"""Grad-CAM for embeddings, face regions and the deletion check (tiny models, one torch thread)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from maskstudy import explain
from maskstudy.faces.align import template
from maskstudy.faces.preprocess import to_input
from maskstudy.models import build_backbone

torch.set_num_threads(1)

VARIANTS = ("ir18", "ir18_se", "ir18_cbam")
INPUT = 56


# ------------------------------------------------------------------------------------ helpers
class TopHalf(nn.Module):
    """Zeroes the bottom half of a feature map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros_like(x)
        keep[..., : x.shape[-2] // 2, :] = 1.0
        return x * keep


class TopHalfNet(nn.Module):
    """Embedding ``[s, 1]`` with ``s`` the mean of ``relu(conv(x))`` over the TOP half of the image only.

    Conv weights and bias are positive, so on non-negative inputs every top-half activation is positive and
    raises ``s``; with the reference ``[1, 0]``, ``cos = s / sqrt(s^2 + 1)`` increases with ``s``.
    """

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            conv.weight.uniform_(0.01, 0.1)
            conv.bias.fill_(0.1)
        self.body = nn.Sequential(conv, nn.ReLU(), TopHalf())
        self.cam_target_layer = self.body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.body(x).mean(dim=(1, 2, 3))
        return torch.stack([s, torch.ones_like(s)], dim=1)


def bright_crops(n: int, seed: int = 0) -> np.ndarray:
    """Crops in 128..255, i.e. non-negative model input."""
    return np.random.default_rng(seed).integers(128, 256, (n, 112, 112, 3), dtype=np.uint8)


def random_crops(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def all_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


@pytest.fixture(scope="module")
def backbones() -> dict[str, nn.Module]:
    out = {}
    for i, name in enumerate(VARIANTS):
        torch.manual_seed(i)
        out[name] = build_backbone(name, width=0.125, input_size=INPUT, embedding_size=64).eval()
    return out


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    return random_crops(3, 1), random_crops(3, 2)


# ------------------------------------------------------------------------------------ targets
def test_similarity_target_is_cosine_and_scale_invariant():
    gen = torch.Generator().manual_seed(0)
    emb, ref = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    target = explain.SimilarityTarget(ref.numpy().astype(np.float64)[None])  # (1, D) numpy, float64
    expected = torch.dot(emb / emb.norm(), ref / ref.norm())
    assert torch.allclose(target(emb), expected, atol=1e-6)
    assert torch.allclose(target(7.5 * emb[None]), expected, atol=1e-6)  # un-normalised, (1, D)
    assert torch.allclose(explain.DissimilarityTarget(3 * ref)(emb), 1 - expected, atol=1e-6)
    assert target(emb).ndim == 0
    with pytest.raises(ValueError, match="one image"):
        target(torch.randn(2, 8))
    with pytest.raises(ValueError, match="one image"):
        target(torch.randn(9))
    with pytest.raises(ValueError, match="non-zero"):
        explain.SimilarityTarget(torch.zeros(8))


@pytest.mark.parametrize("target_class, sign", [(explain.SimilarityTarget, 1.0), (explain.DissimilarityTarget, -1.0)])
def test_target_gradient_sign(target_class, sign):
    """Brightening the top half raises the similarity to [1, 0]: positive input gradient there for the
    similarity, negative for the dissimilarity; the bottom half (beyond the conv's 1-row reach) has none."""
    torch.manual_seed(0)
    model = TopHalfNet()
    x = to_input(bright_crops(1), 32).requires_grad_(True)
    target_class(torch.tensor([1.0, 0.0]))(model(x)[0]).backward()
    grad = x.grad[0]
    assert torch.all(sign * grad[:, :16] > 0)
    assert torch.all(grad[:, 17:] == 0)


@pytest.mark.parametrize("method", sorted(explain.CAM_METHODS))
def test_cam_of_top_half_model_lies_in_top_half(method):
    model = TopHalfNet()
    refs = np.tile([1.0, 0.0], (2, 1))
    cams = explain.compute_cams(model, bright_crops(2), refs, input_size=32, method=method)
    top = np.zeros((112, 112), dtype=bool)
    top[:56] = True
    share = explain.cam_mass_share(cams, top)
    assert np.all(share > 0.97), share
    assert all_hooks(model) == 0


# ------------------------------------------------------------------------------------ layers
def test_target_layers_and_reshape_transform(backbones):
    model = backbones["ir18"]
    assert explain.target_layers(model) == [model.layer4]
    assert explain.reshape_transform(model) is None

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
            self.cam_target_layer = self.blocks[-1]

        def reshape_transform(self, tokens):
            return tokens

    vit = Tokens()
    assert explain.target_layers(vit) == [vit.blocks[-1]]
    assert explain.reshape_transform(vit) == vit.reshape_transform
    with pytest.raises(ValueError, match="cam_target_layer"):
        explain.target_layers(nn.Linear(3, 3))


def test_unknown_method_is_a_clear_error(backbones, pair):
    with pytest.raises(ValueError, match="unknown CAM method 'gradkam'.*gradcam"):
        explain.compute_cams(backbones["ir18"], pair[0], pair[1], INPUT, method="gradkam")


# ------------------------------------------------------------------------------------ compute_cams
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_compute_cams_on_ir_backbones(backbones, pair, variant, method):
    model = backbones[variant].train()  # eval mode is used inside, the flag restored afterwards
    bn_state = {k: v.clone() for k, v in model.state_dict().items()}
    crops, refs = pair
    cams = explain.compute_cams(model, crops, refs, INPUT, method=method, batch_size=2)
    assert cams.shape == (3, 112, 112) and cams.dtype == np.float32
    assert np.all(np.isfinite(cams)) and cams.min() >= 0.0  # raw ReLU'd maps, not min-max scaled
    assert cams.reshape(3, -1).max(axis=1).min() > 0.0  # non-trivial maps
    np.testing.assert_array_equal(cams, explain.compute_cams(model, crops, refs, INPUT, method=method, batch_size=2))
    assert all_hooks(model) == 0
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, bn_state[k]) for k, v in model.state_dict().items())  # no BN statistics updated
    model.eval()


def test_compute_cams_options_agree(backbones, pair):
    """Reference crops or their fp32 embeddings, batch size, an outer bf16 autocast or no_grad: same CAMs."""
    model = backbones["ir18_cbam"]
    crops, refs = pair
    base = explain.compute_cams(model, crops, refs, INPUT)
    with torch.no_grad():
        ref_emb = model(to_input(refs, INPUT))
    np.testing.assert_allclose(explain.compute_cams(model, crops, ref_emb.numpy(), INPUT), base, atol=1e-5)
    np.testing.assert_allclose(explain.compute_cams(model, crops, refs, INPUT, batch_size=1), base, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        np.testing.assert_allclose(explain.compute_cams(model, crops, refs, INPUT), base, atol=1e-5)
    with torch.inference_mode():
        np.testing.assert_allclose(explain.compute_cams(model, crops, refs, INPUT), base, atol=1e-5)
    assert all_hooks(model) == 0


def test_hooks_released_on_error(backbones, pair):
    model = backbones["ir18_se"]
    with pytest.raises(ValueError, match="one image"):
        explain.compute_cams(model, pair[0], np.ones((3, 5), dtype=np.float32), INPUT)  # wrong D: fails mid-CAM
    assert all_hooks(model) == 0
    with pytest.raises(ValueError, match="3 crops"):
        explain.compute_cams(model, pair[0], pair[1][:2], INPUT)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compute_cams_on_cuda_matches_cpu(pair):
    torch.manual_seed(0)
    model = build_backbone("ir18_cbam", width=0.125, input_size=INPUT, embedding_size=64).eval()
    cpu = explain.compute_cams(model, *pair, INPUT)
    model.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        cuda = explain.compute_cams(model, *pair, INPUT)
    np.testing.assert_allclose(cuda, cpu, atol=2e-3)
    assert all_hooks(model) == 0


# ------------------------------------------------------------------------------------ regions
def test_regions_on_the_template():
    band, mask = explain.eye_band_mask(), explain.mask_region()
    assert band.shape == mask.shape == (112, 112) and band.dtype == mask.dtype == bool
    assert not np.any(band & mask)
    points = template(112)
    at = lambda region, p: region[int(p[1]), int(p[0])]  # noqa: E731 (pixel i covers [i, i + 1))
    assert at(band, points[0]) and at(band, points[1])
    assert all(at(mask, p) for p in points[2:])
    assert not any(at(band, p) for p in points[2:]) and not any(at(mask, p) for p in points[:2])
    # the documented rectangle: rows 35.7..63.9, columns 17.2..94.7 (pixel centres), minus the mask
    rows, cols = np.where(band)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (36, 63, 17, 94)
    assert band.sum() > 0.9 * 28 * 78
    # scaled to other crop sizes
    assert explain.eye_band_mask(56).shape == (56, 56) and explain.mask_region(56)[int(points[2, 1] / 2), 28]


def test_cam_mass_share():
    band, mask = explain.eye_band_mask(), explain.mask_region()
    rng = np.random.default_rng(0)
    on_eyes = rng.random((112, 112)) * band
    on_mask = rng.random((112, 112)) * mask
    cams = np.stack([on_eyes, on_mask, np.zeros((112, 112)), np.ones((112, 112))])
    share = explain.cam_mass_share(cams, band)
    assert share[0] == pytest.approx(1.0) and share[1] == 0.0 and np.isnan(share[2])
    assert share[3] == pytest.approx(band.mean())
    assert explain.cam_mass_share(on_eyes, band).shape == (1,)
    table = explain.attention_on_regions(cams)
    assert list(table.columns) == ["eye_share", "mask_share"] and len(table) == 4
    np.testing.assert_allclose(table.iloc[:2].to_numpy(), [[1.0, 0.0], [0.0, 1.0]])
    assert table.iloc[2].isna().all()
    with pytest.raises(ValueError, match="bool mask"):
        explain.cam_mass_share(cams, band[:, :100])
    with pytest.raises(ValueError, match="non-negative"):
        explain.cam_mass_share(-cams, band)


# ------------------------------------------------------------------------------------ deletion check
def test_deletion_regions_and_blur():
    cam = np.random.default_rng(0).random((112, 112))
    top = explain.top_cam_region(cam, 0.1)
    k = round(0.1 * 112 * 112)
    assert top.sum() == k and cam[top].min() >= cam[~top].max()
    assert explain.top_cam_region(np.zeros((112, 112)), 0.1, rng=1).sum() == k  # ties broken at random
    blob = explain.random_blob_region((112, 112), k, rng=3)
    assert blob.sum() == k
    np.testing.assert_array_equal(blob, explain.random_blob_region((112, 112), k, rng=3))
    crop = random_crops(1, 5)[0]
    blurred = explain.blur_region(crop, top)
    np.testing.assert_array_equal(blurred[~top], crop[~top])
    assert np.abs(blurred[top].astype(int) - crop[top]).mean() > 20  # noise is smoothed away
    with pytest.raises(ValueError, match="top_fraction"):
        explain.top_cam_region(cam, 0.0)


def test_deletion_check(backbones, pair):
    model = backbones["ir18_cbam"]
    crops, refs = pair
    cams = explain.compute_cams(model, crops, refs, INPUT)
    table = explain.deletion_check(model, crops, refs, cams, INPUT, top_fraction=0.1, seed=0)
    assert list(table.columns) == ["sim_original", "sim_top_blurred", "sim_random_blurred", "drop_top", "drop_random"]
    assert len(table) == 3 and np.all(np.isfinite(table.to_numpy()))
    np.testing.assert_allclose(table.drop_top, table.sim_original - table.sim_top_blurred)
    with torch.no_grad():
        emb, ref = model(to_input(crops, INPUT)), model(to_input(refs, INPUT))
    np.testing.assert_allclose(table.sim_original, torch.cosine_similarity(emb, ref).numpy(), atol=1e-5)
    pd.testing.assert_frame_equal(table, explain.deletion_check(model, crops, refs, cams, INPUT, seed=0))
    with pytest.raises(ValueError, match="cams must have shape"):
        explain.deletion_check(model, crops, refs, cams[:, :56], INPUT)


# ------------------------------------------------------------------------------------ overlay
def test_overlay():
    crop = random_crops(1, 7)[0]
    cam = np.zeros((112, 112), dtype=np.float32)
    cam[:56] = 1.0
    out = explain.overlay(crop, cam)
    assert out.shape == crop.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(explain.overlay(crop, cam, alpha=0.0), crop)
    pure = explain.overlay(crop, cam[::8, ::8].copy(), alpha=1.0)  # a low-res map is resized to the crop
    assert pure[10, 10, 0] > 100 and pure[10, 10, 2] < 50  # hot = red in 'jet'
    assert pure[100, 10, 2] > 100 and pure[100, 10, 0] < 50  # cold = blue
    with pytest.raises(ValueError, match="alpha"):
        explain.overlay(crop, cam, alpha=1.5)


# ------------------------------------------------------------------------------------ cache


def test_explanation_cache_computes_once_and_keys_by_every_input(backbones, pair, tmp_path, caplog):
    crops, refs = pair
    model = backbones["ir18_cbam"]
    cache = explain.ExplanationCache(tmp_path / "explanations")
    first = cache.grid_cams(model, crops, refs, INPUT)
    again = cache.grid_cams(model, crops, refs, INPUT)
    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, explain.compute_grid_cams(model, crops, refs, INPUT))
    cache.grid_cams(model, crops[:2], refs[:2], INPUT)  # other crops
    cache.grid_cams(model, crops, refs, INPUT, method="gradcam")  # other method
    cache.grid_cams(backbones["ir18"], crops, refs, INPUT)  # other weights
    assert (cache.misses, cache.hits) == (4, 1)

    rankings = {"cam": explain.grid_to_crop(first, explain.cell_centres_2d(model, 112), 112)}
    curves = cache.deletion_insertion_curves(model, crops, refs, rankings, INPUT, [0.0, 0.5], seed=0)
    read = cache.deletion_insertion_curves(model, crops, refs, rankings, INPUT, [0.0, 0.5], seed=0)
    pd.testing.assert_frame_equal(curves, read)
    assert cache.hits == 2
    saved = next((tmp_path / "explanations").glob("curves_*.csv"))
    saved.write_text("".join(saved.read_text().splitlines(keepends=True)[:-1]))  # a whole row short
    pd.testing.assert_frame_equal(cache.deletion_insertion_curves(model, crops, refs, rankings, INPUT, [0.0, 0.5]),
                                  curves)
    assert cache.hits == 2 and "rows, expected" in caplog.text

    for path in (tmp_path / "explanations").iterdir():  # damaged files cost a recomputation, with a warning
        path.write_bytes(path.read_bytes()[:20])
    np.testing.assert_array_equal(cache.grid_cams(model, crops, refs, INPUT), first)
    assert "computing it again" in caplog.text
