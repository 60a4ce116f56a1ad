"""Channels-last training on the CPU is safe at every shape the profiles train.

torch 2.14's CPU backward of a strided 1x1 convolution in channels_last corrupts the heap for inputs under 16
channels with an odd batch and more than one thread (``double free``, then an abort, or silent damage). The
IR-ResNet's shortcut computes that convolution as subsampling + a stride-1 1x1 convolution
(:class:`maskstudy.models.iresnet.ShortcutConv`). A heap corruption kills the process, so the shapes run in a
subprocess with two threads.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from maskstudy.core.profiles import PROFILES, resolve_config, train_settings, transformer_settings
from maskstudy.models.iresnet import ShortcutConv

#: Batches the training loop can meet: even ones and the odd tails of small data-size subsets.
BATCHES = (2, 3, 11)

TRAIN_STEPS = r"""
import json, sys, torch
from maskstudy.models import build_backbone
torch.manual_seed(0)
torch.set_num_threads(2)
for case in json.loads(sys.argv[1]):
    model = build_backbone(case["backbone"], width=case["width"], input_size=case["input_size"],
                           **case["kwargs"]).to(memory_format=torch.channels_last)
    for batch in case["batches"]:
        x = torch.randn(batch, 3, case["input_size"], case["input_size"]).contiguous(memory_format=torch.channels_last)
        for _ in range(2):
            model(x).square().mean().backward()
    print("ok", case["backbone"], case["width"], case["input_size"], flush=True)
"""


def _profile_shapes() -> list[dict]:
    """Each distinct (backbone, width, input size, builder arguments) the profiles train in notebooks 03 and 04."""
    cases = {}
    for profile in PROFILES:
        config = resolve_config(profile)
        for attention in config["attention_variants"]:
            settings = train_settings(config, attention)
            cases[(settings["backbone"], settings["width"], settings["input_size"], "{}")] = {}
        for family in ("vit", "hybrid"):
            settings = transformer_settings(config, family)
            kwargs = settings.get("backbone_kwargs") or {}
            cases[(settings["backbone"], settings["width"], settings["input_size"], json.dumps(kwargs))] = kwargs
    return [{"backbone": b, "width": w, "input_size": s, "kwargs": kwargs, "batches": list(BATCHES)}
            for (b, w, s, _), kwargs in cases.items()]


def _run(cases: list[dict]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TRAIN_STEPS, json.dumps(cases)], capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_channels_last_training_steps_survive_every_profile_shape():
    cases = _profile_shapes()
    assert {c["input_size"] for c in cases} >= {32, 56, 112}  # smoke, cpu and gpu sizes are all here
    assert any(c["width"] == 0.125 for c in cases)  # the width whose shortcut has 8 input channels
    result = _run(cases)
    assert result.returncode == 0, f"channels_last training crashed:\n{result.stdout}\n{result.stderr[-2000:]}"
    assert result.stdout.count("ok") == len(cases)


def test_the_shape_torch_got_wrong_now_runs():
    """The smoke profile's ir18 at width 0.125 with a batch of 11: an abort before ShortcutConv."""
    result = _run([{"backbone": "ir18", "width": 0.125, "input_size": 32, "kwargs": {}, "batches": [11, 3]}])
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_shortcut_conv_equals_the_strided_convolution(stride, channels_last):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 1, stride=stride, bias=False)
    shortcut = ShortcutConv(8, 16, 1, stride=stride, bias=False)
    shortcut.load_state_dict(conv.state_dict())  # same parameters, so old checkpoints load
    x = torch.randn(5, 8, 15, 15)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = conv(x1), shortcut(x2)
    assert y1.shape == y2.shape
    torch.testing.assert_close(y2, y1, rtol=0, atol=1e-6)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(shortcut.weight.grad, conv.weight.grad, rtol=1e-5, atol=1e-4)


def test_shortcut_conv_refuses_other_kernels():
    with pytest.raises(ValueError, match="1x1"):
        ShortcutConv(8, 16, 3, stride=2, padding=1)
