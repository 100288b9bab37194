"""The baked texture against the field: every vertex's texel has the vertex's colour (so the UV convention
holds end to end), no texel is left black, and welding undoes the seams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamfusion.exporter.texture import TextureConfig, dilate, sample_texture, texture_mesh
from dreamfusion.fields.analytic import AnalyticField
from dreamfusion.fields.mesh import MeshConfig, extract_mesh

BLUE = np.array([0.15, 0.3, 0.85]) * 255
YELLOW = np.array([0.95, 0.8, 0.1]) * 255


@pytest.fixture(scope="module")
def mug():
    field = AnalyticField("mug")
    mesh = extract_mesh(field, MeshConfig(resolution=64)).mesh
    return mesh, texture_mesh(field, mesh, TextureConfig(size=256))


def test_the_texture_at_each_vertex_is_the_fields_albedo_there(mug):
    _, textured = mug
    texture = torch.from_numpy(textured.texture).float() / 255
    sampled = sample_texture(texture, torch.from_numpy(textured.uv)).numpy() * 255
    error = np.abs(sampled - textured.vertex_colors).max(1)
    # Bilinear lookups next to the badge's edge mix the two colours; everywhere else they agree.
    assert np.median(error) < 2 and (error < 10).mean() > 0.95


def test_every_texel_holds_a_colour_of_the_mug(mug):
    _, textured = mug
    texels = textured.texture.reshape(-1, 3).astype(float)
    nearest = np.minimum(np.abs(texels - BLUE).max(1), np.abs(texels - YELLOW).max(1))
    assert (nearest < 2).mean() > 0.99  # dilation left no black: at most edge texels mix the colours


def test_dilation_fills_from_the_nearest_covered_texel():
    image = np.zeros((4, 5, 3), np.float32)
    covered = np.zeros((4, 5), bool)
    image[0, 0], covered[0, 0] = 1.0, True
    image[3, 4], covered[3, 4] = 0.5, True
    filled = dilate(image, covered)
    assert filled[1, 1, 0] == 1.0 and filled[2, 3, 0] == 0.5 and filled[0, 0, 0] == 1.0


def test_welding_restores_the_unwrapped_mesh(mug):
    mesh, textured = mug
    vertices, faces, normals, colors = textured.welded()
    assert len(vertices) == len(mesh.vertices) and len(textured.vertices) > len(vertices)  # seams were split
    assert np.allclose(vertices[faces], mesh.vertices[mesh.faces], atol=1e-6)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-4)
    assert colors.dtype == np.uint8 and colors.shape == (len(vertices), 3)
