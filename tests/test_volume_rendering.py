import math

import torch

from dreamfusion.render.volume_rendering import composite, compositing_weights


def test_constant_density_opacity_is_one_minus_exp():
    """A ray through a constant medium of density sigma over length d has opacity 1 - exp(-sigma d)."""
    for sigma, length, samples in [(0.5, 2.0, 7), (3.0, 1.3, 64), (10.0, 0.05, 3)]:
        density = torch.full((samples,), sigma)
        deltas = torch.full((samples,), length / samples)
        opacity = compositing_weights(density, deltas).sum()
        assert math.isclose(float(opacity), 1 - math.exp(-sigma * length), rel_tol=1e-5)


def test_weights_front_to_back_and_composite():
    density = torch.tensor([[0.0, 1e6, 5.0]])
    deltas = torch.ones(1, 3)
    w = compositing_weights(density, deltas)
    assert torch.allclose(w, torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-6)  # the opaque sample hides the rest
    colours = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    assert torch.allclose(composite(w, colours), torch.tensor([[0.0, 1.0, 0.0]]), atol=1e-6)


def test_empty_ray_is_transparent():
    w = compositing_weights(torch.zeros(4, 16), torch.full((4, 16), 0.1))
    assert float(w.sum()) == 0.0
