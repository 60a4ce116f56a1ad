"""torch.compile with an eager fallback: no compiler, a failing compilation, and the compiled numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from maskstudy.core import compilation
from maskstudy.core.compilation import CompiledOrEager, compiler_missing
from maskstudy.models import build_backbone, fold_batchnorm
from maskstudy.train import TrainConfig
from maskstudy.train.data import EpochPlan
from maskstudy.train.runtime import process_settings, resolve_runtime
from maskstudy.train.step import build_training_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.PReLU(8), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 4))


@pytest.fixture
def no_compiler():
    """Inductor's compiler search list points at a file that does not exist."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"cpp.cxx": ("/nonexistent/bin/c++",)}):
        yield


def test_missing_compiler_runs_eagerly_with_one_log_line(no_compiler):
    assert "no C++ compiler" in compiler_missing()
    lines: list[str] = []
    net = small_net().eval()
    wrapped = CompiledOrEager(net, "test net", log=lines.append)
    assert not wrapped.is_compiled and len(lines) == 1
    assert "test net" in lines[0] and "running eagerly" in lines[0]
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):
        torch.testing.assert_close(wrapped(x), net(x), rtol=0, atol=0)
    assert len(lines) == 1
    assert list(wrapped.state_dict()) == [f"module.{k}" for k in net.state_dict()]


def test_failing_compilation_falls_back_once(monkeypatch):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("the compiler crashed\nsecond line")

    monkeypatch.setattr(compilation, "compiler_missing", lambda: None)
    torch._dynamo.reset()
    lines: list[str] = []
    net = small_net().eval()
    wrapped = CompiledOrEager(net, "test net", log=lines.append, backend=broken_backend)
    assert wrapped.is_compiled
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), net(x), rtol=0, atol=0)
        wrapped(x)
    assert not wrapped.is_compiled and len(lines) == 1
    assert "compilation failed" in lines[0] and "the compiler crashed" in lines[0] and "second line" not in lines[0]


def test_training_step_with_compile_and_no_compiler_trains_eagerly(no_compiler, capsys):
    config = TrainConfig.from_dict({"backbone": "ir18", "width": 0.125, "input_size": 32, "batch_size": 4,
                                    "embedding_size": 16, "compile": True, "device": "cpu"})
    rt = resolve_runtime(config)
    step = build_training_step(config, rt, num_classes=3)
    crops = torch.randint(0, 256, (4, 112, 112, 3), dtype=torch.uint8)
    plan = EpochPlan(order=np.arange(4), masked=np.zeros(4, bool), flip=np.zeros(4, bool),
                     brightness=np.ones(4, np.float32),
                     contrast=np.ones(4, np.float32))
    step.train()
    with process_settings(config, rt):
        totals = step(crops, np.array([0, 1, 2, 0]), plan, 1e-3)
    assert torch.isfinite(totals).all() and totals[2] == 4
    assert "torch.compile unavailable for the training backbone" in capsys.readouterr().err


@pytest.mark.skipif(compiler_missing() is not None, reason="no C++ compiler for Inductor")
def test_compiled_backbone_gives_the_eager_numbers_on_a_fixed_batch():
    """Inductor's kernels against eager PyTorch: evaluation (BatchNorm folded) and a training forward + backward."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = build_backbone("ir18", width=0.125, input_size=32, embedding_size=16)
    x = torch.randn(4, 3, 32, 32)
    folded = fold_batchnorm(net.eval())
    lines: list[str] = []
    compiled = CompiledOrEager(folded, "test backbone", log=lines.append, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), folded(x), rtol=1e-4, atol=1e-5)
    assert compiled.is_compiled and compiled.compile_seconds is not None and not lines

    net.train()
    trained = CompiledOrEager(net, "test backbone", log=lines.append, dynamic=False)
    out_eager = net(x)
    out_eager.square().sum().backward()
    eager_grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    out = trained(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, out_eager, rtol=1e-4, atol=1e-5)
    grads = {name: p.grad for name, p in net.named_parameters() if p.grad is not None}
    assert grads.keys() == eager_grads.keys() and len(grads) > 10
    for name, want in eager_grads.items():
        torch.testing.assert_close(grads[name], want, rtol=1e-3, atol=1e-4, msg=name)
    assert trained.is_compiled and not lines
