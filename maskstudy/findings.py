"""The study's findings as sentences, computed from the saved result tables (notebook 06 and ``index.html``).

Every number in a sentence comes from a table; every claim about a difference follows its interval and the Holm
correction, so the summary never says more than the evidence does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from . import study as design
from .comparisons import MFR2
from .pairs import MASKED_MASKED, MASKED_UNMASKED, UNMASKED_UNMASKED, variant_scenario

DETECTED, UNSEEN = design.DETECTED, design.UNSEEN
DETECTED_EYES = variant_scenario(MASKED_UNMASKED, "detected_eyes")
BOTH_DETECTED = variant_scenario(MASKED_MASKED, "detected")
#: Tests named in the findings, in reading order, with a short label.
HEADLINE_TESTS = {UNMASKED_UNMASKED: "unmasked", MASKED_UNMASKED: "masked-unmasked (shared alignment)",
                  DETECTED: "masked-unmasked (mask detected on the photo)",
                  UNSEEN: "masked-unmasked (unseen mask styles)",
                  BOTH_DETECTED: "masked-masked (detected)", MFR2: "MFR2 real masks"}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def study_findings(results: Mapping[str, pd.DataFrame], split: Mapping[str, Any],
                   config: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Findings and warnings from the tables of notebooks 01-04 (``results`` as read by
    :func:`maskstudy.report.read_results`) and the split's description."""
    findings, warnings = [], []
    train_images = int(results["01_split"]["train_images"].iloc[0])
    findings.append(f"Protocol {split['protocol']}: trained on {train_images:,} photos "
                    f"({split['counts']['train_identities']:,} identities) before cleaning; evaluated on "
                    f"{split['counts']['eval_pairs']:,} LFW pairs" + (" and MFR2's real masks." if "03_mfr2" in results else "."))
    spread = results["03_seed_summary"]
    seeds = int(spread["seeds"].max()) if len(spread) else 0
    for model, part in spread.groupby("model", sort=False):
        by_test = part.set_index("test")
        shown = [f"{label} {_pct(by_test.loc[t, 'accuracy_mean'])}"
                 + (f" ± {100 * by_test.loc[t, 'accuracy_std']:.1f}" if np.isfinite(by_test.loc[t, "accuracy_std"]) else "")
                 for t, label in HEADLINE_TESTS.items() if t in by_test.index]
        findings.append(f"{model} (mean ± sd over {seeds} training seeds): " + "; ".join(shown) + ".")
    findings += _difference_findings(results["03_differences"], warnings)
    findings += _mask_findings(spread, results)
    findings += _baseline_findings(results, design.reference_run(config))
    findings += _teacher_findings(results)
    findings += track_findings(results)
    vit = results["04_vit"].set_index(["model", "scenario"])
    keys = [(model, MASKED_UNMASKED) for model in design.TRANSFORMER_MODELS]
    if all(key in vit.index for key in keys):
        findings.append(" and ".join(f"{design.model_label(model)} {_pct(vit.loc[(model, test), 'accuracy_mean'])}"
                                     for model, test in keys) + " on masked-unmasked pairs (one seed each).")
    if config.get("profile") == "smoke":
        warnings.append("smoke profile: a few training steps on a handful of images; the numbers test the pipeline, "
                        "not the methods.")
    if seeds < 3:
        warnings.append(f"only {seeds} training seed(s): the spread over seeds is barely estimated.")
    warnings.append("CelebA identity numbers cannot be matched to LFW names: a person in both sets cannot be excluded "
                    "from training. MFR2's public figures may also appear in CelebA.")
    fnmr = results["03_fnmr"]
    if len(fnmr):
        warnings.append("FNMR at FMR 1e-3 rests on about a thousandth of each fold's impostor pairs beyond the "
                        "threshold (a few pairs): read it as a rough operating point.")
    return findings, warnings


def _difference_findings(differences: pd.DataFrame, warnings: list[str]) -> list[str]:
    out = []
    if differences.empty:
        return out
    headline = differences[differences["test"].isin([MASKED_UNMASKED, DETECTED, MFR2])]
    for row in headline.itertuples():
        if np.isfinite(row.seed_ci_low):
            interval = f"[{_pts(row.seed_ci_low)}, {_pts(row.seed_ci_high)}] over {row.seeds} seeds, Holm p {row.p_seed_holm:.2f}"
        else:
            interval = f"[{_pts(row.boot_ci_low)}, {_pts(row.boot_ci_high)}] (one seed), Holm p {row.p_boot_holm:.2f}"
        verdict = "separated from 0" if row.separated else "not separable from 0"
        out.append(f"{row.comparison} on {HEADLINE_TESTS.get(row.test, row.test)}: {_pts(row.diff_seed_mean)} points "
                   f"{interval}: {verdict}.")
    separated = differences[differences["separated"]]
    out.append(f"{len(separated)} of {len(differences)} attention comparisons (all tests) are separated after Holm's "
               "correction" + (": " + "; ".join(f"{r.comparison} on {r.test}" for r in separated.itertuples())
                                if len(separated) else "; the study cannot tell the attention variants apart."))
    flips = differences[differences["test"] != UNMASKED_UNMASKED].groupby("comparison")["diff_seed_mean"].agg(
        lambda d: bool((d > 0).any() and (d < 0).any()))
    if flips.any():
        warnings.append("the sign of " + ", ".join(flips[flips].index) + " changes from one test to another.")
    boot_only = differences[(differences["p_boot_holm"] < 0.05) & ~differences["separated"]]
    if len(boot_only):
        warnings.append(f"{len(boot_only)} comparison(s) look separated on the main seed's pairs alone but not across "
                        "seeds: pair resampling understates the run-to-run variation.")
    return out


def _mask_findings(spread: pd.DataFrame, results: Mapping[str, pd.DataFrame]) -> list[str]:
    out = []
    means = spread.pivot(index="model", columns="test", values="accuracy_mean")
    if {MASKED_UNMASKED, DETECTED} <= set(means.columns):
        change = means[DETECTED] - means[MASKED_UNMASKED]
        out.append("Detecting the masked face on the masked photo (as a user's pipeline does) instead of reusing the "
                   f"clean photo's landmarks changes masked-unmasked accuracy by {_pts(change.min())} to "
                   f"{_pts(change.max())} points across models (mean over seeds).")
    if {DETECTED, DETECTED_EYES} <= set(means.columns):
        gain = means[DETECTED_EYES] - means[DETECTED]
        out.append(f"Eye-weighted alignment of detected masked faces changes that by {_pts(gain.min())} to "
                   f"{_pts(gain.max())} points.")
    if {MASKED_UNMASKED, UNSEEN} <= set(means.columns):
        change = means[UNSEEN] - means[MASKED_UNMASKED]
        out.append(f"Mask styles never seen in training change masked-unmasked accuracy by {_pts(change.min())} to "
                   f"{_pts(change.max())} points against the training styles (shared alignment).")
    if MFR2 in means.columns and DETECTED in means.columns:
        out.append("MFR2 real masks: " + ", ".join(f"{m} {_pct(v)}" for m, v in means[MFR2].items())
                   + " (mean over seeds), against " + ", ".join(
                       f"{m} {_pct(v)}" for m, v in means[DETECTED].items())
                   + " on LFW with synthetic masks detected on the photo.")
    if "01_masked_detection" in results:
        detection = results["01_masked_detection"].set_index("mask_styles")
        out.append("MTCNN on the masked LFW photos found a face in "
                   + ", ".join(f"{_pct(r.face_found)} ({k} styles; {_pct(r.misplaced)} of those misplaced)"
                               for k, r in detection.iterrows()) + ".")
    if "03_mfr2" in results and len(results["03_mfr2"]):
        mfr2 = results["03_mfr2"]
        out.append(f"MTCNN found a face in {_pct(mfr2['face_found'].iloc[0])} of the MFR2 photos "
                   f"({_pct(mfr2['face_found_masked'].iloc[0])} of the masked ones).")
    return out


def _baseline_findings(results: Mapping[str, pd.DataFrame], reference: str | None) -> list[str]:
    """Sentences on the plain network's extra runs, compared with its main-seed run ``reference``."""
    out = []
    base = results["03_baseline_differences"]
    if len(base) and reference:
        nomask = base[base["comparison"] == f"{reference} - {design.NOMASK_RUN}"].set_index("test")
        for test in (MASKED_UNMASKED, DETECTED, MFR2):
            if test in nomask.index:
                r = nomask.loc[test]
                out.append(f"Training with masked twins (plain, main seed) vs without, on {HEADLINE_TESTS[test]}: "
                           f"{_pts(r['diff'])} points [{_pts(r['ci_low'])}, {_pts(r['ci_high'])}].")
        twins = base[base["comparison"].isin([f"{design.twins_run(v)} - {reference}" for v in design.TWIN_VARIANTS])]
        for test in (DETECTED, MFR2, MASKED_UNMASKED):
            for row in twins[twins["test"] == test].itertuples():
                out.append(f"Training on twins detected on the masked photo ({row.comparison}, main seed), on "
                           f"{HEADLINE_TESTS[test]}: {_pts(row.diff)} points [{_pts(row.ci_low)}, {_pts(row.ci_high)}].")
    if "03_leave_one_style_out" in results and reference:
        loso = results["03_leave_one_style_out"]
        diffs = loso[loso["run"].str.endswith(f" - {reference}")]
        for row in diffs.itertuples():
            out.append(f"Leave one style out, {row.pairs}: {_pts(row.diff)} points [{_pts(row.ci_low)}, "
                       f"{_pts(row.ci_high)}] against the plain net that saw every style.")
    fnmr = results["03_fnmr"]
    part = fnmr[(fnmr["kind"] == design.RunKind.ATTENTION) & (fnmr["fmr_target"] == fnmr["fmr_target"].min())]
    if len(part):
        worst = part.groupby("scenario")["fnmr"].mean()
        shown = [s for s in (MASKED_UNMASKED, DETECTED, BOTH_DETECTED) if s in worst.index]
        if shown:
            out.append(f"At the threshold giving FMR {part['fmr_target'].iloc[0]:g} on unmasked pairs, masked pairs are "
                       "falsely rejected " + ", ".join(f"{_pct(worst[s])} of the time ({HEADLINE_TESTS.get(s, s)})"
                                                       for s in shown) + " (mean over models and seeds).")
    return out


def _teacher_findings(results: Mapping[str, pd.DataFrame]) -> list[str]:
    """Sentences on the pretrained reference, the guided students against it, and guidance and attention among them."""
    out = []
    teacher = results.get("03_teacher")
    if teacher is None or not len(teacher):
        return out
    t = teacher.iloc[0]
    out.append(f"Teacher {t['teacher']}: teacher pass over {int(t['training_photos']):,} training photos "
               f"{t['teacher_pass_seconds']:.0f} s ({int(t['embedded_now']):,} embedded in this run), reference "
               f"evaluation {t['reference_eval_seconds']:.0f} s, {int(t['guided_runs'])} guided trainings "
               f"{t['guided_train_seconds'] / 60:.1f} min.")
    versus = results.get("03_guided_vs_reference")
    if versus is not None and len(versus):
        for test in (UNMASKED_UNMASKED, DETECTED, MFR2):
            part = versus[versus["test"] == test]
            if not len(part):
                continue
            ref = part["reference_accuracy"].iloc[0]
            out.append(f"On {HEADLINE_TESTS[test]} the pretrained reference (not trained here) reaches {_pct(ref)}; "
                       "guided students (mean over seeds, main-seed bootstrap difference): " + "; ".join(
                           f"{r.model} {_pct(r.accuracy_mean)} ({_pts(r.diff_main_seed)} [{_pts(r.boot_ci_low)}, "
                           f"{_pts(r.boot_ci_high)}])" for r in part.itertuples()) + ".")
    guided = results.get("03_guided_differences")
    if guided is not None and len(guided):
        headline = guided[guided["test"].isin([MASKED_UNMASKED, DETECTED, MFR2])]
        for row in headline.itertuples():
            verdict = "separated from 0" if row.separated else "not separable from 0"
            out.append(f"{row.comparison} on {HEADLINE_TESTS.get(row.test, row.test)}: {_pts(row.diff_seed_mean)} "
                       f"points [{_pts(row.seed_ci_low)}, {_pts(row.seed_ci_high)}] over {row.seeds} seeds: {verdict}.")
    return out


def track_findings(results: Mapping[str, pd.DataFrame]) -> list[str]:
    """Sentences on the pretrained track (:mod:`maskstudy.pretrained_track`): the fine-tuned models against the
    pretrained network, attention among them (Holm over the track's family) and the cropping baseline."""
    out = []
    versus = results.get("03_track_vs_pretrained")
    if versus is None or not len(versus):
        return out
    for test in (UNMASKED_UNMASKED, DETECTED, MFR2):
        part = versus[versus["test"] == test]
        if not len(part):
            continue
        out.append(f"Pretrained track, {HEADLINE_TESTS[test]}: the pretrained network {_pct(part['reference_accuracy'].iloc[0])}; "
                   "fine-tuned (mean ± sd over seeds, main-seed bootstrap difference to it): " + "; ".join(
                       f"{r.model} {_pct(r.accuracy_mean)} ± {100 * r.accuracy_std:.1f} ({_pts(r.diff_main_seed)} "
                       f"[{_pts(r.boot_ci_low)}, {_pts(r.boot_ci_high)}])" for r in part.itertuples()) + ".")
    differences = results.get("03_track_differences")
    if differences is not None and len(differences):
        for row in differences[differences["test"].isin([DETECTED, MFR2])].itertuples():
            verdict = "separated from 0" if row.separated else "not separable from 0"
            out.append(f"Pretrained track, {row.comparison} on {HEADLINE_TESTS.get(row.test, row.test)}: "
                       f"{_pts(row.diff_seed_mean)} points [{_pts(row.seed_ci_low)}, {_pts(row.seed_ci_high)}] over "
                       f"{row.seeds} seeds, Holm p {row.p_seed_holm:.2f}: {verdict}.")
        separated = differences[differences["separated"]]
        out.append(f"Pretrained track: {len(separated)} of {len(differences)} attention comparisons (all tests) are "
                   "separated after Holm's correction" + (": " + "; ".join(
                       f"{r.comparison} on {r.test} ({_pts(r.diff_seed_mean)})" for r in separated.itertuples())
                       if len(separated) else "."))
    crop = results.get("03_track_crop_baseline")
    if crop is not None and len(crop):
        for row in crop[crop["test"].isin([UNMASKED_UNMASKED, DETECTED, MFR2])].itertuples():
            out.append(f"Cropping baseline (upper face only) minus the plain fine-tune on "
                       f"{HEADLINE_TESTS.get(row.test, row.test)}: {_pts(row.diff)} points "
                       f"[{_pts(row.ci_low)}, {_pts(row.ci_high)}] (main seed).")
    return out
