"""The paper's Table 1 and its Fig. 6 ablation on the procedural world, in one command (issue #5).

Every prompt of the evaluation suite (`dreamfusion.evaluation.suite`, 28 world captions, 10 of them held out
from the built-in prior) is generated with each seed by each method row, as a `dreamfusion batch` (Ray,
embedded), two runs at a time on a 2-core machine (one thread each: two runs on one core each are faster
than one run on two). Each finished run is scored by the batch's eval (eval.json in the run folder), and the
rows are averaged over runs, split into held-in and held-out prompts:

| row | what changes |
|---|---|
| ground-truth renders | no run: the exact scenes, rendered as runs are (the judge's own ceiling) |
| dreamfusion (ours) | the default preset |
| no view-dependent prompts | `prompt.view_dependent=false` |
| no lighting | `shading.diffuse_probability=0`: albedo renders only |
| no textureless | `shading.textureless_probability=0`: lit renders keep their albedo |
| fit to true renders | only when `--rows` names it: the exact scene's renders replace the prior (below) |

"fit to true renders" swaps the prior for the `target` guidance with the world's exact scene
(`guidance.kind=target`, `guidance.target.shape=prompt`) at the prior's 32x32: the same cameras, lights,
field, optimiser and steps, with a perfect 2D teacher. It measures the ceiling of everything but the prior.

Columns: R-Precision Color and Geo (the judge, or `--model` CLIP), volumetric IoU at a fixed level and at
the exported mesh's level, Chamfer distance (world units), colour error (mean CIEDE2000 of the albedo on the
surface) and seconds per asset (wall time of generate, export included, eval not).

Runs are kept under `--runs` and reused: a finished run is not run again, and an interrupted one is
resumed (the batch's rules), so the script can be stopped and started again. The table is written to
`--out` as Markdown and JSON.

    .venv/bin/python benchmarks/table1.py --quick          # 4 prompts x 1 seed x 4 rows, about 10-13 min
    .venv/bin/python benchmarks/table1.py                  # 28 prompts x 2 seeds x 4 rows, about 2.4 h

On the 2-core machine with two jobs, a run takes about 58 s to generate and 21 s to evaluate, so the table
advances by one run every 38 s (measured over the last 36 runs of the full table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dreamfusion.batching import RunSpec, run_batch
from dreamfusion.device import machine_facts
from dreamfusion.evaluation.rprecision import r_precision
from dreamfusion.evaluation.runs import JUDGE, load_image_text_model
from dreamfusion.evaluation.suite import SEEDS, SuitePrompt, evaluation_suite, ground_truth_rprecision

DEFAULT_OUT = Path(__file__).parent / "results" / "table1"
# Two held in (a symmetric kind, and an asymmetric one whose front matters), two held out (an object and a
# relation): 16 runs, about 10 minutes two at a time on 2 cores.
QUICK_PROMPTS = (
    "a red cube",
    "a white mug",
    "a blue mug",
    "a red sphere on top of a green cube",
)


@dataclass(frozen=True)
class Row:
    name: str
    overrides: tuple[str, ...]


ROWS = (
    Row("dreamfusion (ours)", ()),
    Row("no view-dependent prompts", ("prompt.view_dependent=false",)),
    Row("no lighting", ("shading.diffuse_probability=0",)),
    Row("no textureless", ("shading.textureless_probability=0",)),
)
# Rows run only when --rows names them.
EXTRA_ROWS = (
    Row(
        "fit to true renders",
        ("guidance.kind=target", "guidance.target.shape=prompt", "train.resolution=32"),
    ),
)


@dataclass(frozen=True)
class Job:
    row: Row
    prompt: SuitePrompt
    seed: int
    run_dir: Path


def slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def spec_of(job: Job, extra: Sequence[str]) -> RunSpec:
    """The job as a batch run, in the folder table1 has always used: RUNS/<row>/<prompt>-seed<S>."""
    return RunSpec(
        job.prompt.caption,
        job.seed,
        f"{slug(job.row.name)}/{slug(job.prompt.caption)}-seed{job.seed}",
        overrides=(*extra, *job.row.overrides),
    )


def job_result(job: Job, record: dict[str, object]) -> dict[str, object]:
    """A run's eval.json plus the seconds it took to make the asset (generate and export, no eval)."""
    if record.get("status") != "done":
        raise SystemExit(f"{job.run_dir}: {record.get('status')}: {record.get('error')}")
    result = json.loads((job.run_dir / "eval.json").read_text())
    # Runs made by the earlier process pool kept their generate time beside the folder.
    timing_path = job.run_dir.parent / f"{job.run_dir.name}.seconds.json"
    seconds = json.loads(timing_path.read_text())["seconds"] if timing_path.is_file() else None
    result["generate_seconds"] = seconds if seconds is not None else record.get("asset_seconds")
    return result


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def aggregate(results: list[dict[str, object]]) -> dict[str, float | None]:
    truth = [r["ground_truth"] or {} for r in results]
    return {
        "runs": len(results),
        "color": mean([r["r_precision"]["color"] for r in results]),
        "geo": mean([r["r_precision"]["geo"] for r in results]),
        "geo_mesh": mean([r["r_precision"].get("geo_mesh") for r in results]),
        "iou": mean([t.get("iou") for t in truth]),
        "iou_mesh": mean([t.get("iou_mesh_level") for t in truth]),
        "chamfer": mean([t.get("chamfer") for t in truth]),
        "delta_e": mean([t.get("delta_e") for t in truth]),
        "seconds": mean([r.get("generate_seconds") for r in results]),
        "empty": sum(1 for t in truth if t.get("chamfer") is None),
    }


def cell(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    return {"pct": f"{100 * value:.1f}", "iou": f"{value:.3f}", "dist": f"{value:.3f}"}.get(
        kind, f"{value:.1f}"
    )


def markdown(table: dict[str, dict[str, dict[str, float | None]]], model_name: str) -> str:
    header = (
        "| method | prompts | runs | R-Prec Color % | R-Prec Geo % | Geo, mesh % | IoU | IoU (mesh level) "
        "| Chamfer | colour error (ΔE) | s / asset |"
    )
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row, splits in table.items():
        for split, a in splits.items():
            cells = [
                row,
                split,
                str(a["runs"]),
                cell(a["color"], "pct"),
                cell(a["geo"], "pct"),
                cell(a.get("geo_mesh"), "pct"),
                cell(a["iou"], "iou"),
                cell(a.get("iou_mesh"), "iou"),
                cell(a["chamfer"], "dist"),
                cell(a["delta_e"], "de"),
                cell(a["seconds"], "s"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"R-Precision by {model_name}: each of 8 renders at 30 deg elevation ranks the prompt among the "
        "suite's captions; Geo ranks textureless renders against shape-only captions, since colour cannot be "
        "seen without texture; 'Geo, mesh' is the same of the exported mesh's textureless renders. IoU, "
        "Chamfer (world units; the scene fits in radius 0.8) and colour error are "
        "measured against the exact scene. IoU counts a cell occupied where it alone is half opaque; "
        "IoU (mesh level) uses the exported mesh's own iso level, the surface that Chamfer and colour error "
        "are measured on. Runs with an empty field have no mesh, so no Chamfer or colour "
        "error; their IoU of 0 still counts.",
    ]
    return "\n".join(lines)


PAIRED = (
    ("color", 100.0, "R-Prec Color (points)"),
    ("geo", 100.0, "R-Prec Geo (points)"),
    ("geo_mesh", 100.0, "Geo, mesh (points)"),
    ("iou", 1.0, "IoU"),
    ("iou_mesh_level", 1.0, "IoU (mesh level)"),
    ("chamfer", 1.0, "Chamfer"),
)


def paired_differences(jobs: Sequence[Job], results: Sequence[dict[str, object]], reference: str) -> dict:
    """Each other row minus `reference`, run by run (same prompt and seed): mean and standard error of the
    difference, which is far tighter than comparing the rows' means when runs vary by prompt."""
    by_row: dict[str, dict[tuple[str, int], dict]] = {}
    for job, result in zip(jobs, results, strict=True):
        by_row.setdefault(job.row.name, {})[(job.prompt.caption, job.seed)] = result
    base = by_row.get(reference, {})
    out = {}
    for row, runs in by_row.items():
        pairs = [(runs[k], base[k]) for k in runs if row != reference and k in base]
        if len(pairs) < 2:
            continue
        out[row] = {"pairs": len(pairs)}
        for key, scale, _ in PAIRED:
            source = "r_precision" if key in ("color", "geo", "geo_mesh") else "ground_truth"
            # Chamfer is None for a run with an empty field: such pairs are left out of its column.
            values = [((a[source] or {}).get(key), (b[source] or {}).get(key)) for a, b in pairs]
            d = [scale * (x - y) for x, y in values if x is not None and y is not None]
            out[row][key] = (statistics.fmean(d), statistics.stdev(d) / len(d) ** 0.5) if len(d) > 1 else None
    return out


def paired_markdown(paired: dict, reference: str) -> str:
    lines = [
        f"Paired differences to {reference} (same prompt and seed): mean (standard error).",
        "",
        "| method | pairs | " + " | ".join(label for _, _, label in PAIRED) + " |",
        "|---|---:|" + "---:|" * len(PAIRED),
    ]
    for row, d in paired.items():
        cells = [
            "—" if d[k] is None else f"{d[k][0]:+.{1 if s > 1 else 3}f} ({d[k][1]:.{1 if s > 1 else 3}f})"
            for k, s, _ in PAIRED
        ]
        lines.append(f"| {row} | {d['pairs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ground_truth_row(model: object, prompts: tuple[SuitePrompt, ...]) -> dict[str, dict[str, float | None]]:
    """R-Precision of the exact scenes' renders, ranked among the whole suite's captions as runs are, over
    the rows of `prompts`; IoU, Chamfer and colour error are exact by definition."""
    suite = evaluation_suite()
    scores = ground_truth_rprecision(model, suite)
    row = {}
    for split, held_out in (("held-in", False), ("held-out", True), ("all", None)):
        rows = [
            i for i, p in enumerate(suite) if p in prompts and (held_out is None or p.held_out == held_out)
        ]
        if not rows:
            continue
        row[split] = {
            "runs": 0,
            "color": r_precision(scores.color_ranks[rows]),
            "geo": r_precision(scores.geo_ranks[rows]),
            "iou": 1.0,
            "iou_mesh": 1.0,
            "chamfer": 0.0,
            "delta_e": 0.0,
            "seconds": None,
            "empty": 0,
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"{len(QUICK_PROMPTS)} prompts, seed 0 only")
    parser.add_argument(
        "--prompts", help="a comma list of suite captions to run instead of all (or of --quick's)"
    )
    parser.add_argument("--seeds", help=f"a comma list of seeds instead of {','.join(map(str, SEEDS))}")
    parser.add_argument("--rows", default=",".join(r.name for r in ROWS), help="comma list of method rows")
    parser.add_argument("--model", default=JUDGE, help="image-text model for R-Precision (default: judge)")
    parser.add_argument("--runs", type=Path, default=Path("runs") / "table1", help="where runs are kept")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="table1.md and table1.json go here")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2, one per core)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (default 1)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every run, before the row's own (e.g. train.steps=100 for a smoke test)",
    )
    args = parser.parse_args()

    suite = evaluation_suite()
    prompts = tuple(p for p in suite if p.caption in QUICK_PROMPTS) if args.quick else suite
    if args.prompts:
        chosen = [c.strip() for c in args.prompts.split(",") if c.strip()]
        unknown = [c for c in chosen if c not in {p.caption for p in suite}]
        if unknown:
            parser.error(f"not suite captions: {', '.join(map(repr, unknown))}")
        prompts = tuple(p for p in suite if p.caption in chosen)
    seeds = SEEDS[:1] if args.quick else SEEDS
    if args.seeds:
        seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
    wanted = [n.strip() for n in args.rows.split(",") if n.strip()]
    known = (*ROWS, *EXTRA_ROWS)
    rows = [r for r in known if r.name in wanted]
    if len(rows) != len(wanted):
        parser.error(f"unknown row in {args.rows!r}; rows: {', '.join(r.name for r in known)}")

    began = time.perf_counter()
    torch.set_num_threads(args.threads)
    model = load_image_text_model(args.model)
    table = {"ground-truth renders": ground_truth_row(model, prompts)}
    jobs = [
        Job(row, p, seed, args.runs / slug(row.name) / f"{slug(p.caption)}-seed{seed}")
        for row in rows
        for p in prompts
        for seed in seeds
    ]
    print(f"{len(jobs)} runs, {args.jobs} at a time, into {args.runs}", file=sys.stderr, flush=True)
    specs = [spec_of(job, args.set) for job in jobs]
    outcome = run_batch(
        specs,
        args.runs,
        workers=args.jobs,
        threads=args.threads,
        model=args.model,
        progress=sys.stderr.isatty(),
        on_run=lambda r: print(f"{r['run']}: {r['status']}", file=sys.stderr, flush=True),
    )
    records = {r["run"]: r for r in outcome.rows}
    results = [job_result(job, records[spec.name]) for job, spec in zip(jobs, specs, strict=True)]

    for row in rows:
        mine = [(j, r) for j, r in zip(jobs, results, strict=True) if j.row == row]
        table[row.name] = {
            "held-in": aggregate([r for j, r in mine if not j.prompt.held_out]),
            "held-out": aggregate([r for j, r in mine if j.prompt.held_out]),
            "all": aggregate([r for _, r in mine]),
        }
    text = markdown(table, getattr(model, "name", args.model))
    paired = paired_differences(jobs, results, ROWS[0].name)
    if paired:
        text += "\n\n" + paired_markdown(paired, ROWS[0].name)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "table1-quick" if args.quick else "table1"
    (args.out / f"{stem}.md").write_text(text + "\n", encoding="utf-8")
    report = {
        "benchmark": "table1",
        "quick": args.quick,
        "prompts": [p.caption for p in prompts],
        "held_out": [p.caption for p in prompts if p.held_out],
        "seeds": list(seeds),
        "model": getattr(model, "name", args.model),
        "machine": {
            **machine_facts(),
            "jobs": args.jobs,
            "threads_per_run": args.threads,
        },
        "settings": args.set,
        "wall_seconds": time.perf_counter() - began,
        "table": table,
        "paired_differences": paired,
        "runs": [{"row": j.row.name, "seed": j.seed, **r} for j, r in zip(jobs, results, strict=True)],
    }
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out / stem}.md and .json ({report['wall_seconds'] / 60:.0f} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
