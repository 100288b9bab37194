"""What the commands share: exit codes, argparse types that turn bad text into one-line usage errors, the
common options (--set, --threads, --no-progress), and how a stopped training says where to go on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from dreamfusion.checkpoint import latest_checkpoint

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped with Ctrl-C


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage before an error; one line that names --help is easier to read."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def integer(text: str, low: int | None = None, high: int | None = None) -> int:
    """An int, optionally within [low, high]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if low is not None and value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
    return value


def positive_int(text: str) -> int:
    value = integer(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    return integer(text, low=0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def show_progress(args: argparse.Namespace) -> bool:
    """A progress bar unless --no-progress, and only on a terminal: tqdm redraws one line with carriage
    returns, which in a log file or a pipe is noise (as tqdm's own disable=None). metrics.jsonl has every
    step anyway."""
    return not args.no_progress and sys.stderr.isatty()


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


def report_abort(run_dir: Path, step: int, resume_hint: str) -> int:
    """After an immediate stop (a second Ctrl-C): say where the last checkpoint is and how to go on."""
    saved = latest_checkpoint(run_dir / "checkpoints")
    where = f"the last checkpoint is {saved.name}; continue with: {resume_hint}" if saved else "no checkpoint"
    print(f"aborted at step {step}; {where}", file=sys.stderr)
    return EXIT_INTERRUPTED
