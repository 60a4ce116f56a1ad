"""Training settings: :class:`TrainConfig`, its choices, the log columns and the streams of randomness."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.profiles import training_defaults
from ..models.checkpoint import backbone_from_checkpoint, load_checkpoint

LOG_COLUMNS = ["epoch", "step", "loss", "train_acc", "lr", "val_acc", "images_per_s", "seconds"]
SCHEDULES = ("cosine", "poly")
OPTIMIZERS = ("sgd", "adamw")
SAMPLERS = ("capped", "balanced", "uniform")
AMP_MODES = ("auto", "bf16", "fp16", "none")

#: Settings that may change when a run is resumed: how long to train and on what hardware. Every
#: other setting is part of the recipe and must match the checkpoint's.
RUNTIME_KEYS = frozenset({
    "epochs", "max_steps", "checkpoint_every", "device", "amp", "channels_last", "compile",
    "num_workers", "num_threads", "deterministic", "cache_limit_gb",
    "teacher_embeddings",  # the file may move; its content is checked against the checkpoint's (train.distill)
})

# Streams of randomness, each its own seeded generator: (seed, stream[, epoch]) (see maskstudy.core.seeding).
INIT_STREAM, TRAIN_RNG_STREAM, SAMPLER_STREAM, AUGMENT_STREAM, VALSPLIT_STREAM = 0, 1, 2, 3, 4

#: Where training writes its progress lines (``print``, a notebook's logger, or :func:`no_log`).
Log = Callable[[str], Any]


def no_log(*_: Any, **__: Any) -> None:
    """A :data:`Log` that drops every line."""
    return None


#: The defaults of every field: the base profile's ``train_<field>`` values (maskstudy.core.profiles.BASE), their one
#: source, where each is explained.
_DEFAULTS = training_defaults()


@dataclass
class TrainConfig:
    """All training settings, as plain JSON-able values (``to_dict`` / ``from_dict``).

    The defaults are the base profile's (``train_<field>`` in :data:`maskstudy.core.profiles.BASE`, ``seed`` for the
    seed), where each setting is explained; every one is a ``-p`` profile parameter of the pipeline.
    """

    # model
    backbone: str = _DEFAULTS["backbone"]
    width: float = _DEFAULTS["width"]
    input_size: int = _DEFAULTS["input_size"]
    embedding_size: int = _DEFAULTS["embedding_size"]
    dropout: float = _DEFAULTS["dropout"]
    backbone_kwargs: dict = field(default_factory=lambda: dict(_DEFAULTS["backbone_kwargs"]))
    # margin head
    margin: str = _DEFAULTS["margin"]
    scale: float = _DEFAULTS["scale"]
    # optimisation
    epochs: int = _DEFAULTS["epochs"]
    batch_size: int = _DEFAULTS["batch_size"]  # per process
    optimizer: str = _DEFAULTS["optimizer"]
    lr: float = _DEFAULTS["lr"]
    momentum: float = _DEFAULTS["momentum"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    warmup_epochs: float = _DEFAULTS["warmup_epochs"]
    schedule: str = _DEFAULTS["schedule"]
    grad_clip: float | None = _DEFAULTS["grad_clip"]
    # augmentation
    masked_share: float = _DEFAULTS["masked_share"]
    flip: bool = _DEFAULTS["flip"]
    color_jitter: float = _DEFAULTS["color_jitter"]
    # sampling and data
    sampler: str = _DEFAULTS["sampler"]
    max_per_identity: int | None = _DEFAULTS["max_per_identity"]
    min_images_per_identity: int = _DEFAULTS["min_images_per_identity"]
    val_identities: float = _DEFAULTS["val_identities"]
    val_pairs: int = _DEFAULTS["val_pairs"]
    cache_limit_gb: float = _DEFAULTS["cache_limit_gb"]
    seed: int = _DEFAULTS["seed"]
    # distillation from a teacher (maskstudy.train.distill): weight of the term, the teacher embeddings' file
    distill_weight: float = _DEFAULTS["distill_weight"]
    teacher_embeddings: str | None = _DEFAULTS["teacher_embeddings"]
    # runtime (RUNTIME_KEYS)
    device: str = _DEFAULTS["device"]
    amp: str = _DEFAULTS["amp"]
    channels_last: bool | str = _DEFAULTS["channels_last"]
    compile: bool = _DEFAULTS["compile"]
    num_workers: int | str = _DEFAULTS["num_workers"]
    num_threads: int | None = _DEFAULTS["num_threads"]
    deterministic: bool | str = _DEFAULTS["deterministic"]
    checkpoint_every: int = _DEFAULTS["checkpoint_every"]
    max_steps: int | None = _DEFAULTS["max_steps"]

    def __post_init__(self) -> None:
        def choice(name: str, options: Iterable[Any]) -> None:
            options = tuple(options)
            if getattr(self, name) not in options:
                raise ValueError(f"{name} must be one of {options}, got {getattr(self, name)!r}")

        choice("schedule", SCHEDULES)
        choice("optimizer", OPTIMIZERS)
        choice("sampler", SAMPLERS)
        choice("amp", AMP_MODES)
        choice("channels_last", ("auto", True, False))
        choice("deterministic", ("auto", True, False))
        for name in ("epochs", "batch_size", "embedding_size", "input_size", "min_images_per_identity",
                     "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= float(self.masked_share) <= 1.0:
            raise ValueError(f"masked_share must be in [0, 1], got {self.masked_share}")
        if not 0.0 <= float(self.color_jitter) < 1.0:
            raise ValueError(f"color_jitter must be in [0, 1), got {self.color_jitter}")
        if not float(self.lr) > 0 or float(self.momentum) < 0 or float(self.weight_decay) < 0:
            raise ValueError("lr must be > 0, momentum and weight_decay >= 0")
        if float(self.warmup_epochs) < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.grad_clip is not None and float(self.grad_clip) < 0:
            raise ValueError(f"grad_clip must be >= 0 or None, got {self.grad_clip}")
        for name in ("max_per_identity", "max_steps", "num_threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        v = self.val_identities
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (v >= 1 and v != int(v)):
            raise ValueError(f"val_identities must be 0, a share in (0, 1) or a whole count >= 1, got {v!r}")
        if isinstance(self.val_pairs, bool) or not isinstance(self.val_pairs, int) or self.val_pairs < 0:
            raise ValueError(f"val_pairs must be an integer >= 0, got {self.val_pairs!r}")
        if not (self.num_workers == "auto" or (isinstance(self.num_workers, int)
                                               and not isinstance(self.num_workers, bool)
                                               and self.num_workers >= 0)):
            raise ValueError(f"num_workers must be 'auto' or an integer >= 0, got {self.num_workers!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not float(self.cache_limit_gb) >= 0:
            raise ValueError(f"cache_limit_gb must be >= 0, got {self.cache_limit_gb}")
        if isinstance(self.distill_weight, bool) or not isinstance(self.distill_weight, (int, float)) \
                or not 0.0 <= float(self.distill_weight) < float("inf"):
            raise ValueError(f"distill_weight must be a number >= 0, got {self.distill_weight!r}")
        if self.teacher_embeddings is not None and not isinstance(self.teacher_embeddings, (str, os.PathLike)):
            raise ValueError(f"teacher_embeddings must be a path or None, got {self.teacher_embeddings!r}")
        if self.teacher_embeddings is not None:
            self.teacher_embeddings = os.fspath(self.teacher_embeddings)  # JSON-able, as every field
        if self.distill_weight > 0 and not self.teacher_embeddings:
            raise ValueError("distill_weight > 0 needs teacher_embeddings: the .npz of the teacher's embeddings of "
                             "the training photos (maskstudy.teachers.training.embed_training_photos)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict (missing keys take their defaults); unknown keys are an error naming them."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown TrainConfig setting(s): {', '.join(hints)}. Known settings: {', '.join(known)}")
        return cls(**dict(values))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any]) -> TrainConfig:
        """The config a checkpoint (:mod:`maskstudy.models.checkpoint`) was trained with."""
        values = {k: v for k, v in checkpoint["config"].items() if k not in ("num_classes", "class_names")}
        return cls.from_dict(values)

    def recipe(self) -> dict[str, Any]:
        """The settings a resumed run must share with its checkpoint (all but :data:`RUNTIME_KEYS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_KEYS}


class ConfigMismatchError(ValueError):
    """``resume=True`` found a checkpoint trained with a different recipe or different identities."""


def load_backbone(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The trained backbone of a checkpoint (eval mode, on ``map_location``) and its :class:`TrainConfig`."""
    checkpoint = load_checkpoint(path, map_location)
    config = TrainConfig.from_checkpoint(checkpoint)
    model = backbone_from_checkpoint(checkpoint, path)
    device = map_location if isinstance(map_location, (str, torch.device)) else "cpu"
    return model.to(device).eval(), config
