"""The pretrained track of the study: dlib's ResNet-29 adapted to masked faces, with SE or CBAM inserted.

The from-scratch track (the seed study's setup at cpu scale) asks whether attention helps networks that reach
about 82 % on unmasked LFW. This track asks it of a recogniser in use (99 %): the pretrained network as it is
(the reference row ``dlib_resnet29_pretrained``), fine-tuned on the study's training rows (clean crops and their
masked twins, :mod:`maskstudy.train.finetune`) over the study's seeds

* on the whole face: ``ft_plain``, and ``ft_se`` / ``ft_cbam`` with the attention at full strength (started near
  the identity, free to act), plus ``ft_se_gated`` / ``ft_cbam_gated`` behind a gate from 0 when
  ``pretrained_gated`` asks;
* on the upper face, the chip's lower half blanked in training and tests (cropping + attention, the seed's
  reference [2]: Li et al., Applied Intelligence 2021): ``ft_upper_plain``, ``ft_upper_se``, ``ft_upper_cbam``;

and, main seed only, the control ``ft_plain_clean``: the same fine-tuning on the clean crops alone (no synthetic
twins). Every model meets every test of :mod:`maskstudy.study.testsets` on the kit's own crops (cut to dlib's chip
geometry inside the model), through the frozen stages' features computed once per crop.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..models.dlib_chip import CHIP_SIZE as DLIB_CHIP_SIZE
from ..train.finetune import FeatureStore, FinetuneConfig, FinetuneValidation, build_student, head_embeddings
from .design import NO_ATTENTION
from .design import TRACK_CLEAN_MODEL as CLEAN_MODEL
from .design import TRACK_GATED_MODELS as GATED_MODELS
from .design import TRACK_MODELS as MODELS
from .design import TRACK_REFERENCE as REFERENCE
from .design import TRACK_UPPER_MODELS as UPPER_MODELS

# The track's model names (the reference row, each attention block in each form, the upper face, the control) are
# the design's (:mod:`maskstudy.study.design`), with their display labels.
MODEL_NAMES = (*MODELS.values(), *GATED_MODELS.values(), *UPPER_MODELS.values(), CLEAN_MODEL)
#: Run kinds (the ``kind`` column of the track's tables): the models trained over seeds, the clean-crop control,
#: the mask-aware recogniser built from two of them (:mod:`maskstudy.study.mask_aware`), the pretrained network.
FINETUNED, CONTROL, COMBINED, PRETRAINED = "finetuned", "control", "combined", "pretrained"
#: Profile keys of the track (``pretrained_<FinetuneConfig field>`` and the rest).
SETTING_KEYS = ("frozen_stages", "epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip",
                "distill_weight", "margin_weight", "attention_lr_scale")


@dataclass(frozen=True)
class TrackRun:
    """One model of the track: its run name, model name, seed, kind and fine-tuning settings (``None``: the
    pretrained network as it is)."""

    name: str
    model: str
    seed: int
    kind: str
    config: FinetuneConfig | None


def enabled(config: Mapping[str, Any]) -> bool:
    return bool(config.get("pretrained_track"))


def finetune_config(config: Mapping[str, Any], attention: str = "none", seed: int | None = None,
                    **changes: Any) -> FinetuneConfig:
    """The profile's fine-tuning settings (``pretrained_<field>``) for one attention block and seed."""
    fields = {key: config[f"pretrained_{key}"] for key in SETTING_KEYS}
    fields.update(attention=attention, seed=int(config["seed"] if seed is None else seed), **changes)
    return FinetuneConfig(**fields)


def seeded_models(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Model name -> its fine-tuning changes, for the models trained over the study's seeds, in order: each block of
    ``pretrained_attention`` at full strength on the whole face, the gated blocks (``pretrained_gated``), then each
    block on the upper face (``pretrained_upper_face``)."""
    blocks = list(config["pretrained_attention"])
    models = {MODELS[b]: {"attention": b} for b in blocks}
    if config.get("pretrained_gated"):
        models.update({GATED_MODELS[b]: {"attention": b, "attention_form": "gated"} for b in blocks
                       if b != NO_ATTENTION})
    if config.get("pretrained_upper_face"):
        models.update({UPPER_MODELS[b]: {"attention": b, "blank_lower": True} for b in blocks})
    return models


def track_runs(config: Mapping[str, Any]) -> dict[str, TrackRun]:
    """Every model of the track by run name: the reference, each model of :func:`seeded_models` over the study's
    seeds (main seed first), and the clean-crop control (main seed) when ``pretrained_clean_control``."""
    from .design import seeds

    main = int(config["seed"])
    runs = {REFERENCE: TrackRun(REFERENCE, REFERENCE, main, PRETRAINED, None)}
    for seed in seeds(config):
        for model, changes in seeded_models(config).items():
            name = f"{model}_seed{seed}"
            runs[name] = TrackRun(name, model, seed, FINETUNED, finetune_config(config, seed=seed, **changes))
    if config.get("pretrained_clean_control"):
        name = f"{CLEAN_MODEL}_seed{main}"
        runs[name] = TrackRun(name, CLEAN_MODEL, main, CONTROL, finetune_config(config, "none", main, twins=False))
    return runs


def finetuned_runs(config: Mapping[str, Any]) -> list[TrackRun]:
    """The fine-tuned models over seeds (empty when the track is off)."""
    return [r for r in track_runs(config).values() if r.kind == FINETUNED] if enabled(config) else []


def checkpoint(outputs: str | os.PathLike, run: str) -> Path:
    """Where notebook 03 keeps a track run's fine-tuning checkpoint."""
    return Path(outputs) / "checkpoints" / f"{run}.pt"


def load_run(path: str | os.PathLike):
    """The fine-tuned network of a track checkpoint (eval mode)."""
    from ..train.finetune import load_student

    return load_student(path)[0]


def comparisons(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The attention comparisons of the track, one Holm family, among the models trained: on the whole face SE and
    CBAM at full strength against plain and CBAM against SE, the gated blocks against plain, and on the upper face SE
    and CBAM against plain and CBAM against SE."""
    present = set(seeded_models(config))
    pairs = []
    for names in (MODELS, UPPER_MODELS):
        pairs += [(names["se"], names[NO_ATTENTION]), (names["cbam"], names[NO_ATTENTION]), (names["cbam"], names["se"])]
        if names is MODELS:
            pairs += [(GATED_MODELS["se"], MODELS[NO_ATTENTION]), (GATED_MODELS["cbam"], MODELS[NO_ATTENTION])]
    return [(a, b) for a, b in pairs if a in present and b in present]


def upper_face_comparisons(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What cropping to the upper face changes, over seeds: the plain upper-face fine-tune against the whole-face
    one (when both are trained)."""
    present = set(seeded_models(config))
    pair = (UPPER_MODELS[NO_ATTENTION], MODELS[NO_ATTENTION])
    return [pair] if set(pair) <= present else []


def clean_control_comparisons(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Run pairs of the clean-crop control (main seed): the control against the twin-trained plain fine-tune and
    against the pretrained network as it is."""
    runs = track_runs(config)
    control = [n for n, r in runs.items() if r.kind == CONTROL]
    plain = f"{MODELS[NO_ATTENTION]}_seed{int(config['seed'])}"
    if not control or plain not in runs:
        return []
    return [(control[0], plain), (control[0], REFERENCE)]


# --------------------------------------------------------------------------------------------
# Training rows and their features
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingFeatures:
    """Frozen-stage features of the training rows' clean crops and masked twins, identity labels, and the
    held-out identities' validation pairs."""

    clean: torch.Tensor
    masked: torch.Tensor
    labels: np.ndarray
    validation: FinetuneValidation
    rows: int
    identities: int


def training_rows(train_csv: str | os.PathLike, data_dir: str | os.PathLike, twins: str) -> pd.DataFrame:
    """The study's cleaned training rows that have a masked twin, the twin replaced by its ``twins`` variant
    (``detected``: the masked photo detected and aligned by itself, as masks are met at test time; ``shared``:
    aligned with the clean photo's landmarks) where notebook 01 built it."""
    from .design import SHARED_TWINS, with_masked_variant

    rows = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    rows = rows[rows["masked"] != ""].reset_index(drop=True)
    return rows if twins == SHARED_TWINS else with_masked_variant(rows, twins, data_dir)


def training_features(rows: pd.DataFrame, data_dir: str | os.PathLike, store_dir: str | os.PathLike,
                      frozen_stages: int, blank_lower: bool = False, val_identities: float = 0.05,
                      val_pairs: int = 600, seed: int = 0, progress: bool = True,
                      twins_name: str = "") -> TrainingFeatures:
    """Features of ``rows`` (clean crop and twin) through the pretrained network's frozen stages (kept in
    ``store_dir``), with ``val_identities`` of the identities (share or count) held out for validation pairs (the
    same identities for the same rows and ``seed``). ``twins_name`` names another variant of twins than the track's
    (e.g. ``shared``), kept apart in the store."""
    data_dir = Path(data_dir)
    model = build_student(FinetuneConfig(frozen_stages=frozen_stages))
    key = f"train_k{frozen_stages}" + ("_blank" if blank_lower else "")
    root = [data_dir / d / "aligned" for d in rows["dataset"]]
    clean = FeatureStore(store_dir, key + "_clean").features(
        model, [r / a for r, a in zip(root, rows["aligned"])], frozen_stages, blank_lower, progress,
        "frozen stages (training crops)")
    masked = FeatureStore(store_dir, key + "_masked" + (f"_{twins_name}" if twins_name else "")).features(
        model, [r / m for r, m in zip(root, rows["masked"])], frozen_stages, blank_lower, progress,
        "frozen stages (training twins)")
    identity = (rows["dataset"] + "/" + rows["identity"]).to_numpy()
    names = sorted(set(identity))
    rng = np.random.default_rng(seed)
    n_val = int(round(val_identities * len(names))) if val_identities < 1 else int(val_identities)
    held = set(rng.choice(names, size=min(n_val, len(names) - 2), replace=False)) if n_val else set()
    is_val = np.array([i in held for i in identity])
    train_ids = sorted(set(identity[~is_val]))
    labels = np.array([train_ids.index(i) for i in identity[~is_val]]) if len(train_ids) else np.zeros(0, int)
    validation = FinetuneValidation(identity[is_val], clean[is_val], masked[is_val], val_pairs, seed)
    return TrainingFeatures(clean[~is_val], masked[~is_val], labels, validation, int((~is_val).sum()),
                            len(train_ids))


# --------------------------------------------------------------------------------------------
# Test crops and evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class TestFeatures:
    """Frozen-stage features of every crop the tests read (LFW and MFR2), by crop name."""

    lfw: dict[str, torch.Tensor]
    mfr2: dict[str, torch.Tensor] | None


def test_features(tests, store_dir: str | os.PathLike, frozen_stages: int, blank_lower: bool = False,
                  progress: bool = True) -> TestFeatures:
    """Features of every crop of ``tests`` (:class:`maskstudy.study.testsets.TestSets`; all scenarios, identification
    and MFR2), kept in ``store_dir``."""
    from .reference import crops_of_tests

    model = build_student(FinetuneConfig(frozen_stages=frozen_stages))
    suffix = f"k{frozen_stages}" + ("_blank" if blank_lower else "")
    rels = crops_of_tests(tests)
    lfw = FeatureStore(store_dir, f"test_lfw_{suffix}").features(
        model, [tests.aligned_root / r for r in rels], frozen_stages, blank_lower, progress,
        "frozen stages (LFW test crops)", tests.decoded_crops)  # the crops evaluation decoded, not read again
    mfr2 = None
    if tests.mfr2_pairs is not None:
        names = list(dict.fromkeys(tests.mfr2_pairs["a"].astype(str).tolist() + tests.mfr2_pairs["b"].astype(str)
                                   .tolist()))
        features = FeatureStore(store_dir, f"test_mfr2_{suffix}").features(
            model, [tests.mfr2_root / "aligned" / n for n in names], frozen_stages, blank_lower, progress,
            "frozen stages (MFR2 crops)", tests.decoded_crops)
        mfr2 = dict(zip(names, features))
    return TestFeatures(dict(zip(rels, lfw)), mfr2)


def _embed(model, features: Mapping[str, torch.Tensor], start: int) -> dict[str, np.ndarray]:
    names = list(features)
    if not names:
        return {}
    stacked = torch.stack([features[n] for n in names])
    unit = F.normalize(head_embeddings(model, stacked, start), dim=1).numpy()
    return dict(zip(names, unit))


def variant(frozen_stages: int, blank_lower: bool) -> str:
    """The key of a track model's stored test embeddings beside its weights: the frozen prefix and the face."""
    return f"track_k{frozen_stages}" + ("_blank" if blank_lower else "")


def stored_embeddings(model, features: Mapping[str, torch.Tensor], start: int, store_dir, crop_root,
                      variant: str) -> dict[str, np.ndarray]:
    """:func:`_embed`, through an :class:`~maskstudy.evaluate.store.EmbeddingStore` in ``store_dir`` when given
    (keyed by the model's weights and the features' ``variant``): a rerun embeds only crops changed since."""
    if store_dir is None:
        return _embed(model, features, start)
    from ..evaluate.store import EmbeddingStore

    store = EmbeddingStore(store_dir, model, DLIB_CHIP_SIZE, crop_root, flip=False, variant=variant)
    cache = store.load()
    missing = {name: f for name, f in features.items() if name not in cache}
    cache.update(_embed(model, missing, start))
    if missing:
        store.save(cache)
    return {name: cache[name] for name in features}


def evaluate_run(model, frozen_stages: int, tests, features: TestFeatures, config: Mapping[str, Any],
                 blank_lower: bool = False, store_dir: str | os.PathLike | None = None):
    """Every test of ``tests`` for ``model`` from the frozen-stage ``features`` (one embedding per crop, no flip,
    as dlib's own protocol), with the study's metric functions
    (:func:`maskstudy.study.reference.evaluate_embeddings`); the embeddings are kept in ``store_dir`` when given."""
    from .reference import evaluate_embeddings

    key = variant(frozen_stages, blank_lower)
    lfw = stored_embeddings(model, features.lfw, frozen_stages, store_dir, tests.aligned_root, key)
    mfr2 = (stored_embeddings(model, features.mfr2, frozen_stages, store_dir, tests.mfr2_root / "aligned", key)
            if features.mfr2 is not None else None)
    return evaluate_embeddings(tests, lfw, mfr2, use_mfr2=mfr2 is not None, fixed_fmr=config["fixed_fmr"],
                               n_boot=config["bootstrap_samples"], seed=config["seed"])


def run_track(runs: Mapping[str, TrackRun], train_csv, data_dir, outputs, tests, config: Mapping[str, Any],
              log: Callable[[str], object] = print, progress: bool = True):
    """Fine-tune and evaluate every run (module docstring). Returns (results by run name, training history,
    timing rows)."""
    import time

    from ..train.finetune import finetune

    data_dir, outputs = Path(data_dir), Path(outputs)
    store = data_dir / "pretrained_track" / "features"
    rows = training_rows(train_csv, data_dir, config["pretrained_twins"])
    if config.get("pretrained_max_rows"):
        rows = rows.iloc[: int(config["pretrained_max_rows"])].reset_index(drop=True)
    results, histories, timing = {}, [], []
    cached: dict[tuple[int, bool], tuple[TrainingFeatures, TestFeatures]] = {}
    for name, run in runs.items():
        cfg = run.config or FinetuneConfig(frozen_stages=int(config["pretrained_frozen_stages"]))
        key = (cfg.frozen_stages, cfg.blank_lower)
        started = time.perf_counter()
        if key not in cached:
            cached[key] = (training_features(rows, data_dir, store, cfg.frozen_stages, cfg.blank_lower,
                                             config["train_val_identities"], config["train_val_pairs"],
                                             int(config["seed"]), progress),
                           test_features(tests, store, cfg.frozen_stages, cfg.blank_lower, progress))
            timing.append({"step": f"frozen stages {key}", "seconds": time.perf_counter() - started})
            started = time.perf_counter()
        train, test = cached[key]
        if run.config is None:
            model = build_student(cfg)
        else:
            result = finetune(run.config, train.clean, train.masked, train.labels, checkpoint(outputs, name),
                              train.validation, log=log, progress=progress)
            model = result.model
            histories.append(result.history.assign(run=name, model=run.model, seed=run.seed))
        trained = time.perf_counter()
        results[name] = evaluate_run(model, cfg.frozen_stages, tests, test, config, cfg.blank_lower,
                                     outputs / "track_embeddings")
        timing.append({"step": name, "seconds": trained - started, "eval_seconds": time.perf_counter() - trained,
                       "training_rows": train.rows, "identities": train.identities})
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame()
    return results, history, pd.DataFrame(timing)


def describe(config: Mapping[str, Any]) -> dict[str, Any]:
    """The track's settings for the report."""
    return {"runs": len(track_runs(config)), **dataclasses.asdict(finetune_config(config)),
            "twins": config["pretrained_twins"]}


def model_names(config: Mapping[str, Any]) -> Sequence[str]:
    """The models trained over seeds, in :func:`seeded_models` order."""
    return list(seeded_models(config))
