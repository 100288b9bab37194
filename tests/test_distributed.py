"""One run on several processes (dreamfusion.distributed): 2 gloo processes at batch 2 take the same steps as
one process at batch 2, and a run stopped part-way resumes on 2 processes to the same parameters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamfusion.checkpoint import load_checkpoint
from dreamfusion.distributed import Shard, check_split, without_option
from dreamfusion.errors import SettingsError

STEPS = 6
SETTINGS = [
    "train.batch_size=2",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=10",
    "train.validation_every=3",
    "export.video=false",
    "sampling.samples_per_ray=16",
    "sampling.occupancy_resolution=16",
]


def test_shards_draw_their_rows_of_the_whole_batch():
    whole = torch.rand(6, 5, generator=torch.Generator().manual_seed(3))
    parts = [Shard(rank, 3).rand((2, 5), torch.Generator().manual_seed(3)) for rank in range(3)]
    assert torch.equal(torch.cat(parts), whole)
    normal = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    halves = [Shard(r, 2).randn((2, 2), torch.Generator().manual_seed(1), torch.float32) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), normal)
    ints = torch.randint(0, 9, (4,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(Shard(1, 2).randint(0, 9, 2, torch.Generator().manual_seed(5)), ints[2:])


def test_a_batch_that_does_not_split_is_a_settings_error():
    check_split(4, 2)
    with pytest.raises(SettingsError, match="does not split over 2 processes"):
        check_split(3, 2)


def test_without_option_drops_the_option_and_its_value():
    argv = ["generate", "a cube", "--processes", "2", "--steps", "4", "--processes=3"]
    assert without_option(argv, "--processes") == ["generate", "a cube", "--steps", "4"]


def dreamfusion(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "dreamfusion", *args, "--no-progress", "--threads", "1"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def generate(out: Path, *extra: str) -> subprocess.CompletedProcess:
    settings = [a for s in SETTINGS for a in ("--set", s)]
    return dreamfusion("generate", "a red cube", "--steps", str(STEPS), "--out", str(out), *settings, *extra)


def field_at(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / f"step_{step:07d}.safetensors").modules["field"]


def assert_same_field(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Equal up to float rounding, as Adam passes it on. Summing the batch's gradients in another order
    changes them by rounding only, but Adam (eps 1e-15) divides each gradient by its own running size, so
    on a few grid cells whose gradient is itself rounding noise a step can move them by a learning-rate-
    sized amount either way: measured, 99 of 196,608 plane values off by more than 1e-6 at step 2, at most
    4.7e-5, while the planes moved by 1.5e-3 on average. Wrong randomness or scaling moves them all."""
    assert a.keys() == b.keys()
    for name in a:
        close = (a[name] - b[name]).abs() <= 1e-6 + 1e-5 * b[name].abs()
        assert close.float().mean() > 0.999, f"{name}: {int((~close).sum())} of {close.numel()} differ"
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=2e-4, msg=name)


def test_two_gloo_processes_match_one_process_and_resume(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    done = generate(one)
    assert done.returncode == 0, done.stderr[-2000:]
    done = generate(two, "--processes", "2")
    assert done.returncode == 0, done.stderr[-2000:]

    for step in (2, STEPS):
        assert_same_field(field_at(one, step), field_at(two, step))
    # The parameters moved (a test of equal copies of the initial field would pass trivially).
    start = field_at(one, 2)
    assert any(not torch.equal(start[n], field_at(one, STEPS)[n]) for n in start)
    # Rank 0 alone wrote the folder: one line per step, and the figures of the whole batch.
    lines = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))
    for mine, theirs in zip(lines, reference, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-3)
        assert mine["timestep"] == pytest.approx(theirs["timestep"])
    assert (two / "export").is_dir()

    # Resume on 2 processes from step 4 of a copy whose later checkpoints are gone.
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    for path in (resumed / "checkpoints").glob("*.safetensors"):
        if int(path.stem.split("_")[1]) > 4:
            path.unlink()
    shutil.rmtree(resumed / "export")
    done = dreamfusion("resume", str(resumed), "--processes", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_field(field_at(one, STEPS), field_at(resumed, STEPS))
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == STEPS
    assert (resumed / "export").is_dir()


def test_processes_that_do_not_split_the_batch_are_one_line(tmp_path):
    done = generate(tmp_path / "run", "--processes", "4")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "dreamfusion: error: train.batch_size=2 does not split over 4 processes: use a multiple of 4, "
        "e.g. --set train.batch_size=4"
    ]
    assert not (tmp_path / "run").exists()
