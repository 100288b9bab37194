"""The run folder (issue #16): two `generate` commands with the same --out get two runs, and a run that
a process is training is locked against a second `resume`; a lock left by a killed process is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from dreamfusion.commands import EXIT_USER_ERROR, main
from dreamfusion.config import from_dict, load_yaml_overrides
from dreamfusion.files import atomic_path, claim_dir, write_text_atomic
from dreamfusion.run.config import Config
from dreamfusion.run.folder import LOCK_NAME
from dreamfusion.run.log import append_record, truncate_records

STEPS = 4
TINY = [
    "--preset", "target",
    "--set", "train.resolution=16",
    "--set", "sampling.samples_per_ray=16",
    "--set", "sampling.occupancy_resolution=16",
    "--set", f"train.checkpoint_every={STEPS}",
    "--set", f"train.validation_every={STEPS}",
    "--set", "train.validation_views=1",
]  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def generate_process(prompt: str, out: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "dreamfusion", "generate", prompt, "--out", str(out), *TINY]
    argv += ["--steps", str(STEPS)]
    return subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_generates_started_together_with_one_out_get_two_complete_runs(tmp_path: Path):
    out = tmp_path / "runs" / "same"
    processes = [generate_process("a ball", out), generate_process("a cube", out)]
    results = [p.communicate(timeout=300) for p in processes]
    for p, (_, stderr) in zip(processes, results, strict=True):
        assert p.returncode == 0, stderr
    folders = sorted((tmp_path / "runs").iterdir())
    assert [f.name for f in folders] == ["same", "same-2"]
    prompts = set()
    for folder in folders:
        config = from_dict(Config, load_yaml_overrides(folder / "config.yaml"))
        prompts.add(config.prompt.text)
        steps = [line for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
        assert len(steps) == STEPS  # one run's log, not two interleaved
        assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [f"step_{STEPS:07d}.safetensors"]
        assert (folder / "export" / "model.glb").is_file()
    assert prompts == {"a ball", "a cube"}


def _claim(base: str) -> str:
    return str(claim_dir(Path(base), LOCK_NAME))


def test_claims_racing_for_one_name_all_get_their_own_folder(tmp_path: Path):
    base = tmp_path / "run"
    (tmp_path / "run-3").write_text("a file of that name is skipped")
    with ProcessPoolExecutor(4) as pool:
        claimed = list(pool.map(_claim, [str(base)] * 8))
    assert len(set(claimed)) == 8
    assert str(tmp_path / "run-3") not in claimed
    assert all((Path(c) / LOCK_NAME).is_file() for c in claimed)


def test_an_empty_folder_is_claimed_and_a_used_one_is_not(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    assert claim_dir(tmp_path / "empty", LOCK_NAME) == tmp_path / "empty"
    assert claim_dir(tmp_path / "empty", LOCK_NAME) == tmp_path / "empty-2"  # its claim is the marker


def test_resume_is_refused_while_another_process_trains_the_run_and_a_dead_ones_lock_is_taken_over(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    run_dir = tmp_path / "ball"
    assert main(["generate", "a ball", "--out", str(run_dir), *TINY, "--steps", "8"]) == 0
    # Cut it short as a killed run leaves it: the last checkpoint is at step 4.
    (run_dir / "checkpoints" / "step_0000008.safetensors").unlink()
    capsys.readouterr()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from filelock import FileLock; "
         "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(120)",
         str(run_dir / LOCK_NAME)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code = main(["resume", str(run_dir)])
        err = capsys.readouterr().err
        assert code == EXIT_USER_ERROR, err
        assert len(err.strip().splitlines()) == 1 and "is in use" in err and "Traceback" not in err
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / LOCK_NAME).is_file()  # the dead holder's lock file is still there ...
    code = main(["resume", str(run_dir)])  # ... and is taken over
    out = capsys.readouterr().out
    assert code == 0 and "at step 4 of 8" in out


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path: Path):
    path = tmp_path / "latents.npz"
    write_text_atomic(path, "old")
    with pytest.raises(RuntimeError), atomic_path(path) as temp:
        assert temp.parent == tmp_path and temp.name.startswith(".") and temp.suffix == ".npz"
        temp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["latents.npz"]
    with atomic_path(path) as temp:
        temp.write_text("new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["latents.npz"]


def test_a_resumed_log_keeps_each_step_once_and_drops_a_torn_last_line(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    for step in range(1, 6):
        append_record(path, {"step": step, "loss": 1.0 / step})
    with path.open("a") as file:
        file.write('{"step": 6, "lo')  # the writer was killed here
    truncate_records(path, 4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    truncate_records(tmp_path / "absent.jsonl", 4)  # nothing to do, no error
    assert not (tmp_path / "absent.jsonl").exists()


def test_a_config_written_before_the_sections_moved_still_reads_with_its_values(tmp_path: Path):
    from dreamfusion.run.config import read_run_config

    (tmp_path / "config.yaml").write_text(
        "prompt:\n  text: a red cube\n"
        "field:\n  kind: hashgrid\n  plane_resolution: 48\n  hash_levels: 6\n  hash_max_resolution: 96\n"
        "guidance:\n  kind: target\n  target_shape: mug\n  attention_slicing: true\n"
    )
    config = read_run_config(tmp_path)
    assert config.field.triplane.resolution == 48
    assert config.field.hashgrid.levels == 6
    assert config.field.hashgrid.max_resolution == 96
    assert config.guidance.target.shape == "mug"
    assert config.guidance.diffusers.attention_slicing is True


def test_the_section_of_a_field_kind_the_run_does_not_use_cannot_make_it_unreadable(tmp_path: Path):
    from dreamfusion.run.config import read_run_config

    (tmp_path / "config.yaml").write_text(
        "field:\n  kind: triplane\n  triplane:\n    resolution: 32\n"
        "  sdf:\n    beta_init: 9.0\n    retired_key: 1\n"
    )
    config = read_run_config(tmp_path)
    assert config.field.triplane.resolution == 32 and config.field.sdf == type(config.field.sdf)()
