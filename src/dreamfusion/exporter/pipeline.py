"""A field, or a run folder's checkpoint, to an export folder: mesh -> texture -> files -> turntable.

Everything that can fail because of the scene (no surface, a threshold above every density) fails before a
file is written. The files are written into a hidden temporary folder beside the destination and renamed
into place at the end, so an export folder is either complete or absent: never an empty or half-written
file. An existing export is never overwritten: `RUN_DIR/export`, then `export-2`, `export-3`, ... (the
rule `dreamfusion generate` applies to run folders).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from dreamfusion import __version__
from dreamfusion.checkpoint import Checkpoint, latest_checkpoint, load_checkpoint
from dreamfusion.errors import ExportError
from dreamfusion.exporter.formats import FORMATS, write_formats, write_json
from dreamfusion.exporter.texture import TextureConfig, TexturedMesh, bake, unwrap
from dreamfusion.exporter.video import TurntableConfig, write_turntable
from dreamfusion.fields.base import Field
from dreamfusion.fields.grid import density_grid
from dreamfusion.fields.mesh import (
    ExtractedMesh,
    MeshConfig,
    clean_mesh,
    grid_resolution,
    marching_cubes,
    surface_threshold,
)
from dreamfusion.files import free_dir
from dreamfusion.refine.stage import RefinedMesh
from dreamfusion.run.config import RunExportConfig, load_field, load_refined_mesh, read_run_config

AXES = "+Y up, front faces +Z (glTF); (x, y, z)_file = (y, z, x)_world, world = +Z up, front +X"
UNITS = "1 unit = 1 metre = 1 world unit of the scene (its bounding sphere has radius 1.4)"


@dataclass(frozen=True)
class ExportConfig:
    formats: tuple[str, ...] = FORMATS  # any of glb, obj, ply
    video: bool = False  # also write the turntable (mp4, gif, contact sheet)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    texture: TextureConfig = dataclasses.field(default_factory=TextureConfig)
    turntable: TurntableConfig = dataclasses.field(default_factory=TurntableConfig)

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise ValueError(f"unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
        if not self.formats and not self.video:
            raise ValueError("nothing to export: name at least one format or ask for the video")


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    files: tuple[Path, ...]  # everything written, export.json included
    threshold: float  # the iso density of the surface
    auto_threshold: bool
    faces: int
    vertices: int  # of the seam-free mesh
    seconds: dict[str, float]  # wall time per stage
    refined: bool = False  # the mesh stage's mesh, not a surface extracted from the field


class _Stages:
    """Times each stage and advances one progress bar per stage."""

    def __init__(self, count: int, progress: bool):
        self.bar = tqdm(total=count, desc="export", unit="stage", disable=not progress, dynamic_ncols=True)
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.bar.set_description(f"export: {name}")
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        self.bar.update(1)


def _mesh_and_texture(
    field: Field, config: ExportConfig, stage: _Stages, refined: RefinedMesh | None = None
) -> tuple[ExtractedMesh, TexturedMesh]:
    """The stages that can fail because of the scene; nothing is written yet. With the mesh stage's mesh
    (`refined`) that mesh is the surface: it is unwrapped and textured, not extracted again."""
    if refined is not None:
        mesh = refined.to_trimesh()
        resolution = round(2.0 * float(field.bound) / float(refined.cell))
        extracted = ExtractedMesh(mesh, float(refined.level), True, resolution, 0, len(mesh.faces))
        with stage("unwrap"):
            atlas = unwrap(mesh, config.texture)
        with stage("bake"):
            textured = bake(field, mesh, atlas, config.texture.size)
        return extracted, textured
    bound = float(field.bound)
    resolution = grid_resolution(field, config.mesh)
    cell = 2.0 * bound / resolution
    with stage("density grid"):
        grid = density_grid(field, resolution, bound)
    with stage("threshold"):
        threshold, auto = surface_threshold(grid, cell, config.mesh)
    with stage("marching cubes"):
        mesh = marching_cubes(grid, threshold, bound, field)
    del grid
    with stage("cleanup"):
        mesh, removed, before = clean_mesh(mesh, config.mesh, resolution)
    with stage("unwrap"):
        atlas = unwrap(mesh, config.texture)
    with stage("bake"):
        textured = bake(field, mesh, atlas, config.texture.size)
    return ExtractedMesh(mesh, threshold, auto, resolution, removed, before), textured


def _write_folder(
    textured: TexturedMesh,
    folder: Path,
    config: ExportConfig,
    stage: _Stages,
    manifest: dict[str, object],
    progress: bool,
) -> list[Path]:
    """Everything into a hidden staging folder beside `folder`, renamed to `folder` at the end; on any
    failure the staging folder is removed. Returns the final paths."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    except OSError as exc:
        raise ExportError(f"cannot write {folder}: {exc.strerror or exc}") from exc
    try:
        written: list[Path] = []
        if config.formats:
            with stage("write"):
                written += write_formats(textured, staging, config.formats)
        if config.video:
            with stage("video"):
                frames = tqdm(
                    total=config.turntable.frames,
                    desc="turntable",
                    unit="frame",
                    disable=not progress,
                    leave=False,
                )
                with frames:
                    written += write_turntable(textured, staging, config.turntable, frames.update)
        written.append(staging / "export.json")
        files = {
            "files": [p.name for p in written],
            "seconds": {k: round(v, 3) for k, v in stage.seconds.items()},
        }
        write_json({**manifest, **files}, staging / "export.json")
        if folder.exists():
            folder.rmdir()  # empty: export_field checked
        os.rename(staging, folder)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"cannot write {folder}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [folder / p.name for p in written]


def export_field(
    field: Field,
    folder: Path,
    config: ExportConfig = ExportConfig(),
    progress: bool = False,
    source: dict[str, str | int] | None = None,
    refined: RefinedMesh | None = None,
) -> ExportResult:
    """Extract, texture and write `field` into `folder`, which must not exist or be empty.

    `source` (e.g. the run folder and checkpoint) is recorded in export.json beside the files. `refined`:
    the mesh stage's mesh, written instead of a surface extracted from the field.
    """
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ExportError(f"{folder} already exists and is not empty; an export never overwrites files")
    stage = _Stages((2 if refined is not None else 6) + bool(config.formats) + config.video, progress)
    try:
        extracted, textured = _mesh_and_texture(field, config, stage, refined)
        manifest: dict[str, object] = {
            "dreamfusion": __version__,
            "source": source or {},
            "mesh": {
                "resolution": extracted.resolution,
                "bound": float(field.bound),
                "threshold": extracted.threshold,
                "threshold_method": (
                    "half opacity (automatic), then refined by the mesh stage"
                    if refined is not None
                    else "half opacity (automatic)"
                    if extracted.auto_threshold
                    else "given"
                ),
                "faces": len(textured.faces),
                "vertices": len(extracted.mesh.vertices),
                "watertight": bool(extracted.mesh.is_watertight),
                "floaters_removed": extracted.removed_components,
                "faces_before_decimation": extracted.faces_before_decimation,
            },
            "texture": {"size": config.texture.size, "atlas_vertices": len(textured.vertices)},
            "axes": AXES,
            "units": UNITS,
        }
        written = _write_folder(textured, folder, config, stage, manifest, progress)
    finally:
        stage.bar.close()
    return ExportResult(
        folder=folder,
        files=tuple(written),
        threshold=extracted.threshold,
        auto_threshold=extracted.auto_threshold,
        faces=len(textured.faces),
        vertices=len(extracted.mesh.vertices),
        seconds=dict(stage.seconds),
        refined=refined is not None,
    )


def finished_run_export(settings: RunExportConfig) -> ExportConfig:
    """What a finished run writes (config.yaml's `export` section): every mesh format, and the turntable of
    the shaded mesh beside its textureless shading unless `export.video` is false."""
    turntable = TurntableConfig(
        frames=settings.video_frames,
        size=settings.video_size,
        fps=settings.video_fps,
        panels=("shaded", "textureless"),
        supersample=settings.video_supersample,
    )
    return ExportConfig(video=settings.video, turntable=turntable)


def load_run_checkpoint(run_dir: Path, checkpoint: Path | None = None) -> tuple[Field, Path, Checkpoint]:
    """The field of a run folder at `checkpoint` (default: its latest), on the CPU in eval mode, with the
    checkpoint's path and the checkpoint itself (its step, and the mesh stage's mesh if it has one)."""
    config = read_run_config(run_dir)
    path = checkpoint if checkpoint is not None else latest_checkpoint(run_dir / "checkpoints")
    if path is None:
        raise ExportError(f"no checkpoint in {run_dir / 'checkpoints'}: nothing to export")
    loaded = load_checkpoint(path)
    return load_field(config, loaded, str(path)), path, loaded


def export_run(
    run_dir: Path | str,
    config: ExportConfig = ExportConfig(),
    progress: bool = False,
    checkpoint: Path | None = None,
) -> ExportResult:
    """Export a run folder's field (latest checkpoint, or `checkpoint`) into RUN_DIR/export (or export-N).

    A run with a mesh stage (`refine.steps`) exports the mesh it refined; a threshold or grid resolution in
    `config.mesh` asks for a surface extracted from the field instead."""
    run_dir = Path(run_dir)
    field, path, loaded = load_run_checkpoint(run_dir, checkpoint)
    # The mesh stage's mesh is the run's surface, unless the flags ask for one extracted from the field.
    from_field = config.mesh.threshold is not None or config.mesh.resolution is not None
    refined = None if from_field else load_refined_mesh(loaded)
    source: dict[str, str | int] = {"run_dir": str(run_dir), "checkpoint": str(path), "step": loaded.step}
    return export_field(field, free_dir(run_dir / "export"), config, progress, source, refined)
