"""Janus and the fixes beyond vanilla SDS, measured on world objects with a known front (issue #20).

Every variant runs the same fronted prompts and seeds with the default preset plus its overrides, as a
`dreamfusion batch` (embedded Ray, two runs at a time on 2 cores), and every run is scored by eval
(eval.json: the Janus measure of evaluation/janus.py, R-Precision, IoU). Each variant is reported as paired
differences from `vanilla SDS` over the same (prompt, seed) pairs: mean and standard error of the mean.

| variant | overrides |
|---|---|
| vanilla SDS | none: the default preset |
| Perp-Neg | guidance.sds.perp_neg=1 |
| D-SDS | rising clip 2 -> 8 over the run (guidance.sds.grad_clip*) and prompt.debias=true |
| t annealing | t_max 0.98 -> 0.5, linearly over the run |
| DreamTime | guidance.sds.t_schedule=dreamtime over the run |
| CSD | guidance.sds.score=csd |
| best combination | every option above whose mean Janus difference was negative, together |

Runs are kept under `--runs` and reused (a second call only fills in what is missing). The table goes to
stdout and to `--out`.md/.json; the picture (`--picture`) shows the textureless renders of the first mug
prompt, vanilla against the variant with the lowest Janus rate.

    .venv/bin/python benchmarks/janus.py --quick     # 5 prompts x 1 seed, about 25 min on 2 cores
    .venv/bin/python benchmarks/janus.py             # 10 prompts x 2 seeds, about 2.2 h
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dreamfusion.batching import RunSpec, run_batch
from dreamfusion.device import machine_facts
from dreamfusion.evaluation.geometry import load_run_field
from dreamfusion.render.background import SolidBackground
from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.sampling import SamplingConfig
from dreamfusion.render.views import render_views

HERE = Path(__file__).parent
DEFAULT_OUT = HERE / "results" / "janus"
DEFAULT_PICTURE = HERE.parent / "docs" / "images" / "janus-mug.png"
PROMPTS = (
    "a red mug",
    "a blue mug",
    "a green chair",
    "a brown chair",
    "a white house",
    "a yellow house",
    "a red car",
    "a blue car",
    "a purple arrow",
    "an orange arrow",
)
QUICK_PROMPTS = ("a red mug", "a green chair", "a white house", "a red car", "a purple arrow")


def variants(steps: int) -> dict[str, tuple[str, ...]]:
    return {
        "vanilla SDS": (),
        "Perp-Neg": ("guidance.sds.perp_neg=1.0",),
        "D-SDS": (
            "guidance.sds.grad_clip=2.0",
            "guidance.sds.grad_clip_end=8.0",
            f"guidance.sds.grad_clip_steps={steps}",
            "prompt.debias=true",
        ),
        "t annealing": ("guidance.sds.t_max_end=0.5", f"guidance.sds.t_anneal_steps={steps}"),
        "DreamTime": ("guidance.sds.t_schedule=dreamtime", f"guidance.sds.t_anneal_steps={steps}"),
        "CSD": ("guidance.sds.score=csd",),
    }


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def run_variant(
    name: str, overrides: tuple[str, ...], prompts: tuple[str, ...], seeds: tuple[int, ...], root: Path
) -> dict[tuple[str, int], dict]:
    specs = [
        RunSpec(prompt=p, seed=s, name=f"{slug(p)}-seed{s}", overrides=overrides)
        for p in prompts
        for s in seeds
    ]
    print(f"{name}: {len(specs)} runs", file=sys.stderr, flush=True)
    outcome = run_batch(specs, root / slug(name), workers=2, evaluate=True, threads=1, progress=True)
    failed = [r for r in outcome.rows if r["status"] != "done"]
    if failed:
        raise SystemExit(f"{name}: {len(failed)} runs failed: {failed[:2]}")
    scores = {}
    for spec in specs:
        result = json.loads((root / slug(name) / spec.name / "eval.json").read_text())
        scores[(spec.prompt, spec.seed)] = result
    return scores


METRICS = {
    "Janus rate": lambda r: r["janus"]["janus_rate"],
    "view accuracy": lambda r: r["janus"]["view_accuracy"],
    "P(front) off front": lambda r: r["janus"]["front_probability_off_front"],
    "Color": lambda r: r["r_precision"]["color"],
    "Geo": lambda r: r["r_precision"]["geo"],
    "IoU": lambda r: r["ground_truth"]["iou"],
}


def paired(base: dict, other: dict, metric) -> tuple[float, float, float]:
    """(mean of the variant, mean difference from base, standard error of that difference)."""
    keys = sorted(base)
    diffs = [float(metric(other[k])) - float(metric(base[k])) for k in keys]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return statistics.fmean(float(metric(other[k])) for k in keys), statistics.fmean(diffs), se


def textureless_row(run_dir: Path, views: int = 8, size: int = 96) -> np.ndarray:
    field, _ = load_run_field(run_dir)
    cameras = orbit_cameras(views, size, 30.0, start_azimuth_deg=22.5)
    renders = render_views(field, SolidBackground(), cameras, SamplingConfig(), LightConfig())
    return (renders.textureless.permute(1, 0, 2, 3).reshape(size, views * size, 3).numpy() * 255).astype(
        np.uint8
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 prompts (one per fronted kind) x seed 0")
    parser.add_argument("--seeds", default=None, help="comma-separated (default 0,1; --quick: 0)")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "janus", help="where the runs are kept")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="table as OUT.md and OUT.json")
    parser.add_argument("--picture", type=Path, default=DEFAULT_PICTURE)
    args = parser.parse_args()
    torch.set_num_threads(2)
    prompts = QUICK_PROMPTS if args.quick else PROMPTS
    seeds = tuple(int(s) for s in (args.seeds or ("0" if args.quick else "0,1")).split(","))
    steps = RunSpec(prompt=prompts[0], seed=0, name="-").config().train.steps  # the default preset's

    table = variants(steps)
    results = {name: run_variant(name, o, prompts, seeds, args.runs) for name, o in table.items()}
    base = results["vanilla SDS"]
    helpful = [
        n for n in table if n != "vanilla SDS" and paired(base, results[n], METRICS["Janus rate"])[1] < 0
    ]
    if len(helpful) >= 2:
        combined = tuple(o for n in helpful for o in table[n])
        name = "best combination (" + " + ".join(helpful) + ")"
        table[name] = combined
        results[name] = run_variant(name, combined, prompts, seeds, args.runs)

    header = "| variant | " + " | ".join(METRICS) + " |"
    lines = [
        f"{len(prompts)} fronted prompts x seeds {', '.join(map(str, seeds))} = {len(base)} pairs, "
        f"{steps} steps, the built-in prior; each cell: the variant's mean, then its paired difference from "
        "vanilla SDS +- one standard error",
        "",
        header,
        "|---|" + "---:|" * len(METRICS),
    ]
    summary: dict[str, dict] = {}
    for name in table:
        cells, summary[name] = [], {"overrides": list(table[name])}
        for metric_name, metric in METRICS.items():
            mean, diff, se = paired(base, results[name], metric)
            summary[name][metric_name] = {"mean": mean, "difference": diff, "standard_error": se}
            cell = f"{100 * mean:.1f}" if metric_name != "IoU" else f"{mean:.3f}"
            if name != "vanilla SDS":
                scale = 1 if metric_name == "IoU" else 100
                fmt = ".3f" if metric_name == "IoU" else ".1f"
                cell += f" ({scale * diff:+{fmt}} +- {scale * se:{fmt}})"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print("\n" + text)

    best = min((n for n in table if n != "vanilla SDS"), key=lambda n: summary[n]["Janus rate"]["mean"])
    mug = next(p for p in prompts if "mug" in p)
    rows = [
        textureless_row(args.runs / slug(n) / f"{slug(mug)}-seed{seeds[0]}") for n in ("vanilla SDS", best)
    ]
    args.picture.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows)).save(args.picture)
    print(
        f"\npicture: {args.picture} (top: vanilla SDS, bottom: {best}; {mug!r}, seed {seeds[0]}, textureless)"
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text + "\n")
    payload = {
        "prompts": list(prompts),
        "seeds": list(seeds),
        "steps": steps,
        "variants": summary,
        "lowest_janus": best,
        "runs": {n: {f"{p}|{s}": r["janus"] for (p, s), r in res.items()} for n, res in results.items()},
        "machine": machine_facts(),
    }
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
