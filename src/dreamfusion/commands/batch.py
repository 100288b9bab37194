"""`dreamfusion batch FILE`: many prompts x seeds as Ray tasks (dreamfusion.batch), with a results table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dreamfusion.commands.common import (
    add_progress_option,
    add_set_option,
    non_negative_int,
    positive_int,
    seed,
    show_progress,
)

EPILOG = """\
prompts file: plain text, one prompt per line (# starts a comment), or YAML with per-prompt settings:
  seeds: [0, 1]
  prompts:
    - a red cube
    - {prompt: a blue mug, seeds: [0, 1, 2], steps: 300, overrides: ["export.video=false"]}

examples:
  dreamfusion batch prompts.txt --seeds 0,1          # Ray on this machine, one run per core
  ray start --head                                   # on one machine of a cluster, then on the client:
  dreamfusion batch prompts.yaml --address HEAD_IP:6379 --out /shared/runs/mybatch

Run it again to continue: finished runs are skipped and half-done ones resume from their checkpoint.
Needs Ray: pip install -e ".[cluster]".
"""


def seed_list(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected seeds like 0 or 0,1,2")
    return tuple(seed(p) for p in parts)


def cmd_batch(args: argparse.Namespace) -> int:
    from dreamfusion.api import batch

    outcome = batch(
        args.file,
        out=args.out,
        seeds=args.seeds,
        steps=args.steps,
        overrides=args.set,
        address=args.address,
        workers=args.workers,
        evaluate=not args.no_eval,
        device=args.device,
        retries=args.retries,
        progress=show_progress(args),
    )
    if outcome.ran == 0 and outcome.failed == 0:
        where = Path(outcome.rows[0]["run"]).parts[0] if outcome.rows else ""
        print(f"nothing to do: all {outcome.skipped} runs of this batch are already finished ({where}...)")
        return 0
    from dreamfusion.batching.runner import markdown_table

    print(markdown_table(outcome.rows))
    print(
        f"\n{outcome.ran} ran, {outcome.skipped} were already finished, {outcome.failed} failed, "
        f"in {outcome.wall_seconds:.0f} s; table: {outcome.table_markdown} and {outcome.table_json}"
    )
    if outcome.failed:
        print(
            f"{outcome.failed} runs failed (see the table); run the batch again to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "batch",
        help="run a file of prompts (x seeds) as Ray tasks, resumably, with a results table",
        description="Run every prompt of FILE with each seed, one Ray task per run, then write a results "
        "table (batch.md, batch.json) in the output folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("file", type=Path, metavar="FILE", help="prompts: .txt (one per line) or .yaml")
    b.add_argument(
        "--seeds", type=seed_list, default=(0,), metavar="S,S", help="seeds for every prompt (default 0)"
    )
    b.add_argument("--steps", type=positive_int, metavar="N", help="steps for every prompt (default: preset)")
    b.add_argument("--out", type=Path, metavar="DIR", help="output folder (default runs/batch-<FILE name>)")
    b.add_argument(
        "--address", metavar="HOST:PORT", help="join this Ray cluster (default: start Ray on this machine)"
    )
    b.add_argument(
        "--workers", type=positive_int, metavar="N", help="runs at a time on this machine (default: cores)"
    )
    b.add_argument("--no-eval", action="store_true", help="do not score world prompts (dreamfusion eval)")
    b.add_argument(
        "--retries",
        type=non_negative_int,
        default=3,
        metavar="N",
        help="times a run whose process died is started again (default 3)",
    )
    b.add_argument("--device", metavar="DEV", help="auto (default), cpu or cuda, in each task")
    add_set_option(b, "export.video=false")
    add_progress_option(b)
    b.set_defaults(func=cmd_batch)
