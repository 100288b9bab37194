"""How much the volumetric IoU of finished runs depends on the density level that counts as occupied.

`dreamfusion eval` thresholds the density at ln 2 / cell of its 128^3 grid (about 32 for the default bound):
occupied where one grid cell alone is half opaque (evaluation.geometry.occupancy_threshold). The exported
mesh, and so the Chamfer distance and the colour error, sit at the field's own half-opacity level instead
(fields.mesh.half_opacity_threshold): the level whose surface covers what renders make half opaque. Soft
fields, whose density ramps up over several cells, get a much lower level there, and their dense core
(what the fixed threshold keeps) is smaller than what their renders and meshes show.

For each run folder, this prints the IoU against the exact scene at both levels, then the means by table
row (the run folder's parent, as benchmarks/table1.py lays them out) and by held-in / held-out prompt.

    .venv/bin/python benchmarks/iou_levels.py RUNS_ROOT/*/*-seed? [--out iou_levels.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from dreamfusion.errors import UserError
from dreamfusion.evaluation.geometry import (
    default_bound,
    density_grid,
    grid_iou,
    load_run_field,
    occupancy_threshold,
    scene_occupancy_grid,
)
from dreamfusion.fields.mesh import half_opacity_threshold
from dreamfusion.world import is_held_out, scene_from_caption

RESOLUTION = 128  # dreamfusion eval's and the export's grid


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders of world prompts")
    parser.add_argument("--out", type=Path, help="write the per-run figures here as JSON")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    truths: dict[tuple[str, float], torch.Tensor] = {}
    results = []
    for run in tqdm(args.runs, desc="runs", unit="run", disable=not sys.stderr.isatty()):
        field, config = load_run_field(run)
        scene = scene_from_caption(config.prompt.text)
        bound = default_bound(field)
        cell = 2.0 * bound / RESOLUTION
        key = (scene.caption(), bound)
        if key not in truths:
            truths[key] = scene_occupancy_grid(scene, RESOLUTION, bound)
        grid = density_grid(field, RESOLUTION, bound)
        try:
            level = half_opacity_threshold(grid, cell)
        except UserError:  # an empty field: no mesh, and nothing is occupied at any level above zero
            level = None
        fixed = occupancy_threshold(cell)
        results.append(
            {
                "run": f"{run.parent.name}/{run.name}",
                "row": run.parent.name,
                "prompt": config.prompt.text,
                "held_out": is_held_out(scene),
                "cell_level": fixed,
                "iou_cell_level": grid_iou(grid >= fixed, truths[key]),
                "mesh_level": level,
                "iou_mesh_level": 0.0 if level is None else grid_iou(grid >= level, truths[key]),
            }
        )

    print(
        "| row | prompts | runs | IoU at ln 2 / cell (eval) | IoU at the mesh's level | median mesh level |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for row in sorted({r["row"] for r in results}):
        mine = [r for r in results if r["row"] == row]
        for split, chosen in (
            ("held-in", [r for r in mine if not r["held_out"]]),
            ("held-out", [r for r in mine if r["held_out"]]),
            ("all", mine),
        ):
            if not chosen:
                continue
            levels = [r["mesh_level"] for r in chosen if r["mesh_level"] is not None]
            print(
                f"| {row} | {split} | {len(chosen)} "
                f"| {statistics.fmean(r['iou_cell_level'] for r in chosen):.3f} "
                f"| {statistics.fmean(r['iou_mesh_level'] for r in chosen):.3f} "
                f"| {statistics.median(levels) if levels else float('nan'):.1f} |"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
