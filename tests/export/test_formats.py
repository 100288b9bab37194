"""The exported files, read back by independent readers: the Khronos glTF Validator for the GLB (zero errors),
trimesh for GLB, OBJ and PLY (face counts, texture, vertex colours, glTF's +Y-up frame)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from dreamfusion.exporter.pipeline import ExportConfig, ExportResult, export_field
from dreamfusion.exporter.texture import TextureConfig
from dreamfusion.fields.base import Field, FieldOutput
from dreamfusion.fields.mesh import MeshConfig

ROOT = Path(__file__).resolve().parents[2]
VALIDATE = Path(__file__).with_name("validate_gltf.mjs")
BLUE = np.array([0.15, 0.3, 0.85]) * 255


def gltf_validator_report(path: Path) -> dict:
    """The validator's report for `path`. Without node, CI fails and a developer's run skips; without the npm
    package (package.json at the repository root), both fail and say how to install it."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed: the glTF Validator test needs Node.js and `npm ci`")
        pytest.skip("node is not installed, so the Khronos glTF Validator cannot run")
    if not (ROOT / "node_modules" / "gltf-validator").is_dir():
        pytest.fail(f"the gltf-validator npm package is missing: run `npm ci` in {ROOT}")
    done = subprocess.run([node, str(VALIDATE), str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def texture_agrees_with_vertex_colours(textured: trimesh.Trimesh, ply: trimesh.Trimesh) -> float:
    """Share of the yellow badge's vertices whose texture colour (looked up by trimesh at their UVs) matches
    the PLY's vertex colour at the same position, within 6/255. The badge is a few % of the mug, so a
    flipped or shifted UV convention, which reads blue there, scores near 0."""
    from scipy.spatial import cKDTree

    distance, nearest = cKDTree(ply.vertices).query(textured.vertices)
    assert distance.max() < 1e-5  # the same surface points
    looked_up = np.asarray(textured.visual.to_color().vertex_colors)[:, :3].astype(float)
    expected = np.asarray(ply.visual.vertex_colors)[nearest, :3].astype(float)
    badge = np.abs(expected - BLUE).max(1) > 100
    assert 0.005 < badge.mean() < 0.2
    return float((np.abs(looked_up - expected).max(1) <= 6)[badge].mean())


def test_the_glb_passes_the_khronos_gltf_validator(mug_export: ExportResult):
    report = gltf_validator_report(mug_export.folder / "model.glb")
    issues = report["issues"]
    assert issues["numErrors"] == 0, issues["messages"]
    assert issues["numWarnings"] == 0, issues["messages"]
    info = report["info"]
    assert info["version"] == "2.0" and info["hasTextures"] and info["materialCount"] == 1
    assert info["totalTriangleCount"] == mug_export.faces


class NoisyBall(Field):
    """A ball whose surface is wrinkled by smooth random noise, like a NeRF's: decimating it hard folds
    thin parts flat, which must not leave zero normals or coincident triangles in the files."""

    bound = 1.4

    def __init__(self):
        super().__init__()
        self.noise = torch.randn(1, 1, 24, 24, 24, generator=torch.Generator().manual_seed(0))

    def density(self, points: Tensor) -> Tensor:
        grid = (points / self.bound).view(1, -1, 1, 1, 3)
        noise = F.grid_sample(self.noise, grid, align_corners=True).view(-1)
        return 400.0 * (0.5 - points.norm(dim=-1) + 0.15 * noise).clamp_min(0.0)

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        return FieldOutput(self.density(points), torch.full((points.shape[0], 3), 0.5), None)


def test_a_noisy_surface_decimated_hard_still_validates(tmp_path: Path):
    config = ExportConfig(
        formats=("glb",), mesh=MeshConfig(resolution=64, max_faces=500), texture=TextureConfig(size=64)
    )
    result = export_field(NoisyBall(), tmp_path / "export", config)
    issues = gltf_validator_report(result.folder / "model.glb")["issues"]
    assert issues["numErrors"] == 0, issues["messages"]


def test_the_glb_is_textured_and_in_gltf_axes(mug_export: ExportResult):
    scene = trimesh.load(mug_export.folder / "model.glb", force="scene")
    (mesh,) = scene.geometry.values()
    assert len(mesh.faces) == mug_export.faces
    material = mesh.visual.material
    assert material.baseColorTexture.size == (256, 256)
    assert material.metallicFactor == 0.0 and material.roughnessFactor == 1.0
    # World +Z up, front +X and handle +Y become +Y up, front +Z and handle +X.
    lo, hi = mesh.bounds
    assert hi[1] == pytest.approx(0.35, abs=0.03) and lo[1] == pytest.approx(-0.35, abs=0.03)  # height
    assert hi[0] == pytest.approx(0.65, abs=0.03)  # the handle, 0.42 + 0.18 + 0.05 along world +Y
    assert hi[2] == pytest.approx(0.45, abs=0.03)  # the badge, 0.33 + 0.12 along world +X
    assert lo[0] == pytest.approx(-0.35, abs=0.03) and lo[2] == pytest.approx(-0.35, abs=0.03)
    ply = trimesh.load(mug_export.folder / "model.ply", force="mesh")
    assert texture_agrees_with_vertex_colours(mesh, ply) > 0.9


def test_the_obj_loads_with_its_texture(mug_export: ExportResult):
    folder = mug_export.folder
    assert "map_Kd model.png" in (folder / "model.mtl").read_text()
    mesh = trimesh.load(folder / "model.obj", force="mesh")
    assert len(mesh.faces) == mug_export.faces
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    assert mesh.visual.material.image.size == (256, 256)
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2)
    ply = trimesh.load(folder / "model.ply", force="mesh")
    assert texture_agrees_with_vertex_colours(mesh, ply) > 0.9


def test_the_ply_loads_with_vertex_colours(mug_export: ExportResult):
    mesh = trimesh.load(mug_export.folder / "model.ply", force="mesh")
    assert len(mesh.faces) == mug_export.faces and len(mesh.vertices) == mug_export.vertices
    assert mesh.is_watertight  # seams welded: one vertex per point of the surface
    colours = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float)
    assert np.median(np.abs(colours - BLUE).max(1)) < 2
    assert (np.abs(colours - np.array([0.95, 0.8, 0.1]) * 255).max(1) < 2).any()  # the yellow badge
