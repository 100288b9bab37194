import math

import torch

from dreamfusion.training.losses import normal_smoothness_loss, opacity_loss, orientation_loss


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


def test_distortion_loss_equals_its_double_sum_and_prefers_gathered_weights():
    from dreamfusion.training.losses import distortion_loss

    generator = torch.Generator().manual_seed(0)
    weights = torch.rand(5, 12, generator=generator) / 12
    distances = torch.sort(torch.rand(5, 12, generator=generator) * 3, dim=-1).values
    deltas = torch.rand(5, 12, generator=generator) * 0.1
    pairs = weights[:, :, None] * weights[:, None, :] * (distances[:, :, None] - distances[:, None, :]).abs()
    expected = (pairs.sum((1, 2)) + (weights.square() * deltas).sum(-1) / 3).mean()
    torch.testing.assert_close(distortion_loss(weights, distances, deltas), expected)
    # The same total weight in one sample costs less than spread over the ray.
    spread = torch.full((1, 12), 1 / 12)
    gathered = torch.zeros(1, 12).index_fill(1, torch.tensor([5]), 1.0)
    t, d = torch.linspace(0, 3, 12)[None], torch.full((1, 12), 0.25)
    assert distortion_loss(gathered, t, d) < 0.2 * distortion_loss(spread, t, d)


def test_normal_smoothness_is_the_weighted_mean_change_of_the_normals():
    normals = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    neighbours = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # the first turned 90 deg: |dn|^2 = 2
    weights = torch.tensor([1.0, 3.0])
    assert float(normal_smoothness_loss(normals, neighbours, weights)) == 0.5
    assert float(normal_smoothness_loss(normals, normals, weights)) == 0.0
    assert float(normal_smoothness_loss(normals[:0], neighbours[:0], weights[:0])) == 0.0
