"""How well `dreamfusion generate` runs reproduce the true shapes of their prompts.

    .venv/bin/python benchmarks/prior_generate.py RUN_DIR [RUN_DIR ...] [--resolution 128] [--json OUT]

For each run folder: the prompt (config.yaml `prompt.text`) is read as a caption of the procedural world
(`scene_from_caption`), which gives its exact geometry in the NeRF's frame; the field at the latest
checkpoint is scored by volumetric IoU against it (`dreamfusion.evaluation.geometry`: density thresholded
where one grid cell would be at least half opaque). A prompt outside the world's grammar, or a folder that is
not a finished-enough run, is reported and skipped.

Printed as a Markdown table: prompt, whether the world holds that scene out of the prior's training data,
the guidance kind, steps, IoU, field volume / true volume, and the optimisation time (the sum of the per-step
`seconds` in metrics.jsonl: train steps only, not checkpoints or validation renders). Each run folder gets a
textureless turntable, field above truth, as eval_turntable.png (or eval_turntable-2.png, ... if taken).
The JSON summary goes to benchmarks/results/prior_generate.json unless --json says otherwise.

Note: the `target` guidance ignores the prompt and reconstructs `dreamfusion.fields.analytic.AnalyticField`;
sphere and mug are not the world's, so a target run scores the difference between the two, not the prior.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dreamfusion.device import machine_facts
from dreamfusion.errors import UserError
from dreamfusion.evaluation.geometry import compare_occupancy, load_run_field, textureless_turntable
from dreamfusion.render.views import save_png_atomic
from dreamfusion.world import is_held_out, scene_from_caption

DEFAULT_JSON = Path(__file__).parent / "results" / "prior_generate.json"
TURNTABLE_NAME = "eval_turntable"


@dataclass(frozen=True)
class RunResult:
    run_dir: str
    prompt: str
    caption: str  # the world's canonical caption of the prompt's scene
    held_out: bool
    guidance: str
    steps: int  # steps completed at the latest checkpoint's metrics
    iou: float
    field_volume: float
    scene_volume: float
    threshold: float
    train_seconds: float | None  # sum of per-step seconds in metrics.jsonl; None if it has none
    eval_seconds: float
    turntable: str


def free_path(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """folder/stem.png, or the first free folder/stem-2.png, stem-3.png, ...: never overwrite."""
    candidate, n = folder / f"{stem}{suffix}", 1
    while candidate.exists():
        n += 1
        candidate = folder / f"{stem}-{n}{suffix}"
    return candidate


def train_time(run_dir: Path) -> tuple[int, float | None]:
    """(last logged step, summed step seconds) from metrics.jsonl; torn or foreign lines are skipped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0, None
    step, seconds = 0, 0.0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            step, seconds = max(step, int(record["step"])), seconds + float(record["seconds"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return step, seconds


def evaluate_run(run_dir: Path, resolution: int, turntable_resolution: int, azimuths: int) -> RunResult:
    started = time.perf_counter()
    field, config = load_run_field(run_dir)
    scene = scene_from_caption(config.prompt.text)  # CaptionError (a UserError) when outside the world
    comparison = compare_occupancy(field, scene, resolution)
    image = textureless_turntable(
        field, scene, azimuths=azimuths, resolution=turntable_resolution, sampling=config.sampling
    )
    turntable = free_path(run_dir, TURNTABLE_NAME)
    save_png_atomic(image, turntable)
    steps, seconds = train_time(run_dir)
    return RunResult(
        run_dir=str(run_dir),
        prompt=config.prompt.text,
        caption=scene.caption(),
        held_out=is_held_out(scene),
        guidance=config.guidance.kind,
        steps=steps,
        iou=comparison.iou,
        field_volume=comparison.field_volume,
        scene_volume=comparison.scene_volume,
        threshold=comparison.threshold,
        train_seconds=seconds,
        eval_seconds=time.perf_counter() - started,
        turntable=str(turntable),
    )


def markdown_table(results: list[RunResult]) -> str:
    lines = [
        "| prompt | held-out | guidance | steps | IoU | vol. field/true | train s | turntable |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        seconds = "-" if r.train_seconds is None else f"{r.train_seconds:.1f}"
        ratio = r.field_volume / r.scene_volume if r.scene_volume > 0 else float("nan")
        lines.append(
            f"| {r.prompt} | {'yes' if r.held_out else 'no'} | {r.guidance} | {r.steps} | {r.iou:.3f} "
            f"| {ratio:.2f} | {seconds} | {r.turntable} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="folders of generate runs")
    parser.add_argument("--resolution", type=int, default=128, help="IoU grid cells per axis (default 128)")
    parser.add_argument("--turntable-resolution", type=int, default=64, help="render size (default 64)")
    parser.add_argument("--azimuths", type=int, default=8, help="turntable views (default 8)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"summary (default {DEFAULT_JSON})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    results: list[RunResult] = []
    skipped: list[dict[str, str]] = []
    for run_dir in args.run_dirs:
        try:
            results.append(evaluate_run(run_dir, args.resolution, args.turntable_resolution, args.azimuths))
        except UserError as exc:
            reason = " ".join(str(exc).split())
            print(f"skipping {run_dir}: {reason}", file=sys.stderr)
            skipped.append({"run_dir": str(run_dir), "reason": reason})

    if results:
        print(markdown_table(results))
    summary = {
        "benchmark": "prior_generate",
        "measured": "volumetric IoU of each run's field against the world's exact scene for its prompt",
        "settings": {
            "resolution": args.resolution,
            "threshold": "density >= ln 2 / cell (a cell at least half opaque)",
            "turntable_resolution": args.turntable_resolution,
            "azimuths": args.azimuths,
            "elevation_deg": 30.0,
        },
        "machine": machine_facts(),
        "runs": [asdict(r) for r in results],
        "skipped": skipped,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if results else 2


if __name__ == "__main__":
    sys.exit(main())
