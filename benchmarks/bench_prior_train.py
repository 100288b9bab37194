"""Training speed of the built-in prior: images per second with the world rendered inline, in the training
process, against rendered ahead in a second process (`PriorTrainConfig.render_ahead`).

Both modes train the default prior from the same seed on the same batches; each timed step is one
`PriorTrainer.update` plus the wait for its batch. The first --warmup steps (and the second process's start)
are left out. The table gives the median step time and the images per second it implies.

    .venv/bin/python benchmarks/bench_prior_train.py [--steps 40] [--warmup 5]

Run it on an otherwise idle machine: rendering ahead needs the second core to itself. Results go to
benchmarks/results/bench_prior_train.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from dreamfusion.commands.prior import prior_wheel_cache
from dreamfusion.device import machine_facts
from dreamfusion.prior.tokenizer import build_clip_tokenizer
from dreamfusion.prior.train import PriorTrainConfig, PriorTrainer

DEFAULT_JSON = Path(__file__).parent / "results" / "bench_prior_train.json"


def step_times(config: PriorTrainConfig, tokenizer: Path, steps: int, warmup: int) -> list[float]:
    """Seconds of each step after the warm-up: the wait for the batch plus the update."""
    trainer = PriorTrainer(config, tokenizer)
    batches = trainer.batches()
    times = []
    try:
        for i in range(warmup + steps):
            start = time.perf_counter()
            images, captions = next(batches)
            trainer.update(images, captions)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        batches.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per mode (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()

    config = PriorTrainConfig()
    torch.set_num_threads(config.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        max_tokens = config.model.max_tokens
        tokenizer = build_clip_tokenizer(Path(tmp) / "tokenizer", prior_wheel_cache(), max_tokens)
        for name, render_ahead in (("inline", False), ("rendered ahead", True)):
            times = step_times(replace(config, render_ahead=render_ahead), tokenizer, args.steps, args.warmup)
            median = statistics.median(times)
            rows.append(
                {
                    "mode": name,
                    "median_step_s": median,
                    "images_per_s": config.batch_size / median,
                    "steps": len(times),
                }
            )

    base = rows[0]["median_step_s"]
    res = config.model.resolution
    print(f"prior training, batch {config.batch_size} at {res} px, {config.threads} training thread")
    print("| mode | median step, s | images / s | speed-up |")
    print("|---|---:|---:|---:|")
    for row in rows:
        speedup = base / row["median_step_s"]
        print(f"| {row['mode']} | {row['median_step_s']:.3f} | {row['images_per_s']:.1f} | {speedup:.2f}x |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine_facts(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
