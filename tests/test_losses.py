import math

import torch

from dreamfusion.training.losses import opacity_loss, orientation_loss


def test_orientation_loss_penalises_only_back_facing_normals():
    directions = torch.tensor([[0.0, 0.0, -1.0]])  # the camera looks down -Z
    weights = torch.tensor([[0.5, 0.5]])
    facing = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.6, 0.8]]])
    assert float(orientation_loss(weights, facing, directions)) == 0.0
    away = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.6, -0.8]]])
    expected = 0.5 * 1.0 + 0.5 * 0.64
    assert math.isclose(float(orientation_loss(weights, away, directions)), expected, rel_tol=1e-6)


def test_orientation_loss_does_not_push_on_the_weights():
    weights = torch.tensor([[0.3, 0.7]], requires_grad=True)
    normals = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]]], requires_grad=True)
    orientation_loss(weights, normals, torch.tensor([[0.0, 0.0, -1.0]])).backward()
    assert weights.grad is None and normals.grad.abs().sum() > 0


def test_opacity_loss_value():
    assert math.isclose(
        float(opacity_loss(torch.tensor([0.0, 1.0]))), (0.1 + math.sqrt(1.01)) / 2, rel_tol=1e-6
    )
