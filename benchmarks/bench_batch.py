"""Throughput of many runs, and of one run on several processes.

Part 1, runs per hour over the same prompts (seed 0, the default preset, no evaluation):
- `one after another`: one `dreamfusion generate` process at a time, with every core's threads;
- `thread pool`: what benchmarks/table1.py had before it ran on batch: a pool of `--jobs` threads, each
  starting `dreamfusion generate --threads 1` processes;
- `batch (embedded Ray)`: `dreamfusion.batch` with `--jobs` workers of one thread each.
Part 2, one prompt at train.batch_size=2: `generate --processes 2` (one thread each) against one process
(two threads), in seconds and optimisation steps per second.

    .venv/bin/python benchmarks/bench_batch.py                    # 4 prompts, 200 steps, 3 rounds
    .venv/bin/python benchmarks/bench_batch.py --steps 500 --prompts "a red cube,a blue mug"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dreamfusion.batching import RunSpec, run_batch
from dreamfusion.device import machine_facts

DEFAULT_PROMPTS = "a red cube,a blue mug,a green sphere on top of a yellow cube,a yellow cone"
DEFAULT_JSON = Path(__file__).parent / "results" / "bench_batch.json"
NO_VIDEO = ["--set", "export.video=false"]


def generate(prompt: str, out: Path, steps: int, threads: int, *extra: str) -> float:
    command = [sys.executable, "-m", "dreamfusion", "generate", prompt, "--steps", str(steps)]
    command += ["--out", str(out), "--no-progress", "--threads", str(threads), *NO_VIDEO, *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"generate failed for {prompt!r}: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - started


def steps_seconds(run_dir: Path) -> float:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return sum(json.loads(line)["seconds"] for line in lines if line.strip())


def one_round(
    prompts: list[str], steps: int, jobs: int, cores: int
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """One pass of every way: wall seconds of the many-run ways, (wall, optimisation) seconds of part 2."""
    many: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_batch-") as tmp:
        root = Path(tmp)

        def record(name: str, seconds: float) -> None:
            many[name] = seconds
            print(f"  {name}: {len(prompts)} runs in {seconds:.1f} s", file=sys.stderr, flush=True)

        started = time.perf_counter()
        for i, prompt in enumerate(prompts):
            generate(prompt, root / "sequential" / str(i), steps, cores)
        record("one after another", time.perf_counter() - started)

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(
                pool.map(
                    lambda i: generate(prompts[i], root / "pool" / str(i), steps, 1), range(len(prompts))
                )
            )
        record("thread pool", time.perf_counter() - started)

        specs = [
            RunSpec(prompt=p, seed=0, name=str(i), steps=steps, overrides=("export.video=false",))
            for i, p in enumerate(prompts)
        ]
        started = time.perf_counter()
        outcome = run_batch(specs, root / "ray", workers=jobs, evaluate=False, threads=1)
        record("batch (embedded Ray)", time.perf_counter() - started)
        if any(r["status"] != "done" for r in outcome.rows):
            raise SystemExit(f"batch runs failed: {outcome.rows}")

        batch2 = ["--set", "train.batch_size=2"]
        processes: dict[str, tuple[float, float]] = {}
        for name, count, threads in (("1 process", 1, cores), ("2 processes", 2, max(1, cores // 2))):
            out = root / "processes" / str(count)
            seconds = generate(prompts[0], out, steps, threads, *batch2, "--processes", str(count))
            processes[name] = (seconds, steps_seconds(out))
            note = f"  {name}: {seconds:.1f} s ({processes[name][1]:.1f} s of steps)"
            print(note, file=sys.stderr, flush=True)
    return many, processes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS, help="comma-separated")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="runs at a time (default cores)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the table shows medians")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    cores = os.cpu_count() or 1
    rounds: list[tuple[dict[str, float], dict[str, tuple[float, float]]]] = []
    for repeat in range(args.repeats):
        print(f"round {repeat + 1} of {args.repeats}", file=sys.stderr, flush=True)
        rounds.append(one_round(prompts, args.steps, args.jobs, cores))

    results = {
        name: {
            "runs": len(prompts),
            "seconds": statistics.median(r[0][name] for r in rounds),
            "each_seconds": [r[0][name] for r in rounds],
        }
        for name in rounds[0][0]
    }
    for r in results.values():
        r["runs_per_hour"] = 3600 * r["runs"] / r["seconds"]
    processes = {}
    for name in rounds[0][1]:
        wall = [r[1][name][0] for r in rounds]
        steps_s = [r[1][name][1] for r in rounds]
        processes[name] = {
            "seconds": statistics.median(wall),
            "steps_seconds": statistics.median(steps_s),
            "steps_per_s": args.steps / statistics.median(steps_s),
            "each_seconds": wall,
            "each_steps_seconds": steps_s,
        }
    one_prompt = prompts[0]

    base = results["one after another"]["runs_per_hour"]
    print(
        f"\n{len(prompts)} prompts x seed 0, {args.steps} steps, no evaluation, {args.jobs} at a time; "
        f"medians of {args.repeats} rounds\n"
    )
    print("| how | runs | wall s | runs / hour | vs one after another |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        ratio = r["runs_per_hour"] / base
        print(f"| {name} | {r['runs']} | {r['seconds']:.1f} | {r['runs_per_hour']:.1f} | {ratio:.2f}x |")
    print(f"\none prompt ({one_prompt!r}) at train.batch_size=2, {args.steps} steps\n")
    print("| how | wall s | optimisation s | steps / s |")
    print("|---|---:|---:|---:|")
    for name, r in processes.items():
        print(f"| {name} | {r['seconds']:.1f} | {r['steps_seconds']:.1f} | {r['steps_per_s']:.2f} |")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "prompts": prompts,
        "steps": args.steps,
        "jobs": args.jobs,
        "repeats": args.repeats,
        "many_runs": results,
        "one_run_batch_2": processes,
        "machine": machine_facts(),
    }
    args.json.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
