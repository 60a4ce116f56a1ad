"""``torch.compile`` (Inductor) where it can run, eager PyTorch where it cannot: one log line, never a crash.

Inductor writes C++ (CPU) or Triton (GPU) kernels and builds them with the machine's C++ compiler at run time.
It fuses the memory-bound passes a convolution network spends much of its CPU time in (BatchNorm, PReLU, the
attention blocks' reference forms) but costs seconds to minutes of compilation, and it fails on a machine
without a compiler. :class:`CompiledOrEager` tries it and, when the compiler is missing or compilation fails,
says so once and runs the module as it is (the same numbers, up to float rounding).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
from torch import nn


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def compiler_missing() -> str | None:
    """Why Inductor cannot build CPU kernels here (no C++ compiler found: ``CXX`` or its search list), or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as error:  # torch raises RuntimeError / its own errors, varying by version
        return f"no C++ compiler for Inductor ({_first_line(error)})"
    return None


def _first_line(error: BaseException) -> str:
    """The error's type and the first line of what caused it (Dynamo wraps a backend's error in its own)."""
    cause, seen = error, {id(error)}
    while True:
        inner = getattr(cause, "inner_exception", None) or cause.__cause__
        if inner is None or id(inner) in seen:
            break
        cause = inner
        seen.add(id(cause))
    text = str(cause).strip().splitlines()
    line = f"{type(cause).__name__}: {text[0] if text else ''}".strip().rstrip(":")
    return line if cause is error else f"{type(error).__name__} from {line}"


class CompiledOrEager(nn.Module):
    """``module`` called through ``torch.compile(module, **options)``, or eagerly when that cannot run.

    The first call compiles (its wall time is kept in :attr:`compile_seconds`). When no C++ compiler is found, or
    compilation raises, one line goes to ``log`` (``what`` names the module) and every call from then on is eager.
    ``module`` stays the registered child: its parameters, state dict and training mode are the wrapper's.
    """

    def __init__(self, module: nn.Module, what: str = "model", log: Callable[[str], None] = _to_stderr,
                 **options) -> None:
        super().__init__()
        self.module = module
        self.what = what
        self.log = log
        self.compile_seconds: float | None = None
        self.fallback_reason: str | None = None
        reason = compiler_missing()
        compiled = None if reason else torch.compile(module, **options)
        object.__setattr__(self, "_compiled", compiled)  # not a child: it wraps ``module`` itself
        if reason:
            self._fall_back(reason)

    @property
    def is_compiled(self) -> bool:
        """Whether calls go through the compiled module (False after a fallback)."""
        return self._compiled is not None

    def _fall_back(self, reason: str) -> None:
        object.__setattr__(self, "_compiled", None)
        self.fallback_reason = reason
        self.log(f"torch.compile unavailable for the {self.what}, running eagerly: {reason}")

    def forward(self, *args, **kwargs):
        compiled = self._compiled
        if compiled is not None:
            first = self.compile_seconds is None
            began = time.perf_counter()
            try:
                out = compiled(*args, **kwargs)
            except Exception as error:  # Dynamo / Inductor / compiler errors; an error of the module itself recurs below
                self._fall_back(f"compilation failed ({_first_line(error)})")
            else:
                if first:
                    self.compile_seconds = time.perf_counter() - began
                return out
        return self.module(*args, **kwargs)
