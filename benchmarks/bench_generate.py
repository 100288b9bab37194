"""Time to asset: `dreamfusion generate PROMPT` with the default preset (the built-in prior), end to end.

Each run is a fresh `dreamfusion generate` process, so its wall time includes start-up, loading the prior,
every optimisation step, checkpoints and validation renders, and its peak RSS is its own (the child's
ru_maxrss). The table shows, per prompt, the median over repeats of wall seconds and peak RSS, with the
sum of the per-step times from metrics.jsonl beside it (optimisation alone).

    .venv/bin/python benchmarks/bench_generate.py                        # 3 prompts x 3 runs
    .venv/bin/python benchmarks/bench_generate.py --repeats 1 --threads 1 --set train.steps=500

Run folders go to a temporary folder and are deleted, unless --keep DIR is given.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dreamfusion.device import machine_facts

DEFAULT_PROMPTS = ("a red cube", "a blue mug", "a green sphere on top of a yellow cube")
DEFAULT_JSON = Path(__file__).parent / "results" / "bench_generate.json"


def run_once(
    prompt: str, seed: int, out: Path, threads: int | None, overrides: list[str]
) -> dict[str, float]:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "dreamfusion", "generate", prompt, "--seed", str(seed)]
    command += ["--out", str(out), "--no-progress"]
    for override in overrides:
        command += ["--set", override]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"generate failed for {prompt!r}: {done.stderr.strip().splitlines()[-1:]}")
    # ru_maxrss of children is the largest child so far (KiB on Linux); runs only grow it, so a run that
    # stays below an earlier one reports that earlier peak. Each prompt's first run is the honest one.
    peak_mb = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "wall_s": wall_s,
        "steps_s": sum(s["seconds"] for s in steps),
        "steps": len(steps),
        "peak_mb": peak_mb,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS))
    parser.add_argument("--repeats", type=int, default=3, help="runs per prompt, seeds 0.. (default 3)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the runs (default: torch's own)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to generate")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the run folders here")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-generate-"))
    rows = []
    try:
        for prompt in args.prompts:
            runs = []
            for seed in range(args.repeats):
                out = root / f"{prompt.replace(' ', '-')}-seed{seed}"
                runs.append(run_once(prompt, seed, out, args.threads, args.set))
                print(f"  {prompt!r} seed {seed}: {runs[-1]['wall_s']:.1f} s", file=sys.stderr)
            rows.append(
                {
                    "prompt": prompt,
                    "runs": runs,
                    "median_wall_s": statistics.median(r["wall_s"] for r in runs),
                    "median_steps_s": statistics.median(r["steps_s"] for r in runs),
                    "steps": runs[0]["steps"],
                    "peak_mb": max(r["peak_mb"] for r in runs),
                }
            )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    print("| prompt | steps | time to asset, s (median) | optimisation steps, s | peak RSS, MB |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['prompt']} | {r['steps']} | {r['median_wall_s']:.1f} | {r['median_steps_s']:.1f} "
            f"| {r['peak_mb']:.0f} |"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "bench_generate",
        "machine": machine_facts(),
        "threads": args.threads,
        "overrides": args.set,
        "repeats": args.repeats,
        "rows": rows,
    }
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
