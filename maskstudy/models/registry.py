"""Name -> builder registries for backbones, plus parameter and FLOP counting, a model's device and eval mode.

Backbones register themselves with :func:`register_backbone` in their own module (see
``iresnet.py``); ``maskstudy.models`` imports those modules so every name is known once the package
is imported. A new family (``vit_*``, hybrids) only needs the decorator and an import in
``maskstudy/models/__init__.py``.

Every registered builder is called as ``builder(width=..., input_size=..., embedding_size=...,
dropout=..., **kw)`` and returns an ``nn.Module`` mapping ``(B, 3, input_size, input_size)`` images
to ``(B, embedding_size)`` embeddings.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

T = TypeVar("T")
BackboneBuilder = Callable[..., nn.Module]

_BACKBONES: dict[str, BackboneBuilder] = {}


class UnknownNameError(KeyError, ValueError):
    """A name missing from a registry. Catchable as ``KeyError`` or ``ValueError``."""

    def __str__(self) -> str:
        # KeyError would repr() the message, wrapping it in quotes.
        return str(self.args[0]) if self.args else ""


def lookup(table: Mapping[str, T], name: str, kind: str) -> T:
    """Return ``table[name]``, or raise :class:`UnknownNameError` listing known names and the closest."""
    try:
        return table[name]
    except (KeyError, TypeError):
        pass
    known = sorted(table)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownNameError(f"unknown {kind} {name!r}.{hint} Known {kind} names: {', '.join(known)}")


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    """Decorator registering a backbone builder under ``name``; duplicate names are an error."""

    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = builder
        return builder

    return decorator


def available_backbones() -> list[str]:
    """Sorted names accepted by :func:`build_backbone`."""
    return sorted(_BACKBONES)


def build_backbone(
    name: str,
    width: float = 1.0,
    input_size: int = 112,
    embedding_size: int = 512,
    dropout: float = 0.0,
    **kw,
) -> nn.Module:
    """Build the backbone registered as ``name`` (e.g. ``ir18``, ``ir50_se``, ``ir34_cbam``).

    Unknown names raise :class:`UnknownNameError` (a ``KeyError`` and ``ValueError``) listing
    :func:`available_backbones`.
    """
    builder = lookup(_BACKBONES, name, "backbone")
    return builder(width=width, input_size=input_size, embedding_size=embedding_size, dropout=dropout, **kw)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all of them, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_size: int | None = None, in_channels: int = 3) -> int:
    """FLOPs of one forward pass on a single ``in_channels x input_size x input_size`` image.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`: matrix products only
    (convolutions, linears, attention matmuls), each multiply-accumulate counted as 2 FLOPs,
    i.e. ``FLOPs = 2 x MACs``. Normalisation, activations, pooling and elementwise ops are not
    counted (the usual convention of face-recognition papers, which quote MACs or 2 x MACs).
    ``input_size`` defaults to ``model.input_size`` when the model has one, else 112.
    The model is run in eval mode without gradients; its training flag is restored afterwards.
    """
    if input_size is None:
        input_size = getattr(model, "input_size", 112)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(1, in_channels, input_size, input_size, device=device, dtype=dtype)
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (else buffer); the CPU for a model with neither."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside the block; its training flag is restored afterwards, also on errors."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
