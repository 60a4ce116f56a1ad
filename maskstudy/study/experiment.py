"""Training and evaluating networks with the profile's settings: the setup notebooks 03 and 04 share.

A run folder's networks are trained into ``outputs/checkpoints/<run>/`` (:func:`maskstudy.study.design.checkpoint`) and
meet the same tests (:class:`maskstudy.study.testsets.TestSets`) with the same evaluation settings (``fixed_fmr``,
``eval_batch_size``, ``bootstrap_samples``, ``seed``), whichever notebook trains them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..core import storage
from ..datasets.build import find_dataset, read_manifest
from ..datasets.protocol import Split
from ..evaluate import backbone_from_checkpoint, load_checkpoint
from ..models import count_flops, count_parameters
from ..train import TrainConfig, TrainResult, train_or_restart
from . import design
from .testsets import ModelResults, TestSets, evaluate_model


def require(paths: Iterable[str | os.PathLike], run_first: str) -> None:
    """Stop with ``FileNotFoundError`` naming the first missing file and what to run first (e.g. ``notebooks
    01 and 02``)."""
    for needed in paths:
        if not Path(needed).exists():
            raise FileNotFoundError(f"{needed} is missing: run {run_first} first")


def train_network(settings: Mapping[str, Any], train_csv: str | os.PathLike, data_dir: str | os.PathLike,
                  out_dir: str | os.PathLike) -> TrainResult:
    """Train (or resume, or reuse) a network from its TrainConfig fields into ``out_dir`` (for a training run:
    the folder of :func:`maskstudy.study.design.checkpoint`)."""
    return train_or_restart(TrainConfig.from_dict(dict(settings)), train_csv, data_dir, out_dir)


def training_csv(run: design.TrainingRun, rows: pd.DataFrame, train_csv: str | os.PathLike,
                 outputs: str | os.PathLike, data_dir: str | os.PathLike) -> Path:
    """The training list of ``run``: ``train_csv`` itself, or a copy of its ``rows`` without the left-out style's
    twins (``outputs/leave_out/``) or with the run's masked-crop variant as twins (``outputs/twins/``)."""
    csv = Path(train_csv)
    if run.left_out_style:
        csv = Path(outputs) / "leave_out" / f"train_without_{run.left_out_style}.csv"
        storage.write_csv(csv, design.without_style(rows, run.left_out_style))
    if run.swaps_twins:
        csv = Path(outputs) / "twins" / f"train_{run.masked_variant}.csv"
        storage.write_csv(csv, design.with_masked_variant(rows, run.masked_variant, data_dir))
    return csv


def load_network(path: str | os.PathLike):
    """The backbone saved in checkpoint ``path`` and its input size: ``(model, input_size)``."""
    loaded = load_checkpoint(path)
    return backbone_from_checkpoint(loaded, path), int(loaded["config"]["input_size"])


def model_size(model, input_size: int) -> dict[str, float]:
    """Parameters and GFLOPs of one forward pass of ``model`` at ``input_size``."""
    return {"params": count_parameters(model), "gflops": count_flops(model, input_size) / 1e9}


@dataclass
class Evaluation:
    """The tests of a run folder and the profile's evaluation settings."""

    tests: TestSets
    mfr2_source: Path | None
    config: Mapping[str, Any]

    @classmethod
    def from_run(cls, data_dir: str | os.PathLike, split: Split, config: Mapping[str, Any]) -> Evaluation:
        """The LFW tests of ``split``'s evaluated identities, and MFR2 when it is found (``mfr2_root``)."""
        data_dir = Path(data_dir)
        mfr2_source = find_dataset("mfr2", config["mfr2_root"])
        tests = TestSets.from_run(data_dir, read_manifest(data_dir / "lfw" / "cleaned.csv"),
                                  set(split.eval_identities["identity"]), mfr2_source, crop_size=config["crop_size"])
        return cls(tests, mfr2_source, config)

    def evaluate(self, model, input_size: int, **options: Any) -> ModelResults:
        """:func:`maskstudy.study.testsets.evaluate_model` with the profile's settings (``options``: which tests)."""
        c = self.config
        return evaluate_model(model, input_size, self.tests, fixed_fmr=c["fixed_fmr"], batch_size=c["eval_batch_size"],
                              n_boot=c["bootstrap_samples"], seed=c["seed"], **options)

    def evaluate_checkpoint(self, path: str | os.PathLike, **options: Any) -> ModelResults:
        """:meth:`evaluate` on the network saved in checkpoint ``path``."""
        return self.evaluate(*load_network(path), **options)


def load_teacher(config: Mapping[str, Any], detector=None):
    """The profile's pretrained teacher (``teacher``), or ``None``, with a sentence saying which, or why none: no
    teacher chosen, or its optional packages missing (the sentence says how to install them)."""
    from ..teachers import build_teacher
    from ..teachers.base import TeacherUnavailableError

    name = config.get("teacher")
    if not name:
        return None, "*No pretrained teacher in this profile (`teacher` is null): no reference row, no guided students.*"
    try:
        teacher = build_teacher(name, detector=detector)
    except TeacherUnavailableError as error:
        return None, (f"*The pretrained reference and the guided students are skipped: {error}. Enable them with "
                      "`pip install -e .[teacher]` (or `make install`), then rerun this notebook.*")
    return teacher, f"Pretrained teacher and reference: **{name}** (not trained here)."


def study_detector(config: Mapping[str, Any]):
    """The MTCNN of the study's data build (:class:`maskstudy.faces.detect.FaceDetector` with the profile's settings)."""
    from ..datasets.build import BuildSettings

    return BuildSettings.from_config(config).detector()
