"""The mesh stage's differentiable renderer: it draws what the field's volume renderer draws, and its
gradients move vertices toward a target's shading."""

from __future__ import annotations

import torch
import trimesh

from dreamfusion.fields.analytic import AnalyticField
from dreamfusion.fields.mesh import MeshConfig, extract_mesh
from dreamfusion.refine.render import mesh_views, render_mesh, vertex_normals
from dreamfusion.render.background import SolidBackground
from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.lights import LightConfig, headlights
from dreamfusion.render.sampling import SamplingConfig
from dreamfusion.render.shading import ShadingMode
from dreamfusion.render.views import render_views


def _mug():
    field = AnalyticField("mug")
    mesh = extract_mesh(field, MeshConfig(resolution=96)).mesh
    return field, torch.from_numpy(mesh.vertices).float(), torch.from_numpy(mesh.faces)


def test_mesh_views_match_the_field_renders_of_the_surface_it_came_from():
    field, vertices, faces = _mug()
    cameras = orbit_cameras(4, 48)
    albedo = lambda p: field(p).albedo  # noqa: E731
    mesh = mesh_views(vertices, faces, albedo, cameras, LightConfig())
    volume = render_views(
        field,
        SolidBackground(),
        cameras,
        SamplingConfig(samples_per_ray=96, occupancy_resolution=0),
        LightConfig(),
    )
    a, b = mesh.opacity >= 0.5, volume.opacity >= 0.5
    iou = (a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1)
    assert iou.min() >= 0.9, iou
    both = (mesh.opacity > 0.99) & (volume.opacity > 0.99)
    assert (mesh.albedo - volume.albedo).abs()[both].mean() < 0.03
    assert (mesh.textureless - volume.textureless).abs()[both].mean() < 0.05


def test_the_training_render_is_mesh_views_with_the_same_light_and_modes():
    field, vertices, faces = _mug()
    cameras = orbit_cameras(2, 32)
    albedo = lambda p: field(p).albedo  # noqa: E731
    views = mesh_views(vertices, faces, albedo, cameras, LightConfig())
    for mode, row in ((ShadingMode.TEXTURELESS, views.textureless), (ShadingMode.LAMBERTIAN, views.shaded)):
        out = render_mesh(
            vertices,
            faces,
            cameras,
            albedo,
            background=lambda d: torch.ones_like(d),
            lights=headlights(cameras.position),
            modes=torch.full((2,), int(mode)),
            ambient=LightConfig().ambient,
            diffuse=LightConfig().diffuse,
        )
        assert torch.allclose(out.image.clamp(0, 1), row, atol=1e-5)
        assert torch.allclose(out.opacity, views.opacity)


def test_vertex_normals_point_outward():
    sphere = trimesh.creation.icosphere(3)
    normals = vertex_normals(torch.from_numpy(sphere.vertices).float(), torch.from_numpy(sphere.faces))
    radial = torch.nn.functional.normalize(torch.from_numpy(sphere.vertices).float(), dim=-1)
    assert (normals * radial).sum(-1).min() > 0.99


def test_vertex_gradients_agree_with_finite_differences():
    """d(image . w)/d(vertex) through barycentrics, normals and shading, against central differences, for the
    vertices with the largest gradients (in double precision; a step this small changes no pixel's
    triangle)."""
    sphere = trimesh.creation.icosphere(3, radius=0.6)
    start = torch.from_numpy(sphere.vertices).double()
    faces = torch.from_numpy(sphere.faces)
    cameras = orbit_cameras(1, 32)
    weights = torch.randn(1, 32, 32, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def objective(vertices):
        image = render_mesh(
            vertices,
            faces,
            cameras,
            lambda p: torch.ones_like(p),
            background=lambda d: torch.ones_like(d).double(),
            lights=headlights(cameras.position).double() + torch.tensor([0.0, 0.3, 1.0]).double(),
            modes=torch.full((1,), int(ShadingMode.TEXTURELESS)),
            ambient=0.1,
            diffuse=0.9,
            supersample=1,
        ).image
        return (image * weights).sum()

    vertices = start.clone().requires_grad_(True)
    objective(vertices).backward()
    grad = vertices.grad
    assert torch.isfinite(grad).all()
    for i in grad.norm(dim=1).argsort(descending=True)[:4].tolist():
        for axis in range(3):
            step = torch.zeros_like(start)
            step[i, axis] = 1e-5
            numeric = (objective(start + step) - objective(start - step)) / 2e-5
            assert abs(float(numeric) - float(grad[i, axis])) <= 0.02 * float(grad[i].norm()) + 1e-6
