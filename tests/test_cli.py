"""The `dreamfusion` command, through its entry point `dreamfusion.commands.main` (and once as a process).

Every mistake a user can make must end in one line on stderr, exit code 2 and nothing half-written; full
200-step runs with tiny random diffusion priors in the Stable Diffusion and DeepFloyd IF layouts must write
a complete run folder; a stopped run must resume to the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dreamfusion.commands import EXIT_INTERRUPTED, EXIT_USER_ERROR, main
from dreamfusion.config import from_dict, load_yaml_overrides
from dreamfusion.run.config import Config
from dreamfusion.testing import save_tiny_pixel_diffusion, save_tiny_stable_diffusion
from dreamfusion.training.trainer import Trainer

# Small enough for a 2-core CPU, still every stage of a real step: occupancy, normals, shading, validation.
SMALL = [
    "--set", "train.resolution=16",
    "--set", "sampling.samples_per_ray=16",
    "--set", "sampling.occupancy_resolution=16",
    "--set", "train.checkpoint_every=100",
    "--set", "train.validation_every=100",
    "--set", "train.validation_views=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Two VAE levels: 8x8 latents decode to 16 px, the render size, so no step is spent on resizing.
    return save_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd"), sample_size=8, vae_levels=2)


@pytest.fixture(scope="module")
def tiny_if(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pixel_diffusion(tmp_path_factory.mktemp("tiny-if"), image_size=16)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command line in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str) -> str:
    assert code == EXIT_USER_ERROR, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error:" in lines[0] and "Traceback" not in err
    return lines[0]


def metric_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------------
# Help


def test_top_level_help(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    assert "Score Distillation Sampling" in out
    assert "generate" in out and "resume" in out and "dreamfusion COMMAND --help" in out


def test_generate_help_mentions_every_flag(capsys):
    code, out, _ = cli(capsys, "generate", "--help")
    assert code == 0
    for flag in ("PROMPT", "--guidance", "--model", "--steps", "--seed", "--out", "--device", "--negative"):
        assert flag in out
    for word in ("pixel", "stable-diffusion", "target", "--set", "--preset", "examples:"):
        assert word in out


def test_resume_help(capsys):
    code, out, _ = cli(capsys, "resume", "--help")
    assert code == 0
    assert "RUN_DIR" in out and "checkpoint" in out


def test_version(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.startswith("dreamfusion ")


# ----------------------------------------------------------------------------------------------------------
# Bad input to `generate`: one line, exit 2, no run folder


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([""], "prompt is empty"),
        (["  \t "], "prompt is empty"),
        (["a chair", "--set", "prompt.text= "], "prompt is empty"),
        (["a chair", "--steps", "0"], "--steps: must be > 0"),
        (["a chair", "--steps", "-3"], "--steps: must be > 0"),
        (["a chair", "--steps", "many"], "--steps: expected an integer"),
        (["a chair", "--set", "train.steps=0"], "steps must be > 0"),
        (["a chair", "--set", "train.resolution=30"], "resolution must be a multiple of 8"),
        (["a chair", "--set", "optim.lr_grid=-1"], "learning rates must be >= 0"),
        (["a chair", "--set", "optim.lr_grdi=1"], "did you mean 'optim.lr_grid'?"),
        (["a chair", "--set", "train.steps"], "is not key=value"),
        (["a chair", "--guidance", "imagen"], "invalid choice: 'imagen'"),
        (["a chair", "--preset", "fast"], "unknown preset 'fast'"),
        (["a chair", "--model", "/nonexistent/path"], "does not exist"),
        (["a chair", "--device", "tpu"], "'tpu'"),
        (["a chair", "--seed", "-1"], "--seed: must be in [0, 2**32 - 2)"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_generate_rejects_bad_input(capsys, tmp_path, tiny_sd, argv, expected):
    out = tmp_path / "run"
    # A valid model, so that each case fails on its own mistake (a later --model wins).
    valid = ["--guidance", "stable-diffusion", "--model", str(tiny_sd), "--out", str(out)]
    code, _, err = cli(capsys, "generate", *valid, *argv)
    assert expected in assert_one_line_error(code, err)
    assert not out.exists()


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("guidance.target.shape=cube", "shape must be one of"),
        ("guidance.sds.t_min=0.99", "t_min"),
        ("guidance.sds.grad_clip=-1", "grad_clip"),
        ("field.kind=voxels", "kind"),
        ("field.triplane.resolution=0", "resolution"),
        (f"train.seed={2**64}", "seed"),
    ],
)
def test_settings_checked_before_anything_runs(capsys, tmp_path, tiny_sd, setting, expected):
    out = tmp_path / "run"
    kind = "target" if setting.startswith("guidance.target") else "stable-diffusion"
    argv = ["a chair", "--guidance", kind, "--model", str(tiny_sd), "--steps", "1", "--out", str(out)]
    code, _, err = cli(capsys, "generate", *argv, *SMALL, "--set", setting)
    assert expected in assert_one_line_error(code, err)
    assert not out.exists()


def test_no_command(capsys):
    code, _, err = cli(capsys)
    assert "required: COMMAND" in assert_one_line_error(code, err)


def test_cuda_on_a_machine_without_it(capsys, tmp_path, tiny_sd):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    code, _, err = cli(
        capsys, "generate", "a chair", "--model", str(tiny_sd), "--device", "cuda", "--out", str(out)
    )
    assert "no CUDA device" in assert_one_line_error(code, err)
    assert not out.exists()


def test_missing_model_leaves_no_run_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default run folder is runs/<prompt>-seed<S> under the working folder
    code, _, err = cli(capsys, "generate", "a chair", "--guidance", "pixel", "--model", "/nonexistent/path")
    assert "'/nonexistent/path' does not exist" in assert_one_line_error(code, err)
    assert list(tmp_path.iterdir()) == []
    # Also where the default folder is taken: no "writing to runs/a-chair-seed0-2" before the error.
    (tmp_path / "runs" / "a-chair-seed0").mkdir(parents=True)
    (tmp_path / "runs" / "a-chair-seed0" / "config.yaml").write_text("an earlier run\n")
    code, _, err = cli(capsys, "generate", "a chair", "--guidance", "pixel", "--model", "/nonexistent/path")
    assert "'/nonexistent/path' does not exist" in assert_one_line_error(code, err)
    assert list((tmp_path / "runs").iterdir()) == [tmp_path / "runs" / "a-chair-seed0"]


def test_model_of_the_wrong_layout(capsys, tmp_path, tiny_if):
    out = tmp_path / "run"
    argv = [
        "generate",
        "a chair",
        "--guidance",
        "stable-diffusion",
        "--model",
        str(tiny_if),
        "--out",
        str(out),
    ]
    code, _, err = cli(capsys, *argv)
    assert "lacks vae/" in assert_one_line_error(code, err)
    assert not out.exists()


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_unwritable_output_folder(capsys, tmp_path, tiny_sd, where):
    # Tests may run as root, whom permission bits do not stop: a path under a regular file, or in a
    # filesystem that takes no new folders, cannot be created by anyone.
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    if where == "in /proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc here")
        out = Path("/proc/dreamfusion-test/run")
    else:
        out = blocker / "run"
    argv = [
        "generate",
        "a chair",
        "--guidance",
        "stable-diffusion",
        "--model",
        str(tiny_sd),
        "--out",
        str(out),
    ]
    code, _, err = cli(capsys, *argv)
    assert "cannot create the run folder" in assert_one_line_error(code, err)
    assert blocker.read_text() == "keep me"


def test_unwritable_output_folder_is_found_before_the_model_loads(capsys, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("")
    argv = ["generate", "a chair", "--guidance", "pixel", "--model", "/nonexistent/path"]
    code, _, err = cli(capsys, *argv, "--out", str(blocker / "run"))
    assert "cannot create the run folder" in assert_one_line_error(code, err)


def test_ctrl_c_while_loading_leaves_nothing(capsys, tmp_path, monkeypatch):
    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("dreamfusion.api.load_guidance", interrupted)
    out = tmp_path / "run"
    code, _, err = cli(capsys, "generate", "a ball", "--preset", "target", "--out", str(out))
    assert code == EXIT_INTERRUPTED and "interrupted" in err and "Traceback" not in err
    assert not out.exists()


def test_existing_run_folder_is_never_overwritten(capsys, tmp_path):
    out = tmp_path / "ball"
    out.mkdir()
    (out / "config.yaml").write_text("an earlier run\n")
    argv = ["generate", "a ball", "--preset", "target", "--steps", "2", "--out", str(out), *SMALL]
    code, stdout, err = cli(capsys, *argv)
    assert code == 0, err
    assert (out / "config.yaml").read_text() == "an earlier run\n"
    assert list(out.iterdir()) == [out / "config.yaml"]
    fresh = tmp_path / "ball-2"
    assert f"writing to {fresh}" in err and str(fresh) in stdout
    assert metric_steps(fresh) == [1, 2]


# ----------------------------------------------------------------------------------------------------------
# Over-long prompts


def test_long_prompt_warns_on_every_run(capsys, tmp_path, tiny_sd):
    """The text embeddings are cached on disk after the first run; the warning must not go with them."""
    prompt = " ".join(["a small red wooden chair with a cat on it"] * 12)  # far beyond CLIP's 77 tokens
    argv = ["generate", prompt, "--guidance", "stable-diffusion", "--model", str(tiny_sd), "--steps", "1"]
    warnings = []
    for run in ("cold-cache", "warm-cache"):
        code, _, err = cli(capsys, *argv, "--out", str(tmp_path / run), *SMALL)
        assert code == 0, err
        assert "truncated" in err and "front view" in err  # the view word is what gets cut off
        assert all(line.startswith("warning: ") for line in err.splitlines())
        warnings.append(err)
    assert warnings[0] == warnings[1]


# ----------------------------------------------------------------------------------------------------------
# `resume` with bad input


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 20-step target run with checkpoints at 10 and 20."""
    run_dir = tmp_path_factory.mktemp("short") / "run"
    argv = ["generate", "a ball", "--preset", "target", "--steps", "20", "--out", str(run_dir), *SMALL]
    assert main([*argv, "--set", "train.checkpoint_every=10"]) == 0
    return run_dir


def test_resume_a_finished_run(capsys, short_run):
    code, out, _ = cli(capsys, "resume", str(short_run))
    assert code == 0 and "already finished" in out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _foreign(path: Path) -> None:
    save_file({"weight": torch.randn(4, 4)}, str(path))


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(1000))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def test_resume_a_run_stopped_before_its_first_checkpoint(capsys, tmp_path, short_run):
    """A run killed before it saved anything starts again from step 0: the same seeded run, logged once."""
    from dreamfusion.checkpoint import load_checkpoint

    run_dir = shutil.copytree(short_run, tmp_path / "run")
    shutil.rmtree(run_dir / "checkpoints")
    shutil.rmtree(run_dir / "export")
    code, _, err = cli(capsys, "resume", str(run_dir))
    assert code == 0, err
    assert "starting it again from step 0" in err
    assert metric_steps(run_dir) == list(range(1, 21))
    again = load_checkpoint(run_dir / "checkpoints" / "step_0000020.safetensors").modules["field"]
    first = load_checkpoint(short_run / "checkpoints" / "step_0000020.safetensors").modules["field"]
    assert all(torch.equal(again[name], first[name]) for name in first)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_truncate, "corrupt or not a safetensors file"),
        (_foreign, "is not a dreamfusion checkpoint"),
        (_garbage, "corrupt or not a safetensors file"),
        (_empty, "corrupt or not a safetensors file"),
    ],
    ids=["truncated", "foreign-safetensors", "garbage", "empty"],
)
def test_resume_with_a_damaged_checkpoint(capsys, tmp_path, short_run, damage, expected):
    run_dir = shutil.copytree(short_run, tmp_path / "run")
    latest = run_dir / "checkpoints" / "step_0000020.safetensors"
    damage(latest)
    # The newest name on disk is the one resumed; a damaged file there must not be skipped silently.
    before = files_in(run_dir)
    code, _, err = cli(capsys, "resume", str(run_dir))
    assert expected in assert_one_line_error(code, err)
    assert files_in(run_dir) == before


def test_resume_with_a_checkpoint_of_another_configuration(capsys, tmp_path, short_run):
    other = tmp_path / "other"
    argv = ["generate", "a ball", "--preset", "target", "--steps", "1", "--out", str(other), *SMALL]
    assert main([*argv, "--set", "field.triplane.channels=8"]) == 0
    run_dir = shutil.copytree(short_run, tmp_path / "run")
    shutil.copy(
        other / "checkpoints" / "step_0000001.safetensors",
        run_dir / "checkpoints" / "step_0000030.safetensors",
    )
    capsys.readouterr()
    before = files_in(run_dir)
    code, _, err = cli(capsys, "resume", str(run_dir))
    assert "does not match this run's configuration" in assert_one_line_error(code, err)
    assert files_in(run_dir) == before


def test_resume_after_a_torn_metrics_line(capsys, tmp_path, short_run):
    """A second Ctrl-C (or a kill) can stop the trainer in the middle of writing a metrics line."""
    run_dir = shutil.copytree(short_run, tmp_path / "run")
    (run_dir / "checkpoints" / "step_0000020.safetensors").unlink()
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-30])
    code, _, err = cli(capsys, "resume", str(run_dir))
    assert code == 0, err
    assert metric_steps(run_dir) == list(range(1, 21))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda run: shutil.rmtree(run), "does not exist"),
        (lambda run: (run / "config.yaml").unlink(), "no config.yaml"),
        (lambda run: (run / "config.yaml").write_text("train: [steps\n"), "invalid YAML"),
        (lambda run: (run / "config.yaml").write_text("train:\n  stpes: 30\n"), "did you mean 'train.steps'"),
    ],
    ids=["no-folder", "no-config", "bad-yaml", "unknown-key"],
)
def test_resume_a_folder_that_is_not_a_run(capsys, tmp_path, short_run, damage, expected):
    run_dir = shutil.copytree(short_run, tmp_path / "run")
    damage(run_dir)
    code, _, err = cli(capsys, "resume", str(run_dir))
    assert expected in assert_one_line_error(code, err)


# ----------------------------------------------------------------------------------------------------------
# Full runs


def check_run_folder(run_dir: Path, steps: int, prompt: str) -> None:
    config = from_dict(Config, load_yaml_overrides(run_dir / "config.yaml"))
    assert config.prompt.text == prompt and config.train.steps == steps
    assert metric_steps(run_dir) == list(range(1, steps + 1))
    assert (run_dir / "checkpoints" / f"step_{steps:07d}.safetensors").is_file()
    images = sorted(p.name for p in (run_dir / "validation").glob("*.png"))
    assert images == [f"step_{s:07d}.png" for s in range(100, steps + 1, 100)]
    with Image.open(run_dir / "validation" / images[-1]) as image:
        assert image.width > 0 and image.height > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["stable-diffusion", "pixel"])
def test_200_step_run_with_a_tiny_prior(capsys, tmp_path, monkeypatch, tiny_sd, tiny_if, kind):
    model = tiny_sd if kind == "stable-diffusion" else tiny_if
    monkeypatch.chdir(model.parent)  # a relative --model: config.yaml must hold the absolute path for resume
    run_dir = tmp_path / "chair"
    argv = ["generate", "a red chair", "--guidance", kind, "--model", model.name, "--steps", "200"]
    code, out, err = cli(capsys, *argv, "--seed", "3", "--negative", "blurry", "--out", str(run_dir), *SMALL)
    assert code == 0, err
    assert err == ""  # neither diffusers nor transformers may print progress bars or advice
    assert f"done: {run_dir}" in out
    check_run_folder(run_dir, 200, "a red chair")
    config = from_dict(Config, load_yaml_overrides(run_dir / "config.yaml"))
    assert (config.guidance.kind, config.guidance.model) == (kind, str(model.resolve()))
    assert (config.train.seed, config.prompt.negative) == (3, "blurry")


@pytest.mark.slow
def test_stopped_run_resumes_to_the_end(capsys, tmp_path, monkeypatch):
    run_dir = tmp_path / "ball"
    original_step = Trainer.train_step

    def stop_at_step_60(self: Trainer):
        metrics = original_step(self)
        if self.step == 60:
            self.request_stop()  # what the trainer's Ctrl-C handler does
        return metrics

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_step", stop_at_step_60)
        argv = ["generate", "a ball", "--preset", "target", "--steps", "200", "--out", str(run_dir), *SMALL]
        code, _, err = cli(capsys, *argv)
    assert code == EXIT_INTERRUPTED
    assert f"dreamfusion resume {run_dir}" in err
    assert metric_steps(run_dir) == list(range(1, 61))
    assert (run_dir / "checkpoints" / "step_0000060.safetensors").is_file()

    code, out, err = cli(capsys, "resume", str(run_dir))
    assert code == 0, err
    assert "at step 60 of 200" in out
    check_run_folder(run_dir, 200, "a ball")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    """The real thing: SIGINT to a `dreamfusion generate` process in the middle of training."""
    run_dir = tmp_path / "ball"
    argv = ["generate", "a ball", "--preset", "target", "--out", str(run_dir), *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "dreamfusion", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "dreamfusion resume" in err
    steps = metric_steps(run_dir)
    assert 3 <= len(steps) < 300
    assert (run_dir / "checkpoints" / f"step_{steps[-1]:07d}.safetensors").is_file()


def test_target_guidance_fits_a_world_prompt_and_refuses_a_foreign_one(capsys, tmp_path):
    target = ["--preset", "target", "--set", "guidance.target.shape=prompt", "--steps", "2", *SMALL]
    code, stdout, err = cli(capsys, "generate", "a red cube", "--out", str(tmp_path / "cube"), *target)
    assert code == 0, err
    assert "exact scene" in err and (tmp_path / "cube" / "config.yaml").is_file()
    code, _, err = cli(capsys, "generate", "a dragon", "--out", str(tmp_path / "dragon"), *target)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "dragon").exists()
