"""`dreamfusion export RUN_DIR`: the exporter on the command line.

The exporter itself (trimesh, xatlas, scikit-image)
is imported only when the command runs, so that `dreamfusion --help` and the other commands do not pay for it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from dreamfusion.commands.common import (
    add_progress_option,
    add_threads_option,
    integer,
    positive_float,
    show_progress,
)
from dreamfusion.errors import UserError

if TYPE_CHECKING:
    from dreamfusion.exporter.pipeline import ExportConfig

EXPORT_DESCRIPTION = """\
Write a textured mesh and, with --video, a turntable of RUN_DIR's field (its latest checkpoint, or
--checkpoint) into RUN_DIR/export/; an existing export is never overwritten (export-2, export-3, ...).
"""

EXPORT_EPILOG = """\
files:
  model.glb                   glTF 2.0 binary, PBR material with the baked albedo as baseColorTexture
  model.obj, .mtl, .png       the same mesh and texture as Wavefront OBJ
  model.ply                   the mesh with vertex colours
  turntable.mp4, .gif, .png   H.264 video, GIF and a contact sheet (with --video)
  export.json                 threshold, sizes, timings, axes and units
All meshes are in glTF's frame: +Y up, the object's front facing +Z (world +Z up, front +X becomes
(x, y, z) -> (y, z, x)), 1 unit = 1 metre.

the surface:
  The iso level is chosen from the field: the level whose surface crosses the same lines of the density
  grid as the field makes at least half opaque (transmittance 0.5: what renders show as solid), so the
  mesh is as large as the renders. --threshold overrides it. Pieces with under 2 % of the largest piece's
  area are removed as floaters (--keep-floaters keeps them). A scene with no surface is an error and
  writes nothing. A run with a mesh stage (refine.steps) exports the mesh it refined, unless --threshold
  or --resolution asks for a surface extracted from the field.

examples:
  dreamfusion export runs/a-red-ball-seed0
  dreamfusion export runs/a-red-ball-seed0 --formats glb --video --panels shaded,normals,depth
  dreamfusion export runs/a-red-ball-seed0 --resolution 384 --faces 50000 --texture-size 2048
"""


def _names(text: str) -> tuple[str, ...]:
    """'glb, obj' -> ('glb', 'obj'); 'none' or '' -> ()."""
    names = tuple(n.strip().lower() for n in text.split(",") if n.strip())
    return () if names == ("none",) else names


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    e = subparsers.add_parser(
        "export",
        help="write a run's textured mesh (GLB, OBJ, PLY) and a turntable video into RUN_DIR/export",
        description=EXPORT_DESCRIPTION,
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a folder written by dreamfusion generate")
    e.add_argument(
        "--formats",
        type=_names,
        default=("glb", "obj", "ply"),
        metavar="LIST",
        help="comma-separated: glb, obj, ply (default all three; none with --video for the video alone)",
    )
    e.add_argument("--video", action="store_true", help="also write the turntable (mp4, gif, contact sheet)")
    e.add_argument("--checkpoint", type=Path, metavar="FILE", help="a checkpoint file (default: the latest)")
    mesh = e.add_argument_group("mesh")
    mesh.add_argument(
        "--resolution",
        type=lambda t: integer(t, 16, 512),
        metavar="N",
        help="marching-cubes grid cells per axis over the scene's cube (default: twice the field's finest "
        "features, 64-256; 128 for the default triplane)",
    )
    mesh.add_argument(
        "--threshold",
        type=positive_float,
        metavar="T",
        help="iso density of the surface (default: chosen from the field, see below)",
    )
    mesh.add_argument(
        "--faces",
        type=lambda t: integer(t, 0),
        metavar="N",
        help="decimate to at most N triangles, 0 for no decimation (default: 40000 at a 256^3 grid, "
        "scaled with the grid's surface, so 10000 at 128^3)",
    )
    mesh.add_argument("--keep-floaters", action="store_true", help="keep small disconnected pieces")
    mesh.add_argument(
        "--texture-size",
        type=lambda t: integer(t, 16, 8192),
        default=1024,
        metavar="N",
        help="texture width and height in texels, a power of two (default 1024)",
    )
    video = e.add_argument_group("video (with --video)")
    video.add_argument("--frames", type=lambda t: integer(t, 1, 3600), default=120, help="default 120")
    video.add_argument(
        "--size",
        type=lambda t: integer(t, 16, 4096),
        default=512,
        metavar="PX",
        help="panel size, even (512)",
    )
    video.add_argument("--fps", type=lambda t: integer(t, 1, 240), default=30, help="default 30")
    video.add_argument(
        "--elevation", type=float, default=20.0, metavar="DEG", help="camera elevation (default 20)"
    )
    video.add_argument(
        "--panels",
        type=_names,
        default=("shaded",),
        metavar="LIST",
        help="side by side, starting with shaded: any of shaded, normals, textureless, depth",
    )
    video.add_argument("--no-gif", action="store_true", help="skip the GIF (the largest file)")
    add_threads_option(e)
    add_progress_option(e)
    e.set_defaults(func=cmd_export)


def export_config(args: argparse.Namespace) -> ExportConfig:
    """The ExportConfig the flags ask for; an invalid combination is a UserError."""
    from dreamfusion.exporter.pipeline import ExportConfig
    from dreamfusion.exporter.texture import TextureConfig
    from dreamfusion.exporter.video import TurntableConfig
    from dreamfusion.fields.mesh import MeshConfig

    try:
        mesh = MeshConfig(resolution=args.resolution, threshold=args.threshold, max_faces=args.faces)
        if args.keep_floaters:
            mesh = dataclasses.replace(mesh, min_component_fraction=0.0)
        return ExportConfig(
            formats=args.formats,
            video=args.video,
            mesh=mesh,
            texture=TextureConfig(size=args.texture_size),
            turntable=TurntableConfig(
                frames=args.frames,
                size=args.size,
                fps=args.fps,
                elevation_deg=args.elevation,
                panels=args.panels,
                gif=not args.no_gif,
            ),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def cmd_export(args: argparse.Namespace) -> int:
    from dreamfusion.device import use_cpu_threads
    from dreamfusion.exporter.pipeline import export_run

    config = export_config(args)
    use_cpu_threads(args.threads)
    progress = show_progress(args)
    result = export_run(args.run_dir, config, progress, args.checkpoint)
    how = "chosen from the field" if result.auto_threshold else "given"
    surface = f"surface at density {result.threshold:.4g} ({how})"
    if result.refined:
        surface = "the mesh stage's refined mesh (--threshold or --resolution extracts one from the field)"
    print(
        f"exported {result.folder}: {result.faces:,} faces, {surface}, {sum(result.seconds.values()):.1f} s"
    )
    for path in result.files:
        print(f"  {path.name}")
    return 0
