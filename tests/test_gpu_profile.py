"""The gpu profile, never yet run on a GPU, proven on the CPU: every network the notebooks train under it (IR-50 at
full width and 112 px with each attention block and margin head, the ViT and the hybrid at their gpu sizes, the
pretrained track) goes through its training step, checkpoint, evaluation embedding and CAM once, at the profile's
real shapes, on a handful of synthetic crops, so that no key, shape or memory-format error waits for a GPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from maskstudy.core.profiles import resolve_config, transformer_settings
from maskstudy.evaluate.embed import embed_crops
from maskstudy.explain import cell_centres_2d, compute_grid_cams, grid_to_crop
from maskstudy.faces.preprocess import load_crops
from maskstudy.models.dlib_resnet import weights_available
from maskstudy.study import design, experiment
from maskstudy.study import pretrained_track as track
from maskstudy.train.finetune import finetune

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

#: Tiny runs: one optimizer step of four crops, no held-out identities, the CPU.
TINY = {"train_max_steps": 1, "train_batch_size": 4, "train_epochs": 1, "train_val_identities": 0,
        "train_device": "cpu"}


@pytest.fixture(scope="module")
def gpu_config():
    return resolve_config("gpu", TINY)


def _networks(config) -> dict[str, dict]:
    """Every distinct network notebooks 03 and 04 train under ``config``: TrainConfig fields by backbone and head."""
    settings = {}
    for run in design.training_runs(config, teacher=True).values():
        settings.setdefault((run.settings["backbone"], run.settings["margin"], run.settings["distill_weight"] > 0),
                            run.settings)
    for family in design.TRANSFORMER_MODELS:
        one = transformer_settings(config, family)
        settings.setdefault((one["backbone"], one["margin"], False), one)
    return {f"{b}-{m}" + ("-guided" if g else ""): s for (b, m, g), s in settings.items()}


def test_the_gpu_profile_names_full_size_networks(gpu_config):
    networks = _networks(gpu_config)
    backbones = {s["backbone"] for s in networks.values()}
    assert {"ir50", "ir50_se", "ir50_cbam", gpu_config["vit_backbone"], gpu_config["hybrid_backbone"]} <= backbones
    assert {s["input_size"] for s in networks.values()} == {112}
    assert {s["margin"] for s in networks.values()} >= {"arcface", *gpu_config["margin_losses"]}


def test_every_gpu_profile_network_trains_embeds_and_explains(gpu_config, synthetic_faces, tmp_path):
    csv, root = synthetic_faces
    crops = load_crops([root / "synth" / "aligned" / f"id{i}/img0.jpg" for i in range(2)])
    references = load_crops([root / "synth" / "aligned" / f"id{i}/img1.jpg" for i in range(2)])
    for name, settings in _networks(gpu_config).items():
        if settings["distill_weight"] > 0:
            continue  # the guided students need a teacher pass; their network and step are the unguided ones'
        result = experiment.train_network(settings, csv, root, tmp_path / name)
        assert np.isfinite(result.history["loss"]).all(), name
        model, input_size = experiment.load_network(result.checkpoint)
        assert input_size == 112
        embeddings = embed_crops(model, crops, input_size)
        assert embeddings.shape == (2, settings["embedding_size"]) and np.isfinite(embeddings).all(), name
        maps = compute_grid_cams(model, crops, references, input_size)
        assert maps.shape[0] == 2 and np.isfinite(maps).all(), name


@pytest.mark.skipif(not weights_available(), reason="the pretrained track needs the 'teacher' extra")
def test_gpu_profile_pretrained_track_steps(gpu_config, synthetic_faces, tmp_path):
    csv, root = synthetic_faces
    runs = track.track_runs(gpu_config)
    assert sum(r.kind == track.FINETUNED for r in runs.values()) == 6 * len(design.seeds(gpu_config))  # whole, upper
    rows = track.training_rows(csv, root, gpu_config["pretrained_twins"])
    for run in runs.values():
        if run.config is None or run.seed != gpu_config["seed"]:
            continue
        config = dataclasses.replace(run.config, batch_size=4, epochs=1, warmup_steps=1)
        features = track.training_features(rows, root, tmp_path / "features", config.frozen_stages,
                                           config.blank_lower, val_identities=2, progress=False)
        result = finetune(config, features.clean[:8], features.masked[:8], features.labels[:8],
                          track.checkpoint(tmp_path, run.name), features.validation, log=lambda *_: None,
                          progress=False)
        model = result.model
        crops = load_crops([root / "synth" / "aligned" / f"id{i}/img0.jpg" for i in range(2)])
        with torch.no_grad():
            assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 128)
        maps = compute_grid_cams(model, crops, crops[::-1].copy(), 112)
        assert maps.shape == (2, 17, 17)
        assert grid_to_crop(maps, cell_centres_2d(model, 112), 112).shape == (2, 112, 112)
