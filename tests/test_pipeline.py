"""The study pipeline: profiles, the runner's command line, notebook hygiene, and a papermill smoke run."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import tomllib

from maskstudy.core.profiles import PROFILES, resolve_config
from maskstudy.report.pipeline import (
    PipelineError,
    notebooks,
    parse_parameter,
    read_notebook,
    run_pipeline,
    select_notebooks,
)

REPO = Path(__file__).resolve().parents[1]


def test_profiles_resolve_and_reject_unknown_names():
    smoke = resolve_config("smoke", {"max_deviation": 0.2})
    assert smoke["profile"] == "smoke" and smoke["max_deviation"] == 0.2
    assert set(PROFILES) == {"smoke", "cpu", "gpu"}
    with pytest.raises(ValueError, match="known profiles: smoke, cpu, gpu"):
        resolve_config("huge")
    with pytest.raises(KeyError, match="known parameters:.*max_deviation"):
        resolve_config("cpu", {"max_deviaton": 0.2})


@pytest.mark.parametrize("text,expected", [("seed=3", ("seed", 3)), ("max_deviation=0.15", ("max_deviation", 0.15)),
                                           ("download_lfw=false", ("download_lfw", False)),
                                           ("eval_folds=[1, 2]", ("eval_folds", [1, 2])),
                                           ("lfw_root=/data/lfw", ("lfw_root", "/data/lfw")),
                                           ("lfw_root=", ("lfw_root", None))])
def test_parse_parameter(text, expected):
    assert parse_parameter(text) == expected


def test_parse_parameter_needs_key_value():
    with pytest.raises(ValueError, match="key=value"):
        parse_parameter("seed")


def test_select_notebooks():
    paths = [Path(f"{n:02d}_x.ipynb") for n in range(1, 7)]
    assert [p.name[:2] for p in select_notebooks(paths, only="01,02")] == ["01", "02"]
    assert [p.name[:2] for p in select_notebooks(paths, start="3")] == ["03", "04", "05", "06"]
    with pytest.raises(ValueError, match="no notebook numbered 09"):
        select_notebooks(paths, only="09")


@pytest.mark.parametrize("path", notebooks(REPO), ids=lambda p: p.name)
def test_notebooks_are_stored_clean_with_a_parameters_cell(path):
    assert path.suffix == ".py", "notebooks are Jupytext py:percent text files"
    nb = read_notebook(path)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.get("outputs") for c in code), "commit notebooks without outputs"
    assert not any(c.get("execution_count") for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert re.search(r"^profile = None$", tagged[0].source, re.M) and re.search(r"^params = \{\}$", tagged[0].source, re.M)
    assert "start_notebook(" in code[1].source  # the same setup in JupyterLab and under papermill


def _names(requirements):
    return {re.split(r"[<>=!~\[ ;]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_environment_yml_matches_pyproject():
    import yaml

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert any(str(d).startswith("python") for d in env["dependencies"] if isinstance(d, str))
    # the environment installs the package itself (with its test extra), so pyproject stays the one list
    assert any(re.fullmatch(r"-e \.(\[test\])?", p.strip()) for p in pip_section)
    pinned = {p for p in pip_section if not p.startswith("-e")}
    by_name = {re.split(r"[<>=!~ ]", p, maxsplit=1)[0].lower(): p for p in pinned}
    deps = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0].lower(): d for d in project["dependencies"]}
    for name, spec in by_name.items():  # anything pinned in both places must agree
        assert name in deps, f"environment.yml pins {name}, which pyproject.toml does not list"
        assert spec.replace(" ", "") == deps[name].replace(" ", ""), f"{spec} != {deps[name]}"
    assert deps["facenet-pytorch"] == "facenet-pytorch==2.5.3"


def test_cli_reports_bad_arguments_clearly():
    result = subprocess.run([sys.executable, "-m", "maskstudy", "run", "--profile", "huge"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "unknown profile 'huge'" in result.stderr
    result = subprocess.run([sys.executable, "-m", "maskstudy", "run", "--profile", "smoke", "-p", "nope=1"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "unknown parameter(s) nope" in result.stderr


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, lfw_root, celeba_root):
    """Every notebook under papermill with the smoke profile, into temporary run and data folders."""
    base = tmp_path_factory.mktemp("smoke")
    overrides = {"data_dir": str(base / "data"), "lfw_root": str(lfw_root),
                 "extra_datasets": {"celeba": str(celeba_root)}}
    record = run_pipeline("smoke", overrides, run_dir=base / "run", progress=False, log=lambda *_: None)
    return base, record


@pytest.mark.slow
def test_smoke_run_of_notebooks_01_02(smoke_run):
    base, record = smoke_run
    run = base / "run"
    assert [n["status"] for n in record["notebooks"]] == ["ok"] * len(notebooks(REPO))
    for name in ("01_data_build", "02_mtcnn_cleaning"):
        html = (run / f"{name}.html").read_text()
        assert "data:image/png;base64" in html  # self-contained, with figures
        assert (run / f"{name}.ipynb").is_file()
        results = (run / f"{name}.results.html").read_text()
        assert "data:image/png;base64" in results and "start_notebook" not in results and "start_notebook" in html
    # the executed notebook keeps each progress bar's final line, not every redraw
    executed = nbformat.read(run / "01_data_build.ipynb", as_version=4)
    stderr = "\n".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", [])
                     if o.get("output_type") == "stream" and o.get("name") == "stderr")
    assert "\r" not in stderr
    bar_lines = [line for line in stderr.split("\n") if re.match(r"MTCNN \w+:", line)]
    assert 1 <= len(bar_lines) <= 2 * len({line.split(":")[0] for line in bar_lines})
    index = (run / "index.html").read_text()
    assert "01_data_build.html" in index and "02_mtcnn_cleaning.html" in index
    assert "01_data_build.results.html" in index and "GFLOP/s" in index
    # figures in the order notebook 01 saved them, then notebook 02's
    assert index.index("figures/01_detection_status.png") < index.index("figures/01_aligned_and_masked.png") \
        < index.index("figures/02_deviation_rate.png")
    meta = json.loads((run / "run.json").read_text())
    assert meta["profile"] == "smoke" and meta["git_commit"] and meta["packages"]["torch"]
    assert isinstance(meta["warnings"], list) and meta["cpu_threads"]["torch_threads"] >= 1
    assert all(n["results_html"] == f"{n['name']}.results.html" and n["matmul_gflops"] for n in meta["notebooks"])
    assert all(n["git_commit"] == meta["git_commit"] for n in meta["notebooks"])
    assert meta["data_fingerprint"]["lfw"]["images"] > 0 and len(meta["data_fingerprint"]["lfw"]["manifest_sha256"]) == 64
    for figure in ("01_detection_status", "01_aligned_and_masked", "02_deviation_rate", "02_kept_frontal",
                   "02_removed_side", "02_mask_styles"):
        assert (run / "figures" / f"{figure}.png").is_file() and (run / "figures" / f"{figure}.svg").is_file()

    split = pd.read_csv(run / "tables" / "01_split.csv")
    assert split.loc[0, "protocol"] == "extra-train/lfw-10fold"
    assert split.loc[0, "eval_pairs"] == 10 * 2 * PROFILES["smoke"]["lfw_pairs_per_fold"]
    status = pd.read_csv(run / "tables" / "01_detection_status.csv").set_index("dataset")
    assert status.loc["lfw", "total"] > 0 and status.loc["celeba", "total"] > 0
    summary = pd.read_csv(run / "tables" / "02_cleaning_summary.csv")
    for dataset, part in summary[summary["dataset"] != "all"].groupby("dataset"):
        assert part["count"].sum() == status.loc[dataset, "total"]
    pairs = pd.read_csv(run / "tables" / "02_pairs.csv")
    from maskstudy.datasets.pairs import SCENARIOS, VARIANT_SCENARIOS, read_pair_folds

    assert set(pairs[pairs["dataset"] == "lfw"]["scenario"]) == set(SCENARIOS) | set(VARIANT_SCENARIOS)
    for scenario in VARIANT_SCENARIOS:  # every crop a variant pair names exists
        variant = read_pair_folds(base / "data" / "lfw" / "pairs" / f"{scenario}.csv")
        assert len(variant) == 10 * 2 * PROFILES["smoke"]["lfw_pairs_per_fold"]
        assert all((base / "data" / "lfw" / "aligned" / p).is_file() for p in pd.concat([variant["a"], variant["b"]]))
    masked_detection = pd.read_csv(run / "tables" / "01_masked_detection.csv")
    assert set(masked_detection["mask_styles"]) == {"seen", "unseen"}
    assert masked_detection["face_found"].between(0, 1).all()

    data = base / "data"
    for scenario in ("unmasked_unmasked", "masked_unmasked", "masked_masked"):
        lines = (data / "lfw" / "pairs" / f"{scenario}.txt").read_text().split("\n")
        for line in filter(None, lines):
            a, b, label = line.split(" ")
            assert label in ("0", "1")
            assert (data / "lfw" / "aligned" / a).is_file() and (data / "lfw" / "aligned" / b).is_file()
            masked = int(a.endswith("_mask.jpg")) + int(b.endswith("_mask.jpg"))
            assert masked == {"unmasked_unmasked": 0, "masked_unmasked": 1, "masked_masked": 2}[scenario]
    cleaned = pd.read_csv(data / "celeba" / "cleaned.csv")
    assert {"deviation_rate", "yaw_deg", "keep", "drop_reason"} <= set(cleaned.columns)
    assert (cleaned.loc[cleaned["drop_reason"] == "side_face", "deviation_rate"] > PROFILES["smoke"].get("max_deviation", resolve_config("smoke")["max_deviation"])).all()


@pytest.mark.slow
def test_failing_notebook_names_the_notebook_and_cell(smoke_run, tmp_path):
    base, _ = smoke_run
    with pytest.raises(PipelineError, match=r"02_mtcnn_cleaning.ipynb failed in cell \d+: FileNotFoundError.*notebook 01"):
        run_pipeline("smoke", {"data_dir": str(tmp_path / "empty")}, only="02", run_dir=tmp_path / "run",
                     progress=False, log=lambda *_: None)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["notebooks"][-1]["status"] == "failed"
    assert "failed" in (tmp_path / "run" / "index.html").read_text()


@pytest.mark.slow
def test_smoke_run_of_notebook_03_training(smoke_run):
    from maskstudy.datasets.pairs import SCENARIOS, VARIANT_SCENARIOS
    from maskstudy.study import design

    base, _ = smoke_run
    run = base / "run"
    config = resolve_config("smoke")
    teacher = importlib.util.find_spec("dlib") is not None  # the optional extra (CI installs it)
    runs = design.training_runs(config, teacher=teacher)
    assert "data:image/png;base64" in (run / "03_se_cbam_training.html").read_text()
    executed = nbformat.read(run / "03_se_cbam_training.ipynb", as_version=4)
    stderr = "\n".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", [])
                     if o.get("output_type") == "stream" and o.get("name") == "stderr")
    epoch_bars = [line for line in stderr.split("\n") if re.match(r"epoch \d+/\d+:", line)]
    epochs = int(pd.read_csv(run / "tables" / "03_training.csv")["epochs"].max())
    assert "\r" not in stderr and 0 < len(epoch_bars) <= 2 * len(runs) * epochs  # one line per epoch, not per step
    verification = pd.read_csv(run / "tables" / "03_verification.csv")
    evaluated = set(runs) | ({design.pretrained_model(config)} if teacher else set())
    assert set(verification["run"]) == evaluated
    if teacher:  # the pretrained reference row and the guided students, with the teacher pass's times
        assert {"plain_guided", "cbam_guided"} <= set(runs)
        assert pd.read_csv(run / "tables" / "03_teacher.csv")["guided_runs"].iloc[0] == 4
        assert set(pd.read_csv(run / "tables" / "03_guided_vs_reference.csv")["model"]) == {"plain_guided", "cbam_guided"}
    assert {"plain", "se", "cbam", "plain_seed1", "se_seed1", "cbam_seed1", "plain_nomask"} <= set(runs)
    # every model meets every test; the leave-one-style-out run only the two it is compared on
    full = verification[verification["kind"] != "leave_out"]
    assert set(full["scenario"]) == set(SCENARIOS) | set(VARIANT_SCENARIOS)
    assert full.groupby("run")["scenario"].nunique().eq(len(SCENARIOS) + len(VARIANT_SCENARIOS)).all()
    assert verification["accuracy_mean"].between(0, 1).all()
    assert (verification["acc_ci_low"] <= verification["acc_ci_high"]).all()
    identification = pd.read_csv(run / "tables" / "03_identification.csv")
    assert identification["rank1"].between(0, 1).all() and (identification["probes"] > 0).all()
    # distractors can only take correct answers away
    assert (identification["rank1_distractors"] <= identification["rank1"] + 1e-12).all()
    assert (identification["gallery_with_distractors"] >= identification["gallery"]).all()
    mfr2 = pd.read_csv(run / "tables" / "03_mfr2.csv")
    assert set(mfr2["run"]) == evaluated and (mfr2["pairs"] == 848).all()
    assert mfr2[["accuracy_mean", "auc", "face_found", "face_found_masked"]].stack().between(0, 1).all()
    assert (mfr2[["pairs_both_masked", "pairs_one_masked", "pairs_none_masked"]].sum(axis=1) == 848).all()
    fnmr = pd.read_csv(run / "tables" / "03_fnmr.csv")
    assert set(fnmr["fmr_target"]) == set(config["fixed_fmr"]) and fnmr["fnmr"].between(0, 1).all()
    spread = pd.read_csv(run / "tables" / "03_seed_summary.csv")
    seeded = set(design.attention_models(config)) | (set(design.guided_students(config)) if teacher else set())
    assert set(spread["model"]) == seeded and (spread["seeds"] == 2).all()
    assert {"mfr2", "masked_unmasked_detected", "masked_unmasked_unseen"} <= set(spread["test"])
    differences = pd.read_csv(run / "tables" / "03_differences.csv")
    assert {"se - plain", "cbam - plain", "cbam - se"} == set(differences["comparison"])
    assert (differences["p_seed_holm"] >= differences["p_seed"] - 1e-12).all()
    assert (differences["p_boot_holm"] >= differences["p_boot"] - 1e-12).all()
    baselines = pd.read_csv(run / "tables" / "03_baseline_differences.csv")
    assert "plain - plain_nomask" in set(baselines["comparison"])
    loso = pd.read_csv(run / "tables" / "03_leave_one_style_out.csv")
    assert loso["pairs"].str.contains(config["leave_out_style"]).any()
    training = pd.read_csv(run / "tables" / "03_training.csv").set_index("run")
    assert training.loc["plain_nomask", "masked_share"] == 0.0 and training.loc["cbam", "masked_share"] == 0.5
    # same schedule for every variant: equal epochs, and CBAM has the most parameters
    assert training["epochs"].nunique() == 1
    assert training.loc["cbam", "params"] > training.loc["se", "params"] > training.loc["plain", "params"]
    for name in training.index:
        assert (run / "outputs" / "checkpoints" / name / "last.pt").is_file()
        assert (run / "outputs" / "checkpoints" / name / "log.csv").is_file()
    assert (run / "figures" / "03_learning_curves.png").is_file() and (run / "figures" / "03_accuracy.png").is_file()
    assert (run / "tables" / "01_masked_detection.csv").is_file()
    if teacher:  # the pretrained track: full strength, gated, upper face over seeds; the clean-crop control
        track_differences = pd.read_csv(run / "tables" / "03_track_differences.csv")
        assert {"ft_se - ft_plain", "ft_cbam - ft_plain", "ft_cbam_gated - ft_plain",
                "ft_upper_cbam - ft_upper_plain"} <= set(track_differences["comparison"])
        assert (track_differences["seeds"] == 2).all()
        upper = pd.read_csv(run / "tables" / "03_track_upper_face.csv")
        assert set(upper["comparison"]) == {"ft_upper_plain - ft_plain"} and (upper["seeds"] == 2).all()
        control = pd.read_csv(run / "tables" / "03_track_clean_control.csv")
        assert set(control["comparison"]) == {"ft_plain_clean_seed0 - ft_plain_seed0",
                                              "ft_plain_clean_seed0 - dlib_resnet29_pretrained"}
        assert "mfr2" in set(control["test"])
        # the mask-aware recogniser: a model of the track, its mask detector scored, its file loadable
        from maskstudy.models.model_file import load_model

        mask_aware = pd.read_csv(run / "tables" / "03_track_mask_aware.csv")
        assert set(mask_aware["comparison"]) == {"ft_mask_aware_seed0 - dlib_resnet29_pretrained",
                                                 "ft_mask_aware_seed0 - ft_plain_seed0"}
        presence = pd.read_csv(run / "tables" / "03_mask_presence.csv")
        assert {"clean", "shared", "all photos"} <= set(presence["subset"]) and presence["accuracy"].between(0, 1).all()
        assert "ft_mask_aware" in set(pd.read_csv(run / "tables" / "03_track_seed_summary.csv")["model"])
        loaded = load_model(run / "outputs" / "checkpoints" / "ft_mask_aware.pt")
        assert loaded.kind == "mask_aware" and np.isfinite(loaded.threshold)
        assert loaded.similarity.description.startswith("fused score")  # what compare prints beside the score


@pytest.mark.slow
def test_smoke_run_of_notebook_04_vit_trial(smoke_run):
    base, _ = smoke_run
    tables = base / "run" / "tables"
    vit = pd.read_csv(tables / "04_vit.csv")
    assert {"vit", "hybrid"} <= set(vit["model"]) and len(set(vit["model"])) == 3  # plus the best CNN of 03
    curve = pd.read_csv(tables / "04_data_size.csv")
    fractions = sorted(resolve_config("smoke")["data_fractions"])
    assert sorted(curve["fraction"].unique()) == fractions
    assert curve.groupby("fraction")["images"].first().is_monotonic_increasing
    assert (base / "run" / "figures" / "04_data_size.png").is_file()


@pytest.mark.slow
def test_smoke_run_of_notebook_05_gradcam(smoke_run):
    base, _ = smoke_run
    attention = pd.read_csv(base / "run" / "tables" / "05_attention_regions.csv")
    assert {"plain", "se", "cbam", "vit", "hybrid"} <= set(attention["model"])
    assert attention["eye_share"].between(0, 1).all() and attention["mask_share"].between(0, 1).all()
    assert ((attention["eye_share"] + attention["mask_share"]) <= 1 + 1e-6).all()  # the regions do not overlap
    faith = pd.read_csv(base / "run" / "tables" / "05_faithfulness.csv")
    assert {"cam", "mean_cam", "eye_band", "random_face"} <= set(faith["ranking"])
    assert set(faith["curve"]) == {"deletion", "insertion"} and np.isfinite(faith["area"]).all()
    differences = pd.read_csv(base / "run" / "tables" / "05_attention_differences.csv")
    assert {"cbam - plain", "se - plain"} <= set(differences["comparison"])
    assert (base / "run" / "figures" / "05_cams_masked.png").is_file()
    # the attention blocks read directly: strength of every SE / CBAM model, CBAM's own map per block
    strength = pd.read_csv(base / "run" / "tables" / "05_attention_strength.csv")
    teacher = importlib.util.find_spec("dlib") is not None
    expected = {"se", "cbam"} | ({"ft_se", "ft_cbam", "ft_se_gated", "ft_cbam_gated", "ft_upper_se", "ft_upper_cbam"}
                                 if teacher else set())
    assert set(strength["model"]) == expected and set(strength["input"]) == {"masked", "unmasked"}
    overall = strength[strength["block"] == "all blocks"]
    assert (overall["seeds"] == 2).all() and overall["strength"].between(0, 10).all()
    assert overall[overall["model"].str.endswith("_gated")]["gate_min"].notna().all()
    spatial = pd.read_csv(base / "run" / "tables" / "05_cbam_spatial.csv")
    assert set(spatial["model"]) == {m for m in expected if "cbam" in m}
    assert spatial[["eye_weight", "mask_weight"]].stack().between(0, 1).all()
    maps = pd.read_csv(base / "run" / "tables" / "05_cbam_spatial_differences.csv")
    assert set(maps["measure"]) == {"mask_effect", "eye_effect", "mask_minus_eye"}
    assert (maps["p_holm"] >= maps["p_value"] - 1e-12).all()
    assert (base / "run" / "figures" / "05_cbam_spatial_maps.png").is_file()
    assert (base / "run" / "figures" / "05_attention_strength.png").is_file()


@pytest.mark.slow
def test_smoke_run_of_notebook_06_and_the_report(smoke_run):
    base, _ = smoke_run
    run = base / "run"
    key = pd.read_csv(run / "tables" / "06_key_results.csv")
    assert {"plain", "se", "cbam", "plain_nomask", "vit", "hybrid"} <= set(key["model"])
    # notebook 06 copies numbers, it does not recompute them: its key table equals notebook 03's seed table
    seed = pd.read_csv(run / "tables" / "03_seed_table.csv").set_index("model")
    pd.testing.assert_series_equal(key.set_index("model").loc[seed.index, "Id %"], seed["Id %"])
    for column in ("Ver % masked_unmasked_detected", "Ver % masked_unmasked_unseen", "Ver % mfr2", "± mfr2"):
        assert column in key.columns
    assert key.set_index("model").loc[["plain", "se", "cbam"], "seeds"].eq(2).all()
    assert key.set_index("model").loc[["vit", "hybrid"], "Ver % mfr2"].between(0, 100).all()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["findings"] and any("smoke profile" in w for w in summary["warnings"])
    text = " ".join(f for group in summary["findings"] for f in group["sentences"])
    assert "MFR2" in text and "Holm" in text and "detected" in text and "unseen" in text
    assert [v["question"] for v in summary["verdicts"]][:2] == ["attention", "detection"]
    index = (run / "index.html").read_text()
    first = index[:index.index("<details")]
    assert "Question:" in first and "figures/06_differences.png" in first and "<table class='key'>" in first
    assert "06_key_results" in index and "06_result_tables.html" in index
    assert (run / "tables" / "06_published_anchors.csv").is_file()


@pytest.mark.slow
def test_notebook_06_fails_loudly_when_an_upstream_result_is_missing(smoke_run, tmp_path):
    import shutil

    base, _ = smoke_run
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    (run / "tables" / "05_faithfulness.csv").unlink()
    with pytest.raises(PipelineError, match=r"(?s)06_result_tables.ipynb failed.*05_faithfulness.csv.*05_gradcam_analysis"):
        run_pipeline("smoke", {"data_dir": str(base / "data")}, only="06", run_dir=run, progress=False, log=lambda *_: None)


def test_read_results_names_missing_tables_and_their_notebooks(tmp_path):
    from maskstudy.report.outputs import MissingResultError, read_results

    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "03_verification.csv", index=False)
    found = read_results(tmp_path, ["03_verification"], optional=("03_margin_losses",))
    assert list(found) == ["03_verification"]
    with pytest.raises(MissingResultError, match=r"04_vit.csv \(written by notebook 04_vit_trial\)"):
        read_results(tmp_path, ["03_verification", "04_vit"])
    pd.DataFrame().to_csv(tmp_path / "03_mfr2.csv", index=False)  # what a run without MFR2 saves
    pd.DataFrame().to_csv(tmp_path / "03_fnmr.csv", index=False)
    found = read_results(tmp_path, ["03_verification", "03_fnmr"], optional=("03_mfr2",))
    assert sorted(found) == ["03_fnmr", "03_verification"] and found["03_fnmr"].empty
