"""`dreamfusion serve`: the web app (dreamfusion.app), on 127.0.0.1 unless --host says otherwise."""

from __future__ import annotations

import argparse
from pathlib import Path

from dreamfusion.commands.common import add_threads_option, integer


def cmd_serve(args: argparse.Namespace) -> int:
    from dreamfusion.app.server import serve

    print(f"dreamfusion serve: http://{args.host}:{args.port} (runs in {args.runs.absolute()}; Ctrl-C stops)")
    serve(args.host, args.port, args.runs, args.threads)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="a web app: prompt to 3D with live progress, a 3D viewer, the turntable and a gallery of runs",
        description="Serve the web app. One run trains at a time; the others wait in a queue, and each "
        "waiting page shows its place. Runs are written under --runs, as `generate` writes them.",
    )
    s.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    s.add_argument("--port", type=lambda t: integer(t, 1, 65535), default=7860, help="default 7860")
    s.add_argument(
        "--runs", type=Path, default=Path("runs"), metavar="DIR", help="the runs folder (default runs)"
    )
    add_threads_option(s)
    s.set_defaults(func=cmd_serve)
