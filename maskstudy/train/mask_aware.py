"""Fitting the mask-aware recogniser's two choices (:mod:`maskstudy.models.mask_aware`) on training identities only:

* :func:`fit_mask_presence`: the mask-presence head, an L2-regularised logistic regression (scikit-learn) of
  clean crops against their masked twins (every training style; twins aligned with the clean photo's landmarks and
  detected on the masked photo), on the frozen stages' features pooled over a ``pool x pool`` grid; the grid is
  chosen by accuracy on the held-out training identities' crops;
* :func:`choose_fusion`: on pairs of the held-out training identities (clean-clean, masked-clean and
  masked-masked), the normalisation of each fine-tune's cosine (centred on its impostors' mean, or on its own best
  threshold; scaled by its impostors' sd: the whole face's on clean-clean pairs, the upper face's on masked-clean
  pairs) and the rule (upper face when either photo is masked, or a mix by the mask probability) with the best
  accuracy at one threshold over all pairs, and that threshold.

Never a test: LFW's folds and MFR2 are only evaluated on (:mod:`maskstudy.study.mask_aware`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from ..evaluate.metrics import best_threshold
from ..models.mask_aware import NORMALISATIONS, RULES, Fusion, MaskAwareSimilarity, MaskPresenceHead

#: Pooling grids tried for the mask-presence head.
POOLS = (1, 2, 4)


def _pooled(features: torch.Tensor, pool: int) -> np.ndarray:
    return MaskPresenceHead(features.shape[1], pool).pooled(features).numpy().astype(np.float64)


def _fit_head(clean: torch.Tensor, masked: Sequence[torch.Tensor], pool: int, seed: int) -> MaskPresenceHead:
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([_pooled(clean, pool)] + [_pooled(m, pool) for m in masked])
    y = np.concatenate([np.zeros(len(clean))] + [np.ones(len(m)) for m in masked])
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    fit = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
    fit.fit((x - mean) / std, y)
    head = MaskPresenceHead(clean.shape[1], pool)
    with torch.no_grad():
        head.linear.weight.copy_(torch.as_tensor(fit.coef_, dtype=torch.float32))
        head.linear.bias.copy_(torch.as_tensor(fit.intercept_, dtype=torch.float32))
        head.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        head.std.copy_(torch.as_tensor(std, dtype=torch.float32))
    return head.eval()


def presence_accuracy(head: MaskPresenceHead, clean: torch.Tensor, masked: Sequence[torch.Tensor]) -> float:
    """Share of crops whose mask presence ``head`` gets right (probability above 0.5 = masked), each masked set and
    the clean crops weighted alike."""
    shares = [float((head.probability(clean) <= 0.5).float().mean())]
    shares += [float((head.probability(m) > 0.5).float().mean()) for m in masked if len(m)]
    return float(np.mean(shares))


@dataclass
class PresenceFit:
    """The chosen head and a table of every grid tried (training and held-out accuracy)."""

    head: MaskPresenceHead
    table: pd.DataFrame


def fit_mask_presence(train_clean: torch.Tensor, train_masked: Sequence[torch.Tensor], val_clean: torch.Tensor,
                      val_masked: Sequence[torch.Tensor], pools: Sequence[int] = POOLS, seed: int = 0) -> PresenceFit:
    """The mask-presence head fitted on the training rows' prefix features (clean crops, and each set of masked
    twins), its pooling grid chosen by held-out accuracy (ties: the coarser grid)."""
    rows, heads = [], {}
    for pool in pools:
        head = _fit_head(train_clean, train_masked, pool, seed)
        heads[pool] = head
        rows.append({"pool": pool, "features": train_clean.shape[1] * pool * pool,
                     "train_accuracy": presence_accuracy(head, train_clean, train_masked),
                     "val_accuracy": presence_accuracy(head, val_clean, val_masked)})
    table = pd.DataFrame(rows)
    best = int(table.sort_values(["val_accuracy", "pool"], ascending=[False, True]).iloc[0]["pool"])
    table["chosen"] = table["pool"] == best
    return PresenceFit(heads[best], table)


@dataclass
class PairScores:
    """Held-out pairs of one kind: the whole-face and upper-face cosines, each end's mask probability, labels."""

    kind: str
    whole: np.ndarray
    upper: np.ndarray
    p_a: np.ndarray
    p_b: np.ndarray
    labels: np.ndarray


def choose_fusion(pairs: Sequence[PairScores], rules: Sequence[str] = RULES,
                  normalisations: Sequence[str] = NORMALISATIONS, source: str = "") -> tuple[Fusion, pd.DataFrame]:
    """The fusion (:class:`~maskstudy.models.mask_aware.Fusion`) with the best accuracy over all ``pairs`` at one
    threshold, of every rule and normalisation (module docstring); returns it and a table (rule, normalisation,
    accuracy per kind and overall, threshold). Ties go to the first candidate (the switch, centred on impostors)."""
    by_kind = {p.kind: p for p in pairs}
    for needed in ("clean_clean", "masked_clean"):
        if needed not in by_kind or not (by_kind[needed].labels == 0).any():
            raise ValueError(f"choose_fusion needs {needed} pairs with impostors")
    clean, masked = by_kind["clean_clean"], by_kind["masked_clean"]
    scales = {"whole_scale": float(clean.whole[clean.labels == 0].std(ddof=1)),
              "upper_scale": float(masked.upper[masked.labels == 0].std(ddof=1))}
    centres = {"impostor": {"whole_centre": float(clean.whole[clean.labels == 0].mean()),
                            "upper_centre": float(masked.upper[masked.labels == 0].mean())},
               "threshold": {"whole_centre": float(best_threshold(clean.whole, clean.labels)[0]),
                             "upper_centre": float(best_threshold(masked.upper, masked.labels)[0])}}
    rows, fusions = [], {}
    all_labels = np.concatenate([p.labels for p in pairs])
    for normalisation in normalisations:
        for rule in rules:
            candidate = Fusion(rule=rule, normalisation=normalisation, **centres[normalisation], **scales)
            similarity = MaskAwareSimilarity(candidate)
            scores = {p.kind: similarity.fuse(p.whole, p.upper, p.p_a, p.p_b) for p in pairs}
            threshold, accuracy = best_threshold(np.concatenate(list(scores.values())), all_labels)
            row = {"rule": rule, "normalisation": normalisation, "pairs": len(all_labels), "accuracy": accuracy,
                   "threshold": threshold}
            for p in pairs:
                row[f"accuracy_{p.kind}"] = float(np.mean((scores[p.kind] > threshold) == (p.labels == 1)))
            rows.append(row)
            fusions[(rule, normalisation)] = replace(candidate, threshold=float(threshold), threshold_source=source)
    table = pd.DataFrame(rows)
    best = table.sort_values("accuracy", ascending=False, kind="stable").iloc[0]
    table["chosen"] = (table["rule"] == best["rule"]) & (table["normalisation"] == best["normalisation"])
    return fusions[(best["rule"], best["normalisation"])], table
