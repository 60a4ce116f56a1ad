"""Summaries with intervals (over seeds when there are several, else over images) and the attention verdict."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ..evaluate import bootstrap_ci, bootstrap_p_value
from ..evaluate.statistics import seed_difference


def seed_interval(values, alpha: float = 0.05) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t interval of the mean of per-seed values (needs >= 2 finite values)."""
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        raise ValueError(f"need >= 2 seeds for an interval over seeds, got {len(values)}")
    mean, half = values.mean(), t.ppf(1 - alpha / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(mean), float(mean - half), float(mean + half)


def seed_p_value(values) -> float:
    """Two-sided p-value of one-sample Student's t test that the mean of per-seed values is 0 (>= 2 values):
    :func:`maskstudy.evaluate.statistics.seed_difference` against 0."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        raise ValueError(f"need >= 2 seeds for a test over seeds, got {len(values)}")
    return seed_difference(values, np.zeros_like(values))["p_value"]


def mean_interval(per_seed: list[np.ndarray], bootstrap_samples: int, seed: int = 0) -> dict:
    """Mean, 95 % interval and two-sided p-value (mean = 0) of a per-image measure given one array per seed: over
    the seeds' means when there are >= 2 seeds (Student's t), else a bootstrap over the images of the one seed.
    Keys ``value, ci_low, ci_high, p_value, seeds, images, interval``."""
    per_seed = [np.asarray(v, dtype=np.float64) for v in per_seed]
    per_seed = [v[np.isfinite(v)] for v in per_seed]
    per_seed = [v for v in per_seed if len(v)]
    if not per_seed:
        return {"value": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "seeds": 0, "images": 0,
                "interval": "none"}
    images = int(np.mean([len(v) for v in per_seed]))
    if len(per_seed) >= 2:
        means = np.array([v.mean() for v in per_seed])
        test = seed_difference(means, np.zeros_like(means))  # the t interval and its p-value in one pass
        value, low, high, p_value = test["diff"], test["low"], test["high"], test["p_value"]
        interval = f"t over {len(per_seed)} seeds"
    else:
        value = float(per_seed[0].mean())
        low, high = bootstrap_ci(per_seed[0], n=bootstrap_samples, seed=seed)
        p_value = bootstrap_p_value(per_seed[0], n=bootstrap_samples, seed=seed)
        interval = f"bootstrap over {len(per_seed[0])} images"
    return {"value": value, "ci_low": low, "ci_high": high, "p_value": p_value, "seeds": len(per_seed),
            "images": images, "interval": interval}


def separated_after_holm(row: pd.Series) -> bool:
    """Whether a row of ``05_attention_differences`` is separated from 0: after Holm's correction over the run's
    CAM comparisons (``p_holm``), and with its 95 % interval excluding 0; tables written before ``p_holm``
    existed fall back on the interval alone."""
    outside = bool(row["ci_low"] > 0 or row["ci_high"] < 0)
    if "p_holm" in row.index and np.isfinite(row["p_holm"]):
        return outside and bool(row["p_holm"] <= 0.05)
    return outside


def _row(table: pd.DataFrame, **where) -> pd.Series | None:
    mask = np.ones(len(table), dtype=bool)
    for column, value in where.items():
        mask &= (table[column] == value).to_numpy()
    return table[mask].iloc[0] if mask.any() else None


def _points(row: pd.Series) -> str:
    holm = f", Holm p {row['p_holm']:.2g}" if "p_holm" in row.index and np.isfinite(row["p_holm"]) else ""
    return (f"{100 * row['difference']:+.1f} points [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}] "
            f"({row['interval']}{holm})")


def controls_beaten(contrasts: pd.DataFrame, model: str) -> tuple[int, int]:
    """``(beaten, total)``: how many (control, curve) contrasts of ``model``'s own CAM have an interval on the
    faithful side (deletion area below the control's, insertion area above)."""
    part = contrasts[contrasts["model"] == model]
    return int(part["cam_better"].sum()), len(part)


def attention_verdict(differences: pd.DataFrame, contrasts: pd.DataFrame, sanity: pd.DataFrame,
                      model: str, baseline: str, method: str, label: Callable[[str], str] = str) -> str:
    """One sentence: does the share of CAM mass on the eye band of masked probes rise from ``baseline`` to
    ``model`` (e.g. plain -> CBAM), with its interval, and do the maps pass the faithfulness curves and the
    weight-randomisation check? Reads notebook 05's tables ``05_attention_differences``,
    ``05_faithfulness_contrasts`` and ``05_randomization_check``; "holds" needs an eye-share difference above
    0, the mask-region share not above 0, and ``model``'s CAM beating every control; the eye-band difference counts as
    separated from 0 only after Holm's correction (:func:`separated_after_holm`). ``label`` names the models in
    the sentence (e.g. :func:`maskstudy.study.design.model_label`)."""
    eye = _row(differences, model=model, baseline=baseline, input="masked", measure="eye_share")
    mask = _row(differences, model=model, baseline=baseline, input="masked", measure="mask_share")
    name, base = label(model), label(baseline)
    if eye is None or mask is None:
        return f"Attention on the eyes with {name}: not measured (no {name} - {base} difference in notebook 05)."
    beaten, total = controls_beaten(contrasts, model)
    faithful = total > 0 and beaten == total
    eye_separated = separated_after_holm(eye)
    holm = " after Holm's correction over the run's CAM comparisons" if "p_holm" in eye.index else ""
    if eye_separated and eye["ci_low"] > 0 and mask["ci_high"] <= 0 and faithful:
        verdict = "holds"
    elif eye_separated and eye["ci_high"] < 0:
        verdict = "does not hold (the eye-band share falls)"
    elif not eye_separated:
        verdict = f"is not shown (the eye-band difference cannot be separated from 0{holm})"
    elif mask["ci_high"] > 0:
        rises = "does" if mask["ci_low"] > 0 else "may"
        verdict = f"is not shown (the eye-band share rises, but so {rises} the mask region's)"
    else:
        verdict = "is not supported (the eye-band share rises, but the maps do not beat every control)"
    sentence = (f"\"Attention moves to the eyes with {name}\" {verdict}: on masked probes, {name} minus {base} "
                f"{method} eye-band share {_points(eye)}, mask-region share {_points(mask)}; {name}'s maps beat "
                f"{beaten} of {total} control contrasts on deletion/insertion areas")
    base_beaten, base_total = controls_beaten(contrasts, baseline)
    if base_total:
        sentence += f" ({base}'s: {base_beaten} of {base_total})"
    check = _row(sanity, model=model) if len(sanity) else None
    if check is not None:
        sentence += (f"; with randomised weights the maps' rank correlation with the trained ones is "
                     f"{check['rank_correlation']:.2f} [{check['ci_low']:.2f}, {check['ci_high']:.2f}]")
    return sentence + "."
