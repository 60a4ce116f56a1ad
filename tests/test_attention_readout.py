"""Reading the attention blocks directly (maskstudy.explain.attention_readout): CBAM's own spatial map set by hand is
read back exactly, on its grid and on the crop's regions; strength is |A(x) - x| / |x|; hooks never outlive a read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from maskstudy.explain import eye_band_mask, grid_to_crop, mask_region
from maskstudy.explain.attention_readout import (
    attention_blocks,
    block_centres,
    read_attention,
    region_weight_matrices,
    spatial_region_weights,
)
from maskstudy.models import build_backbone


@pytest.fixture(scope="module")
def crops():
    return np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)


def small(name: str):
    torch.manual_seed(0)
    return build_backbone(name, width=0.125, input_size=32, embedding_size=16)


def test_cbam_spatial_map_set_by_hand_is_read_back_exactly(crops):
    """One CBAM block's spatial logits fixed by hand (the eye rows open, the rest shut): the readout returns exactly
    sigmoid of them for every image, and each region's weight is the mean of that map interpolated to the crop."""
    model = small("ir18_cbam")
    block = attention_blocks(model)[2]  # layer2.0: an 8x8 grid at 32 px
    logits = torch.full((1, 1, 8, 8), -3.0)
    logits[:, :, 2:4] = 4.0  # rows centred at crop y 29.75 and 43.75 (the eye band: y 35.7 to 63.9)
    logits[:, :, 4, 2:6] = 0.5
    block.attention.spatial_logits = lambda descriptor: logits.expand(descriptor.shape[0], -1, -1, -1)
    readout = read_attention(model, crops, 32)
    maps = readout.spatial[block.name]
    assert maps.shape == (5, 8, 8)
    np.testing.assert_array_equal(maps, np.broadcast_to(torch.sigmoid(logits)[0, 0].numpy(), (5, 8, 8)))

    centres = block_centres(model, block, (8, 8))
    np.testing.assert_allclose(centres[0], (4.0 * np.arange(8) + 0.5) * 112 / 32)
    on_crop = grid_to_crop(maps[0], centres, 112).astype(np.float64)
    weights = spatial_region_weights(maps, centres)
    np.testing.assert_allclose(weights["eye_weight"], on_crop[eye_band_mask(112)].mean(), rtol=1e-5)
    np.testing.assert_allclose(weights["mask_weight"], on_crop[mask_region(112)].mean(), rtol=1e-5)
    assert weights["eye_weight"].iloc[0] > 0.5 > weights["mask_weight"].iloc[0]


def test_region_weights_average_the_map():
    """Each region's weights sum to 1: a constant map is read back as that constant on both regions."""
    centres = (np.array([20.0, 50.0, 80.0]), np.array([10.0, 56.0, 100.0]))
    for q in region_weight_matrices(centres).values():
        assert q.shape == (3, 3) and q.min() >= 0 and abs(q.sum() - 1) < 1e-12
    weights = spatial_region_weights(np.full((2, 3, 3), 0.3), centres)
    np.testing.assert_allclose(weights.to_numpy(), 0.3)
    with pytest.raises(ValueError, match="do not match"):
        spatial_region_weights(np.zeros((1, 4, 4)), centres)


def test_strength_is_the_relative_change_and_hooks_are_removed(crops):
    model = small("ir18_se").train()
    block = attention_blocks(model)[0]
    block.attention.mlp[2].weight.data.zero_()
    block.attention.mlp[2].bias.data.fill_(np.log(3.0))  # every channel gate 0.75
    readout = read_attention(model, crops, 32, batch_size=2)
    np.testing.assert_allclose(readout.strength[block.name], 0.25, rtol=1e-5)
    assert set(readout.blocks["kind"]) == {"se"} and len(readout.blocks) == 8 and not readout.spatial
    assert model.training and all(not b.outer._forward_hooks for b in attention_blocks(model))


def test_network_without_attention_reads_nothing(crops):
    readout = read_attention(small("ir18"), crops, 32)
    assert readout.blocks.empty and not readout.strength and not readout.spatial


def _spatial_rows(model: str, drop: float, seeds=(0, 1, 2), images=40) -> pd.DataFrame:
    """Per-image weights of two blocks; on masked probes block 'layer3.0.attn' loses ``drop`` on the mask region."""
    rng = np.random.default_rng(len(model))
    rows = []
    for seed in seeds:
        for block in ("layer3.0.attn", "layer4.0.attn"):
            base = rng.uniform(0.3, 0.7, images)
            for kind in ("masked", "unmasked"):
                fall = drop * (1 + 0.1 * seed) if kind == "masked" and block == "layer3.0.attn" else 0.0
                rows.append(pd.DataFrame({"model": model, "seed": seed, "block": block, "stage": int(block[5]),
                                          "grid": "7x7", "input": kind, "image": np.arange(images),
                                          "eye_weight": base + 0.1, "mask_weight": base - fall}))
    return pd.concat(rows, ignore_index=True)


def test_a_map_that_shuts_the_mask_region_is_called_so_and_one_that_does_not_is_not():
    from maskstudy.explain.attention_summary import map_verdict, spatial_differences, spatial_summary

    spatial = pd.concat([_spatial_rows("cbam", 0.2), _spatial_rows("ft_cbam", 0.0)], ignore_index=True)
    differences = spatial_differences(spatial, bootstrap_samples=200)
    effect = differences[differences["measure"] == "mask_effect"].set_index(["model", "block"])
    assert effect.loc[("cbam", "layer3.0.attn"), "separated"]
    np.testing.assert_allclose(effect.loc[("cbam", "layer3.0.attn"), "difference"], -0.22, atol=1e-9)
    np.testing.assert_allclose(effect.loc[("cbam", "all blocks"), "difference"], -0.11, atol=1e-9)
    assert not effect.loc["ft_cbam", "separated"].any()
    assert (differences["p_holm"] >= differences["p_value"] - 1e-12).all()
    summary = spatial_summary(spatial, bootstrap_samples=200)
    yes = map_verdict(differences, summary, "cbam", label=str)
    no = map_verdict(differences, summary, "ft_cbam", label=str)
    assert yes.startswith("cbam: its own spatial map switches the mask off in 1 of 2 blocks")
    assert "-0.220" in yes and "in stage 3 block 0" in yes
    assert no.startswith("ft_cbam: its own spatial map does not switch the mask off")
    # a separated fall that is small against the region's weight does not count as switching it off
    small = pd.concat([_spatial_rows("cbam", 0.01)], ignore_index=True)
    small_diff = spatial_differences(small, bootstrap_samples=200)
    text = map_verdict(small_diff, spatial_summary(small, bootstrap_samples=200), "cbam", label=str)
    assert text.startswith("cbam: its own spatial map does not switch the mask off (the mask region's weight falls "
                           "in 1 of 2 blocks")


def test_strength_summary_averages_blocks_and_reports_gates():
    from maskstudy.explain.attention_summary import strength_sentence, strength_summary

    rows = [pd.DataFrame({"model": "ft_se_gated", "seed": seed, "block": block, "stage": 3, "kind": "se",
                          "gate": gate, "input": "masked", "image": np.arange(10), "strength": value})
            for seed in (0, 1) for block, gate, value in (("stages.3.0.attention", 0.1, 0.02),
                                                          ("stages.4.0.attention", -0.2, 0.04))]
    summary = strength_summary(pd.concat(rows, ignore_index=True), bootstrap_samples=100)
    overall = summary[summary["block"] == "all blocks"].iloc[0]
    np.testing.assert_allclose(overall["strength"], 0.03)
    assert overall["strongest_block"] == "stages.4.0.attention" and (overall["gate_min"], overall["gate_max"]) == (-0.2, 0.1)
    assert strength_sentence(summary, ["ft_se_gated"]) == ("ft_se_gated 3.0 % [3.0, 3.0] (strongest: stage 4 block 0 "
                                                           "4.0 %; gates -0.20 to +0.10)")
