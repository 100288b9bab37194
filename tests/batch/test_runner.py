"""`dreamfusion batch` on embedded Ray: 4 runs on 2 workers, one of them killed with SIGKILL mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

FAST = ["export.video=false", "sampling.samples_per_ray=16", "sampling.occupancy_resolution=16"]
STEPS = 200


def batch_command(prompts: Path, out: Path) -> list[str]:
    command = [sys.executable, "-m", "dreamfusion", "batch", str(prompts), "--seeds", "0,1"]
    command += ["--steps", str(STEPS), "--workers", "2", "--no-eval", "--no-progress", "--out", str(out)]
    for setting in (*FAST, "train.checkpoint_every=20"):
        command += ["--set", setting]
    return command


def steps_of(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_killed_task_resumes_from_its_checkpoint_and_a_second_batch_does_nothing(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na blue mug\n")
    out = tmp_path / "out"
    victim = out / "a-red-cube-seed0"
    batch = subprocess.Popen(
        batch_command(prompts, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    killed_pid = None
    deadline = time.monotonic() + 300
    while killed_pid is None and batch.poll() is None and time.monotonic() < deadline:
        attempts = out / ".batch" / "a-red-cube-seed0.attempts.jsonl"
        checkpoints = list((victim / "checkpoints").glob("step_*.safetensors")) if victim.is_dir() else []
        if checkpoints and attempts.is_file():
            pid = next(json.loads(a)["pid"] for a in attempts.read_text().splitlines() if '"attempt"' in a)
            os.kill(pid, signal.SIGKILL)
            killed_pid = pid
        time.sleep(0.05)
    stdout, stderr = batch.communicate(timeout=300)
    assert killed_pid is not None, "the run finished before it could be killed"
    assert batch.returncode == 0, stderr[-2000:]

    table = json.loads((out / "batch.json").read_text())
    runs = {r["run"]: r for r in table["runs"]}
    assert sorted(runs) == ["a-blue-mug-seed0", "a-blue-mug-seed1", "a-red-cube-seed0", "a-red-cube-seed1"]
    assert all(r["status"] == "done" and r["steps"] == STEPS for r in runs.values())
    killed = runs["a-red-cube-seed0"]
    assert killed["attempts"] == 2 and killed["resumed_from"] >= 20  # from its checkpoint, not from 0
    assert all(runs[name]["attempts"] == 1 for name in runs if name != "a-red-cube-seed0")
    for name in runs:  # every step logged once, every run exported once
        assert steps_of(out / name) == list(range(1, STEPS + 1))
        assert [p.name for p in (out / name).glob("export*")] == ["export"]
    assert "a-red-cube-seed0" in (out / "batch.md").read_text()

    again = subprocess.run(batch_command(prompts, out), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to do: all 4 runs" in again.stdout
    assert steps_of(victim) == list(range(1, STEPS + 1))


def test_without_ray_installed_the_error_names_the_extra(tmp_path, monkeypatch):
    from dreamfusion.batching import RayMissingError, RunSpec, run_batch

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(RayMissingError, match=r'pip install -e "\.\[cluster\]"'):
        run_batch([RunSpec("a red cube", 0, "a-red-cube-seed0")], tmp_path)
