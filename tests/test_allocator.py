"""The C allocator keeps freed blocks for reuse (maskstudy.core.allocator), checked in fresh processes."""

import subprocess
import sys

import pytest

from maskstudy.core import allocator

# Training steps of the cpu profile's backbone (IR-ResNet-18 at width 0.25, 56 px, batch 64, channels-last): with
# glibc's defaults its tens of MB of activations go back to the system after every step and fault in again.
STEPS = """
import resource, sys, torch
from maskstudy.core.allocator import keep_freed_memory
from maskstudy.models import build_backbone
torch.manual_seed(0)
torch.set_num_threads(1)
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
model = build_backbone("ir18", width=0.25, input_size=56).to(memory_format=torch.channels_last)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
x = torch.randn(64, 3, 56, 56).contiguous(memory_format=torch.channels_last)
def step():
    optimizer.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
    optimizer.step()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


def _faults_per_step(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True,
                         timeout=300).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_spares_the_page_faults():
    applied, kept = _faults_per_step("keep")
    if applied != "True":
        pytest.skip("not glibc")
    _, default = _faults_per_step("default")
    first_stage_map = 64 * 16 * 56 * 56 * 4 // 4096  # pages of one first-stage activation (12.8 MB)
    assert default > first_stage_map  # the defaults fault in more than a whole activation map every step
    assert kept < default / 5


def test_keep_freed_memory_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(allocator.ENV_SWITCH, "0")
    assert allocator.keep_freed_memory() is False
    assert allocator.keep_freed_memory() is False  # once per process
