"""The export folder: complete or absent, never over an earlier export, a clear error for a scene with no
surface, and a turntable with the frames it was asked for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio_ffmpeg
import pytest
import torch
from PIL import Image
from torch import Tensor

import dreamfusion.exporter.pipeline as pipeline
from dreamfusion.checkpoint import checkpoint_path
from dreamfusion.errors import UserError
from dreamfusion.exporter.pipeline import ExportConfig, ExportResult, export_field, export_run
from dreamfusion.exporter.texture import TextureConfig
from dreamfusion.fields.analytic import AnalyticField
from dreamfusion.fields.base import Field, FieldOutput
from dreamfusion.fields.mesh import MeshConfig

FAST = ExportConfig(mesh=MeshConfig(resolution=32), texture=TextureConfig(size=64))


class EmptyField(Field):
    """Transparent everywhere, a faint colour: what a collapsed run looks like."""

    bound = 1.4

    def density(self, points: Tensor) -> Tensor:
        return torch.zeros(points.shape[0])

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        return FieldOutput(self.density(points), torch.full((points.shape[0], 3), 0.5), None)


def test_a_scene_with_no_surface_is_one_line_and_writes_nothing(tmp_path: Path):
    with pytest.raises(UserError, match="no surface") as info:
        export_field(EmptyField(), tmp_path / "export", FAST)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no folder, no hidden staging folder


def test_a_failure_while_writing_leaves_no_folder(tmp_path: Path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pipeline, "write_formats", disk_full)
    with pytest.raises(UserError, match="No space left on device"):
        export_field(AnalyticField("sphere"), tmp_path / "export", FAST)
    assert list(tmp_path.iterdir()) == []


def fresh_copy(run_dir: Path, tmp_path: Path) -> Path:
    """The run folder without the exports other tests wrote into it."""
    return Path(shutil.copytree(run_dir, tmp_path / run_dir.name, ignore=shutil.ignore_patterns("export*")))


def test_a_run_is_exported_beside_earlier_exports_never_over_them(tiny_run: Path, tmp_path: Path):
    run_dir = fresh_copy(tiny_run, tmp_path)
    (run_dir / "export").mkdir()  # an empty folder is free to use
    first = export_run(run_dir, FAST)
    before = {p.name: p.read_bytes() for p in first.folder.iterdir()}
    second = export_run(run_dir, FAST)
    assert first.folder == run_dir / "export" and second.folder == run_dir / "export-2"
    assert {p.name: p.read_bytes() for p in first.folder.iterdir()} == before
    names = {p.name for p in second.files}
    assert names == {"model.glb", "model.obj", "model.mtl", "model.png", "model.ply", "export.json"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in second.files)
    manifest = json.loads((second.folder / "export.json").read_text())
    assert manifest["source"]["step"] == 4 and manifest["mesh"]["faces"] == second.faces
    assert manifest["mesh"]["threshold"] == pytest.approx(second.threshold)
    assert manifest["mesh"]["threshold_method"] == "half opacity (automatic)"
    with pytest.raises(UserError, match="never overwrites"):
        export_field(EmptyField(), first.folder, FAST)


def test_an_earlier_checkpoint_can_be_exported(tiny_run: Path):
    config = ExportConfig(formats=("ply",), mesh=FAST.mesh, texture=FAST.texture)
    result = export_run(tiny_run, config, checkpoint=checkpoint_path(tiny_run / "checkpoints", 2))
    assert json.loads((result.folder / "export.json").read_text())["source"]["step"] == 2
    assert {p.name for p in result.files} == {"model.ply", "export.json"}


def test_a_folder_without_a_checkpoint_is_a_user_error(tmp_path: Path, tiny_run: Path):
    (tmp_path / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    with pytest.raises(UserError, match="no checkpoint"):
        export_run(tmp_path, FAST)


def test_the_turntable_has_the_frames_panels_and_codec_asked_for(mug_export: ExportResult):
    folder = mug_export.folder
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(folder / "turntable.mp4"))
    assert frames == 6 and seconds == pytest.approx(0.6, abs=0.05)
    reader = imageio_ffmpeg.read_frames(str(folder / "turntable.mp4"))
    meta = next(reader)
    reader.close()
    assert meta["codec"].startswith("h264") and tuple(meta["size"]) == (4 * 64, 64)  # four 64 px panels
    with Image.open(folder / "turntable.gif") as gif:
        assert gif.n_frames == 6 and gif.size == (4 * 64, 64)
    with Image.open(folder / "turntable.png") as sheet:
        assert sheet.size == (4 * 64, 4 * 64)  # four frames, one a row, as each has four panels
