"""Time a full mesh export on this machine, stage by stage, and check the mesh's fidelity to its field.

    python benchmarks/bench_export.py [--run RUN_DIR ...] [--resolution 256] [--texture-size 1024]
                                      [--faces N] [--repeats 3] [--threads 1] [--video] [--out PATH.json]

Cases: the analytic mug (`shapes.AnalyticField("mug")`: thin handle, coloured badge) and every run folder
given with --run (its latest checkpoint). Each case runs in a fresh process, so its peak RSS is its own,
and exports `--repeats` times into a temporary folder with every format (GLB, OBJ + MTL + PNG, PLY) and
the default face budget (40k triangles): median seconds per stage (density grid, iso threshold, marching
cubes with vertex snapping, cleanup and decimation, unwrap, bake, write; the turntable with --video).
The issue's target: a 256^3 extraction with texture in under 60 s.

Fidelity, once per case: the exported textured mesh (`export.preview.render_mesh`) against the field
(`validation.render_views`, 128 samples per ray) from 8 azimuths at 30 deg elevation, 64 x 64: silhouette IoU
(opacity >= 0.5) per view, and the mean absolute colour error (0-1 scale, albedo and lambertian-shaded) over
the pixels both cover fully.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dreamfusion.device import machine_facts

ANALYTIC = "analytic-mug"
STAGES = ("density grid", "threshold", "marching cubes", "cleanup", "unwrap", "bake", "write", "video")
FIDELITY_VIEWS = 8
FIDELITY_SIZE = 64


def build_field(case: str):
    from dreamfusion.exporter.pipeline import load_run_checkpoint
    from dreamfusion.fields.analytic import AnalyticField

    if case == ANALYTIC:
        return AnalyticField("mug")
    field, _, _ = load_run_checkpoint(Path(case))
    return field


def fidelity(field, textured) -> dict:
    """Silhouette IoU per view and mean colour errors of the mesh's renders against the field's."""
    from dreamfusion.exporter.preview import render_mesh
    from dreamfusion.render.background import SolidBackground
    from dreamfusion.render.cameras import orbit_cameras
    from dreamfusion.render.lights import LightConfig
    from dreamfusion.render.sampling import SamplingConfig
    from dreamfusion.render.views import render_views

    cameras = orbit_cameras(FIDELITY_VIEWS, FIDELITY_SIZE)
    sampling = SamplingConfig(samples_per_ray=128, occupancy_resolution=0)
    truth = render_views(field, SolidBackground(), cameras, sampling, LightConfig())
    mesh = render_mesh(textured, cameras)
    a, b = mesh.opacity >= 0.5, truth.opacity >= 0.5
    iou = ((a & b).flatten(1).sum(1) / (a | b).flatten(1).sum(1).clamp_min(1)).tolist()
    both = (mesh.opacity > 0.99) & (truth.opacity > 0.99)
    return {
        "silhouette_iou": [round(x, 4) for x in iou],
        "iou_min": min(iou),
        "iou_mean": sum(iou) / len(iou),
        "albedo_error": float((mesh.albedo - truth.albedo).abs()[both].mean()),
        "shaded_error": float((mesh.shaded - truth.shaded).abs()[both].mean()),
    }


def run_case(
    case: str, resolution: int, faces: int | None, texture_size: int, repeats: int, video: bool, threads: int
) -> dict:
    """Runs in a child process: `repeats` exports, then the fidelity check on the last one's mesh. A field
    with no surface gives {"error": the one-line message} instead."""
    from dreamfusion.errors import UserError

    torch.set_num_threads(threads)
    try:
        return measure_case(case, resolution, faces, texture_size, repeats, video)
    except UserError as exc:
        return {"error": str(exc)}


def measure_case(
    case: str, resolution: int, faces: int | None, texture_size: int, repeats: int, video: bool
) -> dict:
    from dreamfusion.exporter.pipeline import ExportConfig, export_field
    from dreamfusion.exporter.texture import TextureConfig, texture_mesh
    from dreamfusion.fields.mesh import MeshConfig, extract_mesh

    field = build_field(case)
    config = ExportConfig(
        video=video,
        mesh=MeshConfig(resolution=resolution or None, max_faces=faces),
        texture=TextureConfig(size=texture_size),
    )
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            start = time.perf_counter()
            result = export_field(field, Path(tmp) / f"export-{i}", config)
            total = time.perf_counter() - start
            runs.append({"total": total, **result.seconds})
    # The fidelity check rebuilds the same mesh in memory (export_field keeps none) and renders it.
    extracted = extract_mesh(field, config.mesh)
    textured = texture_mesh(field, extracted.mesh, config.texture)
    return {
        "runs": runs,
        "faces": result.faces,
        "vertices": result.vertices,
        "threshold": result.threshold,
        "fidelity": fidelity(field, textured),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # kilobytes on Linux
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", default=[], help="a run folder (repeatable)")
    parser.add_argument(
        "--resolution",
        type=int,
        default=256,
        help="marching-cubes grid (default 256, issue 4's target; 0: what export picks for the field)",
    )
    parser.add_argument("--faces", type=int, help="face budget, 0 for none (default: follows the grid)")
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--video", action="store_true", help="also time the default turntable (120 frames)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_export.json"))
    args = parser.parse_args()

    cases = [ANALYTIC, *[str(r) for r in args.run]]
    load_before = os.getloadavg()
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # a fresh process per case: its own peak RSS
    results = []
    for case in cases:
        with context.Pool(1) as pool:
            measured = pool.apply(
                run_case,
                (
                    case,
                    args.resolution,
                    args.faces,
                    args.texture_size,
                    args.repeats,
                    args.video,
                    args.threads,
                ),
            )
        if "error" in measured:
            results.append({"case": case, **measured})
            print(f"  {case}: {measured['error']}", flush=True)
            continue
        names = ["total", *[s for s in STAGES if s in measured["runs"][0]]]
        median = {name: statistics.median(run[name] for run in measured["runs"]) for name in names}
        results.append({"case": case, **measured, "median_s": median, "load_1m_after": os.getloadavg()[0]})
        print(f"  {case}: {median['total']:.1f} s, {measured['faces']:,} faces", flush=True)

    report = {
        "machine": {
            **machine_facts(),
            "torch_threads": args.threads,  # set in each case's own process; this one keeps its default
            "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]],
        },
        "config": {
            "resolution": args.resolution,
            "max_faces": args.faces,
            "texture_size": args.texture_size,
            "repeats": args.repeats,
            "formats": ["glb", "obj", "ply"],
            "video": args.video,
            "fidelity": {"views": FIDELITY_VIEWS, "size": FIDELITY_SIZE, "elevation_deg": 30.0},
        },
        "results": results,
        "total_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"\n{args.resolution}^3 grid, {args.texture_size}^2 texture, median of {args.repeats}, "
        f"{args.threads} torch threads, torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"load {load_before[0]:.1f}\n"
    )
    measured = [r for r in results if "error" not in r]
    stages = [s for s in STAGES if any(s in r["median_s"] for r in measured)]
    print("| case | faces | " + " | ".join(stages) + " | total s | IoU min / mean | colour error | RSS MiB |")
    print("|---|---:|" + "---:|" * len(stages) + "---:|---:|---:|---:|")
    for r in measured:
        times = " | ".join(f"{r['median_s'][s]:.2f}" for s in stages)
        fid = r["fidelity"]
        print(
            f"| {r['case']} | {r['faces']:,} | {times} | {r['median_s']['total']:.1f} | "
            f"{fid['iou_min']:.3f} / {fid['iou_mean']:.3f} | {fid['albedo_error']:.4f} albedo, "
            f"{fid['shaded_error']:.4f} shaded | {r['peak_rss_mib']:.0f} |"
        )
    for r in results:
        if "error" in r:
            print(f"\n{r['case']}: {r['error']}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
