"""Argument types shared by the command-line parsers (cli.py and export/command.py): each turns bad text
into argparse's one-line usage error."""

from __future__ import annotations

import argparse
import sys


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
