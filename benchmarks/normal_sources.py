"""Where the noise in textureless renders comes from: the normals' formula, or the density they differentiate.

For each finished run, the same field is rendered from eval's 8 views three ways and the judge's Geo
R-Precision is computed on each (as `dreamfusion eval` does):

- `analytic`: the field's own normals, the normalised density gradient (what training and eval use);
- `fd`: central finite differences of the density over one texel of the field's grid, a smoothed gradient;
- `fd x4`: the same over four texels;
- `mesh`: no volume rendering at all: the surface export writes, rasterised with the same cameras and
  shading (`evaluation.runs.field_mesh_views`), the field giving only its colour;
- `analytic @ N` (with `--samples N,...`): the field's own normals with N samples per ray instead of eval's
  256, to see whether the volume renders have converged (a sharp surface sampled at fixed positions shows
  contour rings, wood grain, where the sample spacing is coarser than the surface).

The volume renders are eval's (`EvalConfig.samples_per_ray`, empty space skipped by
`OccupancyGrid.of_field`).

If the finite differences score much better, the noise is in the gradient at the texel scale (and a
smoother normal formula would help); if all three score alike, the density itself is what is noisy, and
only a field with a sharper surface can help. If the mesh scores much better than all three, the noise is
in what volume rendering composites besides the surface: the low-density haze around it.

    .venv/bin/python benchmarks/normal_sources.py RUNS_ROOT/*/*-seed? [--samples 128,256] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from dreamfusion.evaluation.geometry import load_run_field
from dreamfusion.evaluation.runs import (
    JUDGE,
    EvalConfig,
    field_mesh_views,
    load_image_text_model,
    rprecision_scores,
    world_scene,
)
from dreamfusion.evaluation.suite import evaluation_suite
from dreamfusion.fields.base import Field, FieldOutput
from dreamfusion.render.background import SolidBackground
from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.sampling import OccupancyGrid, SamplingConfig
from dreamfusion.render.views import render_views


class FiniteDifferenceNormals(Field):
    """`field` with its normals replaced by central differences of its density (of its signed distance, for an
    SDF field), `step` world units apart."""

    def __init__(self, field: Field, step: float):
        super().__init__()
        self.inner, self.step, self.bound = field, step, field.bound

    def density(self, points: Tensor) -> Tensor:
        return self.inner.density(points)

    def forward(self, points: Tensor, with_normals: bool = False) -> FieldOutput:
        out = self.inner(points)
        if not with_normals:
            return out
        offsets = torch.eye(3, dtype=points.dtype, device=points.device) * (self.step / 2)
        shifted = torch.cat([points + offsets[a] for a in range(3)] + [points - offsets[a] for a in range(3)])
        if hasattr(self.inner, "signed_distance"):
            # an SDF field: differences of the distance, which is smooth; its density saturates within a
            # few beta of the surface, far less than a texel once beta has sharpened
            density = -self.inner.signed_distance(shifted)[0][:, 0].view(2, 3, -1)
        else:
            density = self.inner.density(shifted).view(2, 3, -1)
        gradient = (density[0] - density[1]).T  # (N, 3), up to the factor 1 / step
        return FieldOutput(out.density, out.albedo, -F.normalize(gradient, dim=-1, eps=1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders of world prompts")
    parser.add_argument("--out", type=Path, help="write the per-run figures here as JSON")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--samples", default="", help="comma list of samples per ray for extra columns")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_image_text_model(JUDGE)
    suite = evaluation_suite()
    config = EvalConfig()
    cameras = orbit_cameras(config.views, config.resolution, config.elevation_deg)
    eval_sampling = SamplingConfig(samples_per_ray=config.samples_per_ray)
    samples = [int(n) for n in args.samples.split(",") if n.strip()]
    names = ("analytic", "fd", "fd x4", "mesh", *(f"analytic @ {n}" for n in samples))
    seconds: dict[str, list[float]] = {n: [] for n in names}
    results = []
    for run in tqdm(args.runs, desc="runs", unit="run", disable=not sys.stderr.isatty()):
        field, run_config = load_run_field(run)
        texel = 2.0 * field.bound / max((field.detail_resolution() or 64) - 1, 1)
        scene = world_scene(run_config.prompt.text)
        row = {"run": f"{run.parent.name}/{run.name}", "prompt": run_config.prompt.text}
        variants = [
            ("analytic", field, eval_sampling),
            ("fd", FiniteDifferenceNormals(field, texel), eval_sampling),
            ("fd x4", FiniteDifferenceNormals(field, 4 * texel), eval_sampling),
            ("mesh", None, None),
            *((f"analytic @ {n}", field, SamplingConfig(samples_per_ray=n)) for n in samples),
        ]
        for name, variant, sampling in variants:
            start = time.perf_counter()
            with torch.no_grad():
                if variant is None:
                    renders = field_mesh_views(field, cameras)
                else:
                    grid = OccupancyGrid.of_field(variant)
                    renders = render_views(variant, SolidBackground(), cameras, sampling, LightConfig(), grid)
            seconds[name].append(time.perf_counter() - start)
            scores = rprecision_scores(
                renders.shaded, renders.textureless, run_config.prompt.text, scene, model, suite
            )
            row[name] = scores["geo"]
        results.append(row)

    print("| run | " + " | ".join(f"Geo % ({n})" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for row in results:
        print(f"| {row['run']} | " + " | ".join(f"{100 * row[n]:.1f}" for n in names) + " |")
    means = {n: statistics.fmean(r[n] for r in results) for n in names}
    print(f"| mean of {len(results)} | " + " | ".join(f"{100 * means[n]:.1f}" for n in names) + " |")
    median_s = {n: statistics.median(t) for n, t in seconds.items()}
    print("| render s (median) | " + " | ".join(f"{median_s[n]:.1f}" for n in names) + " |")
    if args.out:
        args.out.write_text(json.dumps({"runs": results, "means": means, "seconds": median_s}, indent=2))


if __name__ == "__main__":
    main()
