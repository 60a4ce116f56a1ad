"""Distillation from a frozen teacher during training: ``distill_weight * mean(1 - cos(P(student), teacher))``.

The term (:class:`maskstudy.train.losses.DistillationLoss`; the instance-wise part of the de-occlusion distillation of
Li et al., "Look Through Masks: Towards Masked Face Recognition with De-Occlusion Distillation", ACM MM 2020) is
added to the margin loss for every sample of a batch, the aligned crop and the masked twin alike, and always aims at
the teacher's embedding of the *clean* photo (:mod:`maskstudy.teachers.training`; centred on the training
photos' mean, :func:`~maskstudy.teachers.training.load_training_targets`): a masked face is pulled towards what the
teacher sees without the mask. ``P``, a linear map from the student's embedding to the teacher's,
is trained with the head (its own parameter group of the optimizer), saved in the checkpoint's ``distill`` field
and restored on resume; evaluation never uses it (the backbone's format is unchanged).

With ``distill_weight == 0`` (the default) :func:`build_distiller` returns ``None``: nothing is built or read, and
training is exactly what it is without this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..teachers.training import TrainingTargets, load_training_targets
from .config import LOG_COLUMNS, ConfigMismatchError, Log, TrainConfig
from .losses import DistillationLoss
from .runtime import Runtime

#: The log column of the distillation term (mean of ``1 - cos`` over the epoch's samples, unweighted).
DISTILL_COLUMN = "distill_loss"


def log_columns(config: TrainConfig) -> list[str]:
    """The columns of ``log.csv``: :data:`LOG_COLUMNS`, plus :data:`DISTILL_COLUMN` when distilling. The ``loss``
    column is the whole objective (margin loss + weight x distillation term)."""
    return LOG_COLUMNS + [DISTILL_COLUMN] if config.distill_weight > 0 else list(LOG_COLUMNS)


class Distiller:
    """The distillation term of one run: ``P``, each training row's teacher target (on the device), and the
    epoch's running sums of the term (``[sum of (1 - cos) x n, n]``, this process)."""

    def __init__(self, weight: float, targets: TrainingTargets, embedding_size: int, rt: Runtime):
        self.weight = float(weight)
        self.teacher, self.fingerprint, self.source = targets.teacher, targets.fingerprint, targets.path
        self.loss_fn = DistillationLoss(embedding_size, targets.embedding_size).to(rt.device)
        self.module: torch.nn.Module = self.loss_fn
        if rt.distributed:  # P's gradients are averaged over the processes like the head's
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.module = DDP(self.loss_fn, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        self.targets = torch.from_numpy(np.ascontiguousarray(targets.embeddings)).to(rt.device)
        self.sums = torch.zeros(2, dtype=torch.float64, device=rt.device)
        self.rt = rt

    def add_to(self, optimizer: torch.optim.Optimizer) -> None:
        """Give ``P``'s parameters to the optimizer as its own group (the optimizer's defaults: lr, momentum,
        weight decay as for the head)."""
        optimizer.add_param_group({"params": list(self.loss_fn.parameters())})

    def term(self, embeddings: torch.Tensor, order: np.ndarray) -> torch.Tensor:
        """``weight x mean(1 - cos(P(e), t))`` for a batch: ``embeddings`` of the dataset rows ``order`` (crop or
        twin: both aim at the row's clean photo's teacher embedding)."""
        index = torch.from_numpy(np.asarray(order, dtype=np.int64)).to(self.targets.device)
        loss = self.module(embeddings, self.targets[index])
        with torch.no_grad():
            self.sums += torch.stack([loss.detach().double() * len(order),
                                      torch.tensor(float(len(order)), dtype=torch.float64, device=self.sums.device)])
        return self.weight * loss

    def end_epoch(self, complete: bool) -> dict[str, float]:
        """The epoch's :data:`DISTILL_COLUMN` (over all processes). The sums restart after a complete epoch; an
        epoch stopped by ``max_steps`` keeps them, for the checkpoint (:meth:`state_dict`)."""
        if self.rt.distributed:
            import torch.distributed as dist

            dist.all_reduce(self.sums)
        total, seen = (float(v) for v in self.sums.cpu())
        if complete:
            self.sums.zero_()
        elif self.rt.rank != 0:  # as the loop's own sums: rank 0 carries the global ones
            self.sums.zero_()
        return {DISTILL_COLUMN: total / seen if seen else float("nan")}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``distill`` field: ``P``'s weights, the teacher, the targets' fingerprint and the
        running sums of an epoch stopped inside."""
        return {"projection": self.loss_fn.state_dict(), "teacher": self.teacher, "fingerprint": self.fingerprint,
                "weight": self.weight, "sums": [float(v) for v in self.sums.cpu()]}

    def load_state_dict(self, state: Mapping[str, Any], path: Path, partial: bool) -> None:
        """Restore from a checkpoint's ``distill`` field; a different teacher or different targets raise
        :class:`ConfigMismatchError`."""
        hint = "Use another out_dir, or resume=False (--no-resume) to start over."
        if state.get("teacher") != self.teacher or state.get("fingerprint") != self.fingerprint:
            raise ConfigMismatchError(
                f"cannot resume from {path}: it was distilled from {state.get('teacher')!r} targets "
                f"{str(state.get('fingerprint'))[:12]}, and {self.source} holds {self.teacher!r} targets "
                f"{self.fingerprint[:12]} for these training rows. {hint}")
        self.loss_fn.load_state_dict(state["projection"])
        if partial and self.rt.rank == 0:
            self.sums.copy_(torch.tensor(state.get("sums", [0.0, 0.0]), dtype=torch.float64))


def build_distiller(config: TrainConfig, rows: pd.DataFrame, rt: Runtime, checkpoint: Mapping[str, Any] | None,
                    checkpoint_path: Path, log: Log) -> Distiller | None:
    """The run's :class:`Distiller` (``None`` without distillation, reading nothing).

    ``rows``: the training rows in the dataset's order (columns ``dataset`` and ``image``), each mapped to its
    photo's teacher embedding by key (:func:`~maskstudy.teachers.training.load_training_targets`, which raises
    for a missing file or rows without an embedding). ``P`` is drawn from the global RNG: call this where the
    run's initialisation is seeded. With a ``checkpoint``, ``P`` and the running sums are restored from it.
    """
    if config.distill_weight <= 0:
        return None
    targets = load_training_targets(config.teacher_embeddings, rows)
    distiller = Distiller(config.distill_weight, targets, config.embedding_size, rt)
    if checkpoint is not None:
        state = checkpoint.get("distill")
        if not isinstance(state, Mapping):
            raise ConfigMismatchError(f"cannot resume from {checkpoint_path}: it holds no distillation state")
        distiller.load_state_dict(state, checkpoint_path, partial=checkpoint.get("partial") is not None)
    log(f"train: distilling from {targets.teacher} ({targets.embedding_size}-d, {targets.path}), weight "
        f"{config.distill_weight:g}, {len(rows)} rows" + (f", {targets.fallback} without a face box"
                                                          if targets.fallback else ""))
    return distiller
