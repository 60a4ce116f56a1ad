"""The mask-aware recogniser in the study (notebook 03, after the pretrained track): built from the main seed's
whole-face and upper-face fine-tunes (:mod:`maskstudy.models.mask_aware`), its choices made on training
identities (:mod:`maskstudy.train.mask_aware`), saved as a model file anyone can load
(:func:`maskstudy.models.model_file.load_model`, ``python -m maskstudy compare``), and evaluated like every model of
the track: every LFW test, identification, MFR2; plus how well it tells whether a mask is there, on LFW's test twins
and on MFR2's real masks (its ``mask_type`` labels; evaluation only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..core import storage
from ..datasets.pairs import MASK_VARIANTS
from ..evaluate import bootstrap_ci
from ..evaluate.statistics import cluster_bootstrap_ci
from ..models.mask_aware import MaskAwareRecognizer, MaskPresenceHead
from ..train.finetune import FinetuneValidation, head_embeddings
from ..train.mask_aware import PairScores, choose_fusion, fit_mask_presence
from . import pretrained_track as track
from .design import NO_ATTENTION, SHARED_TWINS, TRACK_MASK_AWARE_MODEL, TRACK_MODELS, TRACK_UPPER_MODELS

#: The model's run name in the track's tables and its file under ``outputs/checkpoints/``.
FILE_NAME = f"{TRACK_MASK_AWARE_MODEL}.pt"
#: The pair kinds the fusion is chosen on.
PAIR_KINDS = ("clean_clean", "masked_clean", "masked_masked")


def model_file(outputs: str | os.PathLike) -> Path:
    """Where notebook 03 saves the mask-aware recogniser."""
    return Path(outputs) / "checkpoints" / FILE_NAME


def enabled(config: Mapping[str, Any]) -> bool:
    """Whether the run builds it: the track with both plain fine-tunes (whole and upper face)."""
    return (track.enabled(config) and bool(config.get("pretrained_mask_aware"))
            and NO_ATTENTION in config["pretrained_attention"] and bool(config.get("pretrained_upper_face")))


def crop_variant(rel: str) -> str:
    """``"clean"`` or the masked variant (:data:`maskstudy.datasets.pairs.MASK_VARIANTS`) of an LFW crop name."""
    stem = os.path.splitext(rel)[0]
    for variant, suffix in sorted(MASK_VARIANTS.items(), key=lambda item: -len(item[1])):
        if stem.endswith(suffix):
            return variant
    return "clean"


@dataclass
class MaskAwareBuild:
    """The recogniser, the mask-presence grids tried, the fusion rules tried, and the held-out pair counts."""

    recognizer: MaskAwareRecognizer
    presence: pd.DataFrame
    fusion: pd.DataFrame


def _embed(model, features: torch.Tensor, k: int) -> np.ndarray:
    return F.normalize(head_embeddings(model, features, k), dim=1).numpy()


def held_out_pairs(whole, upper, head: MaskPresenceHead, plain: FinetuneValidation, blank: FinetuneValidation,
                   k: int, n_pairs: int, seed: int) -> list[PairScores]:
    """Pairs of the held-out training identities of each kind of :data:`PAIR_KINDS` with both fine-tunes'
    cosines and the mask probabilities (``plain``/``blank``: their clean crops and detected twins, whole and with
    the lower half blanked)."""
    ends = {"clean": (_embed(whole, plain.clean, k), _embed(upper, blank.clean, k),
                      head.probability(plain.clean).numpy()),
            "masked": (_embed(whole, plain.masked, k), _embed(upper, blank.masked, k),
                       head.probability(plain.masked).numpy())}
    out = []
    for kind in PAIR_KINDS:
        first, second = kind.split("_")
        pairs = FinetuneValidation(plain.identities, plain.clean, plain.clean, n_pairs, seed)  # indices only
        wa, ua, pa = ends[first]
        wb, ub, pb = ends[second]
        out.append(PairScores(kind, np.sum(wa[pairs.a] * wb[pairs.b], axis=1).astype(np.float64),
                              np.sum(ua[pairs.a] * ub[pairs.b], axis=1).astype(np.float64),
                              pa[pairs.a].astype(np.float64), pb[pairs.b].astype(np.float64), pairs.labels))
    return out


def build(config: Mapping[str, Any], train_csv: str | os.PathLike, data_dir: str | os.PathLike,
          outputs: str | os.PathLike, progress: bool = True) -> MaskAwareBuild:
    """Fit and assemble the mask-aware recogniser from notebook 03's main-seed plain fine-tunes (whole and upper
    face, loaded from their checkpoints), and save it (:func:`model_file`)."""
    data_dir, outputs = Path(data_dir), Path(outputs)
    main, k = int(config["seed"]), int(config["pretrained_frozen_stages"])
    whole = track.load_run(track.checkpoint(outputs, f"{TRACK_MODELS[NO_ATTENTION]}_seed{main}"))
    upper = track.load_run(track.checkpoint(outputs, f"{TRACK_UPPER_MODELS[NO_ATTENTION]}_seed{main}"))
    store = data_dir / "pretrained_track" / "features"
    split = (config["train_val_identities"], config["train_val_pairs"], main, progress)

    def rows(twins: str) -> pd.DataFrame:
        chosen = track.training_rows(train_csv, data_dir, twins)
        return chosen.iloc[: int(config["pretrained_max_rows"])].reset_index(drop=True) \
            if config.get("pretrained_max_rows") else chosen

    detected = track.training_features(rows(config["pretrained_twins"]), data_dir, store, k, False, *split)
    shared = track.training_features(rows(SHARED_TWINS), data_dir, store, k, False, *split, twins_name=SHARED_TWINS)
    blank = track.training_features(rows(config["pretrained_twins"]), data_dir, store, k, True, *split)
    presence = fit_mask_presence(detected.clean, [detected.masked, shared.masked], detected.validation.clean,
                                 [detected.validation.masked, shared.validation.masked], seed=main)
    pairs = held_out_pairs(whole, upper, presence.head, detected.validation, blank.validation, k,
                           int(config["train_val_pairs"]), main)
    counts = ", ".join(f"{len(p.labels)} {p.kind.replace('_', '-')}" for p in pairs)
    fusion, table = choose_fusion(pairs, source=f"best threshold on pairs of {len(set(detected.validation.identities))} "
                                                f"held-out training identities ({counts})")
    recognizer = MaskAwareRecognizer(whole, upper, presence.head, fusion, k, provenance={
        "whole": f"{TRACK_MODELS[NO_ATTENTION]}_seed{main}", "upper": f"{TRACK_UPPER_MODELS[NO_ATTENTION]}_seed{main}",
        "mask_presence_pool": int(presence.head.pool), "training_rows": int(detected.rows),
        "profile": str(config.get("profile"))}).eval()
    with storage.atomic_path(model_file(outputs)) as tmp:
        torch.save(recognizer.state(), tmp)
    return MaskAwareBuild(recognizer, presence.table, table)


def _probabilities(head: MaskPresenceHead, features: Mapping[str, torch.Tensor], chunk: int = 2048) -> dict:
    names = list(features)
    out = {}
    for start in range(0, len(names), chunk):
        part = names[start:start + chunk]
        out.update(zip(part, head.probability(torch.stack([features[n] for n in part])).numpy()))
    return out


def test_vectors(recognizer: MaskAwareRecognizer, tests, plain: track.TestFeatures, blank: track.TestFeatures,
                 store_dir: str | os.PathLike | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None,
                                                              dict[str, float], dict[str, float]]:
    """The recogniser's vectors of every test crop (LFW, MFR2) from the track's cached frozen-stage features and
    stored embeddings, and the mask probabilities (LFW, MFR2) by crop name."""
    k = recognizer.frozen_stages

    def vectors(features_plain, features_blank, root):
        whole = track.stored_embeddings(recognizer.whole, features_plain, k, store_dir, root, track.variant(k, False))
        upper = track.stored_embeddings(recognizer.upper, features_blank, k, store_dir, root, track.variant(k, True))
        p = _probabilities(recognizer.mask_head, features_plain)
        return {n: np.concatenate([whole[n], upper[n], [p[n]]]).astype(np.float32) for n in features_plain}, p

    lfw, p_lfw = vectors(plain.lfw, blank.lfw, tests.aligned_root)
    mfr2, p_mfr2 = (vectors(plain.mfr2, blank.mfr2, tests.mfr2_root / "aligned") if plain.mfr2 is not None
                    else (None, {}))
    return lfw, mfr2, p_lfw, p_mfr2


def presence_table(p_lfw: Mapping[str, float], p_mfr2: Mapping[str, float], tests, n_boot: int = 2000,
                   seed: int = 0) -> pd.DataFrame:
    """How often the mask-presence head is right (probability above 0.5 = masked), with 95 % intervals from a
    bootstrap over identities: per kind of LFW test crop (clean, and each masked variant) and on MFR2's photos
    (masked and unmasked, from ``mask_type``; each mask type too)."""
    rows = []
    lfw = pd.DataFrame({"rel": list(p_lfw), "p": list(p_lfw.values())})
    lfw["variant"] = lfw["rel"].map(crop_variant)
    lfw["identity"] = lfw["rel"].str.split("/", n=1).str[0]
    lfw["masked"] = lfw["variant"] != "clean"
    for variant, part in lfw.groupby("variant", sort=False):
        rows.append(_presence_row("LFW test crops", variant, part, n_boot, seed))
    if p_mfr2 and tests.mfr2_photos is not None:
        photos = tests.mfr2_photos[tests.mfr2_photos["aligned"].astype(str) != ""].copy()
        photos["p"] = photos["aligned"].map(p_mfr2)
        photos = photos[photos["p"].notna()]
        photos["masked"] = photos["masked"].astype(str) == "True"
        rows.append(_presence_row("MFR2 photos (real masks)", "all photos", photos, n_boot, seed))
        for mask_type, part in photos.groupby("mask_type", sort=True):
            rows.append(_presence_row("MFR2 photos (real masks)", mask_type, part, n_boot, seed))
    return pd.DataFrame(rows)


def _presence_row(test_set: str, subset: str, part: pd.DataFrame, n_boot: int, seed: int) -> dict:
    correct = ((part["p"] > 0.5) == part["masked"]).to_numpy()
    low, high = (cluster_bootstrap_ci(correct, part["identity"].to_numpy(), n=n_boot, seed=seed)
                 if part["identity"].nunique() > 1 else bootstrap_ci(correct, n=n_boot, seed=seed))
    return {"test_set": test_set, "subset": subset, "photos": int(len(part)), "masked": int(part["masked"].sum()),
            "accuracy": float(correct.mean()), "ci_low": float(low), "ci_high": float(high),
            "mean_probability": float(part["p"].mean())}


def presence_errors(p_lfw: Mapping[str, float], p_mfr2: Mapping[str, float], tests, n: int = 4) -> list[tuple]:
    """A few of the head's errors, for a figure: ``(path, label, probability)`` of the most confident wrong
    calls on MFR2 (then LFW's twins)."""
    out = []
    if p_mfr2 and tests.mfr2_photos is not None:
        photos = tests.mfr2_photos[tests.mfr2_photos["aligned"].astype(str) != ""].copy()
        photos["p"] = photos["aligned"].map(p_mfr2)
        photos["masked"] = photos["masked"].astype(str) == "True"
        wrong = photos[(photos["p"] > 0.5) != photos["masked"]].copy()
        wrong["confidence"] = (wrong["p"] - 0.5).abs()
        for r in wrong.sort_values("confidence", ascending=False).head(n).itertuples():
            out.append((tests.mfr2_root / "aligned" / r.aligned, f"MFR2 {r.mask_type}", float(r.p)))
    lfw = pd.DataFrame({"rel": list(p_lfw), "p": list(p_lfw.values())})
    lfw["masked"] = lfw["rel"].map(crop_variant) != "clean"
    wrong = lfw[(lfw["p"] > 0.5) != lfw["masked"]].copy()
    wrong["confidence"] = (wrong["p"] - 0.5).abs()
    for r in wrong.sort_values("confidence", ascending=False).head(max(0, 2 * n - len(out))).itertuples():
        out.append((tests.aligned_root / r.rel, f"LFW {crop_variant(r.rel)}", float(r.p)))
    return out
