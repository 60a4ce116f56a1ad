"""The study's design in one place (maskstudy.study), the comparison tables and the README's generated section."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from maskstudy import comparisons
from maskstudy import study as design
from maskstudy.config import resolve_config


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
    runs = design.training_runs(config)
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
    from maskstudy.report import README_END, README_START, update_readme

    run = tmp_path / "reports" / "cpu"
    (run / "tables").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"profile": "cpu", "started": "2026-11-29T10:00:00", "device": "CPU: x",
                                              "matmul_gflops": 160.0, "notebooks": [
                                                  {"name": "01_data_build", "seconds": 600, "git_commit": "abc"},
                                                  {"name": "03_se_cbam_training", "seconds": 1200, "git_commit": "abc"}]}))
    (run / "summary.json").write_text(json.dumps({"findings": ["plain beats nothing."], "warnings": ["few seeds."],
                                                  "key_tables": ["06_key_results"], "key_figures": []}))
    (run / "tables" / "06_key_results.md").write_text("| model |\n|---|\n| plain |\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_START}\nold text\n{README_END}\n\n## Next\n")
    update_readme(readme, run)
    text = readme.read_text()
    assert "old text" not in text and "plain beats nothing." in text and "few seeds." in text
    assert "| plain |" in text and "160.0 GFLOP/s" in text and "**30 min**" in text and text.endswith("## Next\n")
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="no results markers"):
        update_readme(readme, run)
