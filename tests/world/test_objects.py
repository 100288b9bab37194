"""The kinds' SDFs against what sphere tracing and the evaluation need: true (or conservative) distances,
declared bounds that hold, and a front that really differs from the back."""

import pytest
import torch

from dreamfusion.world.objects import (
    COLOURS,
    KIND_NAMES,
    KINDS,
    Part,
    kind,
    kind_geometry,
    sd_polygon,
)

EXACT_KINDS = ("sphere", "cube", "cylinder", "cone", "torus")


def _grid(n: int, half: float) -> torch.Tensor:
    axis = torch.linspace(-half, half, n, dtype=torch.float64)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def _sdf(name: str, points: torch.Tensor) -> torch.Tensor:
    return kind_geometry(name, points).sdf


def _gradient(name: str, points: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    offsets = torch.eye(3, dtype=points.dtype) * h
    return torch.stack([(_sdf(name, points + o) - _sdf(name, points - o)) / (2 * h) for o in offsets], -1)


def test_vocabulary_sizes_and_unambiguous_nouns():
    assert len(KINDS) >= 10
    assert sum(k.has_front for k in KINDS) >= 4
    assert len(COLOURS) >= 8
    nouns = [noun for k in KINDS for noun in k.nouns]
    assert len(nouns) == len(set(nouns)), "a noun naming two kinds would make captions ambiguous"
    assert all(k.nouns[0] == k.name for k in KINDS)
    assert all(0.0 <= c <= 1.0 for rgb in COLOURS.values() for c in rgb)


@pytest.mark.parametrize("name", KIND_NAMES)
def test_sdf_is_1_lipschitz_with_unit_gradient_almost_everywhere(name):
    """|grad| <= 1 everywhere makes the SDF a lower bound of the distance (it is zero on the surface), so
    sphere tracing cannot overshoot; |grad| = 1 off creases makes it a distance, not just a bound."""
    points = (
        torch.rand(3000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    ) * 0.9
    norm = _gradient(name, points).norm(dim=-1)
    assert float(norm.max()) <= 1.0 + 1e-4
    assert float(((norm - 1).abs() < 1e-3).double().mean()) > 0.97


@pytest.mark.parametrize("name", KIND_NAMES)
def test_sdf_never_exceeds_the_distance_to_the_surface_and_is_exact_for_primitives(name):
    # Surface samples: grid points near the surface, projected onto it along the gradient.
    near = _grid(56, 0.85)
    near = near[_sdf(name, near).abs() < 0.04]
    for _ in range(3):
        near = near - _sdf(name, near)[:, None] * _gradient(name, near)
    surface = near[_sdf(name, near).abs() < 1e-6]
    assert surface.shape[0] > 2000
    queries = torch.rand(400, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    sampled_distance = torch.cdist(queries, surface).min(-1).values  # >= the true distance
    sdf = _sdf(name, queries)
    assert bool((sdf.abs() <= sampled_distance + 1e-6).all())
    if name in EXACT_KINDS:
        outside = sdf > 0
        spacing = 1.7 / 55
        assert float((sampled_distance - sdf)[outside].max()) < spacing


@pytest.mark.parametrize("name", KIND_NAMES)
def test_declared_bounds_hold_and_are_tight(name):
    k = kind(name)
    points = _grid(81, 0.8)
    step = 1.6 / 80
    inside = points[_sdf(name, points) <= 0]
    lower, upper = torch.tensor(k.lower, dtype=torch.float64), torch.tensor(k.upper, dtype=torch.float64)
    assert bool((inside >= lower - 1e-9).all() and (inside <= upper + 1e-9).all())
    assert torch.allclose(inside.min(0).values, lower, atol=step)
    assert torch.allclose(inside.max(0).values, upper, atol=step)
    assert float(inside.norm(dim=-1).max()) <= k.radius
    assert k.radius <= 0.8


@pytest.mark.parametrize("name", KIND_NAMES)
def test_only_kinds_with_a_front_change_under_a_half_turn(name):
    """A half turn about Z swaps front and back: symmetric kinds are unchanged, the others are not."""
    points = _grid(33, 0.8)
    turned = points * torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)
    difference = float((_sdf(name, points) - _sdf(name, turned)).abs().max())
    if kind(name).has_front:
        assert difference > 0.05
    else:
        assert difference < 1e-9


def test_accent_parts_mark_the_front():
    def part(name, point):
        return int(kind_geometry(name, torch.tensor([point]), with_parts=True).part[0])

    assert part("mug", (0.36, 0.0, 0.0)) == Part.TRIM  # badge on the front
    assert part("mug", (-0.36, 0.0, 0.0)) == Part.MAIN
    assert part("house", (0.35, 0.0, -0.35)) == Part.TRIM  # door in the front wall
    assert part("house", (-0.38, 0.0, -0.35)) == Part.MAIN
    assert part("car", (0.6, 0.16, -0.02)) == Part.LIGHT  # headlight
    assert part("car", (-0.6, 0.16, -0.02)) == Part.MAIN
    assert part("car", (0.36, 0.3, -0.17)) == Part.TRIM  # tyre


def test_polygon_distance_of_a_unit_square():
    square = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))
    q = torch.tensor([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.5, 0.0]])
    expected = torch.tensor([-1.0, 1.0, 2**0.5, -0.5])
    assert torch.allclose(sd_polygon(q, square), expected)
