"""Shared fixtures for the export tests: one analytic mug exported once (with a small turntable), and one
tiny run folder written by the real trainer. Everything on one thread, as the other tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from dreamfusion.config import dump_yaml
from dreamfusion.exporter.pipeline import ExportConfig, ExportResult, export_field
from dreamfusion.exporter.texture import TextureConfig
from dreamfusion.exporter.video import TurntableConfig
from dreamfusion.fields.analytic import AnalyticField
from dreamfusion.fields.mesh import MeshConfig
from helpers import make_trainer, target_config

# Small but faithful: the mug's handle (0.1 thick) spans several cells of a 96^3 grid over [-1.4, 1.4]^3.
SMALL = ExportConfig(
    video=True,
    mesh=MeshConfig(resolution=96),
    texture=TextureConfig(size=256),
    turntable=TurntableConfig(
        frames=6,
        size=64,
        fps=10,
        panels=("shaded", "normals", "textureless", "depth"),
        contact_sheet_frames=4,
    ),
)


@pytest.fixture(scope="package")
def mug_export(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """AnalyticField("mug") exported with every format and a 6-frame turntable with all four panels."""
    return export_field(AnalyticField("mug"), tmp_path_factory.mktemp("mug") / "export", SMALL)


@pytest.fixture(scope="package")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder (config.yaml + checkpoints/) from 4 steps of the target guidance at 16x16: the field is
    still close to its initial blob, which has a surface."""
    run_dir = tmp_path_factory.mktemp("runs") / "ball"
    config = target_config("sphere", 4, 16, "train.checkpoint_every=2", "sampling.samples_per_ray=16")
    trainer = make_trainer(config, run_dir)
    (run_dir / "config.yaml").write_text(dump_yaml(trainer.config))
    assert trainer.train(progress=False, handle_sigint=False)
    return run_dir
