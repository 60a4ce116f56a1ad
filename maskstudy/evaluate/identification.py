"""Closed-set rank-1 identification of masked probes against an unmasked gallery (the seed study's Id)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..faces.preprocess import DecodedCrops
from ..models.model_file import COSINE
from .embed import embed_paths
from .metrics import bootstrap_ci


def identification_rank1(model: nn.Module, input_size: int, images: pd.DataFrame, aligned_root: str | os.PathLike,
                         seed: int = 0, crops_cache: dict | None = None, batch_size: int = 256,
                         device: torch.device | str | None = None, flip: bool = True, progress: bool = False,
                         n_boot: int = 2000, distractors: pd.DataFrame | None = None,
                         decoded_crops: DecodedCrops | None = None, similarity=None) -> dict:
    """Closed-set rank-1 identification of masked probes against an unmasked gallery (the seed study's Id).

    ``images``: DataFrame[identity, aligned, masked], crop paths relative to ``aligned_root``. Only identities
    with at least two images take part. Gallery: per identity, its first image by name (``aligned``, unmasked).
    Probes: the masked twins (``masked``) of each of its other images. A probe is correct when its most
    similar gallery embedding (cosine; ties go to the first identity by name) is its own identity.

    ``distractors`` (DataFrame[identity, aligned]): extra gallery entries of other people (e.g. identities with
    a single photo), which can only make a probe's nearest neighbour wrong. ``decoded_crops``: crop files read
    through this in-memory store (:class:`~maskstudy.faces.preprocess.DecodedCrops`). ``similarity``: how cached
    vectors are compared (``matrix(a, b)``; default the cosine of unit vectors).

    Returns ``rank1`` (share of correct probes), ``rank1_per_identity`` (the mean over probe identities of each
    identity's rank-1, so that people with many photos do not dominate), ``probes``, ``gallery`` and
    ``distractors`` (counts), ``ci`` (bootstrap interval with ``seed``), and ``correct`` (per probe, bool) with
    ``probe_identities``.
    """
    missing = {"identity", "aligned", "masked"} - set(images.columns)
    if missing:
        raise KeyError(f"images need columns identity, aligned, masked; missing {sorted(missing)}")
    df = images[["identity", "aligned", "masked"]].copy()
    df = df[df["aligned"].notna() & (df["aligned"].astype(str) != "")]
    df = df.astype(str).drop_duplicates("aligned").sort_values(["identity", "aligned"], kind="stable")
    gallery_rel, gallery_ids, probe_rel, probe_ids = [], [], [], []
    for identity, group in df.groupby("identity", sort=True):
        if len(group) < 2:
            continue
        gallery_rel.append(group["aligned"].iloc[0])
        gallery_ids.append(identity)
        for masked in group["masked"].iloc[1:]:
            if masked and masked != "nan":
                probe_rel.append(masked)
                probe_ids.append(identity)
    if len(gallery_rel) < 2 or not probe_rel:
        raise ValueError(f"identification needs >= 2 identities with >= 2 images and at least one masked probe; "
                         f"got {len(gallery_rel)} identities and {len(probe_rel)} probes")
    n_distractors = 0
    if distractors is not None and len(distractors):
        extra = distractors[["identity", "aligned"]].astype(str)
        extra = extra[~extra["aligned"].isin(set(gallery_rel)) & ~extra["identity"].isin(set(gallery_ids))]
        extra = extra.drop_duplicates("aligned").sort_values(["identity", "aligned"], kind="stable")
        gallery_rel += extra["aligned"].tolist()
        gallery_ids += extra["identity"].tolist()
        n_distractors = len(extra)
    cache = embed_paths(model, input_size, gallery_rel + probe_rel, aligned_root, crops_cache,
                        batch_size=batch_size, device=device, flip=flip, progress=progress,
                        decoded_crops=decoded_crops)
    gallery = np.stack([cache[r] for r in gallery_rel])
    probes = np.stack([cache[r] for r in probe_rel])
    best = np.argmax((similarity or COSINE).matrix(probes, gallery), axis=1)
    correct = np.asarray(gallery_ids, dtype=object)[best] == np.asarray(probe_ids, dtype=object)
    correct = correct.astype(bool)
    per_identity = pd.Series(correct).groupby(np.asarray(probe_ids, dtype=object)).mean()
    return {
        "rank1": float(correct.mean()),
        "rank1_per_identity": float(per_identity.mean()),
        "probes": int(len(probe_rel)),
        "gallery": int(len(gallery_rel)),
        "distractors": int(n_distractors),
        "ci": bootstrap_ci(correct, n=n_boot, seed=seed),
        "correct": correct,
        "probe_identities": probe_ids,
    }
