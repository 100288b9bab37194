"""The mesh stage in a run: it starts from the field's surface, checkpoints and resumes like the NeRF
steps, and the mesh it leaves is what export writes and eval scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import trimesh

from dreamfusion.checkpoint import load_checkpoint
from dreamfusion.config import dump_yaml
from dreamfusion.evaluation.geometry import mesh_occupancy_grid
from dreamfusion.evaluation.runs import EvalConfig, evaluate_run
from dreamfusion.exporter.pipeline import ExportConfig, export_run
from dreamfusion.fields.grid import grid_points
from dreamfusion.refine.stage import RefinedMesh, uniform_laplacian, unique_edges
from dreamfusion.run.config import load_latest, load_refined_mesh
from helpers import caption_oracle, make_trainer, stop_at, target_config

SMALL = EvalConfig(views=2, resolution=16, iou_resolution=32, surface_samples=500)
MESH_STAGE = ("refine.steps=6", "train.checkpoint_every=4", "prompt.text=a red sphere")


def _config():
    return target_config("sphere", 12, 16, *MESH_STAGE)


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "sphere"
    trainer = make_trainer(_config(), run_dir)
    (run_dir / "config.yaml").write_text(dump_yaml(trainer.config))
    assert trainer.train(progress=False, handle_sigint=False)
    return run_dir


def test_the_mesh_stage_follows_the_nerf_steps_and_is_checkpointed(mesh_run: Path):
    records = [json.loads(line) for line in (mesh_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 19))
    assert all(r["mesh_smoothness"] is None for r in records[:12])
    assert all(r["mesh_smoothness"] is not None for r in records[12:])
    checkpoint = load_latest(mesh_run)
    assert checkpoint.step == 18
    mesh = load_refined_mesh(checkpoint)
    assert mesh is not None and mesh.offsets.abs().max() > 0  # the vertices moved
    names = sorted(p.name for p in (mesh_run / "checkpoints").iterdir())
    assert "step_0000012.safetensors" in names  # the end of the NeRF steps is always kept
    assert "mesh" not in load_checkpoint(mesh_run / "checkpoints" / "step_0000012.safetensors").modules


def test_export_writes_the_refined_mesh_and_eval_scores_it(mesh_run: Path):
    mesh = load_refined_mesh(load_latest(mesh_run))
    result = export_run(mesh_run, ExportConfig(formats=("ply",), video=False))
    assert result.refined
    manifest = json.loads((result.folder / "export.json").read_text())
    assert "mesh stage" in manifest["mesh"]["threshold_method"]
    assert manifest["mesh"]["vertices"] == len(mesh.start)
    ply = trimesh.load(result.folder / "model.ply", process=False)
    assert len(ply.faces) == len(mesh.faces)

    scores = evaluate_run(mesh_run, caption_oracle("a red sphere", "a sphere"), SMALL)
    assert scores["surface"].startswith("mesh")
    truth = scores["ground_truth"]
    assert truth["iou"] == truth["iou_mesh_level"] and 0.0 < truth["iou"] <= 1.0
    assert truth["chamfer"] is not None


def test_resuming_inside_the_mesh_stage_equals_an_uninterrupted_run(mesh_run: Path, tmp_path: Path):
    first = make_trainer(_config(), tmp_path / "split")
    stop_at(first, 14)  # inside the mesh stage, not at a checkpoint
    assert not first.train(progress=False, handle_sigint=False)
    assert first.step == 15
    second = make_trainer(_config(), tmp_path / "split")
    second.restore(load_latest(tmp_path / "split"))
    assert second.mesh is not None and second.step == 15
    assert second.train(progress=False, handle_sigint=False)
    straight = load_refined_mesh(load_latest(mesh_run))
    assert torch.equal(second.mesh.offsets.detach(), straight.offsets)


def test_the_laplacian_vanishes_on_a_flat_regular_patch_and_not_on_a_bump():
    grid = trimesh.creation.box().subdivide().subdivide()  # flat faces, evenly split
    vertices = torch.from_numpy(grid.vertices).float()
    edges = unique_edges(torch.from_numpy(grid.faces))
    flat = uniform_laplacian(vertices, edges)
    # Interior vertices of a face (away from the cube's edges) have a flat, symmetric neighbourhood.
    interior = (vertices.abs() < 0.49).sum(1) == 2
    assert interior.any() and flat[interior].abs().max() < 1e-6
    bumped = vertices.clone()
    bumped[interior.nonzero()[0]] *= 1.1
    assert uniform_laplacian(bumped, edges).abs().max() > 1e-3


def test_a_refined_mesh_survives_its_state_dict():
    sphere = trimesh.creation.icosphere(2)
    mesh = RefinedMesh.from_trimesh(sphere, cell=0.02, level=3.0)
    assert float(mesh.displacement()) == 0.0
    with torch.no_grad():
        mesh.offsets += 0.01
    assert abs(float(mesh.displacement()) - 3 * 0.25) < 1e-5  # (0.01 / 0.02)^2 per axis
    again = RefinedMesh.from_state({k: v.clone() for k, v in mesh.state_dict().items()})
    assert torch.equal(again.vertices, mesh.vertices) and torch.equal(again.faces, mesh.faces)
    assert float(again.level) == 3.0 and abs(float(again.smoothness()) - float(mesh.smoothness())) < 1e-9


def test_mesh_occupancy_is_exact_for_a_box_and_a_sphere():
    points = grid_points(48, 1.0).reshape(-1, 3)
    box = trimesh.creation.box((0.5, 0.8, 0.6))
    box.apply_translation((0.1013, 0.2017, -0.0519))
    inside = mesh_occupancy_grid(torch.from_numpy(box.vertices), torch.from_numpy(box.faces), 48, 1.0)
    lo, hi = (torch.tensor(b).float() for b in box.bounds)
    assert torch.equal(inside.reshape(-1), ((points > lo) & (points < hi)).all(1))
    sphere = trimesh.creation.icosphere(5, radius=0.7)
    inside = mesh_occupancy_grid(torch.from_numpy(sphere.vertices), torch.from_numpy(sphere.faces), 48, 1.0)
    assert torch.equal(inside.reshape(-1), points.norm(dim=1) < 0.7)


def test_a_threshold_asks_export_for_the_fields_surface_instead(mesh_run: Path):
    from dreamfusion.fields.mesh import MeshConfig

    result = export_run(mesh_run, ExportConfig(formats=("ply",), video=False, mesh=MeshConfig(threshold=5.0)))
    assert not result.refined and result.threshold == 5.0
    manifest = json.loads((result.folder / "export.json").read_text())
    assert manifest["mesh"]["threshold_method"] == "given"
