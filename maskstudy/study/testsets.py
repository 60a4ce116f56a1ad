"""Every test the study reports for one trained model, computed the same way for every model.

* LFW verification in the basic scenarios (:data:`maskstudy.datasets.pairs.SCENARIOS`) and, when notebook 01 built them,
  the masked-photo variants (:data:`maskstudy.datasets.pairs.VARIANT_SCENARIOS`: detected on the masked photo, eye-weighted
  alignment, unseen mask styles): 10-fold accuracy, ROC, and intervals from a bootstrap over identities;
* the false non-match rate on masked pairs at the threshold that gives a fixed FMR on unmasked pairs;
* identification of masked probes (per probe, per identity, and with distractors in the gallery);
* MFR2's real masks, from the photos through the user's detect-and-align path (:mod:`maskstudy.datasets.mfr2`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from ..datasets import mfr2
from ..datasets.pairs import SCENARIOS, VARIANT_SCENARIOS, read_pair_folds
from ..evaluate import evaluate_pairs, identification_rank1
from ..evaluate.statistics import fnmr_at_fmr
from ..evaluate.store import EmbeddingStore
from ..faces.align import CROP_SIZE
from ..faces.preprocess import DecodedCrops

VERIFICATION_COLUMNS = ["scenario", "pairs", "accuracy_mean", "accuracy_std", "acc_ci_low", "acc_ci_high", "auc",
                        "eer", "tar_far_1e-2", "tar_far_1e-3"]


def pair_clusters(pairs: pd.DataFrame) -> np.ndarray:
    """Resampling unit of a pair: the identity folder of its first photo (``Name/Name_0001.jpg`` -> ``Name``)."""
    return pairs["a"].astype(str).str.split("/", n=1).str[0].to_numpy()


def available_scenarios(pairs_dir: str | Path) -> list[str]:
    """The basic LFW scenarios plus the variant scenarios whose pair files exist."""
    pairs_dir = Path(pairs_dir)
    return list(SCENARIOS) + [s for s in VARIANT_SCENARIOS if (pairs_dir / f"{s}.csv").is_file()]


@dataclass
class TestSets:
    """The evaluation data of one run: LFW pair files and crops, identification images, MFR2 (optional)."""

    __test__ = False  # not a pytest class, despite the name

    pairs_dir: Path
    aligned_root: Path
    scenarios: list[str]
    identification_images: pd.DataFrame  # identity, aligned, masked (identities with >= 2 photos take part)
    distractors: pd.DataFrame  # identity, aligned: single-photo identities added to the gallery
    mfr2_root: Path | None = None  # <data_dir>/mfr2 (aligned crops and photos.csv), None = skipped
    mfr2_pairs: pd.DataFrame | None = None
    mfr2_photos: pd.DataFrame | None = None
    embedding_dir: Path | None = None  # evaluation embeddings kept per model (:mod:`maskstudy.evaluate.store`)
    # crop files decoded once for every model the run evaluates (None: decoded on every read)
    decoded_crops: DecodedCrops | None = field(default_factory=DecodedCrops)

    @classmethod
    def from_run(cls, data_dir: str | Path, cleaned_lfw: pd.DataFrame, eval_identities: set,
                 mfr2_source: str | Path | None = None, detector=None, crop_size: int = CROP_SIZE) -> TestSets:
        """Build from the data folder of notebooks 01-02; ``mfr2_source`` (the MFR2 folder, or None) is detected
        and aligned once into ``<data_dir>/mfr2``. Evaluation embeddings are kept in ``<data_dir>/eval_embeddings``,
        so that a rerun embeds only crops (or models) it has not seen."""
        data_dir = Path(data_dir)
        pairs_dir = data_dir / "lfw" / "pairs"
        lfw = cleaned_lfw[cleaned_lfw["identity"].isin(eval_identities) & (cleaned_lfw["aligned"] != "")]
        counts = lfw.groupby("identity")["aligned"].transform("size")
        tests = cls(pairs_dir, data_dir / "lfw" / "aligned", available_scenarios(pairs_dir),
                    lfw[counts >= 2][["identity", "aligned", "masked"]], lfw[counts == 1][["identity", "aligned"]],
                    embedding_dir=data_dir / "eval_embeddings")
        if mfr2_source is not None:
            if detector is None:
                from ..faces.detect import FaceDetector

                detector = FaceDetector()
            tests.mfr2_root = data_dir / "mfr2"
            tests.mfr2_photos = mfr2.prepare(mfr2_source, tests.mfr2_root, detector, crop_size)
            tests.mfr2_pairs = mfr2.protocol_pairs(mfr2.read_pairs(mfr2_source), tests.mfr2_photos)
        return tests


@dataclass
class ModelResults:
    """One model's results: tables (one row per scenario / level) and per-pair details for paired comparisons."""

    verification: pd.DataFrame
    per_pair: dict  # scenario (and "mfr2") -> evaluate_pairs result (+ "clusters")
    fnmr: pd.DataFrame
    identification: dict | None
    mfr2: dict | None


def evaluate_model(model: nn.Module, input_size: int, tests: TestSets, scenarios: Sequence[str] | None = None,
                   identification: bool = True, use_mfr2: bool = True, fixed_fmr: Sequence[float] = (1e-3, 1e-2),
                   batch_size: int = 256, n_boot: int = 2000, seed: int = 0) -> ModelResults:
    """Run every test of :class:`TestSets` (or the given ``scenarios``) on one model, reusing the embeddings
    kept in ``tests.embedding_dir`` for this model's weights and saving the new ones."""
    lfw_store = _store(tests, model, input_size, tests.aligned_root)
    with_mfr2 = use_mfr2 and tests.mfr2_pairs is not None
    mfr2_store = _store(tests, model, input_size, tests.mfr2_root / "aligned") if with_mfr2 else None
    lfw_cache: dict = lfw_store.load() if lfw_store else {}
    mfr2_cache: dict = mfr2_store.load() if mfr2_store else {}
    results = evaluate_embeddings(tests, lfw_cache, mfr2_cache, model, input_size, scenarios, identification,
                                  use_mfr2, fixed_fmr, batch_size, n_boot, seed)
    for store, cache in ((lfw_store, lfw_cache), (mfr2_store, mfr2_cache)):
        if store:
            store.save(cache)
    return results


def evaluate_embeddings(tests: TestSets, lfw_cache: dict, mfr2_cache: dict | None = None,
                        model: nn.Module | None = None, input_size: int = 0, scenarios: Sequence[str] | None = None,
                        identification: bool = True, use_mfr2: bool = True,
                        fixed_fmr: Sequence[float] = (1e-3, 1e-2), batch_size: int = 256, n_boot: int = 2000,
                        seed: int = 0, similarity=None) -> ModelResults:
    """Every test of :class:`TestSets` from embedding caches (crop rel -> unit vector; LFW crops and MFR2 crops),
    the crops missing from them embedded by ``model`` and added. With ``model=None`` every crop must have an
    embedding already (e.g. a pretrained recogniser's, :mod:`maskstudy.study.reference`). ``similarity``: how two
    vectors are compared (default: cosine; see :func:`maskstudy.evaluate.evaluate_pairs`)."""
    kw = {"batch_size": batch_size, "n_boot": n_boot, "seed": seed, "decoded_crops": tests.decoded_crops,
          "similarity": similarity}
    rows, per_pair = [], {}
    for scenario in scenarios or tests.scenarios:
        pairs = scenario_pairs(tests, scenario)
        result = evaluate_pairs(model, input_size, pairs, tests.aligned_root, lfw_cache,
                                clusters=pair_clusters(pairs), **kw)
        per_pair[scenario] = result
        rows.append(_verification_row(scenario, result))
    ident = None
    if identification:
        plain = identification_rank1(model, input_size, tests.identification_images, tests.aligned_root,
                                     crops_cache=lfw_cache, **kw)
        crowded = identification_rank1(model, input_size, tests.identification_images, tests.aligned_root,
                                       crops_cache=lfw_cache, distractors=tests.distractors, **kw)
        ident = {"rank1": plain["rank1"], "ci_low": plain["ci"][0], "ci_high": plain["ci"][1],
                 "rank1_per_identity": plain["rank1_per_identity"], "rank1_distractors": crowded["rank1"],
                 "rank1_per_identity_distractors": crowded["rank1_per_identity"], "probes": plain["probes"],
                 "gallery": plain["gallery"], "gallery_with_distractors": crowded["gallery"]}
    mfr2_row = None
    if use_mfr2 and tests.mfr2_pairs is not None:
        if mfr2_cache is None:
            raise ValueError("the tests include MFR2 but no MFR2 embeddings were given (or use_mfr2=False)")
        result = evaluate_pairs(model, input_size, tests.mfr2_pairs, tests.mfr2_root / "aligned", mfr2_cache,
                                clusters=tests.mfr2_pairs["cluster"], **kw)
        per_pair["mfr2"] = result
        mfr2_row = mfr2.summarise(result, tests.mfr2_pairs, tests.mfr2_photos)
    return ModelResults(pd.DataFrame(rows, columns=VERIFICATION_COLUMNS), per_pair, _fnmr_table(per_pair, fixed_fmr),
                        ident, mfr2_row)


def scenario_pairs(tests: TestSets, scenario: str) -> pd.DataFrame:
    """The pair list (fold, a, b, label) of one LFW scenario of ``tests``."""
    path = tests.pairs_dir / f"{scenario}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"pair file for scenario {scenario!r} not found: {path} (run notebooks 01-02)")
    return read_pair_folds(path)


def _fnmr_table(per_pair: dict, fixed_fmr: Sequence[float]) -> pd.DataFrame:
    """False non-match rate of every LFW scenario at the thresholds giving ``fixed_fmr`` on unmasked pairs."""
    rows = []
    reference = per_pair.get("unmasked_unmasked")
    if reference is not None:
        for scenario, result in per_pair.items():
            if scenario in ("unmasked_unmasked", "mfr2"):
                continue
            for fmr in fixed_fmr:
                r = fnmr_at_fmr(reference, result, fmr)
                rows.append({"scenario": scenario, "fmr_target": fmr, "fnmr": r["fnmr"],
                             "fmr_reached": r["fmr_reached"], "threshold": r["threshold"]})
    return pd.DataFrame(rows, columns=["scenario", "fmr_target", "fnmr", "fmr_reached", "threshold"])


def _store(tests: TestSets, model: nn.Module, input_size: int, crop_root: Path) -> EmbeddingStore | None:
    return None if tests.embedding_dir is None else EmbeddingStore(tests.embedding_dir, model, input_size, crop_root)


def _verification_row(scenario: str, result: dict) -> dict:
    low, high = result["acc_ci"]
    return {"scenario": scenario, "pairs": result["pairs"], "accuracy_mean": result["accuracy"]["mean"],
            "accuracy_std": result["accuracy"]["std"], "acc_ci_low": low, "acc_ci_high": high,
            "auc": result["roc"]["auc"], "eer": result["roc"]["eer"], "tar_far_1e-2": result["roc"]["tar_at_far_1e-2"],
            "tar_far_1e-3": result["roc"]["tar_at_far_1e-3"]}
