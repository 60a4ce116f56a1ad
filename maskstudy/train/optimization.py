"""The optimizer (SGD as in ArcFace, AdamW for transformers) and the learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import SCHEDULES, TrainConfig


def build_optimizer(backbone: nn.Module, head: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the ArcFace recipe) or AdamW (``optimizer="adamw"``: transformers trained from scratch,
    Dosovitskiy et al. 2021 used Adam) over two groups, the backbone's trainable parameters and the head's, with
    the same weight decay."""
    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad]}, {"params": list(head.parameters())}]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> float:
    """LR of optimizer step ``step`` (0-based): linear warmup ``base_lr * (step+1) / warmup_steps``,
    then cosine ``0.5 * (1 + cos(pi t))`` or poly ``(1 - t)^2`` decay over the remaining steps."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "poly":
        return base_lr * (1.0 - t) ** 2
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
