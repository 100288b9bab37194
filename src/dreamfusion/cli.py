"""The `dreamfusion` command: generate a 3D scene from a prompt, or resume a run.

What the user gets wrong (an empty prompt, a typo in a setting, a missing model, an unwritable folder, a
damaged checkpoint) ends in one line on stderr and exit code 2, with nothing left half-written: `generate`
checks everything it can and loads the prior before it creates the run folder. An interrupted run exits with
130 after saving a checkpoint, and says how to resume it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import torch
from tqdm import tqdm

from dreamfusion import __version__
from dreamfusion.arguments import integer, positive_float, positive_int, show_progress
from dreamfusion.checkpoint import latest_checkpoint
from dreamfusion.config import (
    apply_overrides,
    dump_yaml,
    from_dict,
    load_yaml_overrides,
    merge_dicts,
    to_dict,
)
from dreamfusion.device import pick_device, use_cpu_threads
from dreamfusion.errors import UserError
from dreamfusion.export.command import add_export_command
from dreamfusion.files import dreamfusion_cache
from dreamfusion.guidance import BACKENDS, build_guidance
from dreamfusion.guidance.base import Guidance
from dreamfusion.guidance.embeddings import default_cache_dir
from dreamfusion.guidance.hub import quiet_diffusers_and_transformers
from dreamfusion.prompts import validate_prompt
from dreamfusion.run.config import Config, load_latest, read_run_config
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

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped with Ctrl-C

DESCRIPTION = """\
Text to 3D by Score Distillation Sampling (DreamFusion, Poole et al. 2022).

A NeRF is optimised from scratch for your prompt against a frozen text-to-image diffusion model, with
random cameras and lights, shading and view-dependent prompts. Every run writes a folder with
config.yaml, metrics.jsonl, checkpoints/ and validation/ images; Ctrl-C saves a checkpoint, and
`dreamfusion resume` continues from it.
"""

TOP_EPILOG = """\
examples:
  dreamfusion generate "a red cube"            # the built-in prior, no download
  dreamfusion generate "a red ball" --preset target --out runs/ball
  dreamfusion resume runs/ball
  dreamfusion prior vocab                      # the words the built-in prior knows

Run `dreamfusion COMMAND --help` for the options of a command.
"""

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


# ----------------------------------------------------------------------------------------------------------
# Configuration


def preset_overrides(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
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


def default_preset(guidance: str | None) -> str:
    """The backend's own preset (the built-in prior's tuned settings when none is named)."""
    return BACKENDS[guidance or "builtin"].preset


def build_config(args: argparse.Namespace) -> Config:
    """Paper defaults <- preset <- command-line flags <- --set overrides, validated as one Config."""
    # A model to load means a downloaded prior: the pixel backend unless --guidance names another.
    kind = args.guidance or ("pixel" if args.model else None)
    data = merge_dicts(to_dict(Config()), preset_overrides(args.preset or default_preset(kind)))
    flags = {
        "prompt.text": args.prompt,
        "prompt.negative": args.negative,
        "guidance.kind": kind,
        "guidance.model": args.model,
        "train.steps": args.steps,
        "train.seed": args.seed,
    }
    for key, value in flags.items():
        if value is not None:
            section, name = key.split(".")
            data[section][name] = value
    config = apply_overrides(from_dict(Config, data), args.set)
    # Checked here, not first in the Trainer, so that an empty prompt (also one given with --set) fails
    # before the prior loads.
    prompt = dataclasses.replace(config.prompt, text=validate_prompt(config.prompt.text))
    guidance = dataclasses.replace(config.guidance, model=absolute_if_local(config.guidance.model))
    return dataclasses.replace(config, prompt=prompt, guidance=guidance)


def absolute_if_local(model: str | None) -> str | None:
    """A local model folder is written to config.yaml as an absolute path, so that `dreamfusion resume`
    finds it from any working folder. Hub ids stay as typed (a folder of that name wins, as in diffusers)."""
    if model is None or not Path(model).expanduser().is_dir():
        return model
    return str(Path(model).expanduser().resolve())


# ----------------------------------------------------------------------------------------------------------
# The run folder


# Names, creation and locking live in dreamfusion.run.


# ----------------------------------------------------------------------------------------------------------
# The prior


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


# ----------------------------------------------------------------------------------------------------------
# Commands


def report_abort(run_dir: Path, step: int, resume_hint: str) -> int:
    """After an immediate stop (a second Ctrl-C): say where the last checkpoint is and how to go on."""
    saved = latest_checkpoint(run_dir / "checkpoints")
    where = f"the last checkpoint is {saved.name}; continue with: {resume_hint}" if saved else "no checkpoint"
    print(f"aborted at step {step}; {where}", file=sys.stderr)
    return EXIT_INTERRUPTED


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


# ----------------------------------------------------------------------------------------------------------
# The built-in prior (issue #3). dreamfusion.prior is imported inside the commands, as the diffusers backends
# are, so that `--help` and the other commands do not pay for importing diffusers and transformers.

DEFAULT_PRIOR_RUN = Path("runs") / "prior"

PRIOR_TRAIN_EPILOG = """\
examples:
  dreamfusion prior train --out runs/prior --max-minutes 60   # stops cleanly with a checkpoint
  dreamfusion prior train --out runs/prior --resume           # continues it, same result as one sitting
  dreamfusion prior train --out runs/prior --resume --steps 8000   # trains a finished run further
  dreamfusion prior train --out runs/prior --set render_ahead=true  # renders on a second core, same weights
  dreamfusion prior sample runs/prior/model "a red mug, front view" --out mug.png

The run folder holds config.yaml, tokenizer/, checkpoints/, metrics.jsonl and, when done, model/ (the prior,
loadable with --guidance pixel --model runs/prior/model). The tokenizer's vocabulary is CLIP's, read from the
open-clip-torch wheel, which pip downloads once into the dreamfusion cache (the package is not installed).
"""


def prior_wheel_cache() -> Path:
    from dreamfusion.prior.tokenizer import wheel_folder

    return wheel_folder(dreamfusion_cache())


def cmd_prior_train(args: argparse.Namespace) -> int:
    from dreamfusion.prior import PriorTrainConfig, resume_run, start_run, train
    from dreamfusion.prior.tokenizer import merges_from_wheel, open_clip_wheel, save_clip_tokenizer
    from dreamfusion.prior.train import check_new_run_dir, extend_run

    quiet_diffusers_and_transformers()
    run_dir: Path = args.out
    if args.resume:
        given = [flag for flag, value in (("--seed", args.seed),) if value is not None]
        if given or args.set:
            raise UserError(
                f"--resume continues with the settings in {run_dir / 'config.yaml'}; "
                f"{', '.join(given + ['--set'] * bool(args.set))} cannot change them (only --steps extends)"
            )
        trainer = resume_run(run_dir) if args.steps is None else extend_run(run_dir, args.steps)
    else:
        config = apply_overrides(PriorTrainConfig(), args.set)
        flags = {"steps": args.steps, "seed": args.seed}
        config = dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})
        check_new_run_dir(run_dir)
        check_can_create(run_dir)
        # Fetched before the run folder exists, so that a failed download leaves nothing behind.
        merges = merges_from_wheel(open_clip_wheel(prior_wheel_cache()))
        trainer = start_run(run_dir, config, lambda folder, n: save_clip_tokenizer(folder, merges, n))
    print(f"prior run folder: {run_dir} (step {trainer.step} of {trainer.config.steps})")
    resume_hint = f"dreamfusion prior train --out {shlex.quote(str(run_dir))} --resume"
    try:
        finished = train(trainer, run_dir, args.max_minutes, show_progress(args))
    except KeyboardInterrupt:
        return report_abort(run_dir, trainer.step, resume_hint)
    if not finished:
        print(f"stopped at step {trainer.step} (time budget); continue with: {resume_hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"done: the prior is in {run_dir / 'model'}")
    return 0


def cmd_prior_export(args: argparse.Namespace) -> int:
    from dreamfusion.prior import resume_run

    quiet_diffusers_and_transformers()
    trainer = resume_run(args.run_dir)
    out = args.out or args.run_dir / f"model-step{trainer.step}"
    digests = trainer.export(out)
    print(f"exported the EMA weights of step {trainer.step} to {out}")
    for name, digest in digests.items():
        print(f"  sha256 {digest}  {name}")
    return 0


def cmd_prior_sample(args: argparse.Namespace) -> int:
    from dreamfusion.guidance.hub import resolve_model
    from dreamfusion.guidance.pixel_diffusion import COMPONENTS
    from dreamfusion.prior import sample, save_grid

    captions = [validate_prompt(c) for c in args.captions]
    folder = resolve_model(str(args.folder), COMPONENTS)  # a clear error for an incomplete folder
    quiet_diffusers_and_transformers()
    images = sample(folder.path, captions, args.sample_steps, args.cfg_scale, args.seed)
    try:
        save_grid(images, args.out, columns=args.columns, scale=args.scale)
    except OSError as exc:
        raise UserError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    print(f"wrote {args.out} ({len(captions)} image(s), {images.shape[1]} px)")
    return 0


LATENT_STAGES = ("dataset", "vae", "text", "encode", "unet", "export")

PRIOR_LATENT_EPILOG = """\
stages, in order (each resumable: run it again to continue from its last checkpoint):
  dataset  render the fixed training set once (--workers processes, default one per core)
  vae      train the autoencoder (AutoencoderKL) on it
  text     pretrain the text encoder contrastively against an image tower of its own
  encode   encode the set to latents with the finished autoencoder
  unet     train the latent U-Net with the text encoder frozen
  export   write ROOT/model, the prior in Stable Diffusion's layout

examples:
  dreamfusion prior latent dataset --out runs/prior-v3
  dreamfusion prior latent vae --out runs/prior-v3 --max-minutes 60
  dreamfusion prior latent unet --out runs/prior-v3 --set weighting=min-snr
  dreamfusion prior latent vae --out runs/prior-v3 --extend-to 6000   # a finished stage, trained further
"""


def cmd_prior_latent(args: argparse.Namespace) -> int:
    from dreamfusion.prior import latent
    from dreamfusion.prior.dataset import DatasetConfig, render_dataset
    from dreamfusion.prior.text_pretrain import TextEncoderConfig
    from dreamfusion.prior.tokenizer import build_clip_tokenizer

    quiet_diffusers_and_transformers()
    run = latent.LatentRun(args.out)
    progress = show_progress(args)
    stage = args.stage
    if args.set and stage in ("dataset", "encode", "export"):
        raise UserError(f"--set applies to the training stages (vae, text, unet), not to {stage}")
    if stage == "dataset":
        config = DatasetConfig(
            **{k: v for k, v in (("images", args.images), ("seed", args.seed)) if v is not None}
        )
        rate = render_dataset(run.dataset, config, args.workers or os.cpu_count() or 1, progress)
        if not run.tokenizer.is_dir():
            build_clip_tokenizer(run.tokenizer, prior_wheel_cache(), TextEncoderConfig().max_tokens)
        print(f"rendered set complete in {run.dataset} ({rate:.0f} images/s this sitting)")
        return 0
    if stage == "encode":
        print(f"latents in {latent.encode_latents(run)}")
        return 0
    if stage == "export":
        print(f"the prior is in {latent.export_latent_prior(run)}")
        return 0
    if args.extend_to is not None:
        if stage not in latent.STAGE_CONFIGS:
            raise UserError(f"--extend-to applies to the training stages (vae, text, unet), not to {stage}")
        if args.set:
            raise UserError("--extend-to keeps the stage's settings; --set cannot change them")
        latent.extend_stage(run, stage, args.extend_to)
    train = {"vae": latent.train_autoencoder, "text": latent.train_text_encoder, "unet": latent.train_unet}[
        stage
    ]
    hint = f"dreamfusion prior latent {stage} --out {shlex.quote(str(run.root))}"
    try:
        finished = train(run, args.set, args.max_minutes, progress)
    except KeyboardInterrupt:
        print(f"interrupted; continue with: {hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not finished:
        print(f"stopped (time budget); continue with: {hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"done: {run.root / stage / latent.MODEL}")
    return 0


def cmd_prior_vocab(args: argparse.Namespace) -> int:
    from dreamfusion.prior.builtin import vocabulary_text

    print(vocabulary_text())
    return 0


# ----------------------------------------------------------------------------------------------------------
# Evaluation (issue #5)


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


def add_eval_command(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval",
        help="score finished runs: R-Precision, and IoU, Chamfer and colour error for world prompts",
        description="Score each RUN_DIR and write RUN_DIR/eval.json (eval-2.json, ... if one exists): "
        "CLIP R-Precision as the paper defines it (renders at 30 deg elevation, the prompt ranked among the "
        "evaluation suite's captions; Color on shaded renders, Geo on textureless renders against shape-only "
        "captions), and for prompts of the procedural world the volumetric IoU, the Chamfer distance and the "
        "mean colour error (CIEDE2000) against the exact scene.",
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


def add_prior_commands(sub: argparse._SubParsersAction) -> None:
    prior = sub.add_parser(
        "prior",
        help="train, export or sample the built-in prior (a diffusion model of the procedural world)",
        description="The built-in prior: a small text-to-image diffusion model trained on world renders.",
    )
    commands = prior.add_subparsers(dest="prior_command", required=True, metavar="COMMAND", title="commands")
    t = commands.add_parser(
        "train",
        help="train it (resumable), then export it to RUN_DIR/model",
        description="Train the built-in prior on fresh renders of the procedural world.",
        epilog=PRIOR_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument(
        "--out", type=Path, default=DEFAULT_PRIOR_RUN, metavar="DIR", help="run folder (default runs/prior)"
    )
    t.add_argument(
        "--steps",
        type=positive_int,
        metavar="N",
        help="optimisation steps (default 6000); with --resume, trains the run further to N steps",
    )
    t.add_argument("--seed", type=seed, metavar="S", help="random seed (default 0)")
    t.add_argument(
        "--max-minutes",
        type=positive_float,
        metavar="M",
        help="stop after M minutes of this sitting, with a checkpoint; --resume continues",
    )
    t.add_argument("--resume", action="store_true", help="continue DIR from its latest checkpoint")
    add_set_option(t, "batch_size=16 or --set model.resolution=64")
    add_progress_option(t)
    t.set_defaults(func=cmd_prior_train)

    e = commands.add_parser(
        "export",
        help="write the EMA weights of a run's latest checkpoint as a prior folder",
        description="Export the EMA weights of RUN_DIR's latest checkpoint, e.g. to look at a run midway.",
    )
    e.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a folder written by dreamfusion prior train"
    )
    e.add_argument("--out", type=Path, metavar="DIR", help="default RUN_DIR/model-step<N>")
    e.set_defaults(func=cmd_prior_export)

    s = commands.add_parser(
        "sample",
        help="sample images for captions from a prior folder (DDIM with classifier-free guidance)",
        description="Sample one image per CAPTION from the prior in FOLDER and save them as one PNG grid.",
    )
    s.add_argument("folder", type=Path, metavar="FOLDER", help="a prior folder, e.g. runs/prior/model")
    s.add_argument("captions", nargs="+", metavar="CAPTION", help='e.g. "a red mug, front view"')
    s.add_argument("--out", type=Path, required=True, metavar="PNG", help="where to write the grid")
    s.add_argument(
        "--steps", dest="sample_steps", type=positive_int, default=50, help="DDIM steps (default 50)"
    )
    s.add_argument(
        "--cfg-scale", type=float, default=5.0, metavar="S", help="CFG scale s = 1 + omega (default 5)"
    )
    s.add_argument("--seed", type=seed, default=0, metavar="S", help="random seed (default 0)")
    s.add_argument("--columns", type=positive_int, metavar="C", help="grid columns (default: near square)")
    s.add_argument(
        "--scale", type=positive_int, default=4, metavar="K", help="enlarge pixels K times (default 4)"
    )
    s.set_defaults(func=cmd_prior_sample)

    lat = commands.add_parser(
        "latent",
        help="train the latent prior (Stable Diffusion layout) stage by stage",
        description="Train the built-in latent prior: one STAGE at a time, each resumable.",
        epilog=PRIOR_LATENT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lat.add_argument("stage", choices=LATENT_STAGES, metavar="STAGE", help=", ".join(LATENT_STAGES))
    lat.add_argument("--out", type=Path, required=True, metavar="ROOT", help="the latent prior's run folder")
    lat.add_argument("--images", type=positive_int, metavar="N", help="dataset: images (default 300000)")
    lat.add_argument("--seed", type=seed, metavar="S", help="dataset: render seed (default 0)")
    lat.add_argument("--workers", type=positive_int, metavar="N", help="dataset: processes (default: cores)")
    lat.add_argument(
        "--max-minutes",
        type=positive_float,
        metavar="M",
        help="training stages: stop after M minutes of this sitting, with a checkpoint",
    )
    lat.add_argument(
        "--extend-to",
        type=positive_int,
        metavar="N",
        help="training stages: train a started stage further, to N steps in all (its schedule restarts)",
    )
    add_set_option(lat, "loop.steps=2000 or --set weighting=min-snr")
    add_progress_option(lat)
    lat.set_defaults(func=cmd_prior_latent)

    v = commands.add_parser(
        "vocab",
        help="list the words the built-in prior was trained on",
        description="List the colours, kinds, relations and templates of the built-in prior's captions.",
    )
    v.set_defaults(func=cmd_prior_vocab)


# ----------------------------------------------------------------------------------------------------------
# Arguments


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; one line that names --help is easier to read."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def seed(text: str) -> int:
    value = integer(text)
    # The trainer seeds generators with seed, seed + 1 and seed + 2; each must fit torch's 32-bit check.
    if not 0 <= value < 2**32 - 2:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32 - 2), got {value}")
    return value


def add_set_option(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override any setting, e.g. --set {example} (repeatable)",
    )


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads (default: the cores not already busy, from the load average)",
    )


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (none is shown off a terminal)"
    )


def parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="dreamfusion",
        description=DESCRIPTION,
        epilog=TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"dreamfusion {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands", help="one of:")

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
    g.add_argument("--device", metavar="DEV", help="auto (default: cuda if present), cpu, cuda or cuda:N")
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
    r.add_argument("--device", metavar="DEV", help="auto (default: cuda if present), cpu, cuda or cuda:N")
    add_threads_option(r)
    add_progress_option(r)
    r.set_defaults(func=cmd_resume)
    add_prior_commands(sub)
    add_export_command(sub)
    add_eval_command(sub)
    return p


# ----------------------------------------------------------------------------------------------------------
# Entry point


class _TqdmHandler(logging.Handler):
    """Writes through tqdm, so a warning during training does not break the progress bar's line, and to
    the sys.stderr of the moment (tests and notebooks replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextmanager
def user_logging() -> Iterator[None]:
    """Our warnings on stderr as `warning: ...` for the duration of one command; the logger is put back
    afterwards, so that calling main() twice in one process (tests) does not stack handlers."""
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]) and return the exit code."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors; returned so main() never exits
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    with user_logging():
        try:
            return args.func(args)
        except UserError as exc:
            print(f"dreamfusion: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            # Before training starts (loading the prior, encoding the prompt) nothing is on disk yet.
            print("dreamfusion: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
