"""`dreamfusion prior ...` through the real entry point, with a tiny prior and a stand-in for the wheel."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from dreamfusion.commands import EXIT_INTERRUPTED, EXIT_USER_ERROR, main

TINY = [
    "--set", "batch_size=4",
    "--set", "checkpoint_every=2",
    "--set", "model.resolution=16",
    "--set", "model.channels=[16,32]",
    "--set", "model.attention=[false,true]",
    "--set", "model.attention_heads=2",
    "--set", "model.norm_groups=8",
    "--set", "model.text_width=32",
    "--set", "model.text_layers=1",
    "--set", "model.text_heads=2",
]  # fmt: skip


@pytest.fixture(autouse=True)
def no_wheel_download(monkeypatch: pytest.MonkeyPatch, clip_merges: str) -> None:
    """The command reads CLIP's merges from the open-clip-torch wheel; here a synthetic file stands in."""
    monkeypatch.setattr("dreamfusion.prior.tokenizer.open_clip_wheel", lambda cache: cache / "stand-in.whl")
    monkeypatch.setattr("dreamfusion.prior.tokenizer.merges_from_wheel", lambda wheel: clip_merges)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str) -> str:
    assert code == EXIT_USER_ERROR, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    return lines[0]


def test_help_lists_the_prior_commands_and_flags(capsys):
    code, out, _ = cli(capsys, "prior", "--help")
    assert code == 0 and all(c in out for c in ("train", "export", "sample"))
    code, out, _ = cli(capsys, "prior", "train", "--help")
    assert code == 0
    for flag in ("--out", "--steps", "--seed", "--max-minutes", "--resume", "--set"):
        assert flag in out


def test_train_stop_resume_export_and_sample(capsys, tmp_path: Path):
    run = tmp_path / "run"
    code, _, err = cli(
        capsys, "prior", "train", "--out", str(run), "--steps", "4", "--max-minutes", "1e-6", *TINY
    )
    assert code == EXIT_INTERRUPTED and "--resume" in err
    assert (run / "checkpoints" / "step_0000001.safetensors").is_file() and not (run / "model").exists()

    code, out, _ = cli(capsys, "prior", "export", str(run))
    assert code == 0 and (run / "model-step1" / "unet").is_dir() and "sha256" in out

    code, out, _ = cli(capsys, "prior", "train", "--out", str(run), "--resume")
    assert code == 0 and "step 1 of 4" in out
    assert (run / "model" / "model_index.json").is_file()

    # A finished run trained further: the old export is kept, the schedule restarts at the old end.
    code, _, err = cli(capsys, "prior", "train", "--out", str(run), "--resume", "--steps", "3")
    assert "does not extend" in one_line_error(code, err)
    code, out, _ = cli(capsys, "prior", "train", "--out", str(run), "--resume", "--steps", "6")
    assert code == 0 and "step 4 of 6" in out
    assert (run / "model-step4" / "model_index.json").is_file() and (run / "model" / "unet").is_dir()
    assert "restarts: [4]" in (run / "config.yaml").read_text()

    png = tmp_path / "grid.png"
    captions = ["a red mug, front view", "a blue cube"]
    code, _, err = cli(
        capsys, "prior", "sample", str(run / "model"), *captions, "--out", str(png), "--steps", "3"
    )
    assert code == 0, err
    assert Image.open(png).size == (2 * 16 * 4, 16 * 4)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--set", "batch_sise=4"], "did you mean 'batch_size'?"),
        (["train", "--set", "model.resolution=30"], "does not halve"),
        (["train", "--max-minutes", "0"], "--max-minutes: must be > 0"),
        (["train", "--resume"], "has no config.yaml"),
        (["sample", "/nonexistent/prior", "a red mug", "--out", "x.png"], "does not exist"),
        (["sample", ".", "  ", "--out", "x.png"], "prompt is empty"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_input_is_one_line(capsys, tmp_path: Path, argv: list[str], expected: str):
    out = ["--out", str(tmp_path / "run")] if argv[0] == "train" else []
    code, _, err = cli(capsys, "prior", *argv, *out)
    assert expected in one_line_error(code, err)
    assert not (tmp_path / "run").exists()


def test_resume_keeps_the_settings_and_a_used_folder_is_refused(capsys, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "prior", "train", "--out", str(run), *TINY)
    assert "--resume" in one_line_error(code, err)
    code, _, err = cli(capsys, "prior", "train", "--out", str(run), "--resume", "--seed", "9")
    assert "--seed cannot change them" in one_line_error(code, err)
