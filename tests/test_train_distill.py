"""Distillation in training (maskstudy.train.distill): off by default and then untouched, the teacher target of each
sample, P trained and checkpointed, exact resume, and clear errors for missing or mismatched teacher files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_train import DETERMINISTIC, _assert_same_weights, _config

from maskstudy.teachers import Teacher
from maskstudy.teachers.training import load_training_targets, training_keys, write_training_file
from maskstudy.train import LOG_COLUMNS, ConfigMismatchError, TrainConfig, load_backbone, load_checkpoint, train
from maskstudy.train import distill as distill_module
from maskstudy.train.data import read_rows, split_identities

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class StandInTeacher(Teacher):
    name = "stand_in"
    embedding_size = 8


def _teacher_table(csv: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A random unit embedding per training photo, identities clustered (a teacher that tells people apart)."""
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    centres = {identity: rng.normal(size=8) for identity in sorted(rows["identity"].unique())}
    table = {}
    for key, identity in zip(training_keys(rows), rows["identity"]):
        vector = centres[identity] + 0.3 * rng.normal(size=8)
        table[key] = (vector / np.linalg.norm(vector)).astype(np.float32)
    return table


def _centred(raw: np.ndarray) -> np.ndarray:
    """Rows of distinct photos minus their mean, at unit length (what training aims at)."""
    centred = raw.astype(np.float64) - raw.mean(axis=0)
    return centred / np.linalg.norm(centred, axis=1, keepdims=True)


def _write_teacher(path: Path, table: dict[str, np.ndarray]) -> Path:
    keys = list(table)
    return write_training_file(path, StandInTeacher(), keys, [f"{i:040x}" for i in range(len(keys))],
                               np.stack([table[k] for k in keys]), np.zeros(len(keys), bool))


@pytest.fixture(scope="module")
def teacher_file(synthetic_faces, tmp_path_factory) -> Path:
    csv, _ = synthetic_faces
    return _write_teacher(tmp_path_factory.mktemp("teacher") / "stand_in_train.npz", _teacher_table(csv))


def _run(config, synthetic_faces, out_dir, **kw):
    csv, root = synthetic_faces
    return train(config, csv, root, out_dir, progress=False, log=None, **kw)


# ---------------------------------------------------------------------------------------------


def test_default_builds_nothing_and_reads_no_teacher(synthetic_faces, tmp_path, monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("the default path must not read teacher embeddings")

    monkeypatch.setattr(distill_module, "load_training_targets", refuse)
    monkeypatch.setattr(distill_module, "DistillationLoss", refuse)
    config = _config(epochs=1, teacher_embeddings=str(tmp_path / "absent.npz"))  # a path alone switches nothing on
    result = _run(config, synthetic_faces, tmp_path / "run")
    assert list(result.history.columns) == LOG_COLUMNS
    checkpoint = load_checkpoint(result.checkpoint)
    assert "distill" not in checkpoint and len(checkpoint["optimizer"]["param_groups"]) == 2
    assert list(pd.read_csv(tmp_path / "run" / "log.csv").columns) == LOG_COLUMNS


def test_config_and_profile_keys():
    from maskstudy.core.profiles import resolve_config, train_settings

    assert TrainConfig().distill_weight == 0.0 and TrainConfig().teacher_embeddings is None
    with pytest.raises(ValueError, match="distill_weight > 0 needs teacher_embeddings"):
        TrainConfig(distill_weight=1.0)
    with pytest.raises(ValueError, match="distill_weight must be a number >= 0"):
        TrainConfig(distill_weight=-1.0)
    config = TrainConfig(distill_weight=2, teacher_embeddings=Path("t.npz"))
    assert config.teacher_embeddings == "t.npz" and "teacher_embeddings" not in config.recipe()
    assert config.recipe()["distill_weight"] == 2
    profile = resolve_config("smoke", {"train_distill_weight": 1.5, "train_teacher_embeddings": "x.npz",
                                       "teacher": "dlib_resnet", "teacher_students": ["se"]})
    settings = train_settings(profile, "se")
    assert (settings["distill_weight"], settings["teacher_embeddings"]) == (1.5, "x.npz")
    assert resolve_config("smoke")["teacher"] == "dlib_resnet" and resolve_config("smoke", {"teacher": None})["teacher"] is None
    with pytest.raises(ValueError, match="teacher"):
        resolve_config("smoke", {"teacher": 3})


def test_targets_follow_the_rows_not_their_order(synthetic_faces, teacher_file, tmp_path):
    csv, _ = synthetic_faces
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table = _teacher_table(csv)
    shuffled = rows.sample(frac=1.0, random_state=3).iloc[:-5]  # reordered and filtered
    raw = np.stack([table[k] for k in training_keys(shuffled)])
    np.testing.assert_array_equal(load_training_targets(teacher_file, shuffled, centre=False).embeddings, raw)
    targets = load_training_targets(teacher_file, shuffled)
    np.testing.assert_allclose(targets.embeddings, _centred(raw), rtol=1e-5, atol=1e-6)
    assert targets.teacher == "stand_in" and targets.embedding_size == 8
    assert load_training_targets(teacher_file, rows.iloc[::-1]).fingerprint == \
        load_training_targets(teacher_file, rows).fingerprint  # order does not matter, content does
    other = _write_teacher(tmp_path / "other.npz", _teacher_table(csv, seed=1))
    assert load_training_targets(other, rows).fingerprint != load_training_targets(teacher_file, rows).fingerprint

    extra = pd.concat([rows, rows.iloc[:1].assign(image="id9/new.jpg")])
    with pytest.raises(ValueError, match=r"1 of \d+ training photos have no teacher embedding.*id9/new.jpg"):
        load_training_targets(teacher_file, extra)
    with pytest.raises(FileNotFoundError, match="embed_training_photos"):
        load_training_targets(tmp_path / "absent.npz", rows)
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read teacher embeddings"):
        load_training_targets(tmp_path / "garbage.npz", rows)
    np.savez(tmp_path / "foreign.npz", embeddings=np.zeros((2, 8)))
    with pytest.raises(ValueError, match="format None"):
        load_training_targets(tmp_path / "foreign.npz", rows)
    with pytest.raises(ValueError, match="columns dataset and image"):
        load_training_targets(teacher_file, rows.drop(columns="image"))


def test_each_sample_aims_at_its_clean_photos_teacher_embedding(synthetic_faces, teacher_file, tmp_path, monkeypatch):
    csv, _ = synthetic_faces
    table = _teacher_table(csv)
    config = _config(epochs=2, masked_share=0.5, val_identities=2, distill_weight=1.0,
                     teacher_embeddings=str(teacher_file))
    train_rows, _ = split_identities(read_rows(csv), config)
    expected = _centred(np.stack([table[k] for k in training_keys(train_rows)]))  # the mean of the photos trained on
    seen = []
    original = distill_module.Distiller.term

    def spy(self, embeddings, order):
        seen.append((np.asarray(order).copy(), self.targets[torch.from_numpy(np.asarray(order))].cpu().numpy()))
        return original(self, embeddings, order)

    monkeypatch.setattr(distill_module.Distiller, "term", spy)
    _run(config, synthetic_faces, tmp_path / "run")
    assert seen
    for order, targets in seen:
        np.testing.assert_allclose(targets, expected[order], rtol=1e-5, atol=1e-6)


def test_distillation_trains_p_and_is_saved_apart_from_the_backbone(synthetic_faces, teacher_file, tmp_path):
    config = _config(epochs=4, masked_share=0.5, distill_weight=2.0, teacher_embeddings=str(teacher_file))
    result = _run(config, synthetic_faces, tmp_path / "run")
    history = result.history
    assert list(history.columns) == LOG_COLUMNS + ["distill_loss"]
    assert np.isfinite(history["distill_loss"]).all() and history["distill_loss"].between(0, 2).all()
    assert history["distill_loss"].iloc[-1] < history["distill_loss"].iloc[0]  # the student follows the teacher
    assert list(pd.read_csv(tmp_path / "run" / "log.csv").columns) == LOG_COLUMNS + ["distill_loss"]

    checkpoint = load_checkpoint(result.checkpoint)
    state = checkpoint["distill"]
    assert state["teacher"] == "stand_in" and state["projection"]["projection.weight"].shape == (8, 32)
    assert len(checkpoint["optimizer"]["param_groups"]) == 3  # backbone, head, P
    fresh = distill_module.DistillationLoss(32, 8).projection.weight
    assert not torch.allclose(state["projection"]["projection.weight"], fresh)
    model, loaded = load_backbone(result.checkpoint)  # evaluation loads the backbone as before
    assert loaded.distill_weight == 2.0 and model(torch.zeros(2, 3, 32, 32)).shape == (2, 32)

    plain = load_checkpoint(_run(_config(epochs=4, masked_share=0.5), synthetic_faces, tmp_path / "plain").checkpoint)
    assert plain["model"].keys() == checkpoint["model"].keys()
    assert any(not torch.equal(plain["model"][k], checkpoint["model"][k]) for k in plain["model"])
    np.testing.assert_array_equal(plain["history"][0]["lr"], history["lr"].iloc[0])


def test_distilled_run_resumes_exactly_and_checks_the_teacher(synthetic_faces, teacher_file, tmp_path):
    base = dict(epochs=2, masked_share=0.5, dropout=0.1, distill_weight=1.0, teacher_embeddings=str(teacher_file))
    full = _run(_config(**base), synthetic_faces, tmp_path / "full")
    columns = DETERMINISTIC + ["distill_loss"]

    _run(_config(**{**base, "epochs": 1}), synthetic_faces, tmp_path / "split")
    moved = tmp_path / "moved.npz"
    shutil.copy(teacher_file, moved)  # the file may move: its content is what counts
    resumed = _run(_config(**{**base, "teacher_embeddings": str(moved)}), synthetic_faces, tmp_path / "split", resume=True)
    pd.testing.assert_frame_equal(full.history[columns], resumed.history[columns])
    full_state, resumed_state = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    _assert_same_weights(full_state, resumed_state)
    assert torch.equal(full_state["distill"]["projection"]["projection.weight"],
                       resumed_state["distill"]["projection"]["projection.weight"])

    _run(_config(**base, max_steps=4), synthetic_faces, tmp_path / "steps")  # stopped inside epoch 2
    partial = load_checkpoint(tmp_path / "steps" / "last.pt")
    assert partial["partial"] is not None and partial["distill"]["sums"][1] > 0
    resumed = _run(_config(**base), synthetic_faces, tmp_path / "steps", resume=True)
    pd.testing.assert_frame_equal(full.history[columns], resumed.history[columns])

    csv, _ = synthetic_faces
    other = _write_teacher(tmp_path / "other.npz", _teacher_table(csv, seed=1))
    with pytest.raises(ConfigMismatchError, match="distilled from 'stand_in' targets"):
        _run(_config(**{**base, "epochs": 3, "teacher_embeddings": str(other)}), synthetic_faces, tmp_path / "full", resume=True)
    with pytest.raises(ConfigMismatchError, match="distill_weight: 1.0 -> 0.5"):
        _run(_config(**{**base, "distill_weight": 0.5}), synthetic_faces, tmp_path / "full", resume=True)


def test_missing_or_mismatched_teacher_file_stops_training(synthetic_faces, tmp_path):
    csv, root = synthetic_faces
    with pytest.raises(FileNotFoundError, match="teacher embeddings file not found.*embed_training_photos"):
        _run(_config(epochs=1, distill_weight=1.0, teacher_embeddings=str(tmp_path / "absent.npz")), synthetic_faces,
             tmp_path / "run")
    table = _teacher_table(csv)
    partial = _write_teacher(tmp_path / "partial.npz", dict(list(table.items())[:-3]))
    with pytest.raises(ValueError, match="3 of 24 training photos have no teacher embedding"):
        _run(_config(epochs=1, distill_weight=1.0, teacher_embeddings=str(partial)), synthetic_faces, tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.slow
def test_torchrun_ddp_with_distillation(synthetic_faces, teacher_file, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from test_train import REPO, _free_port

    csv, root = synthetic_faces
    config = _config(epochs=1, batch_size=4, distill_weight=1.0, teacher_embeddings=str(teacher_file))
    (tmp_path / "cfg.json").write_text(json.dumps(config.to_dict()))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "maskstudy.train", "--config", str(tmp_path / "cfg.json"),
           "--train-csv", str(csv), "--data-dir", str(root), "--out-dir", str(out), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["world_size"] == 2 and len(checkpoint["optimizer"]["param_groups"]) == 3
    log = pd.read_csv(out / "log.csv")
    assert list(log.columns) == LOG_COLUMNS + ["distill_loss"] and 0 < log["distill_loss"].iloc[0] < 2
