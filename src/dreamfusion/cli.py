"""The `dreamfusion` command: generate a 3D scene from a prompt, or resume a run."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from importlib import resources
from pathlib import Path

import torch
import yaml

from dreamfusion import __version__
from dreamfusion.config import (
    apply_overrides,
    dump_yaml,
    from_dict,
    load_yaml_overrides,
    merge_dicts,
    to_dict,
)
from dreamfusion.device import pick_device
from dreamfusion.errors import UserError
from dreamfusion.guidance import KINDS, build_guidance
from dreamfusion.guidance.base import Guidance
from dreamfusion.prompts import default_cache_dir, validate_prompt
from dreamfusion.trainer import Config, Trainer, load_latest

log = logging.getLogger("dreamfusion")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Text to 3D by Score Distillation Sampling (DreamFusion, Poole et al. 2022).

A NeRF is optimised from scratch for your prompt against a frozen text-to-image diffusion model, with
random cameras and lights, shading and view-dependent prompts. Every run writes a folder with
config.yaml, metrics.jsonl, checkpoints/ and validation/ images, and can be resumed.
"""

GENERATE_EPILOG = """\
examples:
  dreamfusion generate "a red ball" --preset target           # no model needed: reconstructs a known object
  dreamfusion generate "a blue mug" --guidance pixel --model ./IF-I-XL-v1.0 --preset cpu
  dreamfusion generate "a corgi" --guidance stable-diffusion --device cuda --set train.steps=5000

Presets (--preset) hold only overrides of the paper's defaults: paper, cpu, target, or a YAML file.
Any setting can be changed with --set section.key=value; config.yaml in a run folder lists them all.
"""


def preset_overrides(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_yaml_overrides(path)
    names = sorted(
        p.name[:-5] for p in resources.files("dreamfusion.presets").iterdir() if p.name.endswith(".yaml")
    )
    if name_or_path not in names:
        raise UserError(
            f"unknown preset {name_or_path!r}: use one of {', '.join(names)} or a path to a YAML file"
        )
    return load_yaml_overrides(
        resources.files("dreamfusion.presets").joinpath(f"{name_or_path}.yaml").read_text()
    )


def build_config(args: argparse.Namespace) -> Config:
    """Paper defaults <- preset <- command-line flags <- --set overrides, validated as one Config."""
    data = merge_dicts(to_dict(Config()), preset_overrides(args.preset))
    flags = {
        "prompt.text": validate_prompt(args.prompt),
        "prompt.negative": args.negative,
        "guidance.kind": args.guidance,
        "guidance.model": args.model,
        "train.steps": args.steps,
        "train.seed": args.seed,
    }
    for key, value in flags.items():
        if value is not None:
            section, name = key.split(".")
            data[section][name] = value
    return apply_overrides(from_dict(Config, data), args.set)


def slug(prompt: str, max_len: int = 40) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return s[:max_len].rstrip("-") or "run"


def new_run_dir(requested: Path | None, config: Config) -> Path:
    """A fresh folder: the requested one if it is new (or empty), else the same name with -2, -3, ...
    An existing run is never written into; resume it with `dreamfusion resume` instead."""
    base = requested or Path("runs") / f"{slug(config.prompt.text)}-seed{config.train.seed}"
    candidate, n = base, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    try:
        candidate.mkdir(parents=True, exist_ok=True)
        probe = candidate / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write the run folder {candidate}: {exc.strerror or exc}") from exc
    if candidate != base:
        log.warning("%s already holds a run; writing to %s", base, candidate)
    return candidate


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_guidance(config: Config, device: torch.device) -> Guidance:
    return build_guidance(
        config.guidance, device, config.train.seed + 2, config.sampling, config.light, config.train.resolution
    )


def run_training(trainer: Trainer, run_dir: Path, progress: bool) -> int:
    finished = trainer.train(progress=progress)
    if not finished:
        print(
            f"stopped at step {trainer.step}; checkpoint saved. Continue with: dreamfusion resume {run_dir}"
        )
        return EXIT_INTERRUPTED
    print(f"done: {run_dir} (validation images in {run_dir / 'validation'})")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    config = build_config(args)
    device = pick_device(args.device)
    if config.guidance.kind == "target":
        log.warning(
            "the target guidance ignores the prompt: it reconstructs a known %r", config.guidance.target_shape
        )
    # Load the prior before creating anything on disk, so a missing model leaves no half-made run folder.
    guidance = load_guidance(config, device)
    run_dir = new_run_dir(args.out, config)
    write_text_atomic(run_dir / "config.yaml", dump_yaml(config))
    trainer = Trainer(config, run_dir, guidance, device, default_cache_dir())
    print(f"run folder: {run_dir}")
    return run_training(trainer, run_dir, not args.no_progress)


def cmd_resume(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml)")
    try:
        data = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{config_path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    config = from_dict(Config, data or {})
    checkpoint = load_latest(run_dir)
    device = pick_device(args.device)
    trainer = Trainer(config, run_dir, load_guidance(config, device), device, default_cache_dir())
    trainer.restore(checkpoint)
    if trainer.step >= config.train.steps:
        print(f"{run_dir} already finished ({trainer.step} steps)")
        return 0
    print(f"resuming {run_dir} at step {trainer.step} of {config.train.steps}")
    return run_training(trainer, run_dir, not args.no_progress)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dreamfusion", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"dreamfusion {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser(
        "generate",
        help="optimise a 3D scene for a text prompt",
        description="Optimise a 3D scene for PROMPT and write a run folder.",
        epilog=GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("prompt", metavar="PROMPT", help='what to make, e.g. "a red mug"')
    g.add_argument(
        "--guidance",
        choices=KINDS,
        metavar="KIND",
        help=f"the prior: {', '.join(KINDS)} (default: from the preset, else pixel)",
    )
    g.add_argument("--model", metavar="ID_OR_PATH", help="hub id or local folder of the prior's weights")
    g.add_argument("--steps", type=positive_int, metavar="N", help="optimisation steps")
    g.add_argument("--seed", type=int, metavar="S", help="random seed (default 0)")
    g.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="run folder (default runs/<prompt>-seed<S>); never overwritten",
    )
    g.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda or cuda:N")
    g.add_argument("--negative", metavar="TEXT", help="negative prompt for classifier-free guidance")
    g.add_argument(
        "--preset", default="paper", metavar="NAME", help="paper (default), cpu, target, or a YAML file"
    )
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting, e.g. --set train.resolution=32 (repeatable)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_generate)

    r = sub.add_parser(
        "resume",
        help="continue a run from its latest checkpoint",
        description="Continue RUN_DIR from its latest checkpoint with its saved config.yaml.",
    )
    r.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    r.add_argument("--device", metavar="DEV", help="auto (default), cpu, cuda or cuda:N")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_resume)
    return p


def configure_logging() -> None:
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"dreamfusion: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
