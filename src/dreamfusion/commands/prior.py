"""`dreamfusion prior ...`: train, export, sample, ship and describe the built-in prior (issues #3, #15).

dreamfusion.prior is imported inside the commands, as the diffusers backends are, so that `--help` and the
other commands do not pay for importing diffusers and transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from dreamfusion.commands.common import (
    EXIT_INTERRUPTED,
    add_progress_option,
    add_set_option,
    positive_float,
    positive_int,
    report_abort,
    seed,
    show_progress,
)
from dreamfusion.config import apply_overrides
from dreamfusion.errors import UserError
from dreamfusion.files import dreamfusion_cache
from dreamfusion.guidance.hub import quiet_diffusers_and_transformers
from dreamfusion.prompts import validate_prompt
from dreamfusion.run.folder import check_can_create

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
    from dreamfusion.prior.tokenizer import merges_from_wheel, open_clip_wheel, save_clip_tokenizer
    from dreamfusion.prior.train import (
        PriorTrainConfig,
        check_new_run_dir,
        extend_run,
        resume_run,
        start_run,
        train,
    )

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
    from dreamfusion.prior.train import resume_run

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
    from dreamfusion.prior.sample import sample, save_grid

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


def cmd_prior_ship(args: argparse.Namespace) -> int:
    from dreamfusion.prior.builtin import ship

    for name, digest in ship(args.folder).items():
        print(f"{digest}  {name}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
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

    ship = commands.add_parser(
        "ship",
        help="copy a finished prior into the package as the built-in one, with its SHA256SUMS",
        description="Copy the prior in FOLDER into dreamfusion/prior/builtin/ (the packaged built-in prior) "
        "and write its SHA256SUMS; prints each file's sha256.",
    )
    ship.add_argument("folder", type=Path, metavar="FOLDER", help="a prior folder, e.g. runs/prior/model")
    ship.set_defaults(func=cmd_prior_ship)
