"""Training loop: smoke run, determinism, exact resume, checkpoint format, sampling, DDP (torchrun, gloo)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maskstudy.train import (
    CHECKPOINT_FORMAT,
    LOG_COLUMNS,
    ConfigMismatchError,
    EpochPlan,
    FaceCropDataset,
    TrainConfig,
    augment_batch,
    epoch_order,
    epoch_plan,
    learning_rate,
    load_backbone,
    load_checkpoint,
    split_identities,
    train,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
DETERMINISTIC = ["epoch", "step", "loss", "train_acc", "lr", "val_acc"]  # log columns without timings


def _config(**overrides) -> TrainConfig:
    values = dict(backbone="ir18", width=0.125, input_size=32, embedding_size=32, scale=16.0, epochs=2,
                  batch_size=8, lr=0.1, warmup_epochs=1, sampler="uniform", val_identities=0, seed=0,
                  device="cpu")  # exact equality is a CPU promise (also where a GPU is present)
    values.update(overrides)
    return TrainConfig(**values)


def _run(config, synthetic_faces, out_dir, **kw):
    csv, root = synthetic_faces
    return train(config, csv, root, out_dir, progress=False, log=None, **kw)


def _state(path: Path) -> dict:
    return load_checkpoint(path)


def _assert_same_weights(a: dict, b: dict) -> None:
    for part in ("model", "head"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"


# ---------------------------------------------------------------------------------------------


def test_config_round_trip_and_unknown_keys():
    config = _config(masked_share=0.25, max_steps=3)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown TrainConfig setting.*'epoch'.*did you mean 'epochs'"):
        TrainConfig.from_dict({**config.to_dict(), "epoch": 3})
    with pytest.raises(ValueError, match="sampler"):
        TrainConfig(sampler="random")
    with pytest.raises(ValueError, match="val_identities"):
        TrainConfig(val_identities=2.5)


def test_train_config_defaults_are_the_base_profile_and_every_field_a_parameter():
    import dataclasses

    from maskstudy.core.profiles import BASE, PROFILES, TRAIN_KEYS, resolve_config, train_settings

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert sorted(TRAIN_KEYS.values()) == sorted(fields)  # one profile key per field, and back
    assert TrainConfig().to_dict() == {field: BASE[key] for key, field in TRAIN_KEYS.items()}
    for profile in PROFILES:  # a variant's settings are every field, from the profile
        config = resolve_config(profile)
        settings = train_settings(config, "se")
        assert TrainConfig.from_dict(settings).to_dict() == {**{f: config[k] for k, f in TRAIN_KEYS.items()},
                                                             "backbone": config["train_backbone"] + "_se"}
    overridden = resolve_config("smoke", {"train_dropout": 0.2, "train_grad_clip": None, "train_sampler": "balanced",
                                          "train_schedule": "poly", "train_color_jitter": 0.0, "train_num_threads": 1,
                                          "train_channels_last": False, "train_num_workers": 2})
    settings = train_settings(overridden)
    assert (settings["dropout"], settings["grad_clip"], settings["sampler"], settings["schedule"]) == \
        (0.2, None, "balanced", "poly")
    assert TrainConfig.from_dict(settings).num_workers == 2


def test_train_parameters_are_type_checked_like_their_fields():
    """Every ``train_<field>`` accepts exactly the types of its TrainConfig annotation (a float field takes an
    int too), so a wrong -p value stops the pipeline at its start."""
    import dataclasses

    from maskstudy.core.profiles import TRAIN_KEYS, _allowed_types, resolve_config

    names = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "None": type(None)}
    samples = {int: 3, float: 0.5, str: "x", bool: True, dict: {}, type(None): None, list: [1]}
    for key, field in TRAIN_KEYS.items():
        annotation = {f.name: f.type for f in dataclasses.fields(TrainConfig)}[field]
        expected = {names[part.strip()] for part in annotation.split("|")}
        if float in expected:
            expected.add(int)
        assert _allowed_types(key) == expected, key
        for kind, value in samples.items():
            if kind not in expected:
                with pytest.raises(ValueError, match=key):
                    resolve_config("smoke", {key: value})


def test_smoke_training_lowers_loss_and_writes_outputs(synthetic_faces, tmp_path):
    out = tmp_path / "run"
    result = _run(_config(epochs=4, val_identities=2, masked_share=0.5), synthetic_faces, out)
    history = result.history
    assert list(history.columns) == LOG_COLUMNS
    assert len(history) == 4 and history["epoch"].tolist() == [1, 2, 3, 4]
    assert history["loss"].iloc[0] > history["loss"].iloc[-1]
    assert np.isfinite(history["loss"]).all()
    assert history["val_acc"].between(0, 1).all()  # 2 held-out identities give masked-unmasked pairs
    assert history["step"].iloc[-1] == 4 * 2  # 4 ids x 4 images = 16 samples, batches of 8
    assert result.checkpoint == out / "last.pt" and result.images_per_s > 0
    for name in ("log.csv", "last.pt", "config.json"):
        assert (out / name).is_file()
    assert not list(out.glob("*.tmp"))
    logged = pd.read_csv(out / "log.csv")
    assert list(logged.columns) == LOG_COLUMNS
    np.testing.assert_allclose(logged["loss"], history["loss"], rtol=1e-12)
    assert TrainConfig.from_json(out / "config.json") == _config(epochs=4, val_identities=2, masked_share=0.5)


def test_adamw_and_backbone_kwargs_train_a_vit(synthetic_faces, tmp_path):
    config = _config(backbone="vit_tiny", width=0.25, backbone_kwargs={"depth": 1}, optimizer="adamw", lr=3e-3,
                     weight_decay=0.05, epochs=4)
    result = _run(config, synthetic_faces, tmp_path / "vit")
    assert result.history["loss"].iloc[0] > result.history["loss"].iloc[-1]
    checkpoint = _state(result.checkpoint)
    assert checkpoint["config"]["backbone_kwargs"] == {"depth": 1} and checkpoint["config"]["optimizer"] == "adamw"
    assert "exp_avg" in str(checkpoint["optimizer"]["state"][0].keys())  # an AdamW state, resumable
    with pytest.raises(ValueError, match="optimizer must be one of"):
        _config(optimizer="lbfgs")


def test_train_or_restart_starts_over_when_the_recipe_changed(synthetic_faces, tmp_path):
    from maskstudy.train import train_or_restart

    csv, root = synthetic_faces
    first = train_or_restart(_config(epochs=1), csv, root, tmp_path / "run", progress=False, log=None)
    messages = []
    second = train_or_restart(_config(epochs=1, lr=0.05), csv, root, tmp_path / "run", progress=False,
                              log=messages.append)
    assert any("lr: 0.1 -> 0.05" in m and "training from scratch" in m for m in messages)
    assert _state(second.checkpoint)["config"]["lr"] == 0.05 and len(second.history) == 1
    again = train_or_restart(_config(epochs=1, lr=0.05), csv, root, tmp_path / "run", progress=False, log=None)
    pd.testing.assert_frame_equal(again.history, second.history)  # the same recipe resumes (here: is done)
    assert len(first.history) == 1


def test_a_new_start_removes_temp_files_a_killed_checkpoint_write_left(synthetic_faces, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")  # what a kill inside torch.save leaves
    _run(_config(epochs=1), synthetic_faces, out)
    assert not list(out.glob("*.tmp")) and (out / "last.pt").is_file()


def test_same_seed_gives_identical_history_and_weights(synthetic_faces, tmp_path):
    config = _config(epochs=2, masked_share=0.5, sampler="capped", max_per_identity=3, dropout=0.1)
    a = _run(config, synthetic_faces, tmp_path / "a")
    b = _run(config, synthetic_faces, tmp_path / "b")
    pd.testing.assert_frame_equal(a.history[DETERMINISTIC], b.history[DETERMINISTIC])
    _assert_same_weights(_state(a.checkpoint), _state(b.checkpoint))
    c = _run(_config(epochs=2, masked_share=0.5, sampler="capped", max_per_identity=3, dropout=0.1, seed=1),
             synthetic_faces, tmp_path / "c")
    assert not np.array_equal(a.history["loss"], c.history["loss"])


def test_resume_continues_exactly(synthetic_faces, tmp_path):
    base = dict(epochs=2, masked_share=0.5, dropout=0.1, schedule="cosine")
    full = _run(_config(**base), synthetic_faces, tmp_path / "full")

    # 1 epoch, then the same run extended to 2 epochs (epoch 1 is warmup, independent of the total).
    _run(_config(**{**base, "epochs": 1}), synthetic_faces, tmp_path / "split")
    resumed = _run(_config(**base), synthetic_faces, tmp_path / "split", resume=True)
    pd.testing.assert_frame_equal(full.history[DETERMINISTIC], resumed.history[DETERMINISTIC])
    _assert_same_weights(_state(full.checkpoint), _state(resumed.checkpoint))

    # Stopped mid-epoch by max_steps (step 4 of 6: 1 of 3 batches into epoch 2), then resumed with the limit lifted.
    _run(_config(**base, max_steps=4), synthetic_faces, tmp_path / "steps")
    partial = _state(tmp_path / "steps" / "last.pt")
    assert partial["step"] == 4 and partial["epoch"] == 1 and partial["partial"]["batch"] == 1
    resumed = _run(_config(**base), synthetic_faces, tmp_path / "steps", resume=True)
    pd.testing.assert_frame_equal(full.history[DETERMINISTIC], resumed.history[DETERMINISTIC])
    _assert_same_weights(_state(full.checkpoint), _state(resumed.checkpoint))

    # A finished run returns at once with its history.
    again = _run(_config(**base), synthetic_faces, tmp_path / "full", resume=True)
    pd.testing.assert_frame_equal(full.history[DETERMINISTIC], again.history[DETERMINISTIC])


def test_checkpoint_loads_weights_only_and_mismatch_is_refused(synthetic_faces, tmp_path):
    config = _config(epochs=1, max_steps=1)
    result = _run(config, synthetic_faces, tmp_path)
    raw = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert raw["format"] == CHECKPOINT_FORMAT
    assert raw["config"]["num_classes"] == 6 and raw["config"]["class_names"] == [f"synth/id{i}" for i in range(6)]
    assert {"model", "head", "optimizer", "scheduler", "scaler", "rng", "epoch", "step", "history"} <= set(raw)
    assert set(raw["rng"]) >= {"torch", "numpy", "python"}
    model, loaded = load_backbone(result.checkpoint)
    assert loaded == config and not model.training
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 32)

    with pytest.raises(ConfigMismatchError, match=r"lr: 0\.1 -> 0\.05.*another out_dir.*resume=False"):
        _run(_config(epochs=1, max_steps=1, lr=0.05), synthetic_faces, tmp_path)
    # A runtime setting may change; resume=False starts over.
    _run(_config(epochs=1, max_steps=2, checkpoint_every=2), synthetic_faces, tmp_path)
    assert _state(result.checkpoint)["step"] == 2
    _run(_config(epochs=1, max_steps=1, lr=0.05), synthetic_faces, tmp_path, resume=False)
    assert _state(result.checkpoint)["config"]["lr"] == 0.05

    # Stopping by max_steps at an epoch's end writes a checkpoint even between checkpoint_every epochs.
    _run(_config(epochs=3, max_steps=3, checkpoint_every=2), synthetic_faces, tmp_path / "every")
    stopped = _state(tmp_path / "every" / "last.pt")
    assert stopped["step"] == 3 and stopped["epoch"] == 1 and stopped["partial"] is None


def test_runtime_options_on_cpu(synthetic_faces, tmp_path):
    """The paths taken on GPUs, as far as a CPU runs them: autocast, channels_last, loader workers
    decoding on the fly (cache_limit_gb=0); runtime settings may change on resume."""
    config = _config(epochs=1, amp="bf16", channels_last=True, cache_limit_gb=0.0, num_workers=1, num_threads=1,
                     masked_share=0.5, val_identities=2)
    result = _run(config, synthetic_faces, tmp_path)
    assert np.isfinite(result.history["loss"]).all() and result.history["val_acc"].between(0, 1).all()
    assert _state(result.checkpoint)["step"] == 2
    resumed = _run(_config(epochs=2, masked_share=0.5, val_identities=2), synthetic_faces, tmp_path)
    assert resumed.history["epoch"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        _run(_config(amp="fp16"), synthetic_faces, tmp_path / "fp16")


def test_masked_share_controls_twin_sampling(synthetic_faces):
    csv, root = synthetic_faces
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    gen = torch.Generator().manual_seed(0)
    indices = np.arange(len(rows)).repeat(10)
    never = FaceCropDataset(rows, root, masked_share=0.0)
    assert not never.choose_masked(indices, gen).any() and never._masked is None
    always = FaceCropDataset(rows, root, masked_share=1.0)
    assert always.choose_masked(indices, gen).all()
    half = FaceCropDataset(rows, root, masked_share=0.5)
    assert 0.35 < half.choose_masked(indices, gen).mean() < 0.65
    # the chosen crop is the masked twin: its lower half is flat grey
    crops = always.crops(np.array([0, 1]), np.array([True, False]))
    assert crops[0, 70:, :].std() < 5 and crops[1, 70:, :].std() > 10
    lazy = FaceCropDataset(rows, root, masked_share=1.0, cache_limit_gb=0.0)
    assert not lazy.cached
    np.testing.assert_array_equal(lazy.crops(np.array([0, 1]), np.array([True, False])), crops)
    plan = epoch_plan(never, _config(masked_share=0.0), 0)
    assert not plan.masked.any()
    plan = epoch_plan(always, _config(masked_share=1.0), 0)
    assert plan.masked.all()


def test_samplers_cap_and_balance():
    labels = np.repeat(np.arange(5), [1, 2, 3, 10, 30])  # long-tailed
    order = epoch_order(labels, "capped", seed=0, epoch=0, max_per_identity=4)
    assert np.bincount(labels[order]).tolist() == [1, 2, 3, 4, 4]
    assert len(set(order.tolist())) == len(order)  # no repeats
    other = epoch_order(labels, "capped", seed=0, epoch=1, max_per_identity=4)
    assert not np.array_equal(np.sort(order), np.sort(other))  # a fresh subset each epoch
    np.testing.assert_array_equal(order, epoch_order(labels, "capped", seed=0, epoch=0, max_per_identity=4))

    balanced = epoch_order(labels, "balanced", seed=0, epoch=0, max_per_identity=6)
    assert np.bincount(labels[balanced]).tolist() == [6] * 5
    per_id = epoch_order(labels, "balanced", seed=3, epoch=2)  # k = mean images per identity = 9
    assert np.bincount(labels[per_id]).tolist() == [9] * 5
    assert len(set(per_id[labels[per_id] == 4].tolist())) == 9  # no repeats inside a large identity

    uniform = epoch_order(labels, "uniform", seed=0, epoch=0)
    assert sorted(uniform.tolist()) == list(range(len(labels)))


def test_augmentation_and_schedule():
    crops = torch.randint(0, 256, (3, 112, 112, 3), dtype=torch.uint8)
    plain = augment_batch(crops, 32)
    flipped = augment_batch(crops, 32, flip=torch.tensor([True, False, False]),
                            brightness=torch.ones(3), contrast=torch.ones(3))
    assert plain.shape == (3, 3, 32, 32)
    torch.testing.assert_close(flipped[0], plain[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(flipped[1:], plain[1:], atol=1e-5, rtol=0)
    brighter = augment_batch(crops, 32, brightness=torch.full((3,), 1.1))
    assert brighter.min() >= -1 and brighter.max() <= 1 and brighter.mean() > plain.mean()

    lrs = [learning_rate(s, 0.1, 10, 100, "cosine") for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-3
    assert learning_rate(55, 0.1, 10, 100, "poly") == pytest.approx(0.1 * 0.5**2)



def test_training_step_in_channels_last_and_fused_backward_changes_losses_only_by_rounding():
    """The speed-ups of the CPU training step (channels_last, the fused backward of PReLU / SE / CBAM) against
    the contiguous format with autograd's reference backward: the same seed gives the same loss curve up to
    float rounding."""
    import contextlib

    from maskstudy.models.attention import reference_backward
    from maskstudy.train.runtime import process_settings, resolve_runtime
    from maskstudy.train.step import build_training_step

    g = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (4, 16, 112, 112, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 6, (4, 16), generator=g).numpy()
    plans = [EpochPlan(np.arange(16), np.zeros(16, bool), (torch.rand(16, generator=g) < 0.5).numpy(),
                       np.full(16, 1.05, np.float32), np.full(16, 0.95, np.float32)) for _ in range(4)]
    for backbone in ("ir18_se", "ir18_cbam"):
        curves = {}
        for channels_last, fused in ((False, False), (True, False), (False, True), (True, True)):
            config = _config(backbone=backbone, batch_size=16, channels_last=channels_last)
            rt = resolve_runtime(config)
            with process_settings(config, rt), contextlib.nullcontext() if fused else reference_backward():
                step = build_training_step(config, rt, num_classes=6)
                step.train()
                curves[channels_last, fused] = [
                    float(step(crops[k], labels[k], plans[k], lr)[0]) / 16 for k, lr in enumerate((0.02, 0.05, 0.08,
                                                                                                  0.1))]
        for curve in curves.values():
            np.testing.assert_allclose(curve, curves[False, False], rtol=1e-4)


def test_runtime_defaults_channels_last_and_restores_process_settings():
    from maskstudy.train.runtime import process_settings, resolve_runtime

    # "auto": on, the CPU included (ShortcutConv avoids torch 2.14's one bad channels_last shape there)
    assert resolve_runtime(_config()).channels_last
    assert resolve_runtime(_config(channels_last=True)).channels_last
    assert not resolve_runtime(_config(channels_last=False)).channels_last
    fill = torch.utils.deterministic.fill_uninitialized_memory
    deterministic = torch.are_deterministic_algorithms_enabled()
    config = _config()
    with process_settings(config, resolve_runtime(config)):
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory  # no NaN fill of every new tensor
    assert torch.utils.deterministic.fill_uninitialized_memory == fill
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_split_holds_out_identities(synthetic_faces):
    csv, _ = synthetic_faces
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    rows = pd.concat([rows, rows.iloc[[0]].assign(identity="lonely", aligned="lonely/x.jpg")])
    train_rows, val_rows = split_identities(rows, _config(val_identities=0.34))
    assert "lonely" not in set(train_rows["identity"])  # fewer than min_images_per_identity
    assert val_rows["identity"].nunique() == 2 and len(val_rows) == 8
    assert not set(val_rows["identity"]) & set(train_rows["identity"])
    again, _ = split_identities(rows, _config(val_identities=2))
    pd.testing.assert_frame_equal(again, train_rows)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_ddp_two_gloo_processes(synthetic_faces, tmp_path):
    csv, root = synthetic_faces
    config = _config(epochs=1, batch_size=4)
    (tmp_path / "cfg.json").write_text(json.dumps(config.to_dict()))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "maskstudy.train", "--config", str(tmp_path / "cfg.json"),
           "--train-csv", str(csv), "--data-dir", str(root), "--out-dir", str(out), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.pt", "log.csv"]
    assert proc.stdout.count('"checkpoint"') == 1  # only rank 0 reports
    checkpoint = load_checkpoint(out / "last.pt")
    assert checkpoint["world_size"] == 2
    assert checkpoint["step"] == 3  # 24 samples / (2 ranks x 4) per step
    log = pd.read_csv(out / "log.csv")
    assert log.shape == (1, len(LOG_COLUMNS)) and math.isfinite(log["loss"].iloc[0])
    assert checkpoint["config"]["num_classes"] == 6
