"""`dreamfusion export` through its argument parser: files and a summary on success, one-line errors for
flags that cannot work together."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dreamfusion.commands.export import add_commands
from dreamfusion.errors import UserError

QUICK = ["--resolution", "32", "--texture-size", "64", "--no-progress"]


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dreamfusion")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_export_writes_the_files_and_says_where(tiny_run: Path, capsys):
    assert run(["export", str(tiny_run), "--formats", "glb,ply", "--faces", "200", *QUICK]) == 0
    out = capsys.readouterr().out
    folder = Path(out.split()[1].rstrip(":"))
    assert folder.parent == tiny_run and folder.name.startswith("export")
    assert {p.name for p in folder.iterdir()} == {"model.glb", "model.ply", "export.json"}
    assert "chosen from the field" in out and "model.glb" in out


def test_a_video_alone_and_a_given_threshold(tiny_run: Path, capsys):
    argv = ["export", str(tiny_run), "--formats", "none", "--video", "--frames", "3", "--size", "32"]
    assert run([*argv, "--panels", "shaded,depth", "--no-gif", "--threshold", "5", *QUICK]) == 0
    out = capsys.readouterr().out
    folder = Path(out.split()[1].rstrip(":"))
    assert {p.name for p in folder.iterdir()} == {"turntable.mp4", "turntable.png", "export.json"}
    assert "density 5 (given)" in out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--formats", "gltf"], "unknown format 'gltf'"),
        (["--formats", "none"], "nothing to export"),
        (["--video", "--panels", "normals"], "panels must start with 'shaded'"),
        (["--texture-size", "1000"], "power of two"),
        (["--video", "--size", "33"], "even"),
    ],
)
def test_flags_that_cannot_work_are_one_line_errors(tiny_run: Path, flags: list[str], message: str):
    with pytest.raises(UserError, match=message) as info:
        run(["export", str(tiny_run), *flags, "--no-progress"])
    assert "\n" not in str(info.value)


def test_out_of_range_numbers_are_usage_errors(tiny_run: Path):
    with pytest.raises(SystemExit):
        run(["export", str(tiny_run), "--resolution", "8"])
