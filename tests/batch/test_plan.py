"""Prompts files: text and YAML, per-prompt settings, and one-line errors for what is wrong in them."""

from __future__ import annotations

import pytest

from dreamfusion.batching import read_prompts_file
from dreamfusion.errors import UserError


def test_text_file_one_prompt_per_line_with_every_seed(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a red cube\n\n# a comment\n  a blue mug  \n")
    specs = read_prompts_file(path, seeds=(0, 3), steps=7)
    assert [(s.prompt, s.seed, s.name, s.steps) for s in specs] == [
        ("a red cube", 0, "a-red-cube-seed0", 7),
        ("a red cube", 3, "a-red-cube-seed3", 7),
        ("a blue mug", 0, "a-blue-mug-seed0", 7),
        ("a blue mug", 3, "a-blue-mug-seed3", 7),
    ]


def test_yaml_file_with_defaults_and_per_prompt_settings(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(
        "seeds: [1]\nsteps: 30\noverrides: ['export.video=false']\nprompts:\n  - a red cube\n"
        "  - {prompt: a blue mug, seeds: [0, 2], steps: 9, overrides: ['shading.diffuse_probability=0']}\n"
    )
    specs = read_prompts_file(path)
    assert [(s.prompt, s.seed, s.steps) for s in specs] == [
        ("a red cube", 1, 30),
        ("a blue mug", 0, 9),
        ("a blue mug", 2, 9),
    ]
    assert specs[1].overrides == ("export.video=false", "shading.diffuse_probability=0")
    config = specs[1].config()
    assert config.train.steps == 9 and config.shading.diffuse_probability == 0 and not config.export.video


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("p.txt", "\n# nothing\n", "no prompts"),
        ("p.yaml", "prompts: [a, [b\n", "not valid YAML"),
        ("p.yaml", "prompts:\n  - {prompt: a red cube, sedes: [1]}\n", "unknown key 'sedes'"),
        ("p.yaml", "prompts:\n  - {prompt: a red cube, seeds: [-1]}\n", "seeds must be"),
        ("p.yaml", "prompts:\n  - {prompt: a red cube, overrides: ['train.stpes=3']}\n", "train.steps"),
        ("p.txt", "a red cube\na red cube\n", "listed twice"),
    ],
)
def test_bad_prompts_files_are_one_line_errors(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=expected) as error:
        read_prompts_file(path)
    assert "\n" not in str(error.value)


def test_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read the prompts file"):
        read_prompts_file(tmp_path / "missing.txt")


def test_negative_retries_are_refused_before_anything_runs(tmp_path, capsys):
    from dreamfusion.api import batch
    from dreamfusion.commands import EXIT_USER_ERROR, main
    from dreamfusion.errors import SettingsError

    path = tmp_path / "p.txt"
    path.write_text("a red cube\n")
    out = tmp_path / "out"
    with pytest.raises(SettingsError, match="retries must be >= 0"):
        batch(path, out=out, retries=-1)
    assert main(["batch", str(path), "--out", str(out), "--retries", "-1"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--retries: must be >= 0" in err[0]
    assert not out.exists()
