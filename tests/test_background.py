"""Backgrounds: the random colours shared by the NeRF's solid background and the world's renders."""

from __future__ import annotations

import pytest
import torch

from dreamfusion.errors import UserError
from dreamfusion.render.background import BackgroundConfig, SolidBackground, random_colours


def test_full_colourfulness_is_a_uniform_random_colour():
    expected = torch.rand(5, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(random_colours(5, torch.Generator().manual_seed(3), 1.0), expected)


def test_no_colourfulness_gives_light_greys():
    colours = random_colours(1000, torch.Generator().manual_seed(0), 0.0)
    assert torch.equal(colours[:, 0], colours[:, 1]) and torch.equal(colours[:, 1], colours[:, 2])
    assert colours.min() >= 0.5 and colours.max() <= 1.0


def test_muted_colours_stay_near_grey():
    colours = random_colours(1000, torch.Generator().manual_seed(0), 0.25)
    spread = colours.max(dim=1).values - colours.min(dim=1).values
    assert spread.max() <= 0.25 and spread.mean() > 0.05


def test_solid_background_is_one_colour_per_image_and_white_for_validation():
    directions = torch.zeros(2, 4, 4, 3)
    painted = SolidBackground(0.25)(directions, torch.Generator().manual_seed(0))
    assert torch.equal(painted, painted[:, :1, :1].expand_as(painted)) and not torch.equal(
        painted[0], painted[1]
    )
    assert torch.equal(SolidBackground(0.25)(directions, None), torch.ones_like(directions))


def test_colourfulness_outside_zero_to_one_is_refused():
    with pytest.raises((ValueError, UserError)):
        BackgroundConfig(kind="solid", colourfulness=1.5)
