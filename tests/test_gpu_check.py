"""bench/gpu_check.py's steps (pack, build, train, evaluate, report) on the CPU with the smoke profile's sizes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.realdata
def test_gpu_check_runs_its_steps_on_the_cpu(lfw_root, celeba_root, tmp_path):
    check = _gpu_check()
    packed = tmp_path / "packed"
    assert check.main(["--pack", str(packed), "--lfw", str(lfw_root), "--celeba", str(celeba_root),
                       "--lfw-folds", "2", "--pairs-per-fold", "4", "--celeba-identities", "8"]) == 0
    assert (packed / "lfw" / "pairs.txt").read_text().splitlines()[0] == "2\t4"
    assert len({p.parent.name for p in (packed / "celeba").glob("*/*")}) == 8

    out = tmp_path / "out"
    assert check.main(["--out", str(out), "--lfw", str(packed / "lfw"), "--celeba", str(packed / "celeba"),
                       "--profile", "smoke", "--device", "cpu", "--epochs", "1", "--variants", "plain", "cbam",
                       "--set", "train_val_identities=0"]) == 0
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["lfw_pairs"] == 16
    assert [row["dataset"] for row in summary["build"]] == ["lfw", "celeba"]
    assert [row["variant"] for row in summary["variants"]] == ["plain", "cbam"]
    for row in summary["variants"]:
        assert row["backbone"] in ("ir18", "ir18_cbam")
        assert row["train_images_per_s"] > 0 and row["peak_memory_gb"] is None  # no CUDA memory on the CPU
        assert 0 <= row["unmasked_unmasked_acc"] <= 100 and 0 <= row["masked_unmasked_acc"] <= 100
    text = (out / "gpu_check.md").read_text()
    assert "# GPU check" in text and "ir18_cbam" in text


def test_pairs_are_selected_by_fold_and_count():
    import pandas as pd

    check = _gpu_check()
    pairs = pd.DataFrame({"fold": [1, 1, 1, 1, 2, 2, 2, 2], "label": [1, 1, 0, 0, 1, 1, 0, 0], "n": range(8)})
    assert check.select_pairs(pairs, 1)["n"].tolist() == [0, 1, 2, 3]
    assert check.select_pairs(pairs, None, 1)["n"].tolist() == [0, 2, 4, 6]
    assert check.select_pairs(pairs, None)["n"].tolist() == list(range(8))
