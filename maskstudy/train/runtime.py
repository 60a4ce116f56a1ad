"""Where a run trains: device, processes (``torchrun``), mixed precision, memory format, loader workers, and the
process-wide torch settings a run changes and restores."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..core.allocator import keep_freed_memory
from .config import TrainConfig


@dataclass
class Runtime:
    """The resolved runtime of one process: its device, rank and the settings "auto" stood for."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owns_process_group: bool = False
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    num_workers: int = 0
    deterministic: bool = True

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def resolve_runtime(config: TrainConfig) -> Runtime:
    """The runtime of this process from ``config`` and the ``torchrun`` environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``); joins the process group when there are several processes."""
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={config.device!r} but CUDA is not available")
        if world_size > 1 or device.index is None:
            device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    owns = False
    if world_size > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            owns = True
        rank, world_size = dist.get_rank(), dist.get_world_size()
    cuda = device.type == "cuda"
    amp = config.amp
    if amp == "auto":
        amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "none"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    if amp_dtype is torch.float16 and not cuda:
        raise ValueError("amp='fp16' needs CUDA; use 'bf16' or 'none' on the CPU")
    # "auto": channels_last everywhere: training steps measured 1.28x faster on the CPU (bench/bench_backbones.py).
    # The one CPU shape torch 2.14 got wrong in channels_last (a strided 1x1 conv's backward with < 16 input
    # channels and an odd batch corrupts the heap) is avoided by models.iresnet.ShortcutConv; the profiles' shapes
    # are run in a subprocess by tests/test_channels_last.py
    channels_last = True if config.channels_last == "auto" else bool(config.channels_last)
    if config.num_workers == "auto":
        workers = max(4, min(8, (os.cpu_count() or 4) // max(1, local_world_size))) if cuda else 0
    else:
        workers = int(config.num_workers)
    deterministic = (not cuda) if config.deterministic == "auto" else bool(config.deterministic)
    return Runtime(device, rank, world_size, local_rank, local_world_size, owns, amp_dtype, channels_last,
                    workers, deterministic)


def set_deterministic(mode: bool, warn_only: bool, inductor: bool = False) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=...)``. Unless Inductor is in use (``compile``)
    or already imported, the same global flag is set without the public function's import of
    ``torch._inductor`` (about 2 s per process)."""
    if inductor or "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


@contextlib.contextmanager
def process_settings(config: TrainConfig, rt: Runtime) -> Iterator[None]:
    """The run's torch settings inside the block (CPU threads, deterministic algorithms or cudnn benchmark),
    restored afterwards; the process group is destroyed at the end when the run created it. On the CPU the C
    allocator keeps freed memory for reuse (:func:`~maskstudy.core.allocator.keep_freed_memory`; process-wide).

    Deterministic algorithms come without torch's filling of every new tensor with NaN
    (``torch.utils.deterministic.fill_uninitialized_memory``, on by default with them): a debugging aid
    that changes no result of a correct program and cost about 10 % of a CPU training step (measured).
    """
    previous_det = (torch.are_deterministic_algorithms_enabled(),
                    torch.is_deterministic_algorithms_warn_only_enabled())
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    previous_benchmark = torch.backends.cudnn.benchmark
    previous_threads = torch.get_num_threads()
    try:
        if rt.device.type == "cpu":
            keep_freed_memory()  # process-wide and kept: see maskstudy.core.allocator
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if rt.deterministic:
            set_deterministic(True, warn_only=True, inductor=config.compile)
            torch.utils.deterministic.fill_uninitialized_memory = False
        elif rt.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        if rt.deterministic:
            set_deterministic(*previous_det, inductor=config.compile)
            torch.utils.deterministic.fill_uninitialized_memory = previous_fill
        torch.backends.cudnn.benchmark = previous_benchmark
        if config.num_threads:
            torch.set_num_threads(previous_threads)
        if rt.owns_process_group:
            import torch.distributed as dist

            dist.destroy_process_group()
