"""The answer on one screen: verdicts, key table and forest plot from a synthetic run's tables, the answer-first
``index.html`` and the README's results section within their budgets."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskstudy.core.profiles import resolve_config
from maskstudy.datasets.pairs import SCENARIOS, VARIANT_SCENARIOS
from maskstudy.report import index_page, outputs
from maskstudy.report import readme as readme_module
from maskstudy.study import answer, design

DETECTED, UNSEEN, BOTH = design.DETECTED, design.UNSEEN, design.BOTH_DETECTED
TESTS = ["unmasked_unmasked", "masked_unmasked", "masked_masked", DETECTED, BOTH, UNSEEN, "mfr2"]


def _spread(models: dict[str, float], seeds: int) -> pd.DataFrame:
    """A seed summary: each model's accuracy per test (masked tests a few points lower)."""
    drop = {"unmasked_unmasked": 0.0, "masked_unmasked": 0.01, "masked_masked": 0.02, DETECTED: 0.06, BOTH: 0.1,
            UNSEEN: 0.015, "mfr2": 0.08}
    return pd.DataFrame([{"model": m, "test": t, "seeds": seeds if not m.endswith("pretrained") else 1,
                          "accuracy_mean": base - drop[t],
                          "accuracy_std": 0.004 if seeds > 1 and not m.endswith("pretrained") else np.nan,
                          "auc_mean": 0.9} for m, base in models.items() for t in TESTS])


def _differences(pairs: list[tuple[str, str]], separated: tuple[str, str] | None = None) -> pd.DataFrame:
    rows = []
    for a, b in pairs:
        for t in TESTS:
            hit = (f"{a} - {b}", t) == separated
            diff = 0.03 if hit else -0.004
            rows.append({"comparison": f"{a} - {b}", "test": t, "seeds": 3, "diff_seed_mean": diff,
                         "diff_seed_std": 0.005, "seed_ci_low": diff - 0.01, "seed_ci_high": diff + 0.01,
                         "p_seed": 0.001 if hit else 0.5, "diff_main_seed": diff, "boot_ci_low": diff - 0.012,
                         "boot_ci_high": diff + 0.012, "p_boot": 0.3, "p_seed_holm": 0.02 if hit else 1.0,
                         "p_boot_holm": 1.0, "separated": hit})
    return pd.DataFrame(rows)


def synthetic_results() -> dict[str, pd.DataFrame]:
    """The tables notebook 06 reads, for plain/SE/CBAM from scratch and the pretrained track (3 seeds)."""
    ref, ft, up = design.TRACK_REFERENCE, design.TRACK_MODELS, design.TRACK_UPPER_MODELS
    clean = design.TRACK_CLEAN_MODEL
    versus = pd.DataFrame([{"model": m, "test": t, "seeds": 3, "accuracy_mean": 0.95 - d, "accuracy_std": 0.003,
                            "reference": ref, "reference_accuracy": 0.99 - d, "diff_seed_mean": -0.04,
                            "diff_main_seed": 0.02, "boot_ci_low": 0.01, "boot_ci_high": 0.03, "p_boot": 0.01}
                           for m in [*ft.values(), *up.values(), clean]
                           for t, d in (("unmasked_unmasked", 0.0), (DETECTED, 0.1), ("mfr2", 0.12))])
    strength = pd.DataFrame([{"model": m, "input": i, "block": "all blocks", "strength": v, "ci_low": v - 0.01,
                              "ci_high": v + 0.01, "interval": "t over 3 seeds", "seeds": 3, "images": 100,
                              "strongest_block": "layer1.0.attn", "strongest": v + 0.05, "gate_min": np.nan,
                              "gate_max": np.nan}
                             for m, v in (("se", 0.12), ("cbam", 0.31), (ft["se"], 0.02), (ft["cbam"], 0.042),
                                          (up["cbam"], 0.05)) for i in ("masked", "unmasked")])
    spatial = pd.DataFrame([{"model": m, "block": b, "measure": measure, "difference": d, "ci_low": d - 0.01,
                             "ci_high": d + 0.01 if b != "layer3.0.attn" else d + 0.001, "p_value": 0.01,
                             "interval": "t over 3 seeds", "seeds": 3, "images": 100, "p_holm": 0.03,
                             "separated": b == "layer3.0.attn" and measure == "mask_effect"}
                            for m, blocks in (("cbam", ["layer3.0.attn", "layer4.0.attn"]),
                                              (ft["cbam"], ["stages.3.0.attention"]))
                            for b in [*blocks, "all blocks"] for measure, d in (("mask_effect", -0.02),
                                                                                ("eye_effect", 0.0),
                                                                                ("mask_minus_eye", -0.05))])
    cams = pd.DataFrame([{"comparison": f"{m} - {b}", "model": m, "baseline": b, "method": "hirescam", "input": i,
                          "measure": measure, "difference": 0.01, "ci_low": -0.02, "ci_high": 0.04, "seeds": 3,
                          "images": 100, "interval": "t over 3 seeds", "separated": False}
                         for m, b in (("se", "plain"), ("cbam", "plain"), ("ft_cbam", "ft_plain"))
                         for i in ("masked", "unmasked") for measure in ("eye_share", "mask_share")])
    regions = pd.DataFrame([{"model": m, "method": "hirescam", "input": "masked", "seeds": 3, "images": 100,
                             "interval": "t over 3 seeds", "eye_share": 0.22, "eye_ci_low": 0.2, "eye_ci_high": 0.24,
                             "mask_share": 0.3, "mask_ci_low": 0.28, "mask_ci_high": 0.32, "eye_band_area_share": 0.165,
                             "mask_area_share": 0.4, "input_size": 56, "grid": 4} for m in ("plain", "se", "cbam")])
    return {
        "01_split": pd.DataFrame({"train_images": [6300]}),
        "03_seed_summary": _spread({"plain": 0.82, "se": 0.818, "cbam": 0.813}, 3),
        "03_differences": _differences([("se", "plain"), ("cbam", "plain"), ("cbam", "se")]),
        "03_track_seed_summary": pd.concat([
            _spread({ref: 0.99, ft["none"]: 0.985, ft["se"]: 0.984, ft["cbam"]: 0.983, up["none"]: 0.9,
                     up["se"]: 0.9, up["cbam"]: 0.9}, 3),
            _spread({design.TRACK_MASK_AWARE_MODEL: 0.99}, 1)], ignore_index=True),
        "03_track_mask_aware": pd.DataFrame({
            "comparison": [f"{design.TRACK_MASK_AWARE_MODEL}_seed0 - {other}" for other in (ref, f"{ft['none']}_seed0")
                           for _ in (DETECTED, "mfr2")], "test": [DETECTED, "mfr2"] * 2, "pairs": [6000, 848] * 2,
            "diff": [0.05, 0.03, 0.021, 0.04], "ci_low": [0.04, 0.01, 0.011, 0.02], "ci_high": [0.06, 0.05, 0.031, 0.06],
            "p_value": [0.001] * 4, "p_holm": [0.004] * 4}),
        "03_mask_presence": pd.DataFrame({
            "test_set": ["LFW test crops", "LFW test crops", "MFR2 photos (real masks)"],
            "subset": ["clean", "detected", "all photos"], "photos": [5000, 5000, 269], "masked": [0, 5000, 200],
            "accuracy": [0.99, 0.97, 0.955], "ci_low": [0.98, 0.96, 0.93], "ci_high": [1.0, 0.98, 0.975],
            "mean_probability": [0.02, 0.95, 0.7]}),
        "03_mask_aware_fusion": pd.DataFrame({"rule": ["switch", "mix"], "normalisation": ["impostor", "impostor"], "pairs": [1800, 1800],
                                              "accuracy": [0.93, 0.92], "threshold": [2.1, 2.0],
                                              "chosen": [True, False]}),
        "03_track_differences": _differences([(ft["se"], ft["none"]), (ft["cbam"], ft["none"]), (ft["cbam"], ft["se"]),
                                              (up["se"], up["none"]), (up["cbam"], up["none"]), (up["cbam"], up["se"])],
                                             separated=(f"{ft['cbam']} - {ft['none']}", "mfr2")),
        "03_track_vs_pretrained": versus,
        "03_track_upper_face": _differences([(up["none"], ft["none"])]).assign(
            diff_seed_mean=-0.05, seed_ci_low=-0.07, seed_ci_high=-0.03),
        "03_track_clean_control": pd.DataFrame({
            "comparison": [f"{clean}_seed0 - {ft['none']}_seed0", f"{clean}_seed0 - {ref}"], "test": ["mfr2"] * 2,
            "pairs": [848] * 2, "diff": [0.016, -0.001], "ci_low": [0.004, -0.01], "ci_high": [0.03, 0.008],
            "p_value": [0.01, 0.8]}),
        "05_attention_strength": strength,
        "05_cbam_spatial_differences": spatial,
        "05_cbam_spatial": pd.DataFrame([{"model": m, "block": b, "input": "unmasked", "eye_weight": 0.5,
                                          "mask_weight": w} for m, b, w in (("cbam", "layer3.0.attn", 0.1),
                                                                            ("cbam", "layer4.0.attn", 0.1),
                                                                            (ft["cbam"], "stages.3.0.attention", 0.9))]),
        "03_baseline_differences": pd.DataFrame({
            "comparison": ["plain - plain_nomask", "plain_detected_twins - plain"], "test": [DETECTED, DETECTED],
            "diff": [0.049, 0.013], "ci_low": [0.037, 0.003], "ci_high": [0.062, 0.023]}),
        "03_leave_one_style_out": pd.DataFrame({
            "pairs": ["masked with surgical_blue (unseen by plain_without_surgical_blue)"],
            "run": ["plain_without_surgical_blue - plain"], "diff": [-0.005], "ci_low": [-0.02], "ci_high": [0.009]}),
        "03_fnmr": pd.DataFrame(columns=["kind", "fmr_target", "scenario", "fnmr"]),
        "04_vit": pd.DataFrame({"model": ["vit", "hybrid"], "scenario": ["masked_unmasked"] * 2,
                                "accuracy_mean": [0.69, 0.765]}),
        "05_attention_regions": regions,
        "05_attention_differences": cams,
        "05_faithfulness_contrasts": pd.DataFrame({"model": ["se", "cbam"], "cam_better": [True, True]}),
        "05_randomization_check": pd.DataFrame({"model": ["se"], "rank_correlation": [0.1], "ci_low": [0.0],
                                                "ci_high": [0.2]}),
        "05_cam_geometry": pd.DataFrame({"model": ["plain", "se", "cbam"], "grid": [4] * 3, "input_size": [56] * 3,
                                         "eye_band_height_in_cells": [0.88] * 3}),
    }


SPLIT = {"protocol": "extra-train/lfw-10fold", "counts": {"train_identities": 299, "eval_pairs": 6000}}


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A run folder as notebook 06 leaves it: tables, the forest plot, summary.json, run.json and index.html."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maskstudy.report.figures import forest_plot
    from maskstudy.report.pipeline import Study

    config = resolve_config("cpu")
    results = synthetic_results()
    run_dir = tmp_path / "reports" / "cpu"
    study = Study(name="06_result_tables", config={"figure_dpi": 30}, run_dir=run_dir)
    for name, table in results.items():
        study.save_table(table, name)
    study.save_table(pd.DataFrame({"model": ["plain"], "Ver % mfr2": [74.1]}), "06_key_results")
    study.save_table(answer.key_table(results, config), answer.KEY_TABLE)
    fig = forest_plot(answer.forest_rows(results, config))
    study.save_figure(fig, answer.FOREST_FIGURE, min_dpi=40)
    plt.close(fig)
    outputs.write_summary(run_dir, answer.summarise(results, SPLIT, config))
    (run_dir / "01_data_build.html").write_text("<html></html>")
    run = {"profile": "cpu", "device": "CPU: x86_64", "matmul_gflops": 190.0, "started": "2026-12-06T03:00:00",
           "notebooks": [{"name": "01_data_build", "status": "ok", "seconds": 750, "html": "01_data_build.html",
                          "git_commit": "abc"},
                         {"name": "06_result_tables", "status": "ok", "seconds": 12, "git_commit": "abc"}]}
    index_page.write_index(run, run_dir)
    return run_dir


def test_every_test_has_a_display_label_and_comparisons_read_by_block():
    for test in [*SCENARIOS, *VARIANT_SCENARIOS, "mfr2"]:
        assert "_" not in design.test_label(test) and "_" not in design.test_label(test, short=True)
    assert design.test_label(DETECTED) == "masked-unmasked, mask detected on the photo"
    assert design.masked_tests_first(design.KEY_TESTS)[-1] == "unmasked_unmasked"
    assert design.comparison_label("ft_cbam - ft_plain") == design.comparison_label("cbam - plain") == "CBAM − plain"
    assert design.model_label("cbam_guided") == "CBAM, teacher-guided"
    assert design.model_label(design.TRACK_REFERENCE) == "dlib ResNet-29 as it is"


def test_one_verdict_per_question_with_both_tracks_and_their_intervals():
    results = synthetic_results()
    verdicts = answer.verdicts(results, resolve_config("cpu"))
    assert [v["question"] for v in verdicts] == list(design.QUESTIONS)
    text = {v["question"]: v["text"] for v in verdicts}
    assert text["attention"].startswith("Separated after Holm's correction: 0 of 21 from scratch, 1 of 42 pretrained "
                                        "(CBAM − plain on MFR2 real masks +3.0 pretrained)")
    assert text["attention"].endswith("CBAM − plain on masked-unmasked, detected: -0.4 [-1.4, +0.6] from scratch, "
                                      "-0.4 [-1.4, +0.6] at full strength, -0.4 [-1.4, +0.6] on the upper face "
                                      "(points); CBAM changes its input by 31.0 % from scratch, 4.2 % at full strength, "
                                      "5.0 % on the upper face (|A(x) − x| / |x|).")
    assert "landmarks: -5.0 from scratch, -5.0 pretrained (masked-unmasked, points" in text["detection"]
    assert "surgical blue left out of training: -0.5 [-2.0, +0.9] on its pairs (points)." in text["unseen"]
    assert "pretrained as it is 87.0 %, fine-tuned plain 83.0 % (+2.0 [+1.0, +3.0] points" in text["real_masks"]
    assert text["real_masks"].endswith("; on clean crops only 83.0 % (+1.6 [+0.4, +3.0] against twins): the synthetic "
                                       "twins cost MFR2.")
    assert "masked twins vs none +4.9 [+3.7, +6.2]; detected vs shared twins +1.3 [+0.3, +2.3]" in text["training"]
    assert "upper face only vs whole face -5.0 [-7.0, -3.0] (over seeds)" in text["training"]
    assert "99.0 % unmasked" in text["pretrained"] and "at best 82.0 % unmasked" in text["pretrained"]
    assert text["cams"] == ("Eye-band share of hirescam mass on masked probes, CBAM − plain: +1.0 [-2.0, +4.0] from "
                            "scratch, +1.0 [-2.0, +4.0] pretrained (points): a move of attention to the eyes is not "
                            "shown; CBAM's own spatial map on the mask region, masked minus unmasked probes (weight, "
                            "mean over blocks): -0.020 [-0.030, -0.010] from scratch, -0.020 [-0.030, -0.010] at full "
                            "strength; it switches the mask off (a fall of 10 % or more) in 1 of 2 blocks from "
                            "scratch, 0 of 1 blocks at full strength.")
    assert text["recognizer"] == ("The mask-aware recognizer (whole face, upper face when a mask is found): 99.0 % "
                                  "unmasked, 93.0 % masked-unmasked, detected, 91.0 % MFR2 real masks (against the "
                                  "whole-face fine-tune: +2.1 [+1.1, +3.1] masked-unmasked, detected, +4.0 [+2.0, +6.0] "
                                  "MFR2 real masks points, main seed); its mask detector is right on 95.5 % [93.0, "
                                  "97.5] of MFR2's photos: within 1 point of the best model of the track on each of "
                                  "these tests, the one to use on photos with or without masks (`python -m maskstudy "
                                  "compare`).")
    assert all(len(v["text"]) < 500 for v in verdicts)  # a few lines each


def test_verdicts_leave_out_what_the_run_lacks():
    results = synthetic_results()
    for name in [n for n in results if n.startswith("03_track") or n.startswith("05_")]:
        del results[name]
    verdicts = {v["question"]: v["text"] for v in answer.verdicts(results, resolve_config("cpu"))}
    assert "cams" not in verdicts and "pretrained" not in verdicts
    assert "pretrained" not in verdicts["attention"]
    results["03_seed_summary"] = results["03_seed_summary"][results["03_seed_summary"]["test"] != "mfr2"]
    assert "no test on real masks" in answer.real_masks_verdict(results)


def test_key_table_has_both_tracks_and_the_answer_tests():
    table = answer.key_table(synthetic_results(), resolve_config("cpu"))
    assert list(table.columns) == ["track", "model", "unmasked", "masked-unmasked, detected",
                                   "masked-masked, detected", "unseen mask styles", "MFR2 real masks"]
    assert table["track"].str.startswith("from scratch (the seed's setup at cpu scale)").sum() == 3
    assert table["model"].tolist()[3:] == ["dlib ResNet-29 as it is", "plain, fine-tuned",
                                           "SE at full strength, fine-tuned", "CBAM at full strength, fine-tuned",
                                           "plain on the upper face, fine-tuned", "SE on the upper face, fine-tuned",
                                           "CBAM on the upper face, fine-tuned",
                                           "mask-aware (upper face when a mask is found)"]
    assert table.iloc[0]["unmasked"] == "82.0 ± 0.4" and table.iloc[3]["unmasked"] == "99.0"


def test_forest_rows_put_masked_tests_first():
    rows = answer.forest_rows(synthetic_results(), resolve_config("cpu"))
    assert list(dict.fromkeys(rows["test"]))[0] == design.test_label(DETECTED)
    assert list(dict.fromkeys(rows["test"]))[-1] == "unmasked"
    assert rows["separated"].sum() == 1 + 4 and len(rows) == 3 * 3 * 5 + 4
    assert "CBAM − plain, upper face" in set(rows["comparison"])
    assert {"mask-aware − pretrained as it is", "mask-aware − plain fine-tune"} <= set(rows["comparison"])


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key):
                self.targets.append(attrs[key])


def _sentences(fragment: str) -> int:
    text = html.unescape(re.sub(r"<[^>]+>", " ", fragment))
    return len(re.findall(r"[.!?](?=\s|$)", text))


def test_index_shows_the_answer_first_and_every_file_it_names_exists(run_folder):
    page = (run_folder / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    files = [t for t in parser.targets if not t.startswith(("#", "http://", "https://"))]
    assert "figures/06_differences.png" in files and "tables/06_answer_table.csv" in files
    assert [t for t in files if not (run_folder / t).is_file()] == []
    first = page[:page.index("<details")]
    assert _sentences(first) <= 15
    order = [first.index(s) for s in ("Question:", "<h2>Answer</h2>", "figures/06_differences.png",
                                      "<table class='key'>", "What limits the answer")]
    assert order == sorted(order)
    key = first[first.index("<table class='key'>"):]
    key = key[:key.index("</table>")]
    assert key[:key.index("</tr>")].count("<th>") <= 8
    assert "rowspan='3'>from scratch (the seed&#x27;s setup at cpu scale)" in key
    findings = page[page.index("<details id='findings'>"):]
    assert "<h3>Attention</h3>" in findings and "<h3>Where the networks look (CAMs)</h3>" in findings
    assert page.index("<h2 id='notebooks'>") > page.index("<details id='findings'>")


def test_readme_results_stay_within_budget_and_refresh_docs(run_folder, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{readme_module.README_START}\nold\n{readme_module.README_END}\n\n## Next\n")
    (run_folder / "bench").mkdir()
    (run_folder / "bench" / "detection.md").write_text("# Detection\n\n| path | images/s |\n|---|---|\n| kit | 40 |\n")
    readme_module.update_readme(readme, run_folder)
    text = readme.read_text()
    section = text[text.index(readme_module.README_START):text.index(readme_module.README_END)].splitlines()[1:]
    assert len(section) <= readme_module.README_LINE_BUDGET
    assert "**Question:**" in text and "- **Attention:**" in text and "](docs/results_differences.png)" in text
    assert "| from scratch (the seed's setup at cpu scale) | plain | 82.0 ± 0.4 |" in text
    assert "| | SE | " in text.replace("|  |", "| |")  # each track named once
    assert "Wall time **13 min**" in text and "190.0 GFLOP/s" in text and "](docs/results.md)" in text
    assert text.endswith("## Next\n")
    docs = tmp_path / "docs"
    assert (docs / "results_differences.png").read_bytes() == (run_folder / "figures" / "06_differences.png").read_bytes()
    full = (docs / "results.md").read_text()
    summary = json.loads((run_folder / "summary.json").read_text())
    assert [g["question"] for g in summary["findings"]] == ["setup", *design.QUESTIONS]  # reading order kept
    assert all(f in full for group in summary["findings"] for f in group["sentences"])
    assert full.index("## Data, models and accuracies") < full.index("## Attention") < full.index("## Where the")
    assert "\n### Detection\n" in full and "| kit | 40 |" in full and "## `06_key_results`" in full
