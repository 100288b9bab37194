"""Scoring finished runs (issue #5): what `dreamfusion eval RUN_DIR...` writes into each run as eval.json.

For every run:

- **R-Precision** (paper App. A.3; `rprecision.py`). The field is rendered from `views` azimuths at 30 deg
  elevation on white, lit from the camera. Color: each lambertian render ranks the run's prompt among the
  evaluation suite's captions (`suite.py`). Geo: each textureless render ranks the prompt's shape-only
  caption among the suite's shape captions, because a textureless render shows no colour. A prompt outside
  the suite joins the candidates; one the world cannot read has no shape caption and no Geo score.
- **Geo of the mesh** (`geo_mesh`): the same Geo, of textureless renders of the mesh export writes
  (rasterised, `refine.render.mesh_views`) instead of the field: what a user's mesh looks like, beside
  the paper's measure on the field's renders.
- **Ground truth**, when the prompt is a caption of the procedural world: the volumetric IoU of the
  thresholded density (`geometry.py`) at two levels, a fixed one (`iou`: a cell alone half opaque) and the
  exported mesh's own (`iou_mesh_level`); the Chamfer distance from that mesh to the true surface and the
  mean CIEDE2000 between the field's albedo on that mesh and the true albedo (`surface.py`).
- **Janus**, for a single world object whose kind has a front (mug, chair, house, car, arrow): the packaged
  view classifier reads 8 shaded views and eval.json reports the share it reads as their camera's view
  (front, side, back) and the Janus rate, the share of side and back views read as front (`janus.py`).
- **Time**: the optimisation's own seconds, summed from metrics.jsonl.

A run with a mesh stage (`refine.steps`) has that mesh as its asset: every score above is then of the mesh
(renders by `refine.render.mesh_views`, the same cameras and shading; IoU of the cell centres inside it, at
both keys, `geometry.mesh_occupancy_grid`; Chamfer and colour error on it), and eval.json says so
(`surface`).

The image-text model is the project's world judge by default (`judge.py`), or any CLIP by Hugging Face id or
folder (`image_text.py`); eval.json names the one used.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import trimesh

from dreamfusion.errors import UserError
from dreamfusion.evaluation.geometry import (
    default_bound,
    grid_iou,
    mesh_occupancy_grid,
    occupancy_threshold,
    scene_occupancy_grid,
)
from dreamfusion.evaluation.image_text import ImageTextModel
from dreamfusion.evaluation.janus import (
    ViewClassifier,
    has_front,
    janus_cameras,
    janus_scores,
    load_view_classifier,
    render_janus_views,
)
from dreamfusion.evaluation.rprecision import r_precision, view_ranks
from dreamfusion.evaluation.suite import (
    ELEVATION_DEG,
    RENDERED_VIEWS,
    SuitePrompt,
    evaluation_suite,
    shape_captions,
)
from dreamfusion.evaluation.surface import albedo_delta_e, chamfer_to_scene
from dreamfusion.fields.base import Field
from dreamfusion.fields.grid import density_grid
from dreamfusion.fields.mesh import MeshConfig, extract_mesh
from dreamfusion.files import write_text_atomic
from dreamfusion.refine.render import mesh_views
from dreamfusion.refine.stage import RefinedMesh
from dreamfusion.render.background import SolidBackground
from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.sampling import OccupancyGrid, SamplingConfig
from dreamfusion.render.views import ViewRenders, render_views
from dreamfusion.run.config import load_field, load_latest, load_refined_mesh, read_run_config
from dreamfusion.world import CaptionError, Scene, is_held_out, scene_from_caption

JUDGE = "judge"  # the model name that means the project's own world judge


@dataclass(frozen=True)
class EvalConfig:
    views: int = RENDERED_VIEWS  # azimuths 0, 360/views, ... at elevation_deg
    elevation_deg: float = ELEVATION_DEG
    resolution: int = 64  # pixels of the renders the image-text model sees
    # Samples per ray of the field's renders, at fixed positions, empty space skipped (`asset_views`)
    samples_per_ray: int = 256
    iou_resolution: int = 128  # grid cells per axis for the volumetric IoU
    surface_samples: int = 20_000  # points per direction for Chamfer, on the mesh for the colour error
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.views, self.surface_samples) < 1 or min(self.resolution, self.iou_resolution) < 8:
            raise ValueError("views >= 1, resolution >= 8, iou_resolution >= 8 and surface_samples >= 1")
        SamplingConfig(samples_per_ray=self.samples_per_ray)  # its checks


def load_image_text_model(name: str = JUDGE, device: torch.device | None = None) -> ImageTextModel:
    """`judge`: the world judge shipped with the package; anything else: a CLIP id or local folder."""
    if name == JUDGE:
        from dreamfusion.evaluation.judge import load_packaged_judge

        return load_packaged_judge()
    from dreamfusion.evaluation.image_text import ClipImageText

    return ClipImageText(name, device=device or torch.device("cpu"))


@functools.cache
def packaged_view_classifier() -> ViewClassifier:
    return load_view_classifier()


def world_scene(prompt: str) -> Scene | None:
    """The procedural world's scene for `prompt`, or None when the world cannot read it."""
    try:
        return scene_from_caption(prompt)
    except CaptionError:
        return None


def candidates_for(prompt: str, scene: Scene | None, suite: Sequence[SuitePrompt]) -> tuple[SuitePrompt, ...]:
    """The suite, with the run's own prompt added when it is not one of the suite's captions."""
    if any(p.caption == prompt for p in suite):
        return tuple(suite)
    own = SuitePrompt(prompt, scene, is_held_out(scene)) if scene is not None else None
    return (*suite, own) if own is not None else tuple(suite)


@torch.no_grad()
def rprecision_scores(
    shaded: torch.Tensor,
    textureless: torch.Tensor,
    prompt: str,
    scene: Scene | None,
    model: ImageTextModel,
    suite: Sequence[SuitePrompt],
) -> dict[str, object]:
    """Color and Geo ranks of one run's views (see the module docstring)."""
    prompts = candidates_for(prompt, scene, suite)
    captions = [p.caption for p in prompts]
    if prompt not in captions:  # a prompt the world cannot read: Color only
        captions.append(prompt)
    true = torch.tensor([captions.index(prompt)])
    color = view_ranks(model.embed_images(shaded)[None], model.embed_texts(captions), true)[0]
    result: dict[str, object] = {
        "color": r_precision(color),
        "color_ranks": color.tolist(),
        "color_candidates": len(captions),
    }
    if scene is None:
        return result | {"geo": None, "geo_note": "the procedural world cannot read the prompt"}
    shapes, truth = shape_captions(prompts)
    own = truth[[p.caption for p in prompts].index(prompt)]
    geo = view_ranks(model.embed_images(textureless)[None], model.embed_texts(shapes), torch.tensor([own]))[0]
    return result | {
        "geo": r_precision(geo),
        "geo_ranks": geo.tolist(),
        "geo_candidates": len(shapes),
        "geo_caption": shapes[own],
        "geo_note": "textureless renders against shape-only captions: colour cannot be seen without texture",
    }


def ground_truth_metrics(
    field: Field, scene: Scene, config: EvalConfig, refined: RefinedMesh | None = None
) -> dict[str, object]:
    """IoU, Chamfer and colour error against the scene's exact geometry and albedo.

    Two iso levels of one density grid: `iou` counts a cell occupied where it alone is half opaque
    (`occupancy_threshold`, the same for every field); `iou_mesh_level` uses the exported mesh's own level
    (`half_opacity_threshold`), the surface that Chamfer and the colour error are measured on. With the
    mesh stage's mesh (`refined`) there is one surface: both IoUs are of the cells inside it.
    """
    bound = default_bound(field)
    truth = scene_occupancy_grid(scene, config.iou_resolution, bound)
    if refined is not None:
        vertices, faces = refined.vertices.detach().cpu(), refined.faces.cpu()
        iou = grid_iou(mesh_occupancy_grid(vertices, faces, config.iou_resolution, bound), truth)
        surface = _surface_metrics(field, refined.to_trimesh(), scene, config)
        return (
            {"iou": iou, "iou_level": None, "iou_mesh_level": iou, "mesh_level": None}
            | surface
            | {"surface_note": "the mesh stage's mesh: IoU of the cells inside it, chamfer and delta_e on it"}
        )
    cell = 2.0 * bound / config.iou_resolution
    grid = density_grid(field, config.iou_resolution, bound)
    cell_level = occupancy_threshold(cell)
    result: dict[str, object] = {
        "iou": grid_iou(grid >= cell_level, truth),
        "iou_level": cell_level,
    }
    try:
        extracted = extract_mesh(field, MeshConfig())
    except UserError as exc:  # an empty field has no mesh: the IoU above already says how bad that is
        return result | {
            "iou_mesh_level": 0.0,
            "mesh_level": None,
            "chamfer": None,
            "delta_e": None,
            "mesh_note": str(exc),
        }
    return result | {
        "iou_mesh_level": grid_iou(grid >= extracted.threshold, truth),
        "mesh_level": extracted.threshold,
        **_surface_metrics(field, extracted.mesh, scene, config),
        "surface_note": "chamfer and delta_e use the exported mesh, the iso surface at mesh_level",
    }


def _surface_metrics(field: Field, mesh: trimesh.Trimesh, scene: Scene, config: EvalConfig) -> dict:
    """Chamfer to the true surface and the colour error of the field's albedo on `mesh`."""
    generator = torch.Generator().manual_seed(config.seed)
    chamfer = chamfer_to_scene(mesh, scene, config.surface_samples, generator)
    points = torch.from_numpy(
        trimesh.sample.sample_surface(mesh, config.surface_samples, seed=config.seed)[0]
    ).float()
    with torch.no_grad():
        albedo = field(points).albedo
    return {
        "chamfer": chamfer.chamfer,
        "chamfer_mesh_to_scene": chamfer.mesh_to_scene,
        "chamfer_scene_to_mesh": chamfer.scene_to_mesh,
        "delta_e": albedo_delta_e(points, albedo, scene),
    }


@torch.no_grad()
def field_mesh_views(field: Field, cameras) -> ViewRenders:
    """The surface export writes for `field` (`extract_mesh`), rasterised from `cameras` and coloured by the
    field's albedo. Raises UserError when the field has no surface."""
    mesh = extract_mesh(field, MeshConfig()).mesh
    vertices, faces = torch.from_numpy(mesh.vertices).float(), torch.from_numpy(mesh.faces)
    return mesh_views(vertices, faces, lambda points: field(points).albedo, cameras, LightConfig())


def mesh_geo(
    field: Field,
    refined: RefinedMesh | None,
    scores: dict[str, object],
    cameras,
    prompt: str,
    scene: Scene,
    model: ImageTextModel,
    suite: Sequence[SuitePrompt],
) -> dict[str, object]:
    """Geo of the exported mesh (the surface `extract_mesh` gives, which export writes), rasterised from the
    same cameras: what a user's mesh shows, beside the paper's renders of the field. For a run with a mesh
    stage the scores above are of its mesh already."""
    if refined is not None:
        return {"geo_mesh": scores["geo"]}
    try:
        views = field_mesh_views(field, cameras)
    except UserError:  # no surface: nothing to show
        return {"geo_mesh": 0.0}
    geo = rprecision_scores(views.shaded, views.textureless, prompt, scene, model, suite)
    return {"geo_mesh": geo["geo"], "geo_mesh_ranks": geo["geo_ranks"]}


def asset_views(
    field: Field, refined: RefinedMesh | None, cameras, samples_per_ray: int = EvalConfig.samples_per_ray
) -> ViewRenders:
    """The run's asset from `cameras`: the field by volume rendering, or the mesh stage's mesh.

    The field's renders are deterministic (each sample at its segment's centre), so they must be fine enough
    to have converged: at training's 48-64 samples per ray, a surface sharper than the spacing (about 0.04)
    shows contour rings, which cost a fitted chair a quarter of its Geo (README, "Surface options"). 256
    samples, with the cells where the field could not be seen skipped (`OccupancyGrid.of_field`, which
    changes no pixel by more than 1e-3), take about as long as 64 samples did without skipping.
    """
    if refined is None:
        sampling = SamplingConfig(samples_per_ray=samples_per_ray)
        occupancy = OccupancyGrid.of_field(field)
        return render_views(field, SolidBackground(), cameras, sampling, LightConfig(), occupancy)
    return mesh_views(
        refined.vertices, refined.faces, lambda points: field(points).albedo, cameras, LightConfig()
    )


def optimisation_seconds(run_dir: Path) -> float | None:
    """Seconds the run's steps took, summed from metrics.jsonl (None without one)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return float(sum(r.get("seconds", 0.0) for r in records))


def evaluate_run(
    run_dir: Path,
    model: ImageTextModel,
    config: EvalConfig = EvalConfig(),
    suite: Sequence[SuitePrompt] | None = None,
) -> dict[str, object]:
    """Every score of one run folder, as eval.json holds them."""
    run_dir = Path(run_dir)
    run_config = read_run_config(run_dir)
    checkpoint = load_latest(run_dir)
    field = load_field(run_config, checkpoint, str(run_dir))
    refined = load_refined_mesh(checkpoint)
    prompt = run_config.prompt.text
    scene = world_scene(prompt)
    cameras = orbit_cameras(config.views, config.resolution, config.elevation_deg)
    renders = asset_views(field, refined, cameras, config.samples_per_ray)
    suite = suite or evaluation_suite()
    scores = rprecision_scores(renders.shaded, renders.textureless, prompt, scene, model, suite)
    if scene is not None:
        scores |= mesh_geo(field, refined, scores, cameras, prompt, scene, model, suite)
    truth = ground_truth_metrics(field, scene, config, refined) if scene is not None else None
    janus = None
    if has_front(scene):
        if refined is None:
            shaded, azimuths = render_janus_views(field)
        else:
            views = janus_cameras()
            shaded, azimuths = asset_views(field, refined, views).shaded, views.azimuth_deg
        janus = janus_scores(packaged_view_classifier(), shaded, azimuths)
    return {
        "run": run_dir.name,
        "prompt": prompt,
        "world_caption": scene is not None,
        "held_out": None if scene is None else is_held_out(scene),
        "surface": "field (volume renders)" if refined is None else "mesh (the mesh stage's, rasterised)",
        "image_text_model": model.name,
        "config": asdict(config),
        "r_precision": scores,
        "ground_truth": truth,
        "janus": janus,
        "optimisation_seconds": optimisation_seconds(run_dir),
    }


def free_eval_path(run_dir: Path) -> Path:
    """eval.json, or eval-2.json, ...: an earlier evaluation is never overwritten."""
    path, n = run_dir / "eval.json", 1
    while path.exists():
        n += 1
        path = run_dir / f"eval-{n}.json"
    return path


def write_eval(run_dir: Path, result: dict[str, object]) -> Path:
    path = free_eval_path(Path(run_dir))
    write_text_atomic(path, json.dumps(result, indent=2) + "\n")  # a killed eval leaves no half file
    return path


def summary_line(result: dict[str, object]) -> str:
    """One line per run for the terminal."""
    scores = result["r_precision"]
    truth = result["ground_truth"] or {}

    def pct(x: object) -> str:
        return "-" if x is None else f"{100 * float(x):.0f}%"

    def num(x: object, digits: int = 3) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.{digits}f}"

    janus = result.get("janus")
    janus_part = (
        f", views right {pct(janus['view_accuracy'])}, Janus {pct(janus['janus_rate'])}" if janus else ""
    )
    return (
        f"{result['run']}: R-Prec Color {pct(scores['color'])}, Geo {pct(scores.get('geo'))} "
        f"(mesh {pct(scores.get('geo_mesh'))}), "
        f"IoU {num(truth.get('iou'))}, Chamfer {num(truth.get('chamfer'))}, "
        f"colour error {num(truth.get('delta_e'), 1)} dE{janus_part}"
    )
