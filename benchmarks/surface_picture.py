"""Textureless renders of finished runs beside the true scene, as one PNG: what Geo R-Precision reads.

Each LABEL=ROOT names a folder of runs (a `table1.py --runs` folder, or any folder holding run folders); for
every prompt the picture has one row of the true scene and one row per label, from azimuths 0, 90, 180 and
270 deg at 30 deg elevation. A run is rendered as eval renders it (`evaluation.runs.asset_views`): the
field by volume rendering, or the mesh stage's mesh when the run has one. `--mesh` adds, below each run
without a mesh stage, its exported mesh rasterised the same way (what eval's `geo_mesh` reads).

    .venv/bin/python benchmarks/surface_picture.py docs/images/fit-mesh-stage.png \\
        --prompts "a white mug,a brown chair,a pink house" triplane=runs/fit sdf+mesh=runs/fit-mesh
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from dreamfusion.evaluation.runs import asset_views, field_mesh_views, world_scene
from dreamfusion.fields.analytic import SceneField
from dreamfusion.render.background import SolidBackground
from dreamfusion.render.cameras import orbit_cameras
from dreamfusion.render.lights import LightConfig
from dreamfusion.render.sampling import SamplingConfig
from dreamfusion.render.views import render_views, to_uint8
from dreamfusion.run.config import load_field, load_latest, load_refined_mesh, read_run_config
from dreamfusion.run.folder import slug

SIZE = 96  # pixels per view
LABEL_WIDTH = 150


def find_run(root: Path, prompt: str, seed: int) -> Path:
    name = f"{slug(prompt)}-seed{seed}"
    found = sorted(p for p in root.rglob(name) if (p / "config.yaml").is_file())
    if not found:
        sys.exit(f"error: no run {name} under {root}")
    return found[0]


def strip(textureless: torch.Tensor) -> np.ndarray:
    return np.concatenate([to_uint8(view) for view in textureless], 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="the PNG to write (never over an existing file)")
    parser.add_argument("sources", nargs="+", help="LABEL=ROOT: a label and the folder holding its runs")
    parser.add_argument("--prompts", required=True, help="comma list of world captions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mesh", action="store_true", help="a row of each field's exported mesh too")
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"error: {args.out} exists; pick another name")
    sources = []
    for item in args.sources:
        label, sep, root = item.rpartition("=")
        if not sep or not Path(root).is_dir():
            sys.exit(f"error: {item!r} is not LABEL=FOLDER")
        sources.append((label, Path(root)))
    torch.set_num_threads(1)
    cameras = orbit_cameras(4, SIZE)
    rows: list[tuple[str, np.ndarray]] = []
    for prompt in [p.strip() for p in args.prompts.split(",") if p.strip()]:
        scene = world_scene(prompt)
        if scene is None:
            sys.exit(f"error: {prompt!r} is not a caption of the procedural world")
        sampling = SamplingConfig(samples_per_ray=128, occupancy_resolution=0)
        truth = render_views(SceneField(scene), SolidBackground(), cameras, sampling, LightConfig())
        rows.append((f"{prompt}: truth", strip(truth.textureless)))
        for label, root in sources:
            run = find_run(root, prompt, args.seed)
            config, checkpoint = read_run_config(run), load_latest(run)
            field = load_field(config, checkpoint, str(run))
            refined = load_refined_mesh(checkpoint)
            with torch.no_grad():
                renders = asset_views(field, refined, cameras)
            rows.append((label, strip(renders.textureless)))
            if args.mesh and refined is None:
                renders = field_mesh_views(field, cameras)
                rows.append((f"{label}: its mesh", strip(renders.textureless)))
    width = LABEL_WIDTH + rows[0][1].shape[1]
    sheet = Image.new("RGB", (width, SIZE * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, pixels) in enumerate(rows):
        sheet.paste(Image.fromarray(pixels), (LABEL_WIDTH, i * SIZE))
        for j, line in enumerate(label.split(": ")):
            draw.text((4, i * SIZE + 4 + 14 * j), line, fill="black")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
