"""DistillationLoss: 1 - cos(P(student), teacher), with gradients to the student and P only."""

from __future__ import annotations

import pytest
import torch

from maskstudy.train.losses import DistillationLoss


def test_gradient_reaches_student_and_projection_not_teacher():
    torch.manual_seed(0)
    loss_fn = DistillationLoss(student_size=16, teacher_size=8)
    student = torch.randn(5, 16, requires_grad=True)
    teacher = torch.randn(5, 8, requires_grad=True)
    loss = loss_fn(student, teacher)
    assert loss.dim() == 0 and 0.0 < loss.item() < 2.0
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert loss_fn.projection.weight.grad is not None and loss_fn.projection.weight.grad.abs().sum() > 0
    assert teacher.grad is None  # the teacher is detached: it is a fixed target
    assert loss_fn.projection.bias is None


def test_zero_loss_and_zero_gradient_when_aligned():
    torch.manual_seed(1)
    loss_fn = DistillationLoss(student_size=12, teacher_size=4)
    student = torch.randn(6, 12, requires_grad=True)
    with torch.no_grad():
        teacher = 3.0 * loss_fn.projection(student)  # same direction, another length
    loss = loss_fn(student, teacher)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert student.grad.abs().max().item() < 1e-5
    assert loss_fn.projection.weight.grad.abs().max().item() < 1e-5


def test_equal_sizes_start_from_identity_and_opposite_costs_two():
    loss_fn = DistillationLoss(8, 8)
    torch.testing.assert_close(loss_fn.projection.weight, torch.eye(8))
    x = torch.randn(3, 8)
    assert loss_fn(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert loss_fn(x, -x).item() == pytest.approx(2.0, abs=1e-6)
    orthogonal = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 0]]), torch.tensor([[0, 1.0, 0, 0, 0, 0, 0, 0]])
    assert loss_fn(*orthogonal).item() == pytest.approx(1.0, abs=1e-6)


def test_training_the_projection_follows_the_teacher():
    torch.manual_seed(2)
    loss_fn = DistillationLoss(10, 3)
    student = torch.randn(64, 10)
    teacher = student @ torch.randn(10, 3)  # a linear teacher: P can match it exactly
    optimiser = torch.optim.SGD(loss_fn.parameters(), lr=0.5)
    start = loss_fn(student, teacher).item()
    for _ in range(200):
        optimiser.zero_grad()
        loss = loss_fn(student, teacher)
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.05 * start


def test_float32_under_autocast_and_shape_errors():
    loss_fn = DistillationLoss(6, 4)
    student, teacher = torch.randn(2, 6), torch.randn(2, 4)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert loss_fn(student, teacher).dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(B, 6\) student"):
        loss_fn(torch.randn(2, 5), teacher)
    with pytest.raises(ValueError, match=r"\(2, 4\) teacher"):
        loss_fn(student, torch.randn(3, 4))
    with pytest.raises(ValueError, match=">= 1"):
        DistillationLoss(0, 4)
    assert "student_size=6, teacher_size=4" in repr(loss_fn)
