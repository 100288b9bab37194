"""`dreamfusion generate PROMPT` and `dreamfusion resume RUN_DIR`: optimise a field for a prompt, then export
its meshes and a turntable (`--no-video` skips it). Both are thin wrappers of dreamfusion.api.

`generate` checks everything it can and loads the prior before it creates the run folder, so a mistake
leaves nothing behind; the folder is claimed atomically and locked while it trains. An interrupted run exits
with 130 after saving a checkpoint, and says how to resume it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from dreamfusion import distributed
from dreamfusion.api import Progress, Run, RunAborted, generate_config, resume
from dreamfusion.commands.common import (
    EXIT_INTERRUPTED,
    add_progress_option,
    add_set_option,
    add_threads_option,
    positive_int,
    report_abort,
    seed,
    show_progress,
)
from dreamfusion.errors import SettingsError
from dreamfusion.guidance import BACKENDS
from dreamfusion.run.config import Config, read_run_config, resolve_config

DEFAULT_MODEL_LINES = "\n".join(
    f"  {kind:<18}{model}"
    for kind, model in {kind: b.about or b.default_model for kind, b in BACKENDS.items()}.items()
)

GENERATE_EPILOG = f"""\
examples:
  # the built-in prior (ships with dreamfusion): coloured shapes; see `dreamfusion prior vocab`
  dreamfusion generate "a red cube on top of a blue cylinder"
  # no model needed: reconstructs a known object, a check that the 3D side works
  dreamfusion generate "a red ball" --preset target
  # the paper's setting with DeepFloyd IF stage I, shortened for a CPU
  dreamfusion generate "a blue mug" --guidance pixel --model ./IF-I-XL-v1.0 --preset cpu
  dreamfusion generate "a corgi" --guidance stable-diffusion --device cuda --set train.steps=5000

default models (when --model is not given):
{DEFAULT_MODEL_LINES}

Presets (--preset) hold only overrides of the paper's defaults: builtin (the default with the built-in
prior), paper (the default with any other), cpu, target, or a YAML file.
Any setting can be changed with --set section.key=value; config.yaml in a run folder lists them all.
An existing run folder is never written into: a new one gets the suffix -2, -3, ...
"""


DEVICE_HELP = "auto (default: cuda if present), cpu, cuda or cuda:N"


def build_config(args: argparse.Namespace) -> Config:
    """The run's Config from the command line (run.config.resolve_config's rule)."""
    flags = {
        "prompt.text": args.prompt,
        "prompt.negative": args.negative,
        "guidance.kind": args.guidance,
        "guidance.model": args.model,
        "train.steps": args.steps,
        "train.seed": args.seed,
        "export.video": False if args.no_video else None,
    }
    return resolve_config(flags, args.preset, args.set)


def print_start(event: Progress) -> None:
    if event.stage == "start":
        print(f"run folder: {event.run_dir}")
    elif event.stage == "export":
        print(f"trained: {event.run_dir}; exporting")


def report(run: Run, stopped_hint: str) -> int:
    """Where a run's files are; exit code 130 for a run stopped before its last step."""
    if not run.finished:
        print(f"stopped at step {run.step}; checkpoint saved. Continue with: {stopped_hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    lines = [f"done: {run.folder}"]
    mesh = run.mesh
    if mesh:
        lines.append(f"  mesh:  {', '.join(str(path) for path in mesh.values())}")
    if run.video is not None:
        gif = f" (and {run.gif.name})" if run.gif is not None else ""
        lines.append(f"  video: {run.video}{gif}")
    if run.grids:
        lines.append(f"  grids: {run.grids[-1]} (validation/ has {len(run.grids)})")
    print("\n".join(lines))
    return 0


def train_reporting(start: Callable[[], Run]) -> int:
    """Run `start` (generate or resume) and report its outcome as the CLI does."""
    try:
        run = start()
    except RunAborted as exc:  # a second Ctrl-C while the trainer finished its step
        return report_abort(exc.run_dir, exc.step, resume_hint(exc.run_dir))
    return report(run, resume_hint(run.folder))


def resume_hint(run_dir: Path) -> str:
    return f"dreamfusion resume {shlex.quote(str(run_dir))}"


def cmd_generate(args: argparse.Namespace) -> int:
    config = build_config(args)
    if args.processes > 1:  # checked here, so that a mistake is one line and not N
        distributed.check_split(config.train.batch_size, args.processes)
        return launch_processes(args.processes)
    return train_reporting(
        lambda: generate_config(
            config, args.out, args.device, args.threads, print_start, progress=show_progress(args)
        )
    )


def cmd_resume(args: argparse.Namespace) -> int:
    if args.processes > 1:
        distributed.check_split(read_run_config(args.run_dir).train.batch_size, args.processes)
        return launch_processes(args.processes)
    return train_reporting(
        lambda: resume(
            args.run_dir,
            device=args.device,
            threads=args.threads,
            on_progress=announce_resume,
            progress=show_progress(args),
        )
    )


def launch_processes(processes: int) -> int:
    """This same command line, less --processes, in `processes` processes (torchrun's agent)."""
    if distributed.launched():
        raise SettingsError(
            "--processes cannot be used under torchrun: torchrun already started the processes"
        )
    return distributed.launch(processes, distributed.without_option(sys.argv[1:], "--processes"))


def add_processes_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--processes",
        type=positive_int,
        default=1,
        metavar="N",
        help="split each step's train.batch_size views over N processes on this machine (torch.distributed: "
        "gloo on the CPU, NCCL with one GPU each); the same as torchrun --nproc-per-node N",
    )


def announce_resume(event: Progress) -> None:
    if event.stage == "start":
        print(f"resuming {event.run_dir} at step {event.step} of {event.total}")
    elif event.stage == "finished":
        print(f"{event.run_dir} already finished ({event.step} of {event.total} steps)")
    elif event.stage == "export":
        print(f"its export is missing (stopped while exporting?); exporting {event.run_dir}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser(
        "generate",
        help="optimise a 3D scene for a text prompt and write a run folder",
        description="Optimise a 3D scene for PROMPT and write a run folder.",
        epilog=GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("prompt", metavar="PROMPT", help='what to make, e.g. "a red mug"')
    g.add_argument(
        "--guidance",
        choices=list(BACKENDS),
        metavar="KIND",
        help=f"the prior: {', '.join(BACKENDS)} (default: from the preset; builtin, the prior shipped with "
        "dreamfusion)",
    )
    g.add_argument(
        "--model",
        metavar="ID_OR_PATH",
        help="Hugging Face hub id or local folder of the prior's weights (implies --guidance pixel unless "
        "--guidance says otherwise)",
    )
    g.add_argument(
        "--steps",
        type=positive_int,
        metavar="N",
        help="optimisation steps (default: from the preset; 15000 in the paper)",
    )
    g.add_argument("--seed", type=seed, metavar="S", help="random seed (default 0)")
    g.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="run folder (default runs/<prompt>-seed<S>); an existing one is never overwritten",
    )
    g.add_argument("--device", metavar="DEV", help=DEVICE_HELP)
    g.add_argument(
        "--negative", metavar="TEXT", help="negative prompt for classifier-free guidance (default empty)"
    )
    g.add_argument(
        "--preset",
        metavar="NAME",
        help="builtin, paper, cpu, target, or a YAML file (default: builtin with the built-in prior, "
        "else paper)",
    )
    g.add_argument(
        "--no-video",
        action="store_true",
        help="skip the turntable (MP4, GIF and contact sheet of the shaded and textureless mesh) in export/",
    )
    add_set_option(g, "train.resolution=32")
    add_processes_option(g)
    add_threads_option(g)
    add_progress_option(g)
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser(
        "resume",
        help="continue a stopped run from its latest checkpoint",
        description="Continue RUN_DIR from its latest checkpoint, with the settings in its config.yaml.",
    )
    r.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a folder written by dreamfusion generate")
    r.add_argument("--device", metavar="DEV", help=DEVICE_HELP)
    add_processes_option(r)
    add_threads_option(r)
    add_progress_option(r)
    r.set_defaults(func=cmd_resume)
