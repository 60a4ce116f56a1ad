"""The training loop: :func:`train` (resumable, also under ``torchrun``) and :func:`train_or_restart`."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..core.seeding import derive_seed, seed_everything, set_rng_state
from ..core.storage import remove_stale_temp_files, write_csv, write_json
from ..models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import RUNTIME_KEYS, TRAIN_RNG_STREAM, ConfigMismatchError, Log, TrainConfig, no_log
from .data import (
    EpochBatches,
    EpochPlan,
    FaceCropDataset,
    class_key,
    epoch_order,
    epoch_plan,
    read_rows,
    split_identities,
)
from .distill import Distiller, build_distiller, log_columns
from .optimization import learning_rate
from .runtime import Runtime, process_settings, resolve_runtime
from .step import TrainingStep, build_training_step
from .validation import Validation


@dataclass
class TrainResult:
    """What :func:`train` returns. ``seconds`` and ``images_per_s`` cover this call's training only."""

    history: pd.DataFrame
    checkpoint: Path
    seconds: float
    images_per_s: float
    out_dir: Path = field(default_factory=Path)


def train(
    config: TrainConfig | Mapping[str, Any],
    train_csv: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    resume: bool = True,
    progress: bool = True,
    log: Log | None = print,
) -> TrainResult:
    """Train ``config.backbone`` with the margin head on ``train_csv`` crops under ``data_dir``.

    Writes ``out_dir/config.json``, and after every epoch ``out_dir/log.csv`` (columns
    :data:`LOG_COLUMNS`; ``val_acc`` is the best-threshold accuracy on masked-unmasked pairs of the
    held-out identities, NaN without them) and, every ``checkpoint_every`` epochs and at the end,
    ``out_dir/last.pt``: a ``maskstudy-checkpoint-v1`` file (fields in :mod:`maskstudy.models.checkpoint`) that
    loads with ``torch.load(..., weights_only=True)``.

    With ``resume`` and an existing ``last.pt`` of the same recipe (all settings but
    :data:`RUNTIME_KEYS`) and identities, training continues where it stopped (a finished run
    returns at once); raising ``epochs`` extends the run, the decay then spanning the new total.
    A different recipe raises :class:`ConfigMismatchError`, a damaged ``last.pt``
    :class:`~maskstudy.models.checkpoint.CheckpointError`. Under ``torchrun`` (``WORLD_SIZE > 1``)
    every process calls this; rank 0 alone writes files and logs.
    """
    if not isinstance(config, TrainConfig):
        config = TrainConfig.from_dict(config)
    log = log or no_log
    rt = resolve_runtime(config)
    with process_settings(config, rt):
        return _train(config, Path(train_csv), Path(data_dir), Path(out_dir), resume, progress and rt.rank == 0,
                      log if rt.rank == 0 else no_log, rt)


def train_or_restart(config: TrainConfig | Mapping[str, Any], train_csv: str | os.PathLike,
                     data_dir: str | os.PathLike, out_dir: str | os.PathLike, progress: bool = True,
                     log: Log | None = print) -> TrainResult:
    """:func:`train` for notebooks: resume a run of the same recipe, and start over (saying so) when the recipe
    or the training identities changed since the checkpoint in ``out_dir`` was written."""
    try:
        return train(config, train_csv, data_dir, out_dir, resume=True, progress=progress, log=log)
    except ConfigMismatchError as error:
        (log or no_log)(f"{out_dir}: {error}; training from scratch")
        return train(config, train_csv, data_dir, out_dir, resume=False, progress=progress, log=log)


@dataclass
class _Sizes:
    """Batches of one run: ``batch`` per process, whole global batches per epoch only (as ``drop_last``)."""

    batch: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


@dataclass
class _Position:
    """Where a run stands: epochs completed, optimizer steps, the log rows, and the progress inside an epoch
    that ``max_steps`` stopped (``partial``)."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, Any] | None = None


@dataclass
class _Run:
    """Everything the epochs of one run work with; ``step`` holds the modules and makes the optimizer steps."""

    config: TrainConfig
    rt: Runtime
    dataset: FaceCropDataset
    validation: Validation | None
    sizes: _Sizes
    step: TrainingStep
    checkpoint_path: Path
    out_dir: Path
    progress: bool
    log: Log

    @property
    def distiller(self) -> Distiller | None:
        """The distillation term (train.distill) the step adds, None without it."""
        return self.step.distiller


def _train(config: TrainConfig, train_csv: Path, data_dir: Path, out_dir: Path, resume: bool, progress: bool,
           log: Log, rt: Runtime) -> TrainResult:
    started = time.perf_counter()
    ckpt_path = out_dir / "last.pt"
    if rt.rank == 0:
        for stale in remove_stale_temp_files(out_dir):  # a kill during torch.save leaves its temp file
            log(f"removed {stale.name}, left by an interrupted checkpoint write")
    train_rows, val_rows = split_identities(read_rows(train_csv), config, log)
    class_names = sorted(class_key(train_rows).unique())
    checkpoint = None
    if resume and ckpt_path.is_file():  # checked before the (possibly long) decoding
        try:
            checkpoint = load_checkpoint(ckpt_path, map_location="cpu")
        except CheckpointError as error:  # damaged (cut short, ...): there is no older checkpoint to fall back to
            raise CheckpointError(f"cannot resume: {error}. Use another out_dir, or resume=False (--no-resume) to "
                                  "start over and overwrite it.") from error
        _check_resumable(checkpoint, config, class_names, ckpt_path)
    dataset = FaceCropDataset(train_rows, data_dir, masked_share=config.masked_share,
                              cache_limit_gb=config.cache_limit_gb, copies=rt.local_world_size,
                              class_names=class_names, log=log, progress=progress)
    validation = Validation(val_rows, data_dir, config, log) if rt.rank == 0 else None
    sizes = _batch_sizes(dataset, config, rt, log)

    step = build_training_step(config, rt, dataset.num_classes, checkpoint)  # seeded init: the same on every rank
    step.distiller = build_distiller(config, train_rows, rt, checkpoint, ckpt_path, log)  # None when distill_weight is 0
    if step.distiller is not None:
        step.distiller.add_to(step.optimizer)

    position = _Position()
    if checkpoint is not None:
        position = _resume(checkpoint, config, rt, step.optimizer, step.scaler, ckpt_path)
        done = position.epoch >= config.epochs or (config.max_steps is not None and position.step >= config.max_steps)
        log(f"train: resuming {ckpt_path} at epoch {position.epoch + 1}, step {position.step}"
            + (" (already done)" if done else ""))
        if done:
            return TrainResult(pd.DataFrame([dict(r) for r in checkpoint["history"]], columns=log_columns(config)),
                               ckpt_path, 0.0, float("nan"), out_dir)
    else:  # per rank: dropout masks differ between processes
        seed_everything(derive_seed(config.seed, TRAIN_RNG_STREAM, rt.rank))
    if rt.rank == 0:
        write_json(out_dir / "config.json", config.to_dict())
    _log_start(config, rt, dataset, sizes, log)
    run = _Run(config, rt, dataset, validation, sizes, step, ckpt_path, out_dir, progress, log)
    trained_images, trained_seconds = _train_epochs(run, position)
    seconds = time.perf_counter() - started
    log(f"train: done in {seconds:.1f} s, {trained_images / max(trained_seconds, 1e-9):.0f} img/s -> {ckpt_path}")
    return TrainResult(pd.DataFrame(position.history, columns=log_columns(config)), ckpt_path, seconds,
                       trained_images / trained_seconds if trained_seconds > 0 else float("nan"), out_dir)


def _check_resumable(checkpoint: Mapping[str, Any], config: TrainConfig, class_names: list[str], path: Path) -> None:
    old = TrainConfig.from_checkpoint(checkpoint).recipe()
    new = config.recipe()
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    hint = ("Use another out_dir, or resume=False (--no-resume) to start over and overwrite it. Only "
            f"{', '.join(sorted(RUNTIME_KEYS))} may change on resume.")
    if diff:
        raise ConfigMismatchError(f"cannot resume from {path}: the config differs from the checkpoint's "
                                  f"({'; '.join(diff)}). {hint}")
    if list(checkpoint["config"].get("class_names", [])) != list(class_names):
        raise ConfigMismatchError(f"cannot resume from {path}: the training identities differ from the "
                                  f"checkpoint's (different train_csv or data). {hint}")


def _batch_sizes(dataset: FaceCropDataset, config: TrainConfig, rt: Runtime, log: Log) -> _Sizes:
    n_epoch = len(epoch_order(dataset.labels, config.sampler, config.seed, 0, config.max_per_identity))
    batch = min(config.batch_size, n_epoch // rt.world_size)
    if batch < 2:
        raise ValueError(f"an epoch holds {n_epoch} samples: too few for {rt.world_size} process(es) "
                         "with batches of 2+ (BatchNorm)")
    if batch < config.batch_size:
        log(f"train: an epoch holds only {n_epoch} samples; batch_size {config.batch_size} -> {batch} per process")
    global_batch = batch * rt.world_size
    steps_per_epoch = n_epoch // global_batch
    return _Sizes(batch, global_batch, steps_per_epoch, steps_per_epoch * config.epochs,
                  int(round(config.warmup_epochs * steps_per_epoch)))


def _resume(checkpoint: Mapping[str, Any], config: TrainConfig, rt: Runtime, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler, path: Path) -> _Position:
    """Optimizer, scaler and RNG states from the checkpoint, and where its run stopped."""
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scaler.is_enabled() and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    position = _Position(int(checkpoint["epoch"]), int(checkpoint["step"]),
                         [dict(row) for row in checkpoint["history"]], checkpoint.get("partial"))
    if position.partial is not None and int(checkpoint.get("world_size", 1)) != rt.world_size:
        raise ConfigMismatchError(
            f"{path} stopped inside an epoch with {checkpoint.get('world_size')} processes; resume it "
            f"with as many (now {rt.world_size}), or use another out_dir")
    if position.partial is not None:
        position.history = position.history[:-1]  # the partial epoch's row is replaced when the epoch completes
    if rt.rank == 0:
        set_rng_state(checkpoint["rng"])
    else:  # the checkpoint holds rank 0's states; the others continue from a fresh seeded stream
        seed_everything(derive_seed(config.seed, TRAIN_RNG_STREAM, rt.rank, position.step))
    return position


def _log_start(config: TrainConfig, rt: Runtime, dataset: FaceCropDataset, sizes: _Sizes, log: Log) -> None:
    log(f"train: {config.backbone} width {config.width} input {config.input_size}, {config.margin} s={config.scale}, "
        f"{dataset.num_classes} identities, {sizes.steps_per_epoch} steps/epoch of {sizes.global_batch} "
        f"({rt.world_size} x {sizes.batch}), {config.epochs} epochs on {rt.device}"
        + (f", amp {str(rt.amp_dtype).replace('torch.', '')}" if rt.amp_dtype else "")
        + (", channels_last" if rt.channels_last else "")
        + (f", max_steps {config.max_steps}" if config.max_steps else ""))


def _train_epochs(run: _Run, position: _Position) -> tuple[int, float]:
    """Train from ``position`` until ``epochs`` or ``max_steps``; returns the images and seconds trained."""
    config, sizes = run.config, run.sizes
    trained_images, trained_seconds = 0, 0.0
    stopped = False
    lr = learning_rate(max(0, position.step - 1), config.lr, sizes.warmup_steps, sizes.total_steps, config.schedule)
    run.step.train()
    while position.epoch < config.epochs and not stopped:
        plan = epoch_plan(run.dataset, config, position.epoch)
        first, sums, seconds = 0, torch.zeros(3, dtype=torch.float64, device=run.rt.device), 0.0
        if position.partial is not None:  # sums: loss * n, correct, seen (this rank)
            first, sums, seconds = _partial_start(position.partial, run.rt)
            position.partial = None
        batches = [(k * sizes.global_batch + run.rt.rank * sizes.batch,
                    k * sizes.global_batch + (run.rt.rank + 1) * sizes.batch)
                   for k in range(first, sizes.steps_per_epoch)]
        if config.max_steps is not None:
            batches = batches[:max(0, config.max_steps - position.step)]
        t0 = time.perf_counter()
        images, lr = _run_batches(run, position, plan, batches, first, sums, lr, t0)
        if run.rt.distributed:
            import torch.distributed as dist

            dist.all_reduce(sums)
        elapsed = time.perf_counter() - t0
        trained_images += images
        trained_seconds += elapsed
        stopped = _end_epoch(run, position, sums, first + len(batches), seconds + elapsed,
                             images / elapsed if elapsed > 0 else float("nan"), lr)
    return trained_images, trained_seconds


def _partial_start(partial: Mapping[str, Any], rt: Runtime) -> tuple[int, torch.Tensor, float]:
    """First batch, running sums and seconds of an epoch that ``max_steps`` stopped inside. The sums are stored
    as global sums: rank 0 carries them, the others start from zero."""
    sums = torch.zeros(3, dtype=torch.float64, device=rt.device)
    if rt.rank == 0:
        sums = torch.tensor([partial["loss_sum"], partial["correct"], partial["seen"]], dtype=torch.float64,
                            device=rt.device)
    return int(partial["batch"]), sums, float(partial["seconds"])


def _run_batches(run: _Run, position: _Position, plan: EpochPlan, batches: list[tuple[int, int]], first: int,
                 sums: torch.Tensor, lr: float, t0: float) -> tuple[int, float]:
    """One optimizer step per batch, adding to ``sums`` and ``position.step``; returns the images trained (all
    processes) and the last step's LR."""
    from tqdm import tqdm

    rt, steps_per_epoch = run.rt, run.sizes.steps_per_epoch
    source = EpochBatches(run.dataset, plan, batches)
    pin = rt.device.type == "cuda"
    if rt.num_workers > 0 and not run.dataset.cached:
        loader: Iterable[torch.Tensor] = torch.utils.data.DataLoader(
            source, batch_size=None, shuffle=False, num_workers=rt.num_workers, pin_memory=pin,
            prefetch_factor=4, persistent_workers=False)
    else:
        loader = (source[k] for k in range(len(source)))
    images = 0
    bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {position.epoch + 1}/{run.config.epochs}",
               unit="step", disable=not run.progress, leave=True, dynamic_ncols=True)
    for k, ((lo, hi), crops) in enumerate(zip(batches, loader), start=first):
        lr = learning_rate(position.step, run.config.lr, run.sizes.warmup_steps, run.sizes.total_steps,
                           run.config.schedule)
        piece = plan.slice(lo, hi)
        sums += run.step(crops.pin_memory() if pin and not crops.is_pinned() else crops,
                         run.dataset.labels[piece.order], piece, lr)
        position.step += 1
        images += len(piece.order) * rt.world_size
        bar.update(1)
        if run.progress and (k % 10 == 0 or k == steps_per_epoch - 1):
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{(sums[0] / sums[2]).item():.3f}", lr=f"{lr:.4g}",
                            img_s=f"{images / max(elapsed, 1e-9):.0f}", refresh=False)
    bar.close()
    return images, lr


def _end_epoch(run: _Run, position: _Position, sums: torch.Tensor, done_batches: int, seconds: float,
               images_per_s: float, lr: float) -> bool:
    """Validate, log and checkpoint after an epoch or at ``max_steps`` (``sums`` over all processes); True to
    stop."""
    config, rt = run.config, run.rt
    epoch_complete = done_batches >= run.sizes.steps_per_epoch
    loss_sum, correct, seen = (float(v) for v in sums.cpu())
    if seen and not math.isfinite(loss_sum):
        raise FloatingPointError(f"the training loss is {loss_sum / seen} at epoch {position.epoch + 1} "
                                 f"(step {position.step}); try a lower lr or margin scale")
    val_acc = float("nan")
    if run.validation is not None and run.validation.size:
        val_acc = run.validation.accuracy(run.step.raw_backbone, config.input_size, rt.device, rt.amp_dtype,
                                          rt.channels_last, max(run.sizes.batch, 64))
    position.history.append({
        "epoch": position.epoch + 1, "step": position.step,
        "loss": loss_sum / seen if seen else float("nan"),
        "train_acc": correct / seen if seen else float("nan"),
        "lr": float(lr), "val_acc": val_acc, "images_per_s": images_per_s, "seconds": seconds,
        **(run.distiller.end_epoch(epoch_complete) if run.distiller is not None else {}),
    })
    position.history = [{k: _plain(v) for k, v in row.items()} for row in position.history]
    row = position.history[-1]
    run.log(f"epoch {row['epoch']}/{config.epochs}" + ("" if epoch_complete else f" (stopped at step {position.step})")
            + f": loss {row['loss']:.4f}, train_acc {row['train_acc']:.3f}, val_acc {row['val_acc']:.3f}, "
            f"lr {row['lr']:.4g}, {row['images_per_s']:.0f} img/s, {row['seconds']:.1f} s"
            + (f", distill {row['distill_loss']:.4f}" if run.distiller is not None else ""))
    if epoch_complete:
        position.epoch += 1
    stopped = not epoch_complete or (config.max_steps is not None and position.step >= config.max_steps)
    if rt.rank == 0:
        write_csv(run.out_dir / "log.csv", pd.DataFrame(position.history, columns=log_columns(config)))
        if stopped or position.epoch % config.checkpoint_every == 0 or position.epoch >= config.epochs:
            partial = None if epoch_complete else {"batch": done_batches, "loss_sum": loss_sum, "correct": correct,
                                                   "seen": seen, "seconds": seconds}
            save_checkpoint(run.checkpoint_path, config=config.to_dict(), class_names=run.dataset.class_names,
                            model=run.step.raw_backbone, head=run.step.raw_head, optimizer=run.step.optimizer,
                            scaler_state=run.step.scaler.state_dict() if run.step.scaler.is_enabled() else None,
                            epoch=position.epoch, step=position.step, history=position.history, partial=partial,
                            world_size=rt.world_size,
                            distill=run.distiller.state_dict() if run.distiller is not None else None)
    return stopped


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers (``weights_only`` loading rejects numpy objects)."""
    if isinstance(value, np.generic):
        return value.item()
    return value
