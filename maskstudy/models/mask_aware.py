"""A mask-aware recogniser: the study's whole-face and upper-face fine-tunes of dlib's ResNet-29 behind a mask
detector, as one model.

Masked-face systems in use meet masks with a mask-aware path: a mask detector in front of the matcher, and
features of the visible region for masked faces (e.g. Li et al., "Cropping and attention based approach for
masked face recognition", Applied Intelligence 2021). Here, per aligned crop:

* the pretrained network's frozen stem and first ``frozen_stages`` stages (shared by both fine-tunes, which never
  train them) give the prefix features, rounded to float16 as the study caches them;
* a **mask-presence head** (:class:`MaskPresenceHead`: logistic regression on those features, pooled over a small
  grid) gives the probability that a mask is there;
* the **whole-face** fine-tune (``ft_plain``) and the **upper-face** fine-tune (``ft_upper_plain``: the chip's
  lower half blanked) each give a unit embedding.

A crop's vector is ``[whole (128), upper (128), p_mask]``; two vectors are compared by :class:`MaskAwareSimilarity`:
each cosine is normalised, ``(s - centre) / scale`` with its own statistics on held-out training identities so that
one threshold serves both (score normalisation: ``normalisation="impostor"`` centres on the impostors' mean,
``"threshold"`` on the cosine's own best threshold; the scale is the impostors' sd), then the pair takes the
upper-face score when either photo is masked (``rule="switch"``: the larger mask probability above 0.5) or mixes the
two by that probability (``rule="mix"``). The rule, the normalisation, the statistics and the decision threshold are
chosen on held-out training identities (:mod:`maskstudy.train.mask_aware`), never on a test, and saved with the
weights
(:data:`FORMAT`; only the fine-tuned stages and the heads: the frozen prefix is dlib's own weights, from the
``teacher`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: The ``format`` field of a saved mask-aware recogniser.
FORMAT = "maskstudy-mask-aware-v1"
#: Fusion rules (module docstring).
RULES = ("switch", "mix")
#: Score normalisations (module docstring).
NORMALISATIONS = ("impostor", "threshold")
EMBEDDING = 128


class MaskPresenceHead(nn.Module):
    """Logistic regression on prefix features ``(N, C, H, W)``, average-pooled over a ``pool x pool`` grid
    (``pool=2``: the upper and lower halves, left and right) and standardised with the training set's mean and sd:
    ``logit = w . (pooled - mean) / sd + b``."""

    def __init__(self, channels: int = 128, pool: int = 2):
        super().__init__()
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        self.channels, self.pool = int(channels), int(pool)
        size = self.channels * self.pool * self.pool
        self.linear = nn.Linear(size, 1)
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))

    def pooled(self, prefix: torch.Tensor) -> torch.Tensor:
        """(N, channels x pool x pool) pooled features of prefix features."""
        return F.adaptive_avg_pool2d(prefix.float(), self.pool).flatten(1)

    def forward(self, prefix: torch.Tensor) -> torch.Tensor:
        return self.linear((self.pooled(prefix) - self.mean) / self.std).squeeze(1)

    @torch.no_grad()
    def probability(self, prefix: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(prefix))


@dataclass(frozen=True)
class Fusion:
    """How two mask-aware vectors are compared (module docstring): the rule, the normalisation and its centre and
    scale for the whole-face and the upper-face cosine, the decision threshold on the fused score and where it
    comes from."""

    rule: str = "switch"
    normalisation: str = "impostor"
    whole_centre: float = 0.0
    whole_scale: float = 1.0
    upper_centre: float = 0.0
    upper_scale: float = 1.0
    threshold: float = 0.0
    mask_threshold: float = 0.5
    threshold_source: str = ""

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {self.normalisation!r}")
        if not (self.whole_scale > 0 and self.upper_scale > 0):
            raise ValueError("the normalisation scales must be > 0")


def split_vectors(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(whole (N, 128), upper (N, 128), p_mask (N,)) of mask-aware vectors ``(N, 257)``."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != 2 * EMBEDDING + 1:
        raise ValueError(f"mask-aware vectors are (N, {2 * EMBEDDING + 1}), got {vectors.shape}")
    return vectors[:, :EMBEDDING], vectors[:, EMBEDDING:2 * EMBEDDING], vectors[:, 2 * EMBEDDING]


class MaskAwareSimilarity:
    """Fused score of pairs of mask-aware vectors (module docstring); ``pairs(a, b)`` row by row, ``matrix(a, b)``
    every row of ``a`` against every row of ``b``."""

    def __init__(self, fusion: Fusion):
        self.fusion = fusion

    @property
    def description(self) -> str:
        """What a score is, in words (``compare`` prints it)."""
        centre = "its impostors' mean" if self.fusion.normalisation == "impostor" else "its own best threshold"
        return f"fused score: the whole-face or upper-face cosine minus {centre}, over its impostors' sd"

    def fuse(self, whole: np.ndarray, upper: np.ndarray, p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
        """The fused score of pairs given their whole-face and upper-face cosines and each end's mask
        probability (arrays that broadcast)."""
        f = self.fusion
        z_whole = (whole - f.whole_centre) / f.whole_scale
        z_upper = (upper - f.upper_centre) / f.upper_scale
        masked = np.maximum(p_a, p_b)
        weight = (masked > f.mask_threshold).astype(np.float64) if f.rule == "switch" else masked
        return (1.0 - weight) * z_whole + weight * z_upper

    def pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        wa, ua, pa = split_vectors(a)
        wb, ub, pb = split_vectors(b)
        whole = np.sum(wa.astype(np.float64) * wb, axis=1)
        upper = np.sum(ua.astype(np.float64) * ub, axis=1)
        return self.fuse(whole, upper, pa.astype(np.float64), pb.astype(np.float64))

    def matrix(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        wa, ua, pa = split_vectors(a)
        wb, ub, pb = split_vectors(b)
        whole = wa.astype(np.float64) @ wb.T.astype(np.float64)
        upper = ua.astype(np.float64) @ ub.T.astype(np.float64)
        return self.fuse(whole, upper, pa.astype(np.float64)[:, None], pb.astype(np.float64)[None, :])


def trained_state(model: nn.Module, frozen_stages: int) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a fine-tuned dlib network that fine-tuning can change: stages from
    ``frozen_stages`` on and the final linear layer."""
    prefixes = tuple(f"stages.{i}." for i in range(frozen_stages, 5)) + ("fc.",)
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}


class MaskAwareRecognizer(nn.Module):
    """The mask-aware recogniser (module docstring): ``whole`` and ``upper`` are fine-tuned
    :class:`~maskstudy.models.dlib_resnet.DlibResNet` networks sharing the pretrained frozen prefix (stem and stages
    below ``frozen_stages``); ``upper`` blanks the chip's lower half."""

    input_size = 112
    embedding_size = 2 * EMBEDDING + 1

    def __init__(self, whole: nn.Module, upper: nn.Module, mask_head: MaskPresenceHead, fusion: Fusion,
                 frozen_stages: int, provenance: Mapping[str, Any] | None = None):
        super().__init__()
        if getattr(whole, "blank_lower", False) or not getattr(upper, "blank_lower", False):
            raise ValueError("whole must see the whole face and upper the upper face (blank_lower)")
        self.whole, self.upper, self.mask_head = whole, upper, mask_head
        self.fusion, self.frozen_stages = fusion, int(frozen_stages)
        self.provenance = dict(provenance or {})
        self.similarity = MaskAwareSimilarity(fusion)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (kit crops in [-1, 1]) -> (N, 257) mask-aware vectors: whole-face and upper-face unit
        embeddings, then the mask probability."""
        k = self.frozen_stages
        prefix = self.whole.features(x, k).half().float()  # rounded as the study caches the frozen stages
        blanked = self.upper.features(x, k).half().float()
        whole = F.normalize(self.whole.head(prefix, k), dim=1)
        upper = F.normalize(self.upper.head(blanked, k), dim=1)
        return torch.cat([whole, upper, self.mask_head.probability(prefix)[:, None]], dim=1)

    def state(self) -> dict[str, Any]:
        """What :func:`save` writes: the format, the fine-tuned parts, the heads, the fusion, the provenance."""
        return {"format": FORMAT, "frozen_stages": self.frozen_stages,
                "whole": trained_state(self.whole, self.frozen_stages),
                "upper": trained_state(self.upper, self.frozen_stages),
                "mask_head": {"channels": self.mask_head.channels, "pool": self.mask_head.pool,
                              "state": self.mask_head.state_dict()},
                "fusion": asdict(self.fusion), "provenance": dict(self.provenance)}


@dataclass
class MaskAwareParts:
    """The pieces a mask-aware recogniser is built from, as read from its file."""

    frozen_stages: int
    whole: dict
    upper: dict
    mask_head: dict
    fusion: Fusion
    provenance: dict = field(default_factory=dict)


def parts_from_state(state: Mapping[str, Any], path: str = "model file") -> MaskAwareParts:
    """Check a loaded :data:`FORMAT` dict; a missing or malformed field raises ``ValueError`` naming it."""
    for key, kind in (("frozen_stages", int), ("whole", dict), ("upper", dict), ("mask_head", dict),
                      ("fusion", dict)):
        if not isinstance(state.get(key), kind):
            raise ValueError(f"{path}: field {key!r} of a {FORMAT} file is missing or not a {kind.__name__}")
    try:
        fusion = Fusion(**state["fusion"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: its fusion settings are not valid: {error}") from None
    return MaskAwareParts(int(state["frozen_stages"]), dict(state["whole"]), dict(state["upper"]),
                          dict(state["mask_head"]), fusion, dict(state.get("provenance") or {}))
