"""The pretrained track: dlib's ResNet-29 (:mod:`maskstudy.models.dlib_resnet`) fine-tuned on masked faces.

De-occlusion distillation after Li et al., "Look Through Masks: Towards Masked Face Recognition with De-Occlusion
Distillation" (ACM MM 2020), with teacher and student of one architecture and one starting point: the student
(the pretrained network, with SE or CBAM inserted at identity when asked) learns to map each training photo's
masked twin, and the clean crop itself, onto the **frozen** pretrained network's embedding of the clean crop::

    loss = distill_weight * mean(1 - cos(student(x), teacher(clean)))  [+ margin_weight * ArcFace(student(x))]

The stem and the first ``frozen_stages`` stages stay frozen, and their outputs are computed once per crop
(:func:`prefix_features`, training and test crops alike), so each step runs only the upper stages. The margin
head (ArcFace, Deng et al. 2019, over the training identities) is optional; settings are chosen on masked-unmasked
pairs of held-out training identities (:class:`FinetuneValidation`), never on LFW's test folds or MFR2.

The inserted attention acts at full strength (``attention_form="full"``: the modules themselves, started near the
identity through their sigmoid biases) or behind a scalar gate from 0 (``"gated"``); see
:mod:`maskstudy.models.dlib_resnet`.

The "cropping" approach of the seed's literature (upper face only; Li et al., "Cropping and attention based
approach for masked face recognition", Applied Intelligence 2021) is any of these networks fine-tuned and tested
with the chip's lower half blanked (``blank_lower``). ``twins=False`` fine-tunes on the clean crops alone (a
control: what fine-tuning does without the synthetic masks).

Runs are seeded (batch order, attention initialisation, margin head), checkpointed after every epoch (atomic
write; loaded with ``weights_only=True``), and resumed: a finished run with the same settings is reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..core import storage
from ..evaluate.embed import EVAL_CHANNELS_LAST, forward_chunk
from ..faces.preprocess import DecodedCrops, load_crops, to_input
from ..models.dlib_resnet import ATTENTION_FORMS, DlibResNet, student_network

FORMAT = "maskstudy-finetune-v1"
FEATURES_FORMAT = "maskstudy-prefix-features-v1"
#: Device type -> whether the fine-tuned stages run channels-last (training and :func:`head_embeddings`): on the CPU
#: oneDNN's convolutions of these 256-channel 4x4 maps work in NHWC (measured with torch 2.14 on 2 cores: a training
#: step 1.2-1.5x and the test crops' embeddings 1.1-1.2x faster); the outputs differ by float rounding only.
CHANNELS_LAST = {"cpu": True}


def _memory_format(device: torch.device) -> torch.memory_format:
    return torch.channels_last if CHANNELS_LAST.get(device.type, False) else torch.contiguous_format


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run of the pretrained track (module docstring)."""

    attention: str = "none"  # "none" | "se" | "cbam", in every block of the trained stages
    attention_form: str = "full"  # "full" (started near the identity) | "gated" (behind a scalar gate from 0)
    frozen_stages: int = 3  # stem + this many stages frozen and cached; the rest trains
    blank_lower: bool = False  # the cropping approach: the chip's lower half blanked, in training and tests
    twins: bool = True  # train on each row's clean crop and its masked twin; False: the clean crops alone
    epochs: int = 2
    batch_size: int = 64  # training rows per step; each row gives its clean crop and its masked twin
    lr: float = 1e-4  # AdamW; dlib's frozen-BN network explodes under SGD at 1e-3 (measured)
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    grad_clip: float = 1.0
    distill_weight: float = 1.0
    margin_weight: float = 0.0  # > 0 adds an ArcFace head over the training identities
    attention_lr_scale: float = 100.0  # the inserted attention (new weights) learns this much faster
    margin_scale: float = 32.0
    margin: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be 0..4 (the last stage always trains), got {self.frozen_stages}")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 2 and lr > 0, got {self.epochs}, {self.batch_size}, "
                             f"{self.lr}")
        if self.attention_lr_scale <= 0:
            raise ValueError(f"attention_lr_scale must be > 0, got {self.attention_lr_scale}")
        if self.attention_form not in ATTENTION_FORMS:
            raise ValueError(f"attention_form must be one of {', '.join(ATTENTION_FORMS)}, got "
                             f"{self.attention_form!r}")
        if self.distill_weight < 0 or self.margin_weight < 0 or self.distill_weight + self.margin_weight == 0:
            raise ValueError("distill_weight and margin_weight must be >= 0, and not both 0")

    @property
    def backbone(self) -> str:
        return "dlib_resnet29" if self.attention in ("none", "") else f"dlib_resnet29_{self.attention}"

    def fingerprint(self) -> str:
        """What a checkpoint of these settings must match to be resumed or reused."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def build_student(config: FinetuneConfig, pretrained: bool = True) -> DlibResNet:
    """The pretrained network with ``config``'s attention in the trained stages (seeded initialisation)."""
    torch.manual_seed(config.seed)
    return student_network(config.attention, config.frozen_stages, config.attention_form, config.blank_lower,
                           pretrained)


# --------------------------------------------------------------------------------------------
# Frozen prefix, computed once per crop
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def prefix_features(model: DlibResNet, paths: Sequence[str | os.PathLike], frozen_stages: int,
                    blank_lower: bool = False, batch_size: int = 64, progress: bool = True,
                    desc: str = "frozen stages", decoded_crops: DecodedCrops | None = None) -> torch.Tensor:
    """(N, C, H, W) float16 outputs of the stem and the first ``frozen_stages`` stages for the crop files
    ``paths`` (read as every model reads them, :func:`maskstudy.faces.preprocess.load_crops`), ``batch_size`` files
    at a time; on the CPU the network sees them channels-last in chunks of
    :func:`~maskstudy.evaluate.embed.forward_chunk` images (as evaluation does: 1.6x faster than whole contiguous
    batches of 64, measured on 2 cores). ``decoded_crops``: the files are read through this in-memory store (e.g.
    the test crops' own, :attr:`maskstudy.study.testsets.TestSets.decoded_crops`, which evaluation fills)."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    chunk = forward_chunk(device, model.input_size) or batch_size
    channels_last = EVAL_CHANNELS_LAST.get(device.type, False)
    was_training = model.training
    model.eval()
    previous = getattr(model, "blank_lower", False)
    model.blank_lower = blank_lower
    parts = []
    try:
        for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", disable=not progress,
                          leave=False):
            x = to_input(load_crops(paths[start:start + batch_size], cache=decoded_crops), model.input_size,
                         device=device)
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            parts.extend(model.features(x[i:i + chunk], frozen_stages).half().contiguous().cpu()
                         for i in range(0, len(x), chunk))
    finally:
        model.blank_lower = previous
        model.train(was_training)
    if not parts:
        return torch.zeros((0,), dtype=torch.float16)
    return torch.cat(parts)


class FeatureStore:
    """Prefix features of crop files kept on disk (``<folder>/<key>.pt``): ``key`` names the frozen prefix and the
    crops' geometry; entries are checked against each crop file's size and modification time, and a damaged or
    foreign file is recomputed."""

    def __init__(self, folder: str | os.PathLike, key: str):
        self.path = Path(folder) / f"{key}.pt"

    @staticmethod
    def _stats(paths: Sequence[Path]) -> list[list[int]]:
        out = []
        for p in paths:
            s = os.stat(p)
            out.append([int(s.st_size), int(s.st_mtime_ns)])
        return out

    def features(self, model: DlibResNet, paths: Sequence[str | os.PathLike], frozen_stages: int,
                 blank_lower: bool = False, progress: bool = True, desc: str = "frozen stages",
                 decoded_crops: DecodedCrops | None = None) -> torch.Tensor:
        """Features of ``paths`` in order: the stored ones where the file is unchanged, the rest computed
        (:func:`prefix_features`, reading through ``decoded_crops`` when given) and the store rewritten
        (atomically)."""
        paths = [Path(p) for p in paths]
        stats = self._stats(paths)
        stored: dict[str, tuple] = {}
        if self.path.is_file():
            try:
                data = torch.load(self.path, weights_only=True)
                if data.get("format") == FEATURES_FORMAT:
                    stored = {p: (s, i) for i, (p, s) in enumerate(zip(data["paths"], data["stats"]))}
                    table = data["features"]
            except Exception:  # noqa: BLE001 - any damage costs a recomputation, never the run
                stored = {}
        keys = [str(p) for p in paths]
        have = [k in stored and list(stored[k][0]) == s for k, s in zip(keys, stats)]
        todo = [i for i, ok in enumerate(have) if not ok]
        fresh = (prefix_features(model, [paths[i] for i in todo], frozen_stages, blank_lower, progress=progress,
                                 desc=desc, decoded_crops=decoded_crops) if todo else None)
        rows = []
        position = {i: k for k, i in enumerate(todo)}
        for i, ok in enumerate(have):
            rows.append(table[stored[keys[i]][1]] if ok else fresh[position[i]])
        result = torch.stack(rows) if rows else torch.zeros((0,), dtype=torch.float16)
        if todo or not self.path.is_file():
            with storage.atomic_path(self.path) as tmp:
                torch.save({"format": FEATURES_FORMAT, "paths": keys, "stats": stats, "features": result}, tmp)
        return result


# --------------------------------------------------------------------------------------------
# Validation on held-out training identities
# --------------------------------------------------------------------------------------------


class FinetuneValidation:
    """Masked-unmasked pairs of held-out training identities (each clean crop against another photo's masked twin
    of the same person, and as many against other people's twins), scored at the best threshold."""

    def __init__(self, identities: Sequence[str], clean: torch.Tensor, masked: torch.Tensor, pairs: int = 600,
                 seed: int = 0):
        identities = np.asarray(identities)
        self.identities = identities
        rng = np.random.default_rng(seed)
        n = len(identities)
        positives, negatives = [], []
        by_identity: dict[str, list[int]] = {}
        for i, identity in enumerate(identities):
            by_identity.setdefault(identity, []).append(i)
        for members in by_identity.values():
            for a in members:
                for b in members:
                    if a != b:
                        positives.append((a, b))
        rng.shuffle(positives)
        positives = positives[: pairs // 2]
        while len(negatives) < len(positives) and n > 1:
            a, b = rng.integers(0, n, 2)
            if identities[a] != identities[b]:
                negatives.append((int(a), int(b)))
        chosen = positives + negatives
        self.a = np.array([p[0] for p in chosen], dtype=int)
        self.b = np.array([p[1] for p in chosen], dtype=int)
        self.labels = np.array([1] * len(positives) + [0] * len(negatives))
        self.clean, self.masked = clean, masked

    @property
    def size(self) -> int:
        return len(self.labels)

    @torch.no_grad()
    def accuracy(self, model: DlibResNet, start: int) -> float:
        """Best-threshold accuracy of the pairs for ``model``'s upper stages from ``start``; NaN without pairs."""
        return self.best(model, start)[0]

    @torch.no_grad()
    def scores(self, model: DlibResNet, start: int) -> np.ndarray:
        """Cosine scores of the pairs for ``model``'s upper stages from ``start``."""
        clean = F.normalize(head_embeddings(model, self.clean, start), dim=1).numpy()
        masked = F.normalize(head_embeddings(model, self.masked, start), dim=1).numpy()
        return (clean[self.a] * masked[self.b]).sum(axis=1)

    @torch.no_grad()
    def best(self, model: DlibResNet, start: int) -> tuple[float, float]:
        """(best-threshold accuracy, that threshold) of the pairs; NaNs without pairs."""
        from ..evaluate.metrics import best_threshold

        if self.size == 0:
            return float("nan"), float("nan")
        threshold, accuracy = best_threshold(self.scores(model, start), self.labels)
        return float(accuracy), float(threshold)


@torch.no_grad()
def head_embeddings(model: DlibResNet, features: torch.Tensor, start: int, batch_size: int = 256) -> torch.Tensor:
    """(N, 128) raw embeddings from cached prefix features (eval mode, fp32)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    layout = _memory_format(device)
    try:
        parts = [model.head(features[i:i + batch_size].to(device).float().contiguous(memory_format=layout),
                            start).cpu() for i in range(0, len(features), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros((0, 128))


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class _ArcFaceHead(nn.Module):
    def __init__(self, classes: int, scale: float, margin: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, 128) * 0.01)
        self.scale, self.margin = scale, margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1 + 1e-7, 1 - 1e-7)
        target = torch.cos(torch.acos(cosine.gather(1, labels[:, None])) + self.margin)
        logits = cosine.scatter(1, labels[:, None], target) * self.scale
        return F.cross_entropy(logits, labels)


@dataclass
class FinetuneResult:
    """A finished run: the student (eval mode), its per-epoch history and its checkpoint."""

    model: DlibResNet
    history: pd.DataFrame
    checkpoint: Path
    config: FinetuneConfig


HISTORY_COLUMNS = ["epoch", "loss", "distill_loss", "margin_loss", "val_acc", "val_threshold", "gates", "seconds",
                   "rows_per_s"]


def _lr(config: FinetuneConfig, step: int, total: int) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _gates(model: nn.Module) -> str:
    values = [p.item() for name, p in model.named_parameters() if name.endswith(".gate")]
    return "" if not values else f"{min(values):+.3f}..{max(values):+.3f}"


def finetune(config: FinetuneConfig, clean: torch.Tensor, masked: torch.Tensor, labels: np.ndarray,
             checkpoint: str | os.PathLike, validation: FinetuneValidation | None = None,
             log: Callable[[str], object] = print, progress: bool = True) -> FinetuneResult:
    """Fine-tune the pretrained network's upper stages on prefix features of the training rows' ``clean`` crops and
    their ``masked`` twins (same order; ``labels``: identity index per row, for the optional margin head).

    The targets are the frozen pretrained network's embeddings of the clean crops. Writes ``checkpoint`` after every
    epoch; a checkpoint of the same settings resumes (unfinished) or is returned as it is (finished)."""
    from tqdm import tqdm

    checkpoint = Path(checkpoint)
    if len(clean) != len(masked) or len(clean) != len(labels) or len(clean) < config.batch_size:
        raise ValueError(f"need as many clean features, masked features and labels ({len(clean)}, {len(masked)}, "
                         f"{len(labels)}), at least batch_size={config.batch_size}")
    start = config.frozen_stages
    teacher = build_student(dataclasses.replace(config, attention="none"))
    targets = F.normalize(head_embeddings(teacher, clean, start), dim=1)
    del teacher
    model = build_student(config)
    layout = _memory_format(next(model.parameters()).device)
    model.to(memory_format=layout)
    for module in [model.stem, *model.stages[:start]]:
        module.requires_grad_(False)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    head = (_ArcFaceHead(int(labels_t.max()) + 1, config.margin_scale, config.margin)
            if config.margin_weight > 0 else None)
    inserted = [p for n, p in model.named_parameters() if p.requires_grad and ".attention." in n]
    pretrained = [p for n, p in model.named_parameters() if p.requires_grad and ".attention." not in n]
    groups = [{"params": pretrained + (list(head.parameters()) if head else []), "scale": 1.0}]
    if inserted:
        groups.append({"params": inserted, "scale": config.attention_lr_scale})
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(clean) // config.batch_size
    total = steps_per_epoch * config.epochs
    history: list[dict] = []
    first_epoch = 0
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        if state["fingerprint"] == config.fingerprint():
            model.load_state_dict(state["model"])
            if head is not None and state.get("head") is not None:
                head.load_state_dict(state["head"])
            if state.get("optimizer") is not None:
                optimizer.load_state_dict(state["optimizer"])
            history = list(state["history"])
            first_epoch = int(state["epoch"])
            log(f"finetune: {checkpoint.name}: resuming after epoch {first_epoch} of {config.epochs}"
                if first_epoch < config.epochs else f"finetune: {checkpoint.name}: finished run reused")
        else:
            log(f"finetune: {checkpoint.name} holds other settings; training anew")
    for epoch in range(first_epoch, config.epochs):
        model.train()
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)
        order = torch.randperm(len(clean), generator=generator)
        started, sums = time.perf_counter(), np.zeros(3)
        bar = tqdm(range(steps_per_epoch), desc=f"fine-tune {config.backbone} epoch {epoch + 1}", unit="step",
                   disable=not progress, leave=False)
        for step in bar:
            rows = order[step * config.batch_size:(step + 1) * config.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = _lr(config, epoch * steps_per_epoch + step, total) * group["scale"]
            copies = 2 if config.twins else 1
            x = (torch.cat([clean[rows], masked[rows]]) if config.twins else clean[rows]).float()
            x = x.contiguous(memory_format=layout)
            embeddings = model.head(x, start)
            target = targets[rows].repeat(copies, 1)
            distill = (1 - F.cosine_similarity(embeddings, target, dim=1)).mean()
            margin = head(embeddings, labels_t[rows].repeat(copies)) if head is not None else torch.zeros(())
            loss = config.distill_weight * distill + config.margin_weight * margin
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning {config.backbone}: the loss became {float(loss)} at epoch "
                                         f"{epoch + 1}, step {step + 1}; lower lr (now {config.lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            sums += [loss.item(), distill.item(), margin.item()]
        seconds = time.perf_counter() - started
        val, threshold = validation.best(model, start) if validation is not None else (float("nan"), float("nan"))
        means = [float(v) for v in sums / steps_per_epoch]  # plain floats: checkpoints load with weights_only
        history.append({"epoch": epoch + 1, "loss": means[0], "distill_loss": means[1], "margin_loss": means[2],
                        "val_acc": float(val), "val_threshold": float(threshold), "gates": _gates(model),
                        "seconds": seconds,
                        "rows_per_s": steps_per_epoch * config.batch_size / seconds})
        save_checkpoint(checkpoint, config, model, head, optimizer, epoch + 1, history)
        log(f"finetune {config.backbone} seed {config.seed}: epoch {epoch + 1}/{config.epochs} loss "
            f"{history[-1]['loss']:.4f} val {val:.4f} gates {history[-1]['gates'] or '-'} ({seconds:.0f} s)")
    model.eval()
    return FinetuneResult(model, pd.DataFrame(history, columns=HISTORY_COLUMNS), checkpoint, config)


def save_checkpoint(path: Path, config: FinetuneConfig, model: nn.Module, head: nn.Module | None,
                    optimizer: torch.optim.Optimizer | None, epoch: int, history: list[dict]) -> None:
    state = {"format": FORMAT, "config": dataclasses.asdict(config), "fingerprint": config.fingerprint(),
             "model": model.state_dict(), "head": head.state_dict() if head is not None else None,
             "optimizer": optimizer.state_dict() if optimizer is not None and epoch < config.epochs else None,
             "epoch": epoch, "history": history}
    with storage.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A fine-tuning checkpoint (``weights_only=True``); a damaged or foreign file raises ``ValueError`` naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged file
        raise ValueError(f"{path}: not a readable fine-tuning checkpoint ({type(error).__name__}: {error}); delete "
                         "it to train anew") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    return state


def load_student(path: str | os.PathLike) -> tuple[DlibResNet, FinetuneConfig]:
    """The fine-tuned network saved at ``path`` and its settings."""
    state = load_checkpoint(path)
    # files written before attention had a form hold gated attention, and always trained on twins
    config = FinetuneConfig(**{"attention_form": "gated", **state["config"]})
    model = build_student(config, pretrained=False)
    model.load_state_dict(state["model"])
    return model.eval(), config
