"""The Python API (issue #18): generate / resume / export / evaluate, the Run they return, progress events,
the stop flag, typed errors with the CLI's messages, and the turntable every run writes."""

from __future__ import annotations

import threading
from pathlib import Path

import imageio_ffmpeg
import pytest

import dreamfusion
from dreamfusion.api import Progress, Run
from dreamfusion.commands import main
from dreamfusion.errors import ModelError, RunFolderError, SettingsError, UserError

SMALL = (
    "train.resolution=16",
    "sampling.samples_per_ray=16",
    "sampling.occupancy_resolution=16",
    "train.checkpoint_every=2",
    "train.validation_every=3",
    "train.validation_views=2",
    "export.video_frames=4",
    "export.video_size=32",
)


def small_run(out: Path, **kwargs) -> Run:
    kwargs.setdefault("steps", 6)
    return dreamfusion.generate("a red ball", preset="target", out=out, overrides=SMALL, threads=1, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, list[Progress]]:
    events: list[Progress] = []
    run = small_run(tmp_path_factory.mktemp("api") / "ball", on_progress=events.append)
    return run, events


def test_generate_returns_the_run_with_its_files(finished):
    run, _ = finished
    assert run.finished and run.step == 6 and run.prompt == "a red ball"
    assert run.config.train.steps == 6 and len(run.metrics) == 6
    assert set(run.mesh) == {"glb", "obj", "ply"} and all(p.stat().st_size > 0 for p in run.mesh.values())
    assert [p.name for p in run.grids] == ["step_0000003.png", "step_0000006.png"]
    assert run.video is not None and run.gif is not None and run.contact_sheet is not None
    assert Run.open(run.folder).mesh == run.mesh


def test_the_turntable_is_h264_with_a_shaded_and_a_textureless_panel(finished):
    run, _ = finished
    reader = imageio_ffmpeg.read_frames(str(run.video))
    meta = next(reader)
    frames = list(reader)
    assert meta["codec"] == "h264" and tuple(meta["size"]) == (64, 32)  # two 32-pixel panels
    assert len(frames) == 4


def test_progress_reports_every_step_with_rate_and_eta(finished):
    _, events = finished
    stages = [e.stage for e in events]
    assert stages == ["start", *["train"] * 6, "export", "done"]
    steps = [e for e in events if e.stage == "train"]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6] and all(e.total == 6 for e in steps)
    assert all(e.it_per_s > 0 and e.eta_s >= 0 and e.loss is not None for e in steps)
    assert steps[-1].eta_s == 0
    assert [e.grid.name for e in steps if e.grid is not None] == ["step_0000003.png", "step_0000006.png"]


def test_no_video_writes_meshes_only(tmp_path):
    run = small_run(tmp_path / "quiet", steps=2, video=False)
    assert set(run.mesh) == {"glb", "obj", "ply"} and run.video is None and run.gif is None


def test_stop_flag_saves_a_checkpoint_and_resume_finishes(tmp_path):
    stop = threading.Event()

    def stop_at_two(event: Progress) -> None:
        if event.stage == "train" and event.step == 2:
            stop.set()

    run = small_run(tmp_path / "stopped", on_progress=stop_at_two, stop=stop)
    # The flag is read after the next step, which is then saved although 3 is not a checkpoint step.
    assert not run.finished and run.step == 3
    assert (run.folder / "checkpoints" / "step_0000003.safetensors").is_file() and run.mesh == {}
    resumed = dreamfusion.resume(run.folder, threads=1)
    assert resumed.finished and resumed.step == 6 and "glb" in resumed.mesh
    assert [r["step"] for r in resumed.metrics] == [1, 2, 3, 4, 5, 6]


def test_a_run_killed_while_exporting_is_exported_by_resume(tmp_path, capsys, monkeypatch):
    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("dreamfusion.exporter.pipeline.write_turntable", killed)
        with pytest.raises(KeyboardInterrupt):
            small_run(tmp_path / "killed", steps=2)
    run = Run.open(tmp_path / "killed")
    assert run.finished and run.export_folder is None  # the half-written export was never renamed in
    assert main(["resume", str(run.folder), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and "exporting" in out and "mesh:" in out and "video:" in out
    assert run.video is not None and set(run.mesh) == {"glb", "obj", "ply"}
    assert main(["resume", str(run.folder)]) == 0  # exported now: nothing more to do
    assert sorted(p.name for p in run.folder.glob("export*")) == ["export"]


def test_export_and_evaluate(finished):
    run, _ = finished
    result = dreamfusion.export(run.folder)
    assert result.folder.name == "export-2" and run.export_folder == result.folder
    scores = dreamfusion.evaluate(run.folder, views=2, resolution=32)
    assert scores["world_caption"] and 0.0 <= scores["ground_truth"]["iou"] <= 1.0
    assert run.evaluation == scores


@pytest.mark.parametrize(
    ("call", "kind", "cli_argv"),
    [
        (lambda: dreamfusion.generate("  "), SettingsError, ["generate", "  "]),
        (
            lambda: dreamfusion.generate("a ball", overrides=["train.stepz=3"]),
            SettingsError,
            ["generate", "a ball", "--set", "train.stepz=3"],
        ),
        (
            lambda: dreamfusion.generate("a ball", model="/nonexistent/model"),
            ModelError,
            ["generate", "a ball", "--model", "/nonexistent/model"],
        ),
        (lambda: dreamfusion.resume("/nonexistent/run"), RunFolderError, ["resume", "/nonexistent/run"]),
    ],
)
def test_errors_are_typed_with_the_clis_message(call, kind, cli_argv, capsys):
    with pytest.raises(kind) as caught:
        call()
    assert isinstance(caught.value, UserError)
    assert main(cli_argv) == 2
    assert capsys.readouterr().err.strip() == f"dreamfusion: error: {' '.join(str(caught.value).split())}"


def test_every_api_name_stays_a_function_after_the_whole_package_is_imported():
    # A subpackage named like an API function (dreamfusion/batch/ once did) replaces the function on the
    # package as soon as anything imports it, so `dreamfusion.batch(...)` worked only before the first batch.
    import importlib
    import pkgutil

    import dreamfusion

    for module in pkgutil.walk_packages(dreamfusion.__path__, "dreamfusion."):
        if module.name != "dreamfusion.__main__":
            importlib.import_module(module.name)
    for name in ("generate", "resume", "export", "evaluate", "batch"):
        assert callable(getattr(dreamfusion, name)), name
