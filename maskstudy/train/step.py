"""One optimizer step: the modules a run trains (:class:`TrainingStep`, built by :func:`build_training_step`).

The training loop calls the step for every batch; ``bench/bench_backbones.py`` calls the same step to measure
training throughput, augmentation included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.compilation import CompiledOrEager
from ..core.seeding import derive_seed, seed_everything
from ..models import build_backbone
from .config import INIT_STREAM, TrainConfig
from .data import EpochPlan, augment_batch
from .losses import build_margin_head
from .optimization import build_optimizer
from .runtime import Runtime


@dataclass
class TrainingStep:
    """The backbone, margin head, optimizer and gradient scaler of a run; calling it makes one optimizer step.

    ``backbone`` and ``head`` are what the step calls: DDP wrappers (several processes) and, with ``compile``,
    the compiled backbone, of ``raw_backbone`` and ``raw_head`` (what checkpoints and validation use).
    """

    config: TrainConfig
    rt: Runtime
    backbone: nn.Module
    head: nn.Module
    raw_backbone: nn.Module
    raw_head: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    clip_params: list[nn.Parameter] = field(init=False)  # the backbone's trainable parameters
    distiller: Any = None  # the distillation term (:class:`~maskstudy.train.distill.Distiller`), None without it

    def __post_init__(self) -> None:
        self.clip_params = [p for p in self.raw_backbone.parameters() if p.requires_grad]

    def train(self) -> None:
        """Training mode for the backbone and the head."""
        self.backbone.train()
        self.head.train()

    def __call__(self, crops: torch.Tensor, labels: np.ndarray, augmentation: EpochPlan, lr: float) -> torch.Tensor:
        """One optimizer step at ``lr`` on uint8 ``crops`` (N, H, W, 3) with their ``labels`` and the batch's
        ``augmentation`` draws (a slice of the epoch plan); returns ``[loss * n, correct, n]`` (float64) of the
        batch, on the device (no synchronisation with it)."""
        rt, config, optimizer, scaler = self.rt, self.config, self.optimizer, self.scaler
        for group in optimizer.param_groups:
            group["lr"] = lr
        labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(rt.device, non_blocking=True)
        x = augment_batch(crops, config.input_size, flip=torch.from_numpy(augmentation.flip),
                          brightness=torch.from_numpy(augmentation.brightness),
                          contrast=torch.from_numpy(augmentation.contrast), device=rt.device)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with rt.autocast():
            embeddings = self.backbone(x)
        loss, _ = self.head(embeddings.float(), labels)
        if self.distiller is not None:
            loss = loss + self.distiller.term(embeddings, augmentation.order)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.clip_params, float(config.grad_clip))
        scaler.step(optimizer)
        scaler.update()
        n = len(labels)
        with torch.no_grad():
            predicted = self.raw_head.cosine(embeddings.detach()).argmax(dim=1)
            return torch.stack([loss.detach().double() * n, (predicted == labels).sum().double(),
                                torch.tensor(float(n), dtype=torch.float64, device=rt.device)])


def build_training_step(config: TrainConfig, rt: Runtime, num_classes: int,
                        checkpoint: Mapping[str, Any] | None = None) -> TrainingStep:
    """The backbone (seeded initialisation, the same on every process) and margin head of ``config``, with the
    weights of ``checkpoint`` when given, on the run's device and memory format; the optimizer (its state is
    the caller's to load) and gradient scaler; the DDP / compiled wrappers."""
    seed_everything(derive_seed(config.seed, INIT_STREAM))
    backbone = build_backbone(config.backbone, width=config.width, input_size=config.input_size,
                              embedding_size=config.embedding_size, dropout=config.dropout,
                              **config.backbone_kwargs)
    head = build_margin_head(config.margin, config.embedding_size, num_classes, s=config.scale)
    if checkpoint is not None:
        backbone.load_state_dict(checkpoint["model"])
        head.load_state_dict(checkpoint["head"])
    backbone.to(rt.device)
    head.to(rt.device)
    if rt.channels_last:
        backbone.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(backbone, head, config)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype is torch.float16)
    return TrainingStep(config, rt, *_wrap(backbone, head, config, rt), backbone, head, optimizer, scaler)


def _wrap(backbone: nn.Module, head: nn.Module, config: TrainConfig, rt: Runtime) -> tuple[nn.Module, nn.Module]:
    """The modules the steps call: DDP wrappers under several processes, the backbone compiled with ``compile``
    (eager, with one log line, where Inductor cannot compile: :class:`~maskstudy.core.compilation.CompiledOrEager`)."""
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [rt.device.index] if rt.device.type == "cuda" else None
        backbone = DDP(backbone, device_ids=ids)
        head = DDP(head, device_ids=ids)
    if config.compile:
        backbone = CompiledOrEager(backbone, "training backbone")
    return backbone, head
