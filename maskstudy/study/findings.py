"""The study's findings as sentences, computed from the saved result tables (notebook 06 and ``index.html``).

Every number in a sentence comes from a table; every claim about a difference follows its interval and the Holm
correction, so the summary never says more than the evidence does. Tests and models are named by their display
labels (:mod:`maskstudy.study.design`); the findings are grouped by the question they answer (:data:`study.QUESTIONS`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..datasets.pairs import MASKED_UNMASKED, UNMASKED_UNMASKED
from ..explain.attention_summary import map_verdict, strength_sentence
from . import design
from .comparisons import MFR2

DETECTED, UNSEEN = design.DETECTED, design.UNSEEN
DETECTED_EYES, BOTH_DETECTED = design.DETECTED_EYES, design.BOTH_DETECTED
label, model_label, comparison_label = design.test_label, design.model_label, design.comparison_label


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _pts(x: float) -> str:
    return f"{round(100 * x, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def study_findings(results: Mapping[str, pd.DataFrame], split: Mapping[str, Any],
                   config: Mapping[str, Any]) -> tuple[dict[str, list[str]], list[str]]:
    """Findings grouped by question (:data:`maskstudy.study.design.QUESTIONS` keys, after :data:`maskstudy.study.design.SETUP`)
    and warnings, from the tables of notebooks 01-05 (``results`` as read by
    :func:`maskstudy.report.outputs.read_results`) and the split's description."""
    groups: dict[str, list[str]] = {key: [] for key in (design.SETUP, *design.QUESTIONS)}
    warnings: list[str] = []
    setup = groups[design.SETUP]
    train_images = int(results["01_split"]["train_images"].iloc[0])
    setup.append(f"Protocol {split['protocol']}: trained on {train_images:,} photos "
                 f"({split['counts']['train_identities']:,} identities) before cleaning; evaluated on "
                 f"{split['counts']['eval_pairs']:,} LFW pairs" + (" and MFR2's real masks." if "03_mfr2" in results else "."))
    spread = results["03_seed_summary"]
    seeds = int(spread["seeds"].max()) if len(spread) else 0
    for model, part in spread.groupby("model", sort=False):
        by_test = part.set_index("test")
        shown = [f"{label(t)} {_pct(by_test.loc[t, 'accuracy_mean'])}"
                 + (f" ± {100 * by_test.loc[t, 'accuracy_std']:.1f}" if np.isfinite(by_test.loc[t, "accuracy_std"]) else "")
                 for t in design.HEADLINE_TESTS if t in by_test.index]
        setup.append(f"{model_label(model)} (mean ± sd over {seeds} training seeds): " + "; ".join(shown) + ".")
    groups["attention"] += _difference_findings(results["03_differences"], warnings)
    mask_groups = _mask_findings(spread, results)
    for key in ("detection", "unseen", "real_masks"):
        groups[key] += mask_groups[key]
    baseline = _baseline_findings(results, design.reference_run(config))
    groups["training"] += baseline["training"]
    groups["unseen"] += baseline["unseen"]
    setup += baseline["setup"]
    teacher = _teacher_findings(results)
    setup += teacher[:1]
    groups["pretrained"] += teacher[1:]
    track = track_findings(results)
    groups["pretrained"] += track["pretrained"]
    groups["attention"] += track["attention"]
    groups["training"] += track["training"]
    groups["real_masks"] += track["real_masks"]
    groups["attention"] += strength_findings(results, config)
    groups["recognizer"] += recognizer_findings(results)
    vit = results["04_vit"].set_index(["model", "scenario"])
    keys = [(model, MASKED_UNMASKED) for model in design.TRANSFORMER_MODELS]
    if all(key in vit.index for key in keys):
        setup.append(" and ".join(f"{model_label(model)} {_pct(vit.loc[(model, test), 'accuracy_mean'])}"
                                  for model, test in keys) + " on masked-unmasked pairs (one seed each).")
    groups["cams"] += cam_findings(results, config, warnings)
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
    return {key: sentences for key, sentences in groups.items() if sentences}, warnings


def _seed_interval(row) -> str:
    """``[low, high] over k seeds, Holm p``; the main seed's bootstrap interval when there is one seed."""
    if np.isfinite(row.seed_ci_low):
        return f"[{_pts(row.seed_ci_low)}, {_pts(row.seed_ci_high)}] over {row.seeds} seeds, Holm p {row.p_seed_holm:.2f}"
    return f"[{_pts(row.boot_ci_low)}, {_pts(row.boot_ci_high)}] (one seed), Holm p {row.p_boot_holm:.2f}"


def _difference_findings(differences: pd.DataFrame, warnings: list[str]) -> list[str]:
    out = []
    if differences.empty:
        return out
    headline = differences[differences["test"].isin([MASKED_UNMASKED, DETECTED, MFR2])]
    for row in headline.itertuples():
        verdict = "separated from 0" if row.separated else "not separable from 0"
        out.append(f"{comparison_label(row.comparison)} on {label(row.test)}: {_pts(row.diff_seed_mean)} points "
                   f"{_seed_interval(row)}: {verdict}.")
    separated = differences[differences["separated"]]
    out.append(f"{len(separated)} of {len(differences)} attention comparisons (all tests) are separated after Holm's "
               "correction" + (": " + "; ".join(f"{comparison_label(r.comparison)} on {label(r.test)}"
                                                for r in separated.itertuples()) + "."
                                if len(separated) else "; the study cannot tell the attention variants apart."))
    flips = differences[differences["test"] != UNMASKED_UNMASKED].groupby("comparison")["diff_seed_mean"].agg(
        lambda d: bool((d > 0).any() and (d < 0).any()))
    if flips.any():
        warnings.append("the sign of " + ", ".join(comparison_label(c) for c in flips[flips].index)
                        + " changes from one test to another.")
    boot_only = differences[(differences["p_boot_holm"] < 0.05) & ~differences["separated"]]
    if len(boot_only):
        warnings.append(f"{len(boot_only)} comparison(s) look separated on the main seed's pairs alone but not across "
                        "seeds: pair resampling understates the run-to-run variation.")
    return out


def _mask_findings(spread: pd.DataFrame, results: Mapping[str, pd.DataFrame]) -> dict[str, list[str]]:
    """Sentences on detection on the masked photo, unseen mask styles and MFR2's real masks, by question."""
    out: dict[str, list[str]] = {"detection": [], "unseen": [], "real_masks": []}
    means = spread.pivot(index="model", columns="test", values="accuracy_mean") if len(spread) else pd.DataFrame()
    if {MASKED_UNMASKED, DETECTED} <= set(means.columns):
        change = means[DETECTED] - means[MASKED_UNMASKED]
        out["detection"].append("Detecting the masked face on the masked photo (as a user's pipeline does) instead of "
                                "reusing the clean photo's landmarks changes masked-unmasked accuracy by "
                                f"{_pts(change.min())} to {_pts(change.max())} points across models (mean over seeds).")
    if {DETECTED, DETECTED_EYES} <= set(means.columns):
        gain = means[DETECTED_EYES] - means[DETECTED]
        out["detection"].append(f"Eye-weighted alignment of detected masked faces changes that by {_pts(gain.min())} "
                                f"to {_pts(gain.max())} points.")
    if "01_masked_detection" in results:
        detection = results["01_masked_detection"].set_index("mask_styles")
        out["detection"].append("MTCNN on the masked LFW photos found a face in " + ", ".join(
            f"{_pct(r.face_found)} ({k} styles; {_pct(r.misplaced)} of those misplaced)"
            for k, r in detection.iterrows()) + ".")
    if {MASKED_UNMASKED, UNSEEN} <= set(means.columns):
        change = means[UNSEEN] - means[MASKED_UNMASKED]
        out["unseen"].append(f"Mask styles never seen in training change masked-unmasked accuracy by "
                             f"{_pts(change.min())} to {_pts(change.max())} points against the training styles "
                             "(shared alignment).")
    if MFR2 in means.columns and DETECTED in means.columns:
        out["real_masks"].append(
            "MFR2 real masks: " + ", ".join(f"{model_label(m)} {_pct(v)}" for m, v in means[MFR2].items())
            + " (mean over seeds), against " + ", ".join(f"{model_label(m)} {_pct(v)}" for m, v in means[DETECTED].items())
            + " on LFW with synthetic masks detected on the photo.")
    if "03_mfr2" in results and len(results["03_mfr2"]):
        mfr2 = results["03_mfr2"]
        out["real_masks"].append(f"MTCNN found a face in {_pct(mfr2['face_found'].iloc[0])} of the MFR2 photos "
                                 f"({_pct(mfr2['face_found_masked'].iloc[0])} of the masked ones).")
    return out


def _against_seeds(rows: pd.DataFrame, run: str, reference: str) -> str:
    """Where one run's accuracy falls among the reference's seeds on the same pairs: the interval above is over
    test pairs, and says nothing of how much another training seed would move it."""
    accuracy = rows["accuracy"] if "accuracy" in rows else pd.Series(np.nan, index=rows.index)
    seeds = accuracy[(rows["run"] == reference) | rows["run"].str.startswith(f"{reference}_seed")].dropna()
    mine = accuracy[rows["run"] == run].dropna()
    if len(seeds) < 2 or not len(mine):
        return " (one training seed: the interval covers the test pairs, not the seed-to-seed spread)"
    value, low, high = mine.iloc[0], seeds.min(), seeds.max()
    where = "below all of" if value < low else ("above all of" if value > high else "within the range of")
    return (f"; one training seed ({_pct(value)}), {where} the {len(seeds)} seeds of the plain net on these pairs "
            f"({_pct(low)} to {_pct(high)}), so the interval covers the test pairs, not the seed-to-seed spread")


def _baseline_findings(results: Mapping[str, pd.DataFrame], reference: str | None) -> dict[str, list[str]]:
    """Sentences on the plain network's extra runs, compared with its main-seed run ``reference``: training
    choices, the leave-one-style-out run (unseen masks) and the false non-match rate (setup)."""
    out: dict[str, list[str]] = {"training": [], "unseen": [], "setup": []}
    base = results["03_baseline_differences"]
    if len(base) and reference:
        nomask = base[base["comparison"] == f"{reference} - {design.NOMASK_RUN}"].set_index("test")
        for test in (MASKED_UNMASKED, DETECTED, MFR2):
            if test in nomask.index:
                r = nomask.loc[test]
                out["training"].append(f"Training with masked twins (plain, main seed) vs without, on {label(test)}: "
                                       f"{_pts(r['diff'])} points [{_pts(r['ci_low'])}, {_pts(r['ci_high'])}].")
        twins = base[base["comparison"].isin([f"{design.twins_run(v)} - {reference}" for v in design.TWIN_VARIANTS])]
        for test in (DETECTED, MFR2, MASKED_UNMASKED):
            for row in twins[twins["test"] == test].itertuples():
                out["training"].append(f"Training on twins detected on the masked photo ({row.comparison}, main "
                                       f"seed), on {label(test)}: {_pts(row.diff)} points [{_pts(row.ci_low)}, "
                                       f"{_pts(row.ci_high)}].")
    if "03_leave_one_style_out" in results and reference:
        loso = results["03_leave_one_style_out"]
        diffs = loso[loso["run"].str.endswith(f" - {reference}")]
        for row in diffs.itertuples():
            out["unseen"].append(f"Leave one style out, {row.pairs}: {_pts(row.diff)} points [{_pts(row.ci_low)}, "
                                 f"{_pts(row.ci_high)}] against the plain net that saw every style"
                                 + _against_seeds(loso[loso["pairs"] == row.pairs], row.run.split(" - ")[0],
                                                  reference) + ".")
    fnmr = results["03_fnmr"]
    part = fnmr[(fnmr["kind"] == design.RunKind.ATTENTION) & (fnmr["fmr_target"] == fnmr["fmr_target"].min())]
    if len(part):
        worst = part.groupby("scenario")["fnmr"].mean()
        shown = [s for s in (MASKED_UNMASKED, DETECTED, BOTH_DETECTED) if s in worst.index]
        if shown:
            out["setup"].append(f"At the threshold giving FMR {part['fmr_target'].iloc[0]:g} on unmasked pairs, masked "
                                "pairs are falsely rejected " + ", ".join(f"{_pct(worst[s])} of the time ({label(s)})"
                                                                          for s in shown)
                                + " (mean over models and seeds).")
    return out


def _teacher_findings(results: Mapping[str, pd.DataFrame]) -> list[str]:
    """Sentences on the pretrained reference, the guided students against it, and guidance and attention among
    them; the first is the teacher's timing (empty without a teacher)."""
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
            out.append(f"On {label(test)} the pretrained reference (not trained here) reaches {_pct(ref)}; "
                       "guided students (mean over seeds, main-seed bootstrap difference): " + "; ".join(
                           f"{model_label(r.model)} {_pct(r.accuracy_mean)} ({_pts(r.diff_main_seed)} "
                           f"[{_pts(r.boot_ci_low)}, {_pts(r.boot_ci_high)}])" for r in part.itertuples()) + ".")
    guided = results.get("03_guided_differences")
    if guided is not None and len(guided):
        headline = guided[guided["test"].isin([MASKED_UNMASKED, DETECTED, MFR2])]
        for row in headline.itertuples():
            verdict = "separated from 0" if row.separated else "not separable from 0"
            out.append(f"{row.comparison} on {label(row.test)}: {_pts(row.diff_seed_mean)} points "
                       f"[{_pts(row.seed_ci_low)}, {_pts(row.seed_ci_high)}] over {row.seeds} seeds: {verdict}.")
    return out


def clean_control_finding(results: Mapping[str, pd.DataFrame]) -> str | None:
    """What costs MFR2 after fine-tuning: the plain network fine-tuned on the clean crops alone (no twins) against
    the twin-trained one and the pretrained network as it is (main seed, identity bootstrap), on MFR2."""
    control = results.get("03_track_clean_control")
    if control is None or not len(control):
        return None
    mfr2 = control[control["test"] == MFR2]
    versus_twins = mfr2[~mfr2["comparison"].str.endswith(f" - {design.TRACK_REFERENCE}")]
    versus_reference = mfr2[mfr2["comparison"].str.endswith(f" - {design.TRACK_REFERENCE}")]
    if versus_twins.empty or versus_reference.empty:
        return None
    twins, reference = versus_twins.iloc[0], versus_reference.iloc[0]
    if twins["ci_low"] > 0 and reference["ci_low"] <= 0 <= reference["ci_high"]:
        cause = ("what costs MFR2 is training on the synthetic twins: without them fine-tuning leaves MFR2 where the "
                 "pretrained network has it")
    elif twins["ci_low"] > 0:
        cause = "training on the synthetic twins costs MFR2, and fine-tuning on clean crops alone moves it too"
    elif reference["ci_high"] < 0:
        cause = "fine-tuning costs MFR2 with or without the synthetic twins"
    else:
        cause = "the cost of the synthetic twins on MFR2 is not separated from fine-tuning on clean crops alone"
    return (f"Fine-tuned on the clean crops alone (no twins, main seed), on {label(MFR2)}: {_pts(twins['diff'])} "
            f"points [{_pts(twins['ci_low'])}, {_pts(twins['ci_high'])}] against the twin-trained plain fine-tune and "
            f"{_pts(reference['diff'])} [{_pts(reference['ci_low'])}, {_pts(reference['ci_high'])}] against the "
            f"pretrained network as it is: {cause}.")


def strength_findings(results: Mapping[str, pd.DataFrame], config: Mapping[str, Any]) -> list[str]:
    """One sentence per track: how strongly the attention blocks act (notebook 05's ``05_attention_strength``)."""
    strength = results.get("05_attention_strength")
    if strength is None or not len(strength):
        return []
    out = []
    scratch = strength_sentence(strength, design.attended_models(config), design.model_label)
    track_models = [m for m, (block, _) in design.TRACK_VARIANTS.items() if block != design.NO_ATTENTION]
    pretrained = strength_sentence(strength, track_models, design.attention_label)
    intervals = "; ".join(strength[strength["block"] == "all blocks"]["interval"].unique())
    for name, sentence in (("from scratch", scratch), ("in the pretrained track", pretrained)):
        if sentence:
            out.append(f"How strongly attention acts {name} (|A(x) − x| / |x| on masked probes, mean over blocks; "
                       f"95 % intervals: {intervals}): {sentence}.")
    return out


def track_findings(results: Mapping[str, pd.DataFrame]) -> dict[str, list[str]]:
    """Sentences on the pretrained track (:mod:`maskstudy.study.pretrained_track`), by question: the fine-tuned models
    against the pretrained network (``pretrained``), attention among them, Holm over the track's family
    (``attention``), the upper face against the whole face (``training``) and the clean-crop control
    (``real_masks``)."""
    out: dict[str, list[str]] = {"pretrained": [], "attention": [], "training": [], "real_masks": []}
    versus = results.get("03_track_vs_pretrained")
    if versus is None or not len(versus):
        return out
    for test in (UNMASKED_UNMASKED, DETECTED, MFR2):
        part = versus[versus["test"] == test]
        if not len(part):
            continue
        out["pretrained"].append(
            f"Pretrained track, {label(test)}: the pretrained network {_pct(part['reference_accuracy'].iloc[0])}; "
            "fine-tuned (mean ± sd over seeds, main-seed bootstrap difference to it): " + "; ".join(
                f"{model_label(r.model)} {_pct(r.accuracy_mean)} ± {100 * r.accuracy_std:.1f} ({_pts(r.diff_main_seed)} "
                f"[{_pts(r.boot_ci_low)}, {_pts(r.boot_ci_high)}])" for r in part.itertuples()) + ".")
    differences = results.get("03_track_differences")
    if differences is not None and len(differences):
        for row in differences[differences["test"].isin([DETECTED, MFR2])].itertuples():
            verdict = "separated from 0" if row.separated else "not separable from 0"
            out["attention"].append(f"Pretrained track, {comparison_label(row.comparison)} on {label(row.test)}: "
                                    f"{_pts(row.diff_seed_mean)} points {_seed_interval(row)}: {verdict}.")
        separated = differences[differences["separated"]]
        out["attention"].append(
            f"Pretrained track: {len(separated)} of {len(differences)} attention comparisons (all tests) are separated "
            "after Holm's correction" + (": " + "; ".join(
                f"{comparison_label(r.comparison)} on {label(r.test)} ({_pts(r.diff_seed_mean)})"
                for r in separated.itertuples()) + "." if len(separated) else "."))
    upper = results.get("03_track_upper_face")
    if upper is not None and len(upper):
        for row in upper[upper["test"].isin([UNMASKED_UNMASKED, DETECTED, MFR2])].itertuples():
            out["training"].append(f"Pretrained track, the upper face only (plain, the chip's lower half blanked) "
                                   f"minus the whole face on {label(row.test)}: {_pts(row.diff_seed_mean)} points "
                                   f"{_seed_interval(row)}.")
    control = clean_control_finding(results)
    if control:
        out["real_masks"].append(control)
    return out


def cam_pairs(results: Mapping[str, pd.DataFrame], config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(model, baseline)`` of every CAM comparison notebook 05 made: each attention block of the from-scratch
    track against plain, then the pretrained track's (those in ``05_attention_differences``)."""
    differences = results.get("05_attention_differences")
    if differences is None or not len(differences):
        return []
    plain = design.plain_model(config)
    scratch = [(m, plain) for m in design.attended_models(config) if plain is not None]
    track = [(r.model, r.baseline) for r in differences.itertuples() if r.model in design.TRACK_VARIANTS]
    return list(dict.fromkeys(scratch + track))


def cam_findings(results: Mapping[str, pd.DataFrame], config: Mapping[str, Any], warnings: list[str]) -> list[str]:
    """Sentences on where the networks look (notebook 05's tables): the eye-band share of CAM mass on masked probes
    with its interval, the verdict of each CAM comparison, and a warning when a CAM grid is too coarse to separate
    the eye band from the mask region."""
    out = []
    attention = results.get("05_attention_regions")
    method = config.get("cam_method")
    if attention is not None and len(attention):
        masked = attention[(attention["input"] == "masked") & (attention["method"] == method)]
        if len(masked):
            out.append(f"Share of raw {method} mass in the eye band on masked probes: "
                       + ", ".join(f"{model_label(r.model)} {100 * r.eye_share:.1f} % [{100 * r.eye_ci_low:.1f}, "
                                   f"{100 * r.eye_ci_high:.1f}]" for r in masked.itertuples())
                       + f" (95 % intervals: {'; '.join(masked['interval'].unique())}; the band is "
                       f"{100 * masked['eye_band_area_share'].iloc[0]:.1f} % of the crop).")
    pairs = cam_pairs(results, config)
    if pairs:
        from ..explain.verdict import attention_verdict

        track = set(design.TRACK_VARIANTS)
        out += [("Pretrained track: " if model in track else "") + attention_verdict(
            results["05_attention_differences"], results["05_faithfulness_contrasts"],
            results["05_randomization_check"], model=model, baseline=baseline, method=method, label=design.attention_label)
            for model, baseline in pairs]
    out += cbam_map_findings(results)
    geometry = results.get("05_cam_geometry")
    coarse = geometry[geometry["eye_band_height_in_cells"] < 1.5] if geometry is not None and len(geometry) else []
    if len(coarse):
        warnings.append("CAM grids too coarse to separate the eye band from the mask region: "
                        + ", ".join(f"{r.model} {r.grid}x{r.grid} at {r.input_size} px (band "
                                    f"{r.eye_band_height_in_cells:.2f} cells tall)" for r in coarse.itertuples())
                        + "; the attention verdict is limited by that.")
    return out


def cbam_map_findings(results: Mapping[str, pd.DataFrame]) -> list[str]:
    """Per CBAM model, whether its own spatial map switches the mask off (notebook 05's ``05_cbam_spatial_*``)."""
    differences, summary = results.get("05_cbam_spatial_differences"), results.get("05_cbam_spatial")
    if differences is None or not len(differences):
        return []
    track = set(design.TRACK_VARIANTS)
    return [map_verdict(differences, summary, model,
                        label=lambda m: ("Pretrained track, " if m in track else "From scratch, ")
                        + design.attention_label(m))
            for model in dict.fromkeys(differences["model"])]


def recognizer_findings(results: Mapping[str, pd.DataFrame]) -> list[str]:
    """Sentences on the mask-aware recogniser (:mod:`maskstudy.study.mask_aware`): how often its mask detector is
    right, the rule chosen on held-out identities, its accuracy against the pretrained network and the whole-face
    fine-tune, and which model of the track is best on which test."""
    out = []
    presence = results.get("03_mask_presence")
    if presence is not None and len(presence):
        parts = [f"{r.subset.replace('_', ' ')} {_pct(r.accuracy)} [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}] "
                 f"of {r.photos}" for r in presence.itertuples() if r.test_set.startswith("LFW")]
        mfr2 = presence[presence["test_set"].str.startswith("MFR2")]
        text = "Is a mask there? The mask detector (probability above 0.5) is right on LFW's test crops: " + \
            "; ".join(parts)
        if len(mfr2):
            text += "; on MFR2's real photos: " + "; ".join(
                f"{r.subset} {_pct(r.accuracy)} [{100 * r.ci_low:.1f}, {100 * r.ci_high:.1f}] of {r.photos}"
                for r in mfr2.itertuples())
        out.append(text + " (95 % intervals over identities).")
    fusion = results.get("03_mask_aware_fusion")
    if fusion is not None and len(fusion):
        chosen = fusion[fusion["chosen"].astype(str) == "True"].iloc[0]
        others = "; ".join(f"{r.rule}, centred on {r.normalisation} {_pct(r.accuracy)}" for r in fusion.itertuples()
                           if str(r.chosen) != "True")
        out.append(f"Chosen on {int(chosen['pairs']):,} pairs of held-out training identities (never a test): the "
                   f"'{chosen['rule']}' rule with scores centred on their {chosen['normalisation']}, "
                   f"{_pct(chosen['accuracy'])} at one threshold ({chosen['threshold']:.2f})"
                   + (f"; the others: {others}" if others else "") + ".")
    versus = results.get("03_track_mask_aware")
    if versus is not None and len(versus):
        for test in (UNMASKED_UNMASKED, DETECTED, MFR2):
            part = versus[versus["test"] == test]
            if len(part):
                out.append(f"Mask-aware recognizer on {label(test)}: " + "; ".join(
                    f"{_pts(r.diff)} points [{_pts(r.ci_low)}, {_pts(r.ci_high)}] against "
                    + ("the pretrained network" if r.comparison.endswith(design.TRACK_REFERENCE) else
                       "the whole-face fine-tune") + f" (Holm p {r.p_holm:.2f})" for r in part.itertuples())
                    + " (main seed).")
    spread = results.get("03_track_seed_summary")
    if spread is not None and len(spread):
        best = []
        for test in (UNMASKED_UNMASKED, DETECTED, MFR2):
            part = spread[spread["test"] == test]
            if len(part):
                r = part.sort_values("accuracy_mean", ascending=False).iloc[0]
                best.append(f"{label(test)}: {model_label(r.model)} ({_pct(r.accuracy_mean)})")
        out.append("Best model of the pretrained track per test (mean over seeds): " + "; ".join(best) + ".")
    return out
