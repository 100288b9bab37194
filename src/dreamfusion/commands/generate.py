"""`dreamfusion generate PROMPT` and `dreamfusion resume RUN_DIR`: optimise a field for a prompt, then export
its meshes.

`generate` checks everything it can and loads the prior before it creates the run folder, so a mistake
leaves nothing behind; the folder is claimed atomically and locked while it trains. An interrupted run exits
with 130 after saving a checkpoint, and says how to resume it.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import torch

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
from dreamfusion.config import dump_yaml
from dreamfusion.device import pick_device, use_cpu_threads
from dreamfusion.errors import UserError
from dreamfusion.guidance import BACKENDS, build_guidance
from dreamfusion.guidance.base import Guidance
from dreamfusion.guidance.embeddings import default_cache_dir
from dreamfusion.run.config import Config, load_latest, read_run_config, resolve_config
from dreamfusion.run.folder import (
    RunLock,
    check_can_create,
    claim_run_dir,
    free_run_dir,
    slug,
    write_run_config,
)
from dreamfusion.training.trainer import Trainer

log = logging.getLogger("dreamfusion")

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
    }
    return resolve_config(flags, args.preset, args.set)


def load_guidance(config: Config, device: torch.device) -> Guidance:
    return build_guidance(
        config.guidance,
        device,
        config.train.seed + 2,
        config.sampling,
        config.light,
        config.train.resolution,
        prompt=config.prompt.text,
    )


def run_training(trainer: Trainer, run_dir: Path, progress: bool) -> int:
    resume_hint = f"dreamfusion resume {shlex.quote(str(run_dir))}"
    try:
        finished = trainer.train(progress=progress)
    except KeyboardInterrupt:
        # A second Ctrl-C while the trainer finishes its step: stop at once, without a new checkpoint.
        return report_abort(run_dir, trainer.step, resume_hint)
    if not finished:
        print(
            f"stopped at step {trainer.step}; checkpoint saved. Continue with: {resume_hint}", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    print(f"done: {run_dir} (validation images in {run_dir / 'validation'})")
    export_finished_run(run_dir, progress)
    return 0


def export_finished_run(run_dir: Path, progress: bool) -> None:
    """Meshes of every finished run (GLB, OBJ, PLY in RUN_DIR/export/); a turntable video is one
    `dreamfusion export RUN_DIR --video` away. A field with no surface is a warning here, not a failure:
    the run itself finished and its checkpoints are kept."""
    from dreamfusion.export.pipeline import ExportConfig, export_run

    try:
        result = export_run(run_dir, ExportConfig(), progress)
    except UserError as exc:
        log.warning("nothing exported: %s", exc)
        return
    print(f"exported: {result.folder}")


def cmd_generate(args: argparse.Namespace) -> int:
    config = build_config(args)
    device = pick_device(args.device)
    use_cpu_threads(args.threads)
    requested = args.out or Path("runs") / f"{slug(config.prompt.text)}-seed{config.train.seed}"
    check_can_create(free_run_dir(requested))
    # Everything that can fail (loading the prior, encoding the prompt) happens before the run folder is
    # created, so a mistake leaves nothing behind, and its error is the only line on stderr.
    guidance = load_guidance(config, device)
    run_dir = claim_run_dir(requested)  # atomic: a second generate with the same --out gets another folder
    with RunLock(run_dir) as lock:
        try:
            trainer = Trainer(config, run_dir, guidance, device, default_cache_dir())
        except BaseException:
            lock.abandon()  # nothing was written: leave nothing behind
            raise
        write_run_config(run_dir, dump_yaml(trainer.config))  # with what the prior decided, e.g. the size
        return start_training(trainer, run_dir, requested, args)


def start_training(trainer: Trainer, run_dir: Path, requested: Path, args: argparse.Namespace) -> int:
    if run_dir != requested:
        log.warning("%s already exists and is not empty; writing to %s", requested, run_dir)
    for warning in trainer.guidance.warnings:
        log.warning("%s", warning)
    print(f"run folder: {run_dir}")
    return run_training(trainer, run_dir, show_progress(args))


def cmd_resume(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    read_run_config(run_dir)  # a missing or foreign folder is reported before anything is locked
    with RunLock(run_dir):
        return resume_locked(run_dir, args)


def resume_locked(run_dir: Path, args: argparse.Namespace) -> int:
    config = read_run_config(run_dir)  # again, under the lock: the one that counts
    # The checkpoint is read before the prior loads: a damaged one should not cost a model load first.
    checkpoint = load_latest(run_dir)
    if checkpoint.step >= config.train.steps:
        print(f"{run_dir} already finished ({checkpoint.step} of {config.train.steps} steps)")
        return 0
    device = pick_device(args.device)
    use_cpu_threads(args.threads)
    guidance = load_guidance(config, device)
    trainer = Trainer(config, run_dir, guidance, device, default_cache_dir())
    trainer.restore(checkpoint)
    print(f"resuming {run_dir} at step {trainer.step} of {config.train.steps}")
    return run_training(trainer, run_dir, show_progress(args))


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
    add_set_option(g, "train.resolution=32")
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
    add_threads_option(r)
    add_progress_option(r)
    r.set_defaults(func=cmd_resume)
