"""Exact CAM geometry, raw HiResCAM maps, deletion/insertion curves, the randomisation check and the verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maskstudy import explain
from maskstudy.faces.preprocess import to_input
from maskstudy.models import build_backbone
from maskstudy.models.iresnet import IResNet

torch.set_num_threads(1)


def random_crops(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------ geometry
def explained_grid(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The grid whose cells the CAM maps: the IR-ResNet's last stage, the (hybrid) ViT's patch tokens."""
    if hasattr(model, "patch_embed"):
        tokens = model.patch_embed(x)
        g = model.grid_size
        return tokens.reshape(x.shape[0], g, g, -1).permute(0, 3, 1, 2)
    return model.forward_features(x)


# SE and CBAM pool globally (every cell then "sees" the whole image) but change no stride or padding, so the
# receptive grid is measured on the plain variants.
GEOMETRY_MODELS = {
    "ir_1111_160": lambda: IResNet((1, 1, 1, 1), width=0.125, input_size=160, embedding_size=8),
    "ir18_320": lambda: build_backbone("ir18", width=0.125, input_size=320, embedding_size=8),
    "vit_56": lambda: build_backbone("vit_tiny", width=0.25, input_size=56, embedding_size=8, depth=1),
    "vit_112": lambda: build_backbone("vit_tiny", width=0.25, input_size=112, embedding_size=8, depth=1),
    "hybrid_112": lambda: build_backbone("hybrid_ir18_vit", width=0.25, input_size=112, embedding_size=8, depth=1),
    "hybrid_3stages_112": lambda: build_backbone("hybrid_ir18_vit", width=0.25, input_size=112, embedding_size=8,
                                                 depth=1, cnn_stages=3),
}


@pytest.mark.parametrize("name", sorted(GEOMETRY_MODELS))
def test_cell_centres_are_the_receptive_field_centres(name):
    """Backpropagate from one interior cell: the input pixels it sees form a box centred on its predicted centre."""
    torch.manual_seed(0)
    model = GEOMETRY_MODELS[name]().eval()
    size = model.input_size
    stride, first = explain.receptive_grid(model)
    centres = explain.cell_centres(model, crop_size=size)
    np.testing.assert_allclose(centres, first + stride * np.arange(explain.grid_size(model)))
    x = torch.randn(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    grid = explained_grid(model.double(), x)
    assert grid.shape[-1] == explain.grid_size(model)
    for cell in (grid.shape[-1] // 2 - 1, grid.shape[-1] // 2):  # interior cells: their field is not clipped
        x.grad = None
        grid[0, :, cell, cell].sum().backward(retain_graph=True)
        seen = x.grad[0].abs().sum(0).numpy() > 0
        rows, cols = np.flatnonzero(seen.any(1)), np.flatnonzero(seen.any(0))
        assert rows[0] > 0 and rows[-1] < size - 1, "receptive field clipped: choose a larger input for this test"
        box_centre = (rows[0] + rows[-1] + 1) / 2.0  # pixel i covers [i, i + 1)
        assert box_centre == pytest.approx(centres[cell]), (rows[0], rows[-1])
        assert (cols[0] + cols[-1] + 1) / 2.0 == pytest.approx(centres[cell])


@pytest.mark.parametrize("input_size, grid, first", [(56, 4, 1.0), (112, 7, 0.5), (64, 4, 0.875)])
def test_ir_grid_at_the_crop(input_size, grid, first):
    model = build_backbone("ir18", width=0.125, input_size=input_size, embedding_size=8)
    centres = explain.cell_centres(model, crop_size=112)
    assert len(centres) == grid
    np.testing.assert_allclose(centres, (0.5 + 16 * np.arange(grid)) * 112 / input_size)
    assert centres[0] == pytest.approx(first)
    # a generic resize puts the cells half a cell (8 input pixels) further towards the bottom right
    np.testing.assert_allclose(explain.resize_centres(grid, 112) - centres,
                               (8 * 112 / input_size) - (0.5 * 112 / input_size) + (112 / grid - 16 * 112 / input_size)
                               * (np.arange(grid) + 0.5))


@pytest.mark.parametrize("name", ["ir18_56", "ir18_112", "vit_112", "hybrid_112"])
def test_delta_feature_map_lands_on_its_cell_centre(name):
    """A delta on cell (a, b) becomes a tent peaking exactly at the cell's receptive-field centre on the crop."""
    family, size = name.rsplit("_", 1)
    kwargs = {"ir18": {}, "vit": {"depth": 1}, "hybrid": {"depth": 1}}[family]
    backbone = {"ir18": "ir18", "vit": "vit_tiny", "hybrid": "hybrid_ir18_vit"}[family]
    model = build_backbone(backbone, width=0.25, input_size=int(size), embedding_size=8, **kwargs)
    g, centres = explain.grid_size(model), explain.cell_centres(model, crop_size=112)
    a, b = 1, g - 2
    delta = np.zeros((g, g))
    delta[a, b] = 1.0
    crop_map = explain.grid_to_crop(delta, centres, 112)
    ys, xs = np.mgrid[0:112, 0:112] + 0.5
    mass = crop_map.sum()
    assert (crop_map * ys).sum() / mass == pytest.approx(centres[a], abs=1e-4)  # the tent is symmetric
    assert (crop_map * xs).sum() / mass == pytest.approx(centres[b], abs=1e-4)
    peak_row, peak_col = np.unravel_index(np.argmax(crop_map), crop_map.shape)
    assert abs(peak_row + 0.5 - centres[a]) <= 0.5 and abs(peak_col + 0.5 - centres[b]) <= 0.5
    beyond = np.abs(ys[:, 0] - centres[a]) >= centres[1] - centres[0]
    assert np.all(crop_map[beyond] == 0)  # nothing reaches past the neighbouring cells' centres


def test_exact_geometry_equals_the_generic_resize_for_vit_patches_only():
    maps = np.random.default_rng(0).random((2, 7, 7))
    resized = F.interpolate(torch.from_numpy(maps)[:, None], size=(112, 112), mode="bilinear",
                            align_corners=False)[:, 0].numpy()
    vit = build_backbone("vit_tiny", width=0.25, input_size=112, embedding_size=8, depth=1)
    ir = build_backbone("ir18", width=0.125, input_size=112, embedding_size=8)
    np.testing.assert_allclose(explain.grid_to_crop(maps, explain.cell_centres(vit), 112), resized, atol=1e-6)
    assert np.abs(explain.grid_to_crop(maps, explain.cell_centres(ir), 112) - resized).max() > 0.05


def test_interpolation_rows_sum_to_one_and_reject_bad_centres():
    weights = explain.interpolation_matrix([1.0, 33.0, 65.0, 97.0], 112)
    np.testing.assert_allclose(weights.sum(1), 1.0)
    with pytest.raises(ValueError, match="increasing"):
        explain.interpolation_matrix([3.0, 1.0], 8)
    with pytest.raises(ValueError, match=r"\(N, 2, 2\)"):
        explain.grid_to_crop(np.zeros((1, 3, 3)), [1.0, 2.0], 8)
    # rows and columns with their own centres (a model whose input is warped inside it, e.g. dlib's chip)
    one = explain.grid_to_crop(np.eye(2)[None], (np.array([2.5, 6.5]), np.array([1.5, 7.5])), 8)
    assert one.shape == (1, 8, 8) and one[0, 2, 1] == pytest.approx(1.0) and one[0, 6, 7] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ raw maps
MATRIX = {
    "ir18": dict(width=0.125),
    "ir18_se": dict(width=0.125),
    "ir18_cbam": dict(width=0.125),
    "vit_tiny": dict(width=0.25, depth=1),
    "hybrid_ir18_cbam_vit": dict(width=0.25, depth=1),
}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    out = {}
    for i, name in enumerate(MATRIX):
        torch.manual_seed(i)
        out[name] = build_backbone(name, input_size=56, embedding_size=16, **MATRIX[name]).eval()
    return out


@pytest.mark.parametrize("method", ["hirescam", "gradcam", "gradcam++", "xgradcam", "layercam"])
@pytest.mark.parametrize("name", sorted(MATRIX))
def test_raw_cams_matrix(models, name, method):
    model = models[name]
    crops, refs = random_crops(2, 1), random_crops(2, 2)
    grid = explain.compute_grid_cams(model, crops, refs, 56, method=method)
    g = explain.grid_size(model)
    assert grid.shape == (2, g, g) and grid.dtype == np.float32 and np.all(np.isfinite(grid)) and grid.min() >= 0
    full = explain.compute_cams(model, crops, refs, 56, method=method)
    np.testing.assert_allclose(full, explain.grid_to_crop(grid, explain.cell_centres(model), 112), rtol=1e-5,
                               atol=1e-9)


def test_hirescam_is_relu_of_gradient_times_activation(models):
    """The raw map is exactly sum_c(dS/dA * A) on the grid, ReLU'd, with no rescaling (Draelos and Carin 2020)."""
    model = models["ir18_cbam"]
    crops, refs = random_crops(2, 3), random_crops(2, 4)
    grid = explain.compute_grid_cams(model, crops, refs, 56, method="hirescam")
    kept = {}
    with torch.no_grad():
        ref = model(to_input(refs, 56))
    handle = model.layer4.register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    try:
        out = model(to_input(crops, 56))
    finally:
        handle.remove()
    score = F.cosine_similarity(out, ref, dim=1).sum()
    (grad,) = torch.autograd.grad(score, kept["a"])
    expected = (grad * kept["a"]).sum(1).clamp_min(0).detach().numpy()
    np.testing.assert_allclose(grid, expected, rtol=1e-4, atol=1e-7)
    model.zero_grad(set_to_none=True)


def test_randomized_copy_changes_weights_and_maps(models):
    model = models["ir18_cbam"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clone = explain.randomized_copy(model, seed=1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the original is untouched
    assert not torch.equal(clone.fc.weight, model.fc.weight)
    crops, refs = random_crops(4, 5), random_crops(4, 6)
    trained = explain.compute_grid_cams(model, crops, refs, 56)
    np.testing.assert_allclose(explain.rank_correlation(trained, trained), 1.0)
    randomised = explain.compute_grid_cams(clone, crops, refs, 56)
    assert explain.rank_correlation(trained, randomised).shape == (4,)


# ------------------------------------------------------------------------------------ curves
class TopHalfEnergy(nn.Module):
    """Embedding ``[s, 1]``, ``s`` the mean squared (normalised) input over the image's TOP half only: blurring the
    top half lowers ``s`` and with it ``cos(., [1, 0])``; the bottom half does not count."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[..., : x.shape[-2] // 2, :].pow(2).mean(dim=(1, 2, 3))
        return torch.stack([s, torch.ones_like(s)], dim=1)


def test_deletion_and_insertion_curves_reward_the_right_ranking():
    model = TopHalfEnergy()
    crops = random_crops(2, 9)
    refs = np.tile([1.0, 0.0], (2, 1)).astype(np.float32)
    top = np.zeros((2, 112, 112))
    top[:, :56] = 1.0
    fractions = explain.curve_fractions(4, 0.5)
    curves = explain.deletion_insertion_curves(model, crops, refs, {"top": top, "bottom": 1 - top}, 32, fractions)
    assert set(curves.columns) == {"image", "ranking", "curve", "fraction", "similarity"}
    assert len(curves) == 2 * 2 * 2 * len(fractions)
    areas = explain.curve_areas(curves).set_index(["image", "ranking", "curve"])["area"]
    for i in range(2):
        assert areas[(i, "top", "deletion")] < areas[(i, "bottom", "deletion")]
        assert areas[(i, "top", "insertion")] > areas[(i, "bottom", "insertion")]
    start = curves[curves["fraction"] == 0].groupby(["image", "curve"])["similarity"].nunique()
    assert (start == 1).all()  # every ranking starts from the same crop


def test_control_rankings_and_fractions():
    mean_cam = np.random.default_rng(0).random((112, 112))
    controls = explain.control_rankings(mean_cam, 3, seed=0)
    assert set(controls) == set(explain.CONTROL_RANKINGS)
    assert all(v.shape == (3, 112, 112) for v in controls.values())
    visible = explain.visible_face_region(112)
    order = explain.pixel_order(controls["random_face"][0], np.random.default_rng(0))
    assert visible.ravel()[order[: visible.sum()]].all()  # random regions fill the visible face first
    band = explain.eye_band_mask(112)
    order = explain.pixel_order(controls["eye_band"][1], np.random.default_rng(0))
    assert band.ravel()[order[: band.sum()]].all()
    assert not (visible & explain.mask_region(112)).any() and (band & ~visible).sum() < 0.1 * band.sum()
    np.testing.assert_allclose(explain.curve_fractions(8, 0.4), np.linspace(0, 0.4, 9))
    with pytest.raises(ValueError):
        explain.curve_fractions(0, 0.5)


# ------------------------------------------------------------------------------------ intervals and verdict
def test_mean_interval_over_seeds_or_images():
    one = explain.mean_interval([np.array([0.1, 0.2, 0.3])], bootstrap_samples=200)
    assert one["seeds"] == 1 and one["interval"].startswith("bootstrap") and one["ci_low"] <= 0.2 <= one["ci_high"]
    three = explain.mean_interval([np.full(4, 0.1), np.full(4, 0.2), np.full(4, 0.3)], bootstrap_samples=200)
    assert three["seeds"] == 3 and three["value"] == pytest.approx(0.2) and "3 seeds" in three["interval"]
    assert three["ci_low"] < 0.1 and three["ci_high"] > 0.3  # t with 2 degrees of freedom is wide
    from scipy.stats import ttest_1samp

    assert three["p_value"] == pytest.approx(ttest_1samp([0.1, 0.2, 0.3], 0.0).pvalue)
    assert explain.seed_p_value([0.0, 0.0]) == 1.0 and explain.seed_p_value([0.2, 0.2]) == 0.0
    assert 0 < one["p_value"] < 0.05  # every image above 0
    centred = explain.mean_interval([np.array([-0.2, -0.1, 0.1, 0.2])], bootstrap_samples=200)
    assert centred["p_value"] > 0.5


def verdict_tables(eye_low: float, beaten: bool, eye_p_holm: float | None = None):
    rows = [{"model": "cbam", "baseline": "plain", "input": "masked", "measure": measure, "difference": d,
             "ci_low": low, "ci_high": low + 0.1, "interval": "t over 3 seeds"}
            for measure, d, low in [("eye_share", eye_low + 0.05, eye_low), ("mask_share", -0.1, -0.15)]]
    if eye_p_holm is not None:
        rows[0]["p_holm"], rows[1]["p_holm"] = eye_p_holm, 0.5
    contrasts = pd.DataFrame({"model": ["cbam", "cbam", "plain"], "cam_better": [beaten, True, True]})
    sanity = pd.DataFrame({"model": ["cbam"], "rank_correlation": [0.1], "ci_low": [0.0], "ci_high": [0.2]})
    return pd.DataFrame(rows), contrasts, sanity


@pytest.mark.parametrize("eye_low, beaten, phrase", [
    (0.02, True, "holds"),
    (-0.05, True, "cannot be separated from 0"),
    (-0.2, True, "does not hold"),
    (0.02, False, "do not beat every control"),
])
def test_attention_verdict(eye_low, beaten, phrase):
    sentence = explain.attention_verdict(*verdict_tables(eye_low, beaten), model="cbam", baseline="plain",
                                         method="HiResCAM")
    assert phrase in sentence and "t over 3 seeds" in sentence and "rank correlation" in sentence
    assert "not measured" in explain.attention_verdict(*verdict_tables(0.1, True), model="se", baseline="plain",
                                                       method="HiResCAM")


@pytest.mark.parametrize("eye_low, p_holm, phrase", [
    (0.02, 0.01, "holds"),
    (0.02, 0.2, "cannot be separated from 0 after Holm's correction"),  # the raw 95 % interval excludes 0
    (-0.2, 0.2, "cannot be separated from 0 after Holm's correction"),
    (-0.2, 0.01, "does not hold"),
])
def test_attention_verdict_needs_holm(eye_low, p_holm, phrase):
    """With Holm-adjusted p-values in the table, an eye-band difference counts only if it survives the
    correction over the run's CAM comparisons, and the sentence quotes its adjusted p."""
    sentence = explain.attention_verdict(*verdict_tables(eye_low, True, p_holm), model="cbam", baseline="plain",
                                         method="HiResCAM")
    assert phrase in sentence and f"Holm p {p_holm:.2g}" in sentence
    row = verdict_tables(eye_low, True, p_holm)[0].iloc[0]
    assert explain.separated_after_holm(row) == (p_holm <= 0.05)
    assert explain.separated_after_holm(row.drop("p_holm")) == (eye_low > 0 or eye_low + 0.1 < 0)
