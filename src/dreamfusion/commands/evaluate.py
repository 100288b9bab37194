"""`dreamfusion eval RUN_DIR...`: score finished runs (issue #5)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from dreamfusion.commands.common import add_progress_option, add_threads_option, positive_int, show_progress
from dreamfusion.device import pick_device, use_cpu_threads
from dreamfusion.errors import UserError


def cmd_eval(args: argparse.Namespace) -> int:
    from dreamfusion.evaluation.runs import (
        EvalConfig,
        evaluate_run,
        load_image_text_model,
        summary_line,
        write_eval,
    )

    missing = [str(d) for d in args.run_dirs if not (d / "config.yaml").is_file()]
    if missing:
        raise UserError(f"not a run folder (no config.yaml): {', '.join(missing)}")
    use_cpu_threads(args.threads)
    config = EvalConfig(views=args.views, resolution=args.resolution)
    model = load_image_text_model(args.model, pick_device(args.device))
    runs = tqdm(
        args.run_dirs, desc="eval", unit="run", disable=not show_progress(args) or len(args.run_dirs) < 2
    )
    for run_dir in runs:
        result = evaluate_run(run_dir, model, config)
        path = write_eval(run_dir, result)
        tqdm.write(f"{summary_line(result)}  ({path})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval",
        help="score finished runs: R-Precision, and IoU, Chamfer and colour error for world prompts",
        description="Score each RUN_DIR and write RUN_DIR/eval.json (eval-2.json, ... if one exists): "
        "CLIP R-Precision as the paper defines it (renders at 30 deg elevation, the prompt ranked among the "
        "evaluation suite's captions; Color on shaded renders, Geo on textureless renders against shape-only "
        "captions), and for prompts of the procedural world Geo of the exported mesh's textureless renders, "
        "the volumetric IoU, the Chamfer distance and the mean colour error (CIEDE2000) against the exact "
        "scene. A run with a mesh stage (refine.steps) is scored on its refined mesh.",
    )
    e.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="folders written by generate")
    e.add_argument(
        "--model",
        default="judge",
        metavar="NAME",
        help="image-text model: judge (default: the project's world judge), or a CLIP id or folder, "
        "e.g. openai/clip-vit-large-patch14",
    )
    e.add_argument("--views", type=positive_int, default=8, metavar="N", help="azimuths (default 8)")
    e.add_argument(
        "--resolution", type=positive_int, default=64, metavar="PX", help="render size (default 64)"
    )
    e.add_argument("--device", metavar="DEV", help="for a CLIP model: auto, cpu, cuda or cuda:N")
    add_threads_option(e)
    add_progress_option(e)
    e.set_defaults(func=cmd_eval)
