"""`dreamfusion judge train | check`: train the world judge, or check one against ground-truth renders of the
evaluation suite (evaluation/judge/, issue #5). Its reproduction command is in the judge's model card."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dreamfusion.commands.common import positive_int, seed
from dreamfusion.errors import SettingsError


def cmd_judge_train(args: argparse.Namespace) -> int:
    from dreamfusion.evaluation.judge import DEFAULT_SEED, DEFAULT_STEPS, JudgeConfig, save_judge, train_judge
    from dreamfusion.evaluation.judge.folder import clip_tokenizer_folder
    from dreamfusion.files import dreamfusion_cache
    from dreamfusion.prior.model import load_tokenizer

    torch.set_num_threads(args.threads)
    steps = args.steps or DEFAULT_STEPS
    seed = DEFAULT_SEED if args.seed is None else args.seed
    config = JudgeConfig() if args.images is None else JudgeConfig(train_images=args.images)
    tokenizer = load_tokenizer(clip_tokenizer_folder(dreamfusion_cache(), config.max_tokens))
    judge = train_judge(config, tokenizer, steps, seed, progress=True)
    save_judge(judge, args.out, with_tokenizer=not args.no_tokenizer)
    record = judge.training_record
    print(
        f"wrote {args.out}: {steps} steps, seed {seed}, rendering {record.render_s:.0f} s, "
        f"training {record.train_s:.0f} s, final loss {record.final_loss:.3f}"
    )
    return 0


def cmd_judge_check(args: argparse.Namespace) -> int:
    from dreamfusion.evaluation.judge import load_judge, load_packaged_judge
    from dreamfusion.evaluation.suite import ground_truth_rprecision

    torch.set_num_threads(args.threads)
    judge = load_judge(args.folder) if args.folder else load_packaged_judge()
    print(ground_truth_rprecision(judge, progress=True).report())
    return 0


def cmd_judge_train_views(args: argparse.Namespace) -> int:
    import time

    from dreamfusion.evaluation.janus import (
        ViewClassifierConfig,
        janus_check,
        save_view_classifier,
        train_view_classifier,
    )

    torch.set_num_threads(args.threads)
    defaults = ViewClassifierConfig()
    config = ViewClassifierConfig(
        steps=args.steps or defaults.steps,
        seed=defaults.seed if args.seed is None else args.seed,
        train_images=args.images or defaults.train_images,
    )
    if args.out.exists():
        raise SettingsError(f"{args.out} exists: choose a new file, nothing is overwritten")
    started = time.perf_counter()
    model = train_view_classifier(config, progress=True)
    seconds = time.perf_counter() - started
    save_view_classifier(model, args.out)
    print(f"wrote {args.out}: {config.steps} steps, seed {config.seed}, {seconds:.0f} s")
    print(janus_check(model, progress=True).report())
    return 0


def cmd_judge_check_views(args: argparse.Namespace) -> int:
    from dreamfusion.evaluation.janus import janus_check, load_view_classifier

    torch.set_num_threads(args.threads)
    print(janus_check(load_view_classifier(args.file), progress=True).report())
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    # No defaults here from the judge's modules: importing them (transformers) would slow every `--help`.
    judge = sub.add_parser(
        "judge",
        help="train or check the world judge that `eval` scores R-Precision with",
        description="The world judge: a small image-text model trained on world renders (issue #5).",
    )
    commands = judge.add_subparsers(dest="judge_command", required=True, metavar="COMMAND", title="commands")
    train = commands.add_parser(
        "train",
        help="train a judge on fresh world renders",
        description="Train a judge on fresh renders of the whole world and write its folder.",
    )
    train.add_argument("--out", type=Path, required=True, metavar="DIR", help="the judge folder to write")
    train.add_argument("--steps", type=positive_int, metavar="N", help="optimisation steps (default 2000)")
    train.add_argument("--seed", type=seed, metavar="S", help="random seed (default 7)")
    train.add_argument("--images", type=positive_int, metavar="N", help="training renders (default 20000)")
    train.add_argument(
        "--no-tokenizer", action="store_true", help="leave CLIP's vocabulary out of the folder"
    )
    train.set_defaults(func=cmd_judge_train)
    check = commands.add_parser(
        "check",
        help="R-Precision of ground-truth renders of the suite",
        description="Score exact renders of the evaluation suite with a judge: what a perfect run would get.",
    )
    check.add_argument("folder", type=Path, nargs="?", help="a judge folder (default: the packaged judge)")
    check.set_defaults(func=cmd_judge_check)
    train_views = commands.add_parser(
        "train-views",
        help="train the view classifier of the Janus measure",
        description="Train the view classifier that eval's Janus measure reads runs with (issue #20) on "
        "exact renders of the world's fronted objects, then check it (as check-views does).",
    )
    train_views.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the .safetensors to write"
    )
    train_views.add_argument(
        "--steps", type=positive_int, metavar="N", help="optimisation steps (default 3000)"
    )
    train_views.add_argument("--seed", type=seed, metavar="S", help="random seed (default 2020)")
    train_views.add_argument(
        "--images", type=positive_int, metavar="N", help="training renders (default 16000)"
    )
    train_views.set_defaults(func=cmd_judge_train_views)
    check_views = commands.add_parser(
        "check-views",
        help="the Janus measure on exact and on two-faced renders",
        description="Score the view classifier on exact renders of every fronted world object (it must be "
        "near perfect) and on their two-faced versions (which must score as Janus).",
    )
    check_views.add_argument(
        "file", type=Path, nargs="?", help="a view classifier (default: the packaged one)"
    )
    check_views.set_defaults(func=cmd_judge_check_views)
    for command in (train, check, train_views, check_views):
        command.add_argument(
            "--threads", type=positive_int, default=1, metavar="N", help="torch CPU threads (default 1)"
        )
