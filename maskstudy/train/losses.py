"""Margin-based softmax heads for face recognition: SphereFace, CosFace, ArcFace in one module.

The combined margin of ArcFace (Deng et al., CVPR 2019, Eq. 4) replaces the target-class logit
``s*cos(theta)`` by ``s*(cos(m1*theta + m2) - m3)`` and leaves the other classes' ``s*cos`` alone:

* ``m1`` multiplicative angular margin, after SphereFace (Liu et al., CVPR 2017). Used directly as
  ``cos(m1*theta)``, the additive-combination form of arcface_torch, *not* SphereFace's original
  A-Softmax with its piecewise ``psi(theta) = (-1)^k cos(m*theta) - 2k`` and integer ``m``;
* ``m2`` additive angular margin, ArcFace (Deng et al., CVPR 2019);
* ``m3`` additive cosine margin, CosFace (Wang et al., CVPR 2018).

Presets (:data:`MARGIN_PRESETS`) are the settings compared in Table 2 of the ArcFace paper.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..models.registry import lookup

MARGIN_PRESETS: dict[str, tuple[float, float, float]] = {
    # Normalised softmax (features and class centres on the unit sphere, scale s), no margin.
    "softmax": (1.0, 0.0, 0.0),
    # SphereFace as re-expressed in ArcFace Table 2: the original m=4 needs A-Softmax's psi
    # and a softmax annealing schedule; m1=1.35 is the value that trains without them.
    "sphereface": (1.35, 0.0, 0.0),
    # CosFace paper's chosen m=0.35 (arcface_torch's large-data configs use 0.4).
    "cosface": (1.0, 0.0, 0.35),
    "arcface": (1.0, 0.5, 0.0),
    # "CM1" of ArcFace Table 2.
    "combined": (1.0, 0.3, 0.2),
}


class MarginHead(nn.Module):
    """Class-centre matrix plus combined-margin cross-entropy (ArcFace Eq. 4; arcface_torch's CombinedMarginLoss).

    ``forward(embeddings, labels) -> (loss, logits)`` where the target logit is
    ``s * (cos(m1*theta + m2) - m3)`` and every other logit is ``s * cos(theta_j)``; ``theta`` is the
    angle between the L2-normalised embedding and the L2-normalised class centre.

    Where ``m1*theta + m2 > pi``, ``cos(m1*theta + m2)`` would start rising again (a worse angle
    would earn a larger logit). There the ArcFace fallback ``cos(theta) - mm`` is used instead, with
    ``mm = m2*sin(m2)`` (arcface_torch's ``sinmm``, "easy margin" off), raised to
    ``1 + cos(theta_switch)`` when that is larger (possible only with ``m1 > 1``) so that the target
    logit is non-increasing in ``theta`` over all of ``[0, pi]``.

    Everything is computed in float32, even under ``torch.autocast``. ``cos`` is clamped to
    ``[-1+eps, 1-eps]`` before ``acos`` so that the gradient stays finite.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        eps: float = 1e-6,
    ):
        super().__init__()
        if embedding_size < 1 or num_classes < 1:
            raise ValueError(f"embedding_size and num_classes must be >= 1, got {embedding_size}, {num_classes}")
        if not s > 0:
            raise ValueError(f"scale s must be > 0, got {s}")
        if not m1 > 0:
            raise ValueError(f"m1 (multiplicative margin) must be > 0, got {m1}")
        if not 0 <= m2 < math.pi:
            raise ValueError(f"m2 (additive angular margin) must be in [0, pi), got {m2}")
        if not 0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.s = float(s)
        self.m1 = float(m1)
        self.m2 = float(m2)
        self.m3 = float(m3)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

        # Angle beyond which m1*theta + m2 > pi; >= pi means the margin curve is monotonic throughout.
        self.theta_switch = (math.pi - self.m2) / self.m1
        self.mm = max(self.m2 * math.sin(self.m2), 1.0 + math.cos(self.theta_switch))

    @property
    def angular(self) -> bool:
        """Whether the margin acts on the angle (needs ``acos``); CosFace / softmax work on ``cos`` directly."""
        return self.m1 != 1.0 or self.m2 != 0.0

    def extra_repr(self) -> str:
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}"
        )

    def _fp32(self, device: torch.device):
        if hasattr(torch.amp, "is_autocast_available") and not torch.amp.is_autocast_available(device.type):
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, enabled=False)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)`` float32 cosines between embeddings and class centres (no margin, no scale)."""
        with self._fp32(embeddings.device):
            return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def target_cosine(self, cos: torch.Tensor) -> torch.Tensor:
        """Apply the margin to target-class cosines: ``cos(m1*theta + m2) - m3`` (with the fallback)."""
        if not self.angular:
            return cos - self.m3
        theta = torch.acos(cos.clamp(-1.0 + self.eps, 1.0 - self.eps))
        out = torch.cos(self.m1 * theta + self.m2)
        if self.theta_switch < math.pi:
            out = torch.where(theta > self.theta_switch, cos - self.mm, out)
        return out - self.m3

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the margin applied to each row's target column."""
        with self._fp32(embeddings.device):
            cos = self.cosine(embeddings)
            index = labels.long().view(-1, 1)
            target = self.target_cosine(cos.gather(1, index))
            return self.s * cos.scatter(1, index, target)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(cross-entropy loss, scaled margin logits)`` for ``(B, D)`` embeddings and ``(B,)`` labels."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"expected (B, {self.embedding_size}) embeddings, got {tuple(embeddings.shape)}")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"expected labels of shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        logits = self.logits(embeddings, labels)
        with self._fp32(embeddings.device):
            loss = F.cross_entropy(logits, labels.long())
        return loss, logits


def build_margin_head(
    name: str, embedding_size: int, num_classes: int, s: float = 64.0, **overrides
) -> MarginHead:
    """Build a :class:`MarginHead` from a preset name in :data:`MARGIN_PRESETS`.

    ``overrides`` may replace ``m1``, ``m2``, ``m3`` or ``eps``. Unknown names raise
    :class:`~maskstudy.models.registry.UnknownNameError` (a ``KeyError`` and ``ValueError``) listing
    the known presets.
    """
    m1, m2, m3 = lookup(MARGIN_PRESETS, name, "margin")
    params = {"m1": m1, "m2": m2, "m3": m3, **overrides}
    return MarginHead(embedding_size, num_classes, s=s, **params)


def _without_autocast(device: torch.device):
    """A context that turns autocast off on ``device`` (nothing where autocast is unavailable)."""
    if hasattr(torch.amp, "is_autocast_available") and not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


class DistillationLoss(nn.Module):
    """Embedding distillation from a frozen teacher: ``mean(1 - cos(P(student), teacher))``.

    ``P`` is a learnt linear projection (no bias) from the student's embedding size to the teacher's, so a
    512-d student can follow a 128-d teacher (dlib) or a 512-d one (FaceNet); with equal sizes it starts as the
    identity. The teacher's embeddings are detached: gradients reach the student and ``P`` only. The loss is 0
    (and its gradient vanishes) when every projected student embedding points the teacher's way; its scale does
    not matter, as in the cosine heads of :class:`MarginHead`.

    This is the instance-wise term of the de-occlusion distillation of Li et al., "Look Through Masks: Towards
    Masked Face Recognition with De-Occlusion Distillation", ACM MM 2020 (a teacher trained on unmasked faces,
    a student fed masked or completed ones) written as a cosine loss; their pair- and triplet-wise relational
    terms (after Park et al., "Relational Knowledge Distillation", CVPR 2019) are not included. The training
    loop adds it to the margin loss with a weight and must give ``P``'s parameters to the optimiser.

    Computed in float32, even under ``torch.autocast``.
    """

    def __init__(self, student_size: int, teacher_size: int, eps: float = 1e-8):
        super().__init__()
        if student_size < 1 or teacher_size < 1:
            raise ValueError(f"student_size and teacher_size must be >= 1, got {student_size}, {teacher_size}")
        self.student_size = int(student_size)
        self.teacher_size = int(teacher_size)
        self.eps = float(eps)
        self.projection = nn.Linear(self.student_size, self.teacher_size, bias=False)
        if self.student_size == self.teacher_size:
            with torch.no_grad():
                self.projection.weight.copy_(torch.eye(self.teacher_size))

    def extra_repr(self) -> str:
        return f"student_size={self.student_size}, teacher_size={self.teacher_size}"

    def cosine(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """(B,) cosine between each projected student embedding and its (detached) teacher embedding."""
        if student.dim() != 2 or student.shape[1] != self.student_size:
            raise ValueError(f"expected (B, {self.student_size}) student embeddings, got {tuple(student.shape)}")
        if teacher.shape != (student.shape[0], self.teacher_size):
            raise ValueError(f"expected ({student.shape[0]}, {self.teacher_size}) teacher embeddings, "
                             f"got {tuple(teacher.shape)}")
        device = student.device
        with _without_autocast(device):
            projected = F.linear(student.float(), self.projection.weight.float())
            return F.cosine_similarity(projected, teacher.detach().float().to(device), dim=1, eps=self.eps)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean of ``1 - cos`` over the batch, for ``(B, student_size)`` and ``(B, teacher_size)`` embeddings."""
        return (1.0 - self.cosine(student, teacher)).mean()
