"""The study's design in one place (maskstudy.study.design), the comparison tables and the README's generated section."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from maskstudy.core.profiles import resolve_config
from maskstudy.study import comparisons, design


def test_training_runs_follow_the_profile():
    cpu = resolve_config("cpu")
    runs = design.training_runs(cpu)
    attention = [r for r in runs.values() if r.kind == "attention"]
    assert len(attention) == 3 * len(design.seeds(cpu)) >= 9
    assert [r.name for r in attention[:3]] == ["plain", "se", "cbam"]  # main seed first, under the model's name
    assert {r.seed for r in attention} == set(design.seeds(cpu))
    assert all(r.settings["seed"] == r.seed for r in runs.values())
    assert runs["plain_nomask"].settings["masked_share"] == 0.0
    assert runs[f"plain_without_{cpu['leave_out_style']}"].left_out_style == cpu["leave_out_style"]
    assert runs["plain_detected_twins"].masked_variant == "detected"
    # every attention run shares the schedule; only the backbone and seed differ
    recipes = {json.dumps({k: v for k, v in r.settings.items() if k not in ("backbone", "seed")}, sort_keys=True)
               for r in attention}
    assert len(recipes) == 1


def test_removing_a_variant_or_adding_a_seed_changes_the_design_only_through_config():
    config = resolve_config("smoke", {"attention_variants": ["none", "cbam"], "extra_seeds": [3, 4],
                                      "leave_out_style": None, "detected_twins_run": None, "nomask_baseline": False})
    runs = design.training_runs(config, teacher=False)
    assert set(runs) == {"plain", "cbam", "plain_seed3", "cbam_seed3", "plain_seed4", "cbam_seed4"}
    assert design.attention_comparisons(config) == [("cbam", "plain")]
    with pytest.raises(ValueError, match="not one of the training styles"):
        design.training_runs(resolve_config("smoke", {"leave_out_style": "kn95_flaps"}))
    with pytest.raises(ValueError, match="detected_twins_run"):
        design.training_runs(resolve_config("smoke", {"detected_twins_run": "shared"}))
    three = resolve_config("smoke", {"attention_variants": ["none", "se", "cbam"]})
    assert design.attention_comparisons(three) == [("se", "plain"), ("cbam", "plain"), ("cbam", "se")]


def test_without_style_and_with_masked_variant(tmp_path):
    rows = pd.DataFrame({"dataset": ["d", "d", "d"], "aligned": ["a/1.jpg", "a/2.jpg", "b/1.jpg"],
                         "masked": ["a/1_mask.jpg", "a/2_mask.jpg", ""],
                         "mask_style": ["surgical_blue", "black_cloth", ""]})
    out = design.without_style(rows, "surgical_blue")
    assert out["masked"].tolist() == ["", "a/2_mask.jpg", ""] and rows["masked"].iloc[0] == "a/1_mask.jpg"
    (tmp_path / "d" / "aligned" / "a").mkdir(parents=True)
    (tmp_path / "d" / "aligned" / "a" / "1_mask_det.jpg").write_bytes(b"x")
    swapped = design.with_masked_variant(rows, "detected", tmp_path)
    assert swapped["masked"].tolist() == ["a/1_mask_det.jpg", "a/2_mask.jpg", ""]  # missing crops keep the twin


def _fake_results(seed_effect: float):
    """Three models x 3 seeds on two tests, with per-pair correctness for the main seed."""
    rng = np.random.default_rng(0)
    rows, per_pair = [], {}
    clusters = np.repeat(np.arange(500), 8)
    for seed in (0, 1, 2):
        for model, shift in (("plain", 0.0), ("se", seed_effect), ("cbam", 0.0)):
            run = model if seed == 0 else f"{model}_seed{seed}"
            per_pair[run] = {}
            for test in ("masked_unmasked", "mfr2"):
                correct = rng.random(4000) < 0.75 + shift + 0.01 * seed
                per_pair[run][test] = {"correct": correct, "clusters": clusters}
                rows.append({"run": run, "model": model, "seed": seed, "kind": "attention", "test": test,
                             "accuracy": correct.mean(), "auc": 0.8})
    return pd.DataFrame(rows), per_pair


def test_differences_are_holm_corrected_and_judged_over_seeds():
    long, per_pair = _fake_results(seed_effect=0.15)
    table = comparisons.differences(long, per_pair, [("se", "plain"), ("cbam", "plain"), ("cbam", "se")], 0,
                                    n_boot=300)
    assert len(table) == 6 and set(table["test"]) == {"masked_unmasked", "mfr2"}
    assert (table["p_seed_holm"] >= table["p_seed"] - 1e-12).all()
    big = table[table["comparison"] == "se - plain"]
    assert (big["diff_seed_mean"] > 0.1).all() and big["separated"].all()
    null = table[table["comparison"] == "cbam - plain"]
    assert not null["separated"].any()
    spread = comparisons.seed_summary(long)
    assert (spread["seeds"] == 3).all() and (spread["accuracy_std"] > 0).all()


def test_readme_results_section_is_rewritten_from_a_run(tmp_path):
    from maskstudy.report.readme import README_END, README_START, update_readme

    run = tmp_path / "reports" / "cpu"
    (run / "tables").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"profile": "cpu", "started": "2026-11-29T10:00:00", "device": "CPU: x",
                                              "matmul_gflops": 160.0, "notebooks": [
                                                  {"name": "01_data_build", "seconds": 600, "git_commit": "abc"},
                                                  {"name": "03_se_cbam_training", "seconds": 1200, "git_commit": "abc"}]}))
    (run / "summary.json").write_text(json.dumps({
        "question": "Does it help?", "verdicts": [{"question": "attention", "heading": "Attention",
                                                   "text": "plain beats nothing."}],
        "short_warnings": ["few seeds."], "warnings": ["few seeds, long form."], "key_tables": ["06_key_results"],
        "findings": [{"question": "setup", "heading": "Data", "sentences": ["trained on 6 photos."]}]}))
    (run / "tables" / "06_key_results.md").write_text("| model |\n|---|\n| plain |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_START}\nold text\n{README_END}\n\n## Next\n")
    update_readme(readme, run)
    text = readme.read_text()
    assert "old text" not in text and "- **Attention:** plain beats nothing." in text and "few seeds." in text
    assert "160.0 GFLOP/s" in text and "**30 min**" in text and text.endswith("## Next\n")
    assert "benchmarks" not in text
    full = (tmp_path / "docs" / "results.md").read_text()
    assert "## Data\n\n- trained on 6 photos." in full and "| plain |" in full and "few seeds, long form." in full
    (run / "bench").mkdir()
    (run / "bench" / "detection.md").write_text("# Detection\n\n| path | images/s |\n|---|---|\n| kit | 40 |\n")
    update_readme(readme, run)
    assert "the benchmarks (`bench/`)" in readme.read_text()
    full = (tmp_path / "docs" / "results.md").read_text()
    assert "| kit | 40 |" in full
    assert "\n### Detection\n" in full and "\n# Detection" not in full  # headings sit under ## Benchmarks
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no results markers"):
        update_readme(readme, run)


# --------------------------------------------------------------------------------------------
# Names, test lists and orders notebooks 01-06 take from the design
# --------------------------------------------------------------------------------------------


def test_removing_se_and_adding_a_block_changes_every_name_list_through_config():
    config = resolve_config("smoke", {"attention_variants": ["none", "cbam", "eca"], "margin_losses": ["cosface"]})
    assert design.attention_models(config) == {"plain": "none", "cbam": "cbam", "eca": "eca"}
    assert design.plain_model(config) == "plain" and design.attended_models(config) == ["cbam", "eca"]
    runs = design.training_runs(config)
    assert [r.name for r in runs.values() if r.kind == design.RunKind.ATTENTION] == [
        "plain", "cbam", "eca", "plain_seed1", "cbam_seed1", "eca_seed1"]
    assert runs["eca_seed1"].settings["backbone"].endswith("_eca") and runs["eca_seed1"].settings["seed"] == 1
    assert design.attention_comparisons(config) == [("cbam", "plain"), ("eca", "plain"), ("eca", "cbam")]
    assert design.baseline_comparisons(config) == [("plain", "plain_nomask"), ("plain_detected_twins", "plain"),
                                                   ("plain", "plain_cosface")]
    assert design.margin_runs(config) == ["plain_cosface"] and design.margin_table_models(config) == ["plain", "plain_cosface"]
    assert design.roc_runs(config) == ["plain", "cbam", "eca", "plain_nomask"]
    assert design.plain_runs(config) == ["plain", "plain_seed1"] and design.reference_run(config) == "plain"
    assert design.explained_networks(config) == [("plain", 0), ("plain", 1), ("cbam", 0), ("cbam", 1), ("eca", 0),
                                                 ("eca", 1), ("vit", 0), ("hybrid", 0)]
    assert set(design.training_runs(resolve_config("smoke")) ) - set(runs) == {"se", "se_seed1"}


def test_without_a_plain_network_the_single_run_comparisons_are_skipped():
    config = resolve_config("smoke", {"attention_variants": ["se", "cbam"], "seed": 3, "extra_seeds": [4]})
    assert design.plain_model(config) is None and design.reference_run(config) is None
    assert design.plain_runs(config) == [] and design.baseline_comparisons(config) == []
    assert design.margin_table_models(config) == []
    assert design.attention_comparisons(config) == [("cbam", "se")]  # the first model is the reference
    assert design.run_name("se", 4, config) == "se_seed4" and design.run_name("se", 3, config) == "se"
    assert design.nomask_run(config) == "plain_nomask"
    assert design.nomask_run(resolve_config("smoke", {"nomask_baseline": False})) is None


def test_runs_say_how_they_are_evaluated_and_what_they_train_on():
    runs = design.training_runs(resolve_config("smoke"))
    leave_out = runs["plain_without_surgical_blue"]
    assert leave_out.scenarios == ["unmasked_unmasked", "masked_unmasked"] and not leave_out.identification
    assert runs["plain"].scenarios is None and runs["plain"].identification and not runs["plain"].swaps_twins
    assert runs["plain_detected_twins"].swaps_twins and runs["plain_detected_twins"].masked_variant == "detected"
    assert design.training_runs(resolve_config("smoke", {"detected_twins_run": "detected_eyes"}))[
        "plain_detected_eyes_twins"].masked_variant == "detected_eyes"


EVERY_TEST = ["unmasked_unmasked", "masked_unmasked", "masked_masked", "masked_unmasked_detected",
              "masked_masked_detected", "masked_unmasked_detected_eyes", "masked_unmasked_unseen",
              "masked_unmasked_unseen_detected", "mfr2"]


def test_tables_and_figures_show_their_tests_in_a_fixed_order():
    shuffled = EVERY_TEST[::-1]
    assert design.table_tests(shuffled) == ["unmasked_unmasked", "masked_unmasked", "masked_masked",
                                            "masked_unmasked_detected", "masked_unmasked_unseen", "mfr2"]
    # the basic scenarios always head the seed table; the others only where they were measured
    assert design.table_tests(["masked_unmasked"]) == ["unmasked_unmasked", "masked_unmasked", "masked_masked"]
    assert design.mask_scenario_order(shuffled) == [
        "masked_unmasked", "masked_unmasked_detected", "masked_unmasked_detected_eyes", "masked_unmasked_unseen",
        "masked_unmasked_unseen_detected", "masked_masked", "masked_masked_detected", "mfr2"]
    assert design.mask_scenario_order(["mfr2", "masked_masked"]) == ["masked_masked", "mfr2"]
    assert design.roc_tests(shuffled) == ["unmasked_unmasked", "masked_unmasked", "masked_masked",
                                          "masked_unmasked_detected", "mfr2"]
    assert design.roc_tests(iter(["masked_masked", "unmasked_unmasked"])) == ["unmasked_unmasked", "masked_masked"]
    assert design.CORE_SCENARIOS == ("unmasked_unmasked", "masked_unmasked") and design.KEY_SCENARIO == "masked_unmasked"
    assert design.DATA_SIZE_TRANSFORMER in design.TRANSFORMER_MODELS and design.DATA_SIZE_GAP == "cnn_minus_vit"
    assert design.TRANSFORMER_MODELS == ("vit", "hybrid")


def test_variant_scenarios_and_titles():
    from maskstudy.datasets import pairs

    assert pairs.variant_scenario("masked_masked", "detected") == "masked_masked_detected"
    with pytest.raises(ValueError, match="no scenario for masked crops 'unseen' on 'masked_masked'"):
        pairs.variant_scenario("masked_masked", "unseen")
    assert pairs.variants_of("unmasked_unmasked") == []
    assert design.variant_titles("black_cloth", "kn95_flaps") == {
        "shared": "shared black_cloth", "detected": "detected", "detected_eyes": "detected, eye-weighted",
        "unseen": "unseen kn95_flaps", "unseen_detected": "unseen, detected"}
    frame = pd.DataFrame({"a": ["x/1_mask.jpg", "x/2.jpg"], "b": ["y/1.jpg", "y/2_mask.jpg"]})
    assert pairs.masked_images(frame).tolist() == ["x/1_mask.jpg", "y/2_mask.jpg"]
    assert design.model_label("vit") == "ViT" and design.model_label("hybrid") == "hybrid"
    assert design.display_name("plain_without_surgical_blue_seed2") == "plain without surgical blue seed 2"


def _design_names() -> set[str]:
    """Every model, run, scenario and masked-crop variant name the design can produce for the shipped profiles."""
    from maskstudy.core.profiles import PROFILES
    from maskstudy.datasets.pairs import MASK_VARIANTS, SCENARIOS, VARIANT_SCENARIOS

    names = set(SCENARIOS) | set(VARIANT_SCENARIOS) | set(MASK_VARIANTS) | set(design.TRANSFORMER_MODELS)
    names |= set(design.ATTENTION_NAMES) | set(design.ATTENTION_NAMES.values()) | {comparisons.MFR2}
    for profile in PROFILES:
        config = resolve_config(profile, {"margin_losses": ["softmax", "sphereface", "cosface"]})
        names |= {r.name for r in design.training_runs(config).values()}
        names |= {r.model for r in design.training_runs(config).values()}
    return names


#: Quoted names the notebooks may still hold: MFR2's dataset name (find_dataset's argument and its files).
DATASET_NAMES = {"mfr2"}


def _string_literals(path):
    """``(line, value, is_fstring)`` of every string literal in a notebook (Python 3.11 tokens)."""
    import ast
    import io
    import tokenize

    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type != tokenize.STRING:
            continue
        prefix = token.string[: len(token.string) - len(token.string.lstrip("rRbBfFuU"))]
        if "f" in prefix.lower():
            body = token.string[len(prefix):].strip("\"'")
            yield token.start[0], body.split("{")[0], True
        else:
            yield token.start[0], ast.literal_eval(token.string), False


def test_notebooks_hold_no_model_or_scenario_name():
    """Issue 10: every model, run, scenario and crop-variant name reaches the notebooks from the design
    (maskstudy.study.design, maskstudy.datasets.pairs); a quoted name, or an f-string starting with ``<name>_``, is a second source."""
    from maskstudy.report.pipeline import notebooks

    names = _design_names() - DATASET_NAMES
    assert {"plain", "se", "cbam", "vit", "hybrid", "plain_nomask", "masked_unmasked", "shared"} <= names
    found = []
    for path in notebooks():
        for line, value, fstring in _string_literals(path):
            if (not fstring and value in names) or (fstring and any(value.startswith(f"{n}_") for n in names)):
                found.append(f"{path.name}:{line}: {value!r}")
    assert not found, "names typed in notebooks: " + "; ".join(found)


def test_the_notebook_name_check_catches_typed_names(tmp_path):
    path = tmp_path / "nb.py"
    path.write_text('x = ["vit", "hybrid"]\ny = f"plain_{m}"\nz = "cnn_minus_vit"\nw = f"{a}_seed"\n')
    literals = list(_string_literals(path))
    assert literals == [(1, "vit", False), (1, "hybrid", False), (2, "plain_", True), (3, "cnn_minus_vit", False),
                        (4, "", True)]


def test_seed_table_baseline_differences_and_leave_one_style_out():
    long, per_pair = _fake_results(seed_effect=0.0)
    long = pd.concat([long, long[(long["run"] == "plain")].assign(run="plain_nomask", model="plain_nomask",
                                                                  kind="baseline")], ignore_index=True)
    per_pair["plain_nomask"] = {t: {**v, "correct": ~v["correct"]} for t, v in per_pair["plain"].items()}
    identification = pd.DataFrame({"model": ["plain", "plain", "se"], "rank1": [0.5, 0.7, 0.9]})
    table = comparisons.seed_table(long, identification, ["masked_unmasked", "mfr2"],
                                   (design.RunKind.ATTENTION, design.RunKind.BASELINE))
    assert table["model"].tolist() == ["plain", "se", "cbam", "plain_nomask"]
    assert table.set_index("model").loc["plain", "Id %"] == 60.0 and np.isnan(table.set_index("model").loc["cbam", "Id %"])
    assert list(table.columns) == ["model", "seeds", "Id %", "Ver % masked_unmasked", "± masked_unmasked",
                                   "Ver % mfr2", "± mfr2"]
    assert np.isnan(table.set_index("model").loc["plain_nomask", "± mfr2"])  # one run: no spread over seeds

    baselines = comparisons.baseline_differences(per_pair, [("plain", "plain_nomask")], n_boot=200)
    assert baselines["comparison"].tolist() == ["plain - plain_nomask"] * 2
    assert (baselines["diff"] > 0.4).all() and (baselines["p_holm"] >= baselines["p_value"]).all()
    assert comparisons.baseline_differences(per_pair, [], n_boot=200).empty

    left_out = np.arange(4000) % 4 == 0
    loso = comparisons.leave_one_style_out(per_pair, "plain_nomask", "surgical_blue", "plain", ["plain", "plain_seed1"],
                                           left_out, "masked_unmasked", n_boot=200)
    assert loso["run"].tolist() == ["plain_nomask", "plain", "plain_seed1", "plain_nomask - plain"] * 2
    assert loso["pairs"].iloc[0] == "masked with surgical_blue (unseen by plain_nomask)"
    assert loso["n_pairs"].tolist()[:4] == [1000] * 4 and loso["n_pairs"].tolist()[4:] == [3000] * 4
    assert loso["diff"].iloc[3] < -0.4


def test_training_lists_of_runs_and_missing_inputs(tmp_path):
    from maskstudy.study import experiment

    with pytest.raises(FileNotFoundError, match=r"train_clean.csv is missing: run notebooks 01 and 02 first"):
        experiment.require([tmp_path / "train_clean.csv"], "notebooks 01 and 02")
    runs = design.training_runs(resolve_config("smoke"))
    rows = pd.DataFrame({"dataset": ["d", "d"], "aligned": ["a/1.jpg", "a/2.jpg"],
                         "masked": ["a/1_mask.jpg", "a/2_mask.jpg"], "mask_style": ["surgical_blue", "black_cloth"]})
    train_csv = tmp_path / "train_clean.csv"
    outputs = tmp_path / "outputs"
    assert experiment.training_csv(runs["plain"], rows, train_csv, outputs, tmp_path) == train_csv
    left = experiment.training_csv(runs["plain_without_surgical_blue"], rows, train_csv, outputs, tmp_path)
    assert left == outputs / "leave_out" / "train_without_surgical_blue.csv"
    assert pd.read_csv(left, keep_default_na=False)["masked"].tolist() == ["", "a/2_mask.jpg"]
    twins = experiment.training_csv(runs["plain_detected_twins"], rows, train_csv, outputs, tmp_path)
    assert twins == outputs / "twins" / "train_detected.csv" and twins.is_file()


def test_findings_name_the_runs_of_the_design():
    from maskstudy.study.findings import study_findings

    results = {
        "01_split": pd.DataFrame({"train_images": [100]}),
        "03_seed_summary": pd.DataFrame({"model": ["plain"], "test": ["masked_unmasked"], "accuracy_mean": [0.8],
                                         "accuracy_std": [0.01], "seeds": [2]}),
        "03_differences": pd.DataFrame(),
        "03_baseline_differences": pd.DataFrame({
            "comparison": ["plain - plain_nomask", "plain_detected_twins - plain"],
            "test": ["masked_unmasked", "masked_unmasked_detected"], "diff": [0.05, -0.02], "ci_low": [0.01, -0.04],
            "ci_high": [0.09, 0.0]}),
        "03_fnmr": pd.DataFrame(columns=["kind", "fmr_target", "scenario", "fnmr"]),
        "03_leave_one_style_out": pd.DataFrame({"pairs": ["masked with x"], "run": ["plain_without_x - plain"],
                                                "diff": [-0.1], "ci_low": [-0.2], "ci_high": [0.0]}),
        "04_vit": pd.DataFrame({"model": ["vit", "hybrid"], "scenario": ["masked_unmasked"] * 2,
                                "accuracy_mean": [0.6, 0.7]}),
    }
    split = {"protocol": "p", "counts": {"train_identities": 10, "eval_pairs": 20}}
    groups, _ = study_findings(results, split, resolve_config("smoke"))
    assert list(groups) == ["setup", "unseen", "training"]
    assert "ViT 60.0 % and hybrid 70.0 % on masked-unmasked pairs (one seed each)." in groups["setup"]
    assert ("Training with masked twins (plain, main seed) vs without, on masked-unmasked, shared alignment: "
            "+5.0 points [+1.0, +9.0].") in groups["training"]
    text = "\n".join(groups["training"])
    assert "(plain_detected_twins - plain, main seed), on masked-unmasked, mask detected on the photo: -2.0" in text
    assert "Leave one style out, masked with x: -10.0 points [-20.0, +0.0]" in groups["unseen"][0]
    assert "one training seed: the interval covers the test pairs" in groups["unseen"][0]  # no accuracies given
    results["03_leave_one_style_out"] = pd.DataFrame({
        "pairs": ["masked with x"] * 5,
        "run": ["plain_without_x", "plain", "plain_seed1", "plain_seed2", "plain_without_x - plain"],
        "accuracy": [0.70, 0.80, 0.78, 0.82, np.nan], "diff": [np.nan] * 4 + [-0.1], "ci_low": [np.nan] * 4 + [-0.2],
        "ci_high": [np.nan] * 4 + [0.0]})
    groups, _ = study_findings(results, split, resolve_config("smoke"))
    assert ("one training seed (70.0 %), below all of the 3 seeds of the plain net on these pairs (78.0 % to "
            "82.0 %)") in groups["unseen"][0]


def test_guided_students_follow_the_teacher_settings(tmp_path):
    config = resolve_config("cpu", {"teacher_students": ["none", "cbam"], "extra_seeds": [1]})
    runs = design.training_runs(config)
    guided = {n: r for n, r in runs.items() if r.kind == design.RunKind.GUIDED}
    assert set(guided) == {"plain_guided", "cbam_guided", "plain_guided_seed1", "cbam_guided_seed1"}
    assert all(r.settings["distill_weight"] == config["teacher_distill_weight"] for r in guided.values())
    assert guided["cbam_guided_seed1"].settings["backbone"] == runs["cbam_seed1"].settings["backbone"]
    assert {r.settings["teacher_embeddings"] for r in guided.values()} == {None}
    targeted = design.with_teacher_targets(runs, tmp_path / "t.npz")
    assert {targeted[n].settings["teacher_embeddings"] for n in guided} == {str(tmp_path / "t.npz")}
    assert targeted["cbam"].settings == runs["cbam"].settings
    assert design.guided_comparisons(config) == [("plain_guided", "plain"), ("cbam_guided", "cbam"),
                                                 ("cbam_guided", "plain_guided")]
    assert design.pretrained_model(config) == "dlib_resnet_pretrained"
    assert not design.guided_students(resolve_config("cpu", {"teacher": None}))
    assert design.pretrained_model(resolve_config("cpu", {"teacher": None})) is None
    assert not [r for r in design.training_runs(config, teacher=False).values() if r.kind == design.RunKind.GUIDED]
    assert design.reference_tests(config, ["unmasked_unmasked", "masked_unmasked", "masked_unmasked_detected"]) == [
        "unmasked_unmasked", "masked_unmasked_detected"]


def test_missing_teacher_extra_skips_with_install_hint(monkeypatch):
    from maskstudy import teachers
    from maskstudy.study import experiment
    from maskstudy.teachers.base import TeacherUnavailableError

    def absent(name, **kw):
        raise TeacherUnavailableError("the dlib_resnet teacher needs dlib")

    monkeypatch.setattr(teachers, "build_teacher", absent)
    teacher, note = experiment.load_teacher(resolve_config("smoke"))
    assert teacher is None and "pip install -e .[teacher]" in note and "skipped" in note
    teacher, note = experiment.load_teacher(resolve_config("smoke", {"teacher": None}))
    assert teacher is None and "null" in note


def test_students_against_a_single_reference_run():
    long, per_pair = _fake_results(seed_effect=0.15)
    reference = "dlib_resnet_pretrained"
    rng = np.random.default_rng(1)
    per_pair[reference] = {}
    for test in ("masked_unmasked", "mfr2"):
        correct = rng.random(4000) < 0.85
        per_pair[reference][test] = {"correct": correct, "clusters": per_pair["plain"][test]["clusters"]}
        long = pd.concat([long, pd.DataFrame([{"run": reference, "model": reference, "seed": 0, "kind": "pretrained",
                                               "test": test, "accuracy": correct.mean(), "auc": 0.9}])],
                         ignore_index=True)
    table = comparisons.against_reference(long, per_pair, ["plain", "se"], reference, ["masked_unmasked", "mfr2",
                                                                                      "absent"], 0, n_boot=200)
    assert table[["model", "test"]].values.tolist() == [["plain", "masked_unmasked"], ["plain", "mfr2"],
                                                        ["se", "masked_unmasked"], ["se", "mfr2"]]
    row = table.set_index(["model", "test"]).loc[("plain", "mfr2")]
    assert row["seeds"] == 3 and row["reference_accuracy"] == pytest.approx(per_pair[reference]["mfr2"]["correct"].mean())
    assert row["diff_seed_mean"] == pytest.approx(row["accuracy_mean"] - row["reference_accuracy"])
    assert row["diff_main_seed"] < 0 and row["boot_ci_high"] < 0  # 0.75 against 0.85 on 4000 pairs
    se = table.set_index(["model", "test"]).loc[("se", "mfr2")]
    assert se["diff_main_seed"] > 0  # 0.90 against 0.85
