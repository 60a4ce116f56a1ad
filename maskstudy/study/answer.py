"""The study's answer on one screen, computed from the result tables: one verdict sentence per question of
:data:`maskstudy.study.design.QUESTIONS` (both tracks side by side, each with its key interval), the compact key table,
the rows of the forest plot and the warnings that limit the answer.

Notebook 06 writes them into ``summary.json`` (:func:`summarise`); ``index.html`` and the README show them first,
with the complete findings (:func:`maskstudy.study.findings.study_findings`) one click below.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..datasets.pairs import MASKED_UNMASKED, UNMASKED_UNMASKED
from ..explain.attention_summary import SWITCH_OFF_SHARE, switched_off
from ..explain.verdict import separated_after_holm
from . import design
from .comparisons import MFR2
from .findings import study_findings

#: Result tables notebook 06 needs, and those a run may lack (a profile without MFR2, teacher or a track).
REQUIRED_TABLES = ["01_split", "02_cleaning_summary", "03_verification", "03_identification", "03_differences",
                   "03_seed_table", "03_seed_summary", "03_training", "03_fnmr", "03_baseline_differences",
                   "04_vit", "04_data_size", "04_data_size_gap", "05_attention_regions", "05_faithfulness",
                   "05_attention_differences", "05_faithfulness_contrasts", "05_randomization_check",
                   "05_cam_geometry"]
OPTIONAL_TABLES = ("03_margin_losses", "03_mfr2", "04_mfr2", "03_mask_scenarios", "03_leave_one_style_out",
                   "01_masked_detection", "03_guided_differences", "03_guided_vs_reference", "03_teacher",
                   "03_teacher_coverage", "03_track_seed_table", "03_track_seed_summary", "03_track_vs_pretrained",
                   "03_track_differences", "03_track_upper_face", "03_track_clean_control", "03_track_timing",
                   "05_attention_strength", "05_cbam_spatial", "05_cbam_spatial_differences", "03_mask_presence",
                   "03_track_mask_aware", "03_mask_aware_fusion")
#: What notebook 06 saves for the answer: the compact key table and the forest plot of model differences.
KEY_TABLE = "06_answer_table"
FOREST_FIGURE = "06_differences"
#: The forest plot's least resolution: it is read first, also in the smoke profile (whose figures are coarse).
FOREST_DPI = 110
#: The two tracks: key -> (short name in sentences, seed summary table, differences table).
SCRATCH, PRETRAINED = "scratch", "pretrained"
TRACK_TABLES = {SCRATCH: ("from scratch", "03_seed_summary", "03_differences"),
                PRETRAINED: ("pretrained", "03_track_seed_summary", "03_track_differences")}
#: Short warnings shown with the answer (the complete list follows the findings).
MAX_SHORT_WARNINGS = 4


def track_label(track: str, profile: str | None) -> str:
    """The track's label in the key table and the forest plot (:data:`maskstudy.study.design.TRACK_LABELS`)."""
    return design.TRACK_LABELS[track].format(profile=profile or "this")


def _pts(x: float) -> str:
    return f"{round(100 * x, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _interval(diff: float, low: float, high: float) -> str:
    return f"{_pts(diff)} [{_pts(low)}, {_pts(high)}]"


def _range(values: pd.Series) -> str:
    low, high = _pts(values.min()), _pts(values.max())
    return low if low == high else f"{low} to {high}"


def _table(results: Mapping[str, pd.DataFrame], name: str) -> pd.DataFrame | None:
    table = results.get(name)
    return table if table is not None and len(table) else None


def difference_interval(row) -> tuple[float, float, float]:
    """``(difference, low, high)`` of a differences row: over seeds, else the main seed's bootstrap."""
    if np.isfinite(row["seed_ci_low"]):
        return row["diff_seed_mean"], row["seed_ci_low"], row["seed_ci_high"]
    return row["diff_seed_mean"], row["boot_ci_low"], row["boot_ci_high"]


def _key_test(tests) -> str | None:
    """The test the verdicts quote intervals on: masked-unmasked with the mask detected on the photo (the
    user's pipeline), else the shared alignment."""
    return next((t for t in (design.DETECTED, MASKED_UNMASKED) if t in set(tests)), None)


def _means(results, track: str) -> pd.DataFrame:
    """Model x test table of seed means of one track (empty when it did not run)."""
    spread = _table(results, TRACK_TABLES[track][1])
    if spread is None:
        return pd.DataFrame()
    return spread.pivot_table(index="model", columns="test", values="accuracy_mean", sort=False)


def _change_by_track(results, test: str, reference: str) -> list[str]:
    """Per track, the range over models of the seed-mean change from ``reference`` to ``test``."""
    parts = []
    for track, (name, _, _) in TRACK_TABLES.items():
        means = _means(results, track)
        if {reference, test} <= set(means.columns):
            parts.append(f"{_range(means[test] - means[reference])} {name}")
    return parts


# --------------------------------------------------------------------------------------------
# One verdict per question
# --------------------------------------------------------------------------------------------


def _headline_rows(table: pd.DataFrame, test: str, names: dict[str, str]) -> list[tuple[str, str, pd.Series]]:
    """(text, block label, row) of CBAM minus plain on ``test`` (SE minus plain when there is no CBAM) for each
    entry of ``names`` (text -> the plain model's name; the attended model is the same variant's)."""
    out = []
    for text, plain in names.items():
        for block in ("cbam", "se"):
            attended = block if plain == design.PLAIN else _variant(plain, block)
            rows = table[(table["test"] == test) & (table["comparison"] == f"{attended} - {plain}")]
            if len(rows):
                out.append((text, design.BLOCK_LABELS[block], rows.iloc[0]))
                break
    return out


def _variant(plain: str, block: str) -> str:
    """The name of ``block`` in the same pretrained-track variant as the plain model ``plain``."""
    for names in (design.TRACK_MODELS, design.TRACK_UPPER_MODELS):
        if names.get(design.NO_ATTENTION) == plain:
            return names[block]
    return block


def _strength_clause(results: Mapping[str, pd.DataFrame]) -> str:
    """``"; CBAM changes its input by 31 % from scratch, 4.0 % at full strength ..."``: mean strength over blocks
    on masked probes of CBAM (else SE) in each track (empty without notebook 05's readout)."""
    strength = _table(results, "05_attention_strength")
    if strength is None:
        return ""
    rows = strength[(strength["block"] == "all blocks") & (strength["input"] == "masked")].set_index("model")
    for block in ("cbam", "se"):
        shown = [(name, words) for name, words in ((block, "from scratch"), (design.TRACK_MODELS[block], "at full strength"),
                                                    (design.TRACK_UPPER_MODELS[block], "on the upper face"),
                                                    (design.TRACK_GATED_MODELS[block], "gated")) if name in rows.index]
        if shown:
            return (f"; {design.BLOCK_LABELS[block]} changes its input by "
                    + ", ".join(f"{100 * rows.loc[n, 'strength']:.1f} % {w}" for n, w in shown)
                    + " (|A(x) − x| / |x|)")
    return ""


def attention_verdict(results: Mapping[str, pd.DataFrame]) -> str | None:
    """How many attention comparisons Holm's correction separates in each track (the first two named), CBAM (else
    SE) minus plain on the key test from scratch, at full strength and on the upper face in the pretrained track,
    and how strongly the attention acts (notebook 05's readout)."""
    tables = {name: _table(results, table_name) for name, _, table_name in TRACK_TABLES.values()}
    tables = {name: table for name, table in tables.items() if table is not None}
    if not tables:
        return None
    test = _key_test(pd.concat([table["test"] for table in tables.values()]))
    separated = pd.concat([table[table["separated"]].assign(track=name) for name, table in tables.items()])
    counts = ", ".join(f"{int(table['separated'].sum())} of {len(table)} {name}" for name, table in tables.items())
    if separated.empty:
        lead = f"No comparison of SE, CBAM and plain is separated after Holm's correction ({counts})"
    else:
        named = "; ".join(f"{design.comparison_label(r.comparison)} on {design.test_label(r.test, short=True)} "
                          f"{_pts(r.diff_seed_mean)} {r.track}" for r in separated.head(2).itertuples())
        lead = f"Separated after Holm's correction: {counts} ({named}{'; ...' if len(separated) > 2 else ''})"
    shown = []
    for name, table in tables.items():
        names = ({"from scratch": design.PLAIN} if name == TRACK_TABLES[SCRATCH][0] else
                 {"at full strength": design.TRACK_MODELS[design.NO_ATTENTION],
                  "on the upper face": design.TRACK_UPPER_MODELS[design.NO_ATTENTION]})
        shown += [(block, f"{_interval(*difference_interval(r))} {text}")
                  for text, block, r in _headline_rows(table, test, names)]
    if not shown:
        return lead + _strength_clause(results) + "."
    label = f"{shown[0][0]} − plain" if len({b for b, _ in shown}) == 1 else "against plain"
    return (f"{lead}; {label} on {design.test_label(test, short=True)}: " + ", ".join(t for _, t in shown)
            + " (points)" + _strength_clause(results) + ".")


def detection_verdict(results: Mapping[str, pd.DataFrame]) -> str | None:
    """What detecting the masked face on the masked photo costs against reusing the clean photo's landmarks."""
    parts = _change_by_track(results, design.DETECTED, MASKED_UNMASKED)
    if not parts:
        return None
    return ("Detecting the mask on the masked photo instead of reusing the clean photo's landmarks: "
            f"{', '.join(parts)} (masked-unmasked, points, range over models).")


def unseen_verdict(results: Mapping[str, pd.DataFrame], config: Mapping[str, Any]) -> str | None:
    """How mask styles never seen in training change accuracy, with the leave-one-style-out interval."""
    parts = _change_by_track(results, design.UNSEEN, MASKED_UNMASKED)
    sentence = ("Unseen mask styles: " + ", ".join(parts) + " (masked-unmasked, range over models)") if parts else ""
    loso = _table(results, "03_leave_one_style_out")
    reference, style = design.reference_run(config), config.get("leave_out_style")
    if loso is not None and reference and style:
        left_out = loso[loso["run"].str.endswith(f" - {reference}") & loso["pairs"].str.contains("unseen by")]
        if len(left_out):
            r = left_out.iloc[0]
            sentence += ("; " if sentence else "") + (
                f"{design.display_name(style)} left out of training: {_interval(r['diff'], r['ci_low'], r['ci_high'])}"
                " on its pairs")
    return sentence + " (points)." if sentence else None


def real_masks_verdict(results: Mapping[str, pd.DataFrame]) -> str:
    """Accuracy on MFR2's real masks in each track, with the fine-tuned plain network against the pretrained one."""
    scratch, track = _means(results, SCRATCH), _means(results, PRETRAINED)
    if MFR2 not in scratch.columns and MFR2 not in track.columns:
        return "MFR2 was not available to this run: no test on real masks."
    parts = []
    if MFR2 in scratch.columns:
        values = scratch[MFR2].dropna()
        low, high = f"{100 * values.min():.1f}", _pct(values.max())
        parts.append(f"from scratch {high}" if high.startswith(low + " ") else f"from scratch {low} to {high}")
    versus = _table(results, "03_track_vs_pretrained")
    plain = design.TRACK_MODELS[design.NO_ATTENTION]
    row = versus[(versus["test"] == MFR2) & (versus["model"] == plain)] if versus is not None else pd.DataFrame()
    if len(row):
        r = row.iloc[0]
        parts.append(f"pretrained as it is {_pct(r['reference_accuracy'])}, fine-tuned plain {_pct(r['accuracy_mean'])} "
                     f"({_interval(r['diff_main_seed'], r['boot_ci_low'], r['boot_ci_high'])} points, main seed)")
        clean = _clean_control_clause(results)
        if clean:
            parts[-1] += clean
    elif MFR2 in track.columns:
        parts.append("pretrained track " + ", ".join(f"{design.model_label(m)} {_pct(v)}"
                                                      for m, v in track[MFR2].dropna().items()))
    return "Accuracy " + "; ".join(parts) + "."


def _clean_control_clause(results: Mapping[str, pd.DataFrame]) -> str:
    """``", on clean crops only 87.3 % (+1.6 [+0.2, +3.0] against twins): ..."``: the clean-crop control on MFR2 and
    what it says costs MFR2 (empty without the control)."""
    control = _table(results, "03_track_clean_control")
    versus = _table(results, "03_track_vs_pretrained")
    if control is None or versus is None:
        return ""
    twins = control[(control["test"] == MFR2) & ~control["comparison"].str.endswith(f" - {design.TRACK_REFERENCE}")]
    reference = control[(control["test"] == MFR2) & control["comparison"].str.endswith(f" - {design.TRACK_REFERENCE}")]
    accuracy = versus[(versus["test"] == MFR2) & (versus["model"] == design.TRACK_CLEAN_MODEL)]
    if twins.empty or reference.empty or accuracy.empty:
        return ""
    t, ref = twins.iloc[0], reference.iloc[0]
    if t["ci_low"] > 0 and ref["ci_low"] <= 0 <= ref["ci_high"]:
        cause = "the synthetic twins cost MFR2"
    elif ref["ci_high"] < 0:
        cause = "fine-tuning costs MFR2 even without the twins"
    else:
        cause = "the twins' cost is not separated from fine-tuning alone"
    return (f"; on clean crops only {_pct(accuracy['accuracy_mean'].iloc[0])} "
            f"({_interval(t['diff'], t['ci_low'], t['ci_high'])} against twins): {cause}")


def training_verdict(results: Mapping[str, pd.DataFrame], config: Mapping[str, Any]) -> str | None:
    """The training choices on the key test: masked twins against none, twins detected on the photo, and the
    pretrained track's cropping baseline."""
    reference = design.reference_run(config)
    parts, test = [], None
    base = _table(results, "03_baseline_differences")
    if base is not None and reference:
        test = _key_test(base["test"])
        choices = [(f"{reference} - {design.NOMASK_RUN}", "masked twins vs none"),
                   *[(f"{design.twins_run(v)} - {reference}", f"{design.VARIANT_LABELS[v]} vs shared twins")
                     for v in design.TWIN_VARIANTS]]
        for comparison, text in choices:
            row = base[(base["comparison"] == comparison) & (base["test"] == test)]
            if len(row):
                r = row.iloc[0]
                parts.append(f"{text} {_interval(r['diff'], r['ci_low'], r['ci_high'])}")
    upper = _table(results, "03_track_upper_face")
    if upper is not None:
        test = test or _key_test(upper["test"])
        row = upper[upper["test"] == test]
        if len(row):
            parts.append(f"pretrained, upper face only vs whole face {_interval(*difference_interval(row.iloc[0]))} "
                         f"(over seeds)")
    if not parts:
        return None
    return f"On {design.test_label(test, short=True)} (plain, main seed unless said, points): {'; '.join(parts)}."


def pretrained_verdict(results: Mapping[str, pd.DataFrame]) -> str | None:
    """The pretrained network as it is, what fine-tuning on masked twins changes, how far the from-scratch
    networks are, and what the teacher's guidance changes for them."""
    versus = _table(results, "03_track_vs_pretrained")
    reference = versus if versus is not None else _table(results, "03_guided_vs_reference")
    if reference is None:
        return None
    accuracy = reference.drop_duplicates("test").set_index("test")["reference_accuracy"]
    test = _key_test(accuracy.index)
    shown = [f"{_pct(accuracy[t])} {design.test_label(t, short=True)}" for t in (UNMASKED_UNMASKED, test)
             if t in accuracy.index]
    parts = [f"The pretrained network as it is: {', '.join(shown)}"]
    if versus is not None:
        row = versus[(versus["test"] == test) & (versus["model"] == design.TRACK_MODELS[design.NO_ATTENTION])]
        if len(row):
            r = row.iloc[0]
            parts.append(f"fine-tuned on masked twins {_interval(r['diff_main_seed'], r['boot_ci_low'], r['boot_ci_high'])}"
                         " points there (plain, main seed)")
    scratch = _means(results, SCRATCH)
    if UNMASKED_UNMASKED in scratch.columns:
        parts.append(f"from scratch at best {_pct(scratch[UNMASKED_UNMASKED].max())} unmasked")
    guided = _table(results, "03_guided_differences")
    if guided is not None:
        row = guided[(guided["comparison"] == f"{design.guided_model(design.PLAIN)} - {design.PLAIN}")
                     & (guided["test"] == test)]
        if len(row):
            parts.append(f"the teacher's guidance {_interval(*difference_interval(row.iloc[0]))} (plain)")
    return "; ".join(parts) + "."


def cams_verdict(results: Mapping[str, pd.DataFrame], config: Mapping[str, Any]) -> str | None:
    """Whether the share of CAM mass on the eye band of masked probes rises with CBAM (else the first attention
    block) against plain in each track, with its interval."""
    differences = _table(results, "05_attention_differences")
    if differences is None:
        return None
    eye = differences[(differences["input"] == "masked") & (differences["measure"] == "eye_share")
                      & (differences["method"] == config.get("cam_method"))]
    shown, rises = [], []
    for track, models in ((SCRATCH, design.attended_models(config)),
                          (PRETRAINED, [design.TRACK_MODELS[b] for b in ("cbam", "se")])):
        rows = eye[eye["model"].isin(models)]
        if not len(rows):
            continue
        rows = rows.assign(order=rows["model"].map(lambda m: design.attention_label(m) != "CBAM"))
        r = rows.sort_values("order").iloc[0]
        name = TRACK_TABLES[track][0]
        shown.append((design.comparison_label(r["comparison"]),
                      f"{_interval(r['difference'], r['ci_low'], r['ci_high'])} {name}"))
        if r["ci_low"] > 0 and separated_after_holm(r):
            rises.append(f"{design.attention_label(r['model'])} {name}")
    if not shown:
        return None
    label = shown[0][0] if len({c for c, _ in shown}) == 1 else "against plain"
    verdict = ("the eye-band share rises with " + " and ".join(rises) + " (faithfulness checks below)"
               if rises else "a move of attention to the eyes is not shown")
    return (f"Eye-band share of {config.get('cam_method')} mass on masked probes, {label}: "
            + ", ".join(t for _, t in shown) + f" (points): {verdict}" + _map_clause(results) + ".")


def _map_clause(results: Mapping[str, pd.DataFrame]) -> str:
    """``"; CBAM's own map on the mask region, masked minus unmasked probes: ... from scratch, ...: it switches the
    mask off in 2 of 8 blocks from scratch, in none ..."``: the direct reading of CBAM's spatial map per track."""
    differences = _table(results, "05_cbam_spatial_differences")
    if differences is None:
        return ""
    effect = differences[differences["measure"] == "mask_effect"]
    parts, verdicts = [], []
    for model, words in (("cbam", "from scratch"), (design.TRACK_MODELS["cbam"], "at full strength"),
                         (design.TRACK_UPPER_MODELS["cbam"], "on the upper face")):
        rows = effect[effect["model"] == model]
        if rows.empty:
            continue
        overall = rows[rows["block"] == "all blocks"].iloc[0]
        blocks = switched_off(differences, _table(results, "05_cbam_spatial"), model)
        parts.append(f"{overall['difference'] + 0.0:+.3f} [{overall['ci_low'] + 0.0:+.3f}, "
                     f"{overall['ci_high'] + 0.0:+.3f}] {words}")
        verdicts.append(f"{int(blocks['switches_off'].sum())} of {len(blocks)} blocks {words}")
    if not parts:
        return ""
    return ("; CBAM's own spatial map on the mask region, masked minus unmasked probes (weight, mean over blocks): "
            + ", ".join(parts) + f"; it switches the mask off (a fall of {100 * SWITCH_OFF_SHARE:.0f} % or more) in "
            + ", ".join(verdicts))


#: How far (accuracy) the mask-aware recogniser may trail the best model of the track on a test and still be called
#: the one to use on photos with or without masks.
RECOGNIZER_MARGIN = 0.01


def recognizer_verdict(results: Mapping[str, pd.DataFrame]) -> str | None:
    """The mask-aware recogniser's accuracy on the unmasked, detected-mask and MFR2 tests, against the whole-face
    fine-tune on the masked ones, how often its mask detector is right on MFR2, and what to use it for."""
    spread = _table(results, "03_track_seed_summary")
    if spread is None or design.TRACK_MASK_AWARE_MODEL not in set(spread["model"]):
        return None
    mine = spread[spread["model"] == design.TRACK_MASK_AWARE_MODEL].set_index("test")["accuracy_mean"]
    shown = [f"{_pct(mine[t])} {design.test_label(t, short=True)}" for t in (UNMASKED_UNMASKED, design.DETECTED, MFR2)
             if t in mine.index]
    text = f"The mask-aware recognizer (whole face, upper face when a mask is found): {', '.join(shown)}"
    versus = _table(results, "03_track_mask_aware")
    if versus is not None:
        plain = versus[~versus["comparison"].str.endswith(f" - {design.TRACK_REFERENCE}")]
        parts = [f"{_interval(r.diff, r.ci_low, r.ci_high)} {design.test_label(r.test, short=True)}"
                 for r in plain.itertuples() if r.test in (design.DETECTED, MFR2)]
        if parts:
            text += f" (against the whole-face fine-tune: {', '.join(parts)} points, main seed)"
    presence = _table(results, "03_mask_presence")
    if presence is not None:
        mfr2 = presence[presence["subset"] == "all photos"]
        if len(mfr2):
            r = mfr2.iloc[0]
            text += (f"; its mask detector is right on {_pct(r['accuracy'])} [{100 * r['ci_low']:.1f}, "
                     f"{100 * r['ci_high']:.1f}] of MFR2's photos")
    behind = []
    for test in (UNMASKED_UNMASKED, design.DETECTED, MFR2):
        part = spread[spread["test"] == test]
        if test in mine.index and len(part):
            best = part.sort_values("accuracy_mean", ascending=False).iloc[0]
            if best["accuracy_mean"] - mine[test] > RECOGNIZER_MARGIN:
                behind.append(f"{design.model_label(best['model'])} is {100 * (best['accuracy_mean'] - mine[test]):.1f} "
                              f"points better on {design.test_label(test, short=True)}")
    if behind:
        return text + "; " + "; ".join(behind) + "."
    return (text + f": within {100 * RECOGNIZER_MARGIN:.0f} point of the best model of the track on each of these "
            "tests, the one to use on photos with or without masks (`python -m maskstudy compare`).")


def verdicts(results: Mapping[str, pd.DataFrame], config: Mapping[str, Any]) -> list[dict[str, str]]:
    """One sentence per question the run can answer: ``{"question", "heading", "text"}`` in
    :data:`maskstudy.study.design.QUESTIONS` order."""
    sentences = {"attention": attention_verdict(results), "detection": detection_verdict(results),
                 "unseen": unseen_verdict(results, config), "real_masks": real_masks_verdict(results),
                 "training": training_verdict(results, config), "pretrained": pretrained_verdict(results),
                 "cams": cams_verdict(results, config), "recognizer": recognizer_verdict(results)}
    return [{"question": key, "heading": heading, "text": sentences[key]}
            for key, heading in design.QUESTIONS.items() if sentences.get(key)]


# --------------------------------------------------------------------------------------------
# The key table, the forest plot's rows and the short warnings
# --------------------------------------------------------------------------------------------


def key_table(results: Mapping[str, pd.DataFrame], config: Mapping[str, Any]) -> pd.DataFrame:
    """Models of both tracks x the tests that carry the answer (:data:`maskstudy.study.design.KEY_TESTS`): verification
    accuracy %, mean ± sd over seeds (one run: the mean alone); columns track, model and one per test."""
    rows = []
    for track, (_, spread_name, _) in TRACK_TABLES.items():
        spread = _table(results, spread_name)
        if spread is None:
            continue
        for model, part in spread.groupby("model", sort=False):
            by_test = part.set_index("test")
            row = {"track": track_label(track, config.get("profile")), "model": design.model_label(model)}
            for test in design.KEY_TESTS:
                row[test] = _mean_sd(by_test.loc[test]) if test in by_test.index else ""
            rows.append(row)
    table = pd.DataFrame(rows, columns=["track", "model", *design.KEY_TESTS])
    shown = [t for t in design.KEY_TESTS if (table[t] != "").any()]
    return table[["track", "model", *shown]].rename(columns={t: design.test_label(t, short=True) for t in shown})


def _mean_sd(row) -> str:
    mean, sd = 100 * row["accuracy_mean"], 100 * row["accuracy_std"]
    return f"{mean:.1f} ± {sd:.1f}" if np.isfinite(sd) else f"{mean:.1f}"


def forest_rows(results: Mapping[str, pd.DataFrame], config: Mapping[str, Any]) -> pd.DataFrame:
    """The forest plot's rows: each attention comparison of each track on the answer's tests (masked tests
    first), in points: track, test, comparison (label), diff, low, high (95 % interval over seeds, else the main
    seed's bootstrap), p_holm and separated."""
    rows = []
    tests = design.masked_tests_first(design.KEY_TESTS)
    for track, (_, _, table_name) in TRACK_TABLES.items():
        table = _table(results, table_name)
        if table is None:
            continue
        for test in tests:
            for _, r in table[table["test"] == test].iterrows():
                diff, low, high = difference_interval(r)
                p = r["p_seed_holm"] if np.isfinite(r["p_seed_holm"]) else r["p_boot_holm"]
                rows.append({"track": track_label(track, config.get("profile")), "test": design.test_label(test),
                             "comparison": design.comparison_label(r["comparison"]), "diff": 100 * diff,
                             "low": 100 * low, "high": 100 * high, "p_holm": p, "separated": bool(r["separated"])})
    rows += _recognizer_rows(results, config, tests)
    return pd.DataFrame(rows, columns=["track", "test", "comparison", "diff", "low", "high", "p_holm", "separated"])


def _recognizer_rows(results: Mapping[str, pd.DataFrame], config: Mapping[str, Any], tests) -> list[dict]:
    """Forest rows of the mask-aware recogniser against the pretrained network and the whole-face fine-tune (main
    seed, identity bootstrap; Holm over its own table)."""
    table = _table(results, "03_track_mask_aware")
    if table is None:
        return []
    rows = []
    for test in tests:
        for r in table[table["test"] == test].itertuples():
            other = ("pretrained as it is" if r.comparison.endswith(f" - {design.TRACK_REFERENCE}")
                     else "plain fine-tune")
            rows.append({"track": track_label(PRETRAINED, config.get("profile")), "test": design.test_label(test),
                         "comparison": f"mask-aware − {other}", "diff": 100 * r.diff, "low": 100 * r.ci_low,
                         "high": 100 * r.ci_high, "p_holm": r.p_holm, "separated": bool(r.p_holm < 0.05)})
    return rows


def short_warnings(results: Mapping[str, pd.DataFrame], config: Mapping[str, Any]) -> list[str]:
    """The warnings that limit the answer, one short sentence each, most limiting first (at most
    :data:`MAX_SHORT_WARNINGS`)."""
    out = []
    spread = _table(results, "03_seed_summary")
    seeds = int(spread["seeds"].max()) if spread is not None else 0
    if config.get("profile") == "smoke":
        out.append("Smoke profile: the numbers test the pipeline, not the methods.")
    elif seeds < 3:
        out.append(f"Only {seeds} training seed(s): the spread over seeds is barely estimated.")
    scratch = _means(results, SCRATCH)
    reference = _table(results, "03_track_vs_pretrained")
    reference = reference if reference is not None else _table(results, "03_guided_vs_reference")
    if UNMASKED_UNMASKED in scratch.columns and reference is not None \
            and UNMASKED_UNMASKED in set(reference["test"]):
        ref = reference[reference["test"] == UNMASKED_UNMASKED]["reference_accuracy"].iloc[0]
        out.append(f"From scratch the networks reach {_pct(scratch[UNMASKED_UNMASKED].max())} unmasked against "
                   f"{_pct(ref)} for the pretrained network: that track speaks for weak recognisers.")
    geometry = _table(results, "05_cam_geometry")
    coarse = geometry[geometry["eye_band_height_in_cells"] < 1.5] if geometry is not None else []
    if len(coarse):
        grids = sorted({f"{r.grid}x{r.grid}" for r in coarse.itertuples()})
        out.append(f"CAM grids of {', '.join(grids)} cells ({', '.join(design.model_label(m) for m in coarse['model'])})"
                   " cannot separate the eyes from the mask.")
    out.append("People in the training photos (CelebA) cannot be excluded from the test photos.")
    return out[:MAX_SHORT_WARNINGS]


def summarise(results: Mapping[str, pd.DataFrame], split: Mapping[str, Any],
              config: Mapping[str, Any]) -> dict[str, Any]:
    """Everything ``summary.json`` holds: the question, the verdicts, the short warnings, the names of the key
    table and the forest plot, then the complete findings grouped by question (``{"question", "heading",
    "sentences"}``, in reading order) and every warning."""
    findings, warnings = study_findings(results, split, config)
    headings = {design.SETUP: "Data, models and accuracies", **design.QUESTIONS}
    return {"question": design.QUESTION, "verdicts": verdicts(results, config),
            "short_warnings": short_warnings(results, config), "key_table": KEY_TABLE,
            "forest_figure": FOREST_FIGURE, "warnings": warnings, "key_tables": ["06_key_results"],
            "findings": [{"question": key, "heading": headings[key], "sentences": sentences}
                         for key, sentences in findings.items()]}
