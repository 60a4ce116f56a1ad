"""Summaries of what the attention blocks do (:mod:`.attention_readout`) over models, seeds and probes: per-image
tables, block strengths and CBAM's spatial weights with intervals over seeds, the masked-minus-unmasked change of
CBAM's weight on the mask region (Holm over every CBAM block of the run), and the sentences that state them.

Inputs are the readouts of each (model, seed) on the same masked probes and on the same probes without masks, so
every difference is paired by image; intervals come from :func:`maskstudy.explain.verdict.mean_interval` (Student's t
over seeds when there are several, else a bootstrap over images).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
from torch import nn

from ..evaluate.statistics import holm_adjust
from .attention_readout import (
    AttentionReadout,
    attention_blocks,
    block_centres,
    block_label,
    spatial_region_weights,
)
from .verdict import mean_interval

#: The probe kinds a readout is taken on: masked probes, and the same photos without masks.
INPUTS = ("masked", "unmasked")
#: Columns of the per-image spatial table (:func:`per_image_tables`).
SPATIAL_COLUMNS = ["model", "seed", "block", "stage", "grid", "input", "image", "eye_weight", "mask_weight"]


def per_image_tables(model_name: str, seed: int, model: nn.Module, readouts: Mapping[str, AttentionReadout],
                     crop_size: int = 112) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(strength, spatial)`` per image of one network's readouts by input kind (``masked``, ``unmasked``):
    strength rows (model, seed, block, stage, kind, gate, input, image, strength) and, for CBAM blocks, spatial
    rows (:data:`SPATIAL_COLUMNS`); each an empty frame when there is nothing of its kind."""
    blocks = {b.name: b for b in attention_blocks(model)}
    strength, spatial = [], []
    for kind, readout in readouts.items():
        for row in readout.blocks.itertuples():
            values = readout.strength[row.block]
            strength.append(pd.DataFrame({"model": model_name, "seed": seed, "block": row.block, "stage": row.stage,
                                          "kind": row.kind, "gate": row.gate, "input": kind,
                                          "image": np.arange(len(values)), "strength": values}))
            if row.block in readout.spatial:
                maps = readout.spatial[row.block]
                centres = block_centres(model, blocks[row.block], maps.shape[1:], crop_size)
                weights = spatial_region_weights(maps, centres, crop_size)
                spatial.append(weights.assign(model=model_name, seed=seed, block=row.block, stage=row.stage,
                                              grid=f"{maps.shape[1]}x{maps.shape[2]}", input=kind,
                                              image=np.arange(len(maps))))
    return (pd.concat(strength, ignore_index=True) if strength else pd.DataFrame(),
            pd.concat(spatial, ignore_index=True)[SPATIAL_COLUMNS] if spatial else pd.DataFrame())


def _interval(per_seed: list[np.ndarray], bootstrap_samples: int, seed: int) -> dict:
    return mean_interval(per_seed, bootstrap_samples, seed)


def strength_summary(strength: pd.DataFrame, bootstrap_samples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per model and input: the mean over blocks of each image's strength, with its interval (over seeds, else
    images), the strongest block's mean and the gates' range (NaN without gates); per block the same in rows whose
    ``block`` is the block's name (``"all blocks"`` for the mean over blocks)."""
    rows = []
    if strength.empty:
        return pd.DataFrame()
    for (model, kind), part in strength.groupby(["model", "input"], sort=False):
        mean_over_blocks = part.groupby(["seed", "image"])["strength"].mean()
        per_seed = [group.to_numpy() for _, group in mean_over_blocks.groupby(level="seed")]
        gates = part["gate"].dropna()
        out = _interval(per_seed, bootstrap_samples, seed)
        by_block = part.groupby("block", sort=False)["strength"].mean()
        rows.append({"model": model, "input": kind, "block": "all blocks", "strength": out["value"],
                     "ci_low": out["ci_low"], "ci_high": out["ci_high"], "interval": out["interval"],
                     "seeds": out["seeds"], "images": out["images"], "strongest_block": by_block.idxmax(),
                     "strongest": by_block.max(), "gate_min": gates.min() if len(gates) else np.nan,
                     "gate_max": gates.max() if len(gates) else np.nan})
        for block, block_part in part.groupby("block", sort=False):
            out = _interval([g["strength"].to_numpy() for _, g in block_part.groupby("seed")], bootstrap_samples, seed)
            block_gates = block_part["gate"].dropna()
            rows.append({"model": model, "input": kind, "block": block, "strength": out["value"],
                         "ci_low": out["ci_low"], "ci_high": out["ci_high"], "interval": out["interval"],
                         "seeds": out["seeds"], "images": out["images"], "strongest_block": "", "strongest": np.nan,
                         "gate_min": block_gates.min() if len(block_gates) else np.nan,
                         "gate_max": block_gates.max() if len(block_gates) else np.nan})
    return pd.DataFrame(rows)


def spatial_summary(spatial: pd.DataFrame, bootstrap_samples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per CBAM model, block and input: the mean spatial weight on the eye band and on the mask region, each with
    its interval (over seeds, else images)."""
    rows = []
    if spatial.empty:
        return pd.DataFrame()
    for (model, block, kind), part in spatial.groupby(["model", "block", "input"], sort=False):
        row = {"model": model, "block": block, "stage": int(part["stage"].iloc[0]), "grid": part["grid"].iloc[0],
               "input": kind}
        for region in ("eye", "mask"):
            out = _interval([g[f"{region}_weight"].to_numpy() for _, g in part.groupby("seed")], bootstrap_samples,
                            seed)
            row.update({f"{region}_weight": out["value"], f"{region}_ci_low": out["ci_low"],
                        f"{region}_ci_high": out["ci_high"]})
        row.update(interval=out["interval"], seeds=out["seeds"], images=out["images"])
        rows.append(row)
    return pd.DataFrame(rows)


#: The measures :func:`spatial_differences` reports, and what each means.
SPATIAL_MEASURES = {
    "mask_effect": "weight on the mask region, masked minus the same probes unmasked",
    "eye_effect": "weight on the eye band, masked minus the same probes unmasked",
    "mask_minus_eye": "weight on the mask region minus on the eye band, masked probes",
}


def spatial_differences(spatial: pd.DataFrame, bootstrap_samples: int = 2000, seed: int = 0,
                        alpha: float = 0.05) -> pd.DataFrame:
    """Per CBAM model and block (and ``"all blocks"``, the mean over blocks), each measure of
    :data:`SPATIAL_MEASURES`, paired by image, with its interval and p-value (over seeds, else images); Holm over
    every row of a measure (all models and blocks of the run); ``separated``: Holm p <= ``alpha`` and the interval
    excludes 0."""
    if spatial.empty:
        return pd.DataFrame()
    wide = spatial.pivot_table(index=["model", "seed", "block", "image"], columns="input",
                               values=["eye_weight", "mask_weight"], sort=False)
    if not {("mask_weight", k) for k in INPUTS} <= set(wide.columns):
        return pd.DataFrame()
    measures = pd.DataFrame({
        "mask_effect": wide[("mask_weight", "masked")] - wide[("mask_weight", "unmasked")],
        "eye_effect": wide[("eye_weight", "masked")] - wide[("eye_weight", "unmasked")],
        "mask_minus_eye": wide[("mask_weight", "masked")] - wide[("eye_weight", "masked")]}).reset_index()
    over_blocks = measures.groupby(["model", "seed", "image"], sort=False)[list(SPATIAL_MEASURES)].mean().reset_index()
    measures = pd.concat([measures, over_blocks.assign(block="all blocks")], ignore_index=True)
    rows = []
    for (model, block), part in measures.groupby(["model", "block"], sort=False):
        for measure in SPATIAL_MEASURES:
            out = _interval([g[measure].to_numpy() for _, g in part.groupby("seed")], bootstrap_samples, seed)
            rows.append({"model": model, "block": block, "measure": measure, "difference": out["value"],
                         "ci_low": out["ci_low"], "ci_high": out["ci_high"], "p_value": out["p_value"],
                         "interval": out["interval"], "seeds": out["seeds"], "images": out["images"]})
    table = pd.DataFrame(rows)
    table["p_holm"] = np.nan
    for _, part in table.groupby("measure"):
        finite = part[np.isfinite(part["p_value"])]
        if len(finite):
            table.loc[finite.index, "p_holm"] = holm_adjust(finite["p_value"].to_numpy())
    outside = (table["ci_low"] > 0) | (table["ci_high"] < 0)
    table["separated"] = outside & (table["p_holm"] <= alpha)
    return table


def _w(x: float) -> str:
    return f"{x + 0.0:+.3f}"


def strength_sentence(summary: pd.DataFrame, models: list[str], label: Callable[[str], str] = str,
                      kind: str = "masked") -> str | None:
    """``"SE 12.3 % [10.1, 14.5], CBAM ..."``: each model's mean strength over its blocks on ``kind`` probes, with
    its interval, the strongest block and the gates' range when there are gates; ``None`` when none of ``models``
    was read."""
    if summary is None or summary.empty:
        return None
    rows = summary[(summary["block"] == "all blocks") & (summary["input"] == kind) & summary["model"].isin(models)]
    if rows.empty:
        return None
    parts = []
    for r in rows.itertuples():
        text = (f"{label(r.model)} {100 * r.strength:.1f} % [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}] "
                f"(strongest: {block_label(r.strongest_block)} {100 * r.strongest:.1f} %")
        if np.isfinite(r.gate_min):
            text += f"; gates {r.gate_min:+.2f} to {r.gate_max:+.2f}"
        parts.append(text + ")")
    return ", ".join(parts)


#: A fall of the mask region's weight counts as switching the mask off when it is at least this share of the weight
#: the region has on the same probes without masks (and separated from 0 after Holm's correction).
SWITCH_OFF_SHARE = 0.1


def switched_off(differences: pd.DataFrame, summary: pd.DataFrame | None, model: str) -> pd.DataFrame:
    """The ``mask_effect`` rows of ``model``'s blocks with ``relative_fall`` (the fall of the mask region's weight
    as a share of its weight on unmasked probes, :func:`spatial_summary`), ``falls`` (separated after Holm, below 0)
    and ``switches_off`` (a fall of at least :data:`SWITCH_OFF_SHARE`)."""
    rows = differences[(differences["model"] == model) & (differences["measure"] == "mask_effect")
                       & (differences["block"] != "all blocks")].copy()
    base = pd.Series(dtype=float)
    if summary is not None and not summary.empty:
        base = summary[(summary["model"] == model) & (summary["input"] == "unmasked")].set_index("block")[
            "mask_weight"]
    rows["relative_fall"] = -rows["difference"] / rows["block"].map(base).astype(float)
    rows["falls"] = rows["separated"].astype(bool) & (rows["ci_high"] < 0)
    rows["switches_off"] = rows["falls"] & (rows["relative_fall"] >= SWITCH_OFF_SHARE)
    return rows


def map_verdict(differences: pd.DataFrame, summary: pd.DataFrame, model: str,
                label: Callable[[str], str] = str) -> str | None:
    """One sentence: does ``model``'s CBAM switch the mask off, read from its own spatial maps? It does in a block
    where the mask region's weight falls when the mask is there (masked minus the same probes unmasked, separated
    after Holm's correction over every CBAM block of the run) by at least :data:`SWITCH_OFF_SHARE` of its weight
    without the mask; the numbers: the mean over blocks, the block with the largest fall, and the weights of the eye
    band and the mask region on masked probes."""
    if differences is None or differences.empty:
        return None
    part = differences[(differences["model"] == model) & (differences["measure"] == "mask_effect")]
    if part.empty:
        return None
    name = label(model)
    blocks = switched_off(differences, summary, model)
    overall = part[part["block"] == "all blocks"].iloc[0]
    off, falls = blocks[blocks["switches_off"]], blocks[blocks["falls"]]
    rises = blocks[blocks["separated"].astype(bool) & (blocks["ci_low"] > 0)]
    largest = blocks.sort_values("difference").iloc[0]
    share = (f", {100 * largest['relative_fall']:.1f} % of its weight without the mask"
             if np.isfinite(largest["relative_fall"]) else "")
    if len(off):
        verdict = f"{name}: its own spatial map switches the mask off in {len(off)} of {len(blocks)} blocks"
    elif len(falls):
        verdict = (f"{name}: its own spatial map does not switch the mask off (the mask region's weight falls in "
                   f"{len(falls)} of {len(blocks)} blocks after Holm's correction, each by less than "
                   f"{100 * SWITCH_OFF_SHARE:.0f} % of its weight)")
    else:
        verdict = (f"{name}: its own spatial map does not switch the mask off (no block's mask-region weight falls "
                   "when the mask is there, after Holm's correction)")
    if len(rises):
        verdict += f"; in {len(rises)} block(s) the weight on the mask region rises with the mask"
    sentence = (f"{verdict}: weight on the mask region, masked minus the same probes unmasked, "
                f"{_w(overall['difference'])} [{_w(overall['ci_low'])}, {_w(overall['ci_high'])}] over blocks "
                f"({overall['interval']}), at most {_w(largest['difference'])} [{_w(largest['ci_low'])}, "
                f"{_w(largest['ci_high'])}] in {block_label(largest['block'])}{share} (Holm p "
                f"{largest['p_holm']:.2g})")
    if summary is not None and not summary.empty:
        weights = summary[(summary["model"] == model) & (summary["input"] == "masked")]
        if len(weights):
            sentence += (f"; on masked probes the map weighs the eye band {weights['eye_weight'].mean():.3f} and the "
                         f"mask region {weights['mask_weight'].mean():.3f} (mean over blocks)")
    return sentence + "."
