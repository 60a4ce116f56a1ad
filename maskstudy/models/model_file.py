"""One door to every network of the study: a model file of any kind the study writes, or the pretrained network
by name, loaded into something that turns aligned crops into comparable vectors.

=================  =============================  ====================================================================
kind               where it comes from            the file (``format``)
=================  =============================  ====================================================================
``scratch``        notebook 03, 04, ``train``     ``maskstudy-checkpoint-v1`` (:mod:`.checkpoint`)
``finetuned``      the pretrained track           ``maskstudy-finetune-v1`` (:mod:`maskstudy.train.finetune`)
``mask_aware``     the pretrained track           ``maskstudy-mask-aware-v1`` (:mod:`.mask_aware`)
``pretrained``     no file: the name ``pretrained``  dlib's ResNet-29 as it is (the ``teacher`` extra's weights)
=================  =============================  ====================================================================

Every file is read with ``torch.load(..., weights_only=True)`` (:func:`.checkpoint.read_torch_file`): a damaged
file, a foreign one or one of an unknown format raises :class:`~.checkpoint.CheckpointError` naming it. Each kind is
encoded as the study evaluates it (:meth:`LoadedModel.encode`): from-scratch networks with flip fusion; dlib's
network and its fine-tunes without flip (dlib's protocol), a fine-tune through its frozen stages' output rounded to
float16 (as the study caches it); the mask-aware recogniser into its own vectors, compared by its own similarity.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..faces.preprocess import check_crops, to_input
from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, backbone_from_checkpoint, check_fields, read_torch_file
from .mask_aware import FORMAT as MASK_AWARE_FORMAT
from .mask_aware import MaskAwareRecognizer, MaskPresenceHead, parts_from_state

#: The format of a fine-tuning checkpoint of the pretrained track (written by :mod:`maskstudy.train.finetune`).
FINETUNE_FORMAT = "maskstudy-finetune-v1"
#: Names that load the pretrained network itself (no file).
PRETRAINED_NAMES = ("pretrained", "dlib_resnet29")
KINDS = {CHECKPOINT_FORMAT: "scratch", FINETUNE_FORMAT: "finetuned", MASK_AWARE_FORMAT: "mask_aware"}


class Cosine:
    """Cosine similarity of unit vectors: ``pairs(a, b)`` row by row, ``matrix(a, b)`` all against all."""

    description = "cosine similarity"

    @staticmethod
    def pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sum(np.asarray(a, np.float64) * b, axis=1)

    @staticmethod
    def matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(a, np.float64) @ np.asarray(b, np.float64).T


COSINE = Cosine()


@dataclass
class LoadedModel:
    """A network ready to compare faces: its ``kind``, the module, its input size, how its vectors are compared
    (``similarity``), its decision threshold when the file carries one (with ``threshold_source``), and a
    one-line ``description``."""

    kind: str
    model: nn.Module
    input_size: int
    flip: bool = True
    prefix_stages: int | None = None
    similarity: Any = COSINE
    threshold: float | None = None
    threshold_source: str = ""
    description: str = ""
    path: str = ""
    config: dict = field(default_factory=dict)

    @property
    def detects_masks(self) -> bool:
        return self.kind == "mask_aware"

    def to(self, device: torch.device | str) -> LoadedModel:
        self.model = self.model.to(device).eval()
        return self

    @torch.no_grad()
    def encode(self, crops, batch_size: int = 64, device: torch.device | str | None = None,
               embed: Callable | None = None, chunk: int | None = None, channels_last: bool = False) -> np.ndarray:
        """Vectors of aligned uint8 crops ``(N, 112, 112, 3)`` as the study evaluates this kind (module
        docstring); ``embed``: the evaluation's embedding function for from-scratch networks
        (:func:`maskstudy.evaluate.embed.embed_crops`); ``chunk`` and ``channels_last``: how many images and in
        which memory format the other kinds see at once (as the study computes their frozen stages,
        :func:`maskstudy.evaluate.embed.forward_chunk`; the rows do not depend on it up to float rounding)."""
        crops = check_crops(crops)
        device = torch.device(device) if device is not None else next(self.model.parameters()).device
        if self.kind == "scratch":
            if embed is None:
                raise ValueError("from-scratch networks are embedded with flip fusion: pass embed=embed_crops")
            return embed(self.model, crops, self.input_size, batch_size=batch_size, device=device, flip=self.flip)
        self.model.eval()
        parts = []
        for start in range(0, len(crops), batch_size):
            x = to_input(crops[start:start + batch_size], self.input_size, device=device)
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            size = chunk or len(x)
            for i in range(0, len(x), size):
                piece = x[i:i + size]
                if self.prefix_stages is not None:
                    k = self.prefix_stages
                    out = F.normalize(self.model.head(self.model.features(piece, k).half().float(), k), dim=1)
                elif self.kind == "mask_aware":
                    out = self.model(piece)
                else:
                    out = F.normalize(self.model(piece), dim=1)
                parts.append(out.float().cpu().numpy())
        width = getattr(self.model, "embedding_size", 0)
        return np.concatenate(parts) if parts else np.zeros((0, width), np.float32)

    def mask_probability(self, vectors: np.ndarray) -> np.ndarray | None:
        """The mask probability of each vector (mask-aware recogniser only; ``None`` otherwise)."""
        return np.asarray(vectors)[:, -1].astype(np.float64) if self.detects_masks else None


def load_model(source: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedModel:
    """A model file of any kind of the module docstring, or ``"pretrained"`` for dlib's network as it is. A
    missing file raises ``FileNotFoundError``; a damaged, foreign or unknown file
    :class:`~.checkpoint.CheckpointError` naming it."""
    if str(source) in PRETRAINED_NAMES and not Path(source).exists():
        return _pretrained()
    path = Path(source)
    state = read_torch_file(path, map_location)
    if not isinstance(state, dict) or state.get("format") not in KINDS:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a model file of this study (format {found!r}; known: "
                              f"{', '.join(KINDS)})")
    kind = KINDS[state["format"]]
    if kind == "scratch":
        check_fields(state, path)
        try:
            model = backbone_from_checkpoint(state, path).to(map_location).eval()
        except TypeError as error:  # backbone_kwargs the model's builder does not take
            raise CheckpointError(f"{path}: the stored backbone settings do not build a model: {error}") from None
        config = dict(state["config"])
        return LoadedModel("scratch", model, int(config.get("input_size", 112)), flip=True, config=config,
                           path=str(path), description=f"{config['backbone']} trained from scratch ({path.name})")
    if kind == "finetuned":
        return _finetuned(state, path)
    return _mask_aware(state, path)


def _student(settings: dict, pretrained: bool) -> nn.Module:
    """A dlib network with fine-tuning ``settings``' attention, blank-lower flag and (``pretrained``) dlib's weights;
    files written before attention had a form hold gated attention."""
    from .dlib_resnet import student_network

    return student_network(settings.get("attention", "none"), int(settings.get("frozen_stages", 3)),
                           settings.get("attention_form", "gated"), bool(settings.get("blank_lower", False)),
                           pretrained)


def _finetuned(state: dict, path: Path) -> LoadedModel:
    settings = state.get("config")
    if not isinstance(settings, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: a {FINETUNE_FORMAT} file needs its 'config' and 'model' fields")
    try:
        model = _student(settings, pretrained=False)
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path}: its weights do not fit the fine-tuned network it describes: "
                              f"{str(error).splitlines()[0]}") from error
    history = state.get("history") or []
    threshold = history[-1].get("val_threshold") if history and isinstance(history[-1], dict) else None
    face = "upper face" if settings.get("blank_lower") else "whole face"
    attention = settings.get("attention", "none")
    return LoadedModel("finetuned", model.eval(), 112, flip=False, prefix_stages=int(settings.get("frozen_stages", 3)),
                       threshold=None if threshold is None else float(threshold),
                       threshold_source="best threshold on masked-unmasked pairs of held-out training identities "
                                        "(the fine-tune's validation)" if threshold is not None else "",
                       config=dict(settings), path=str(path),
                       description=f"dlib's ResNet-29 fine-tuned on the {face}"
                                   + (f" with {attention.upper()}" if attention not in ("none", "") else "")
                                   + f" ({path.name})")


def _mask_aware(state: dict, path: Path) -> LoadedModel:
    try:
        parts = parts_from_state(state, str(path))
        head_state = parts.mask_head
        head = MaskPresenceHead(int(head_state.get("channels", 128)), int(head_state.get("pool", 2)))
        head.load_state_dict(head_state["state"])
        whole = _student({"frozen_stages": parts.frozen_stages}, pretrained=True)
        upper = _student({"frozen_stages": parts.frozen_stages, "blank_lower": True}, pretrained=True)
        for net, trained in ((whole, parts.whole), (upper, parts.upper)):
            missing = net.load_state_dict(trained, strict=False)
            if missing.unexpected_keys:
                raise ValueError(f"unexpected weights {missing.unexpected_keys[:3]}")
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: not a usable {MASK_AWARE_FORMAT} file: {str(error).splitlines()[0]}") from error
    model = MaskAwareRecognizer(whole, upper, head, parts.fusion, parts.frozen_stages, parts.provenance).eval()
    return LoadedModel("mask_aware", model, 112, flip=False, similarity=model.similarity,
                       threshold=parts.fusion.threshold, threshold_source=parts.fusion.threshold_source,
                       config={"provenance": parts.provenance}, path=str(path),
                       description=f"mask-aware recogniser (whole face, or upper face when a mask is found; "
                                   f"{parts.fusion.rule} rule) ({path.name})")


def _pretrained() -> LoadedModel:
    model = _student({}, pretrained=True).eval()
    return LoadedModel("pretrained", model, 112, flip=False, prefix_stages=3,
                       description="dlib's ResNet-29 as it is (teacher extra)")
