"""The `dreamfusion` command line: one module per command, each with `add_commands(subparsers)`.

- generate.py: `generate` and `resume`;
- batch.py: `batch`, many runs on Ray;
- prior.py: `prior train | export | sample | latent | vocab | ship`;
- export.py: `export`;
- evaluate.py: `eval`;
- judge.py: `judge train | check`;
- serve.py: `serve`, the web app;
- common.py: exit codes, argument types and the shared options.

What the user gets wrong (an empty prompt, a typo in a setting, a missing model, an unwritable folder, a
damaged checkpoint) ends in one line on stderr and exit code 2. A command's heavy imports (diffusers, the
exporter, the judge) happen when it runs, so that `--help` stays quick.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tqdm import tqdm

from dreamfusion import __version__
from dreamfusion.commands import batch, evaluate, export, generate, judge, prior, serve
from dreamfusion.commands.common import EXIT_INTERRUPTED, EXIT_USER_ERROR, OneLineErrorParser
from dreamfusion.errors import UserError

log = logging.getLogger("dreamfusion")

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
  dreamfusion serve                            # the web app, on http://127.0.0.1:7860

Run `dreamfusion COMMAND --help` for the options of a command.
"""

COMMANDS = (generate, batch, prior, export, evaluate, judge, serve)  # in the order `--help` lists them


def parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="dreamfusion",
        description=DESCRIPTION,
        epilog=TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"dreamfusion {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands", help="one of:")
    for module in COMMANDS:
        module.add_commands(sub)
    return p


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
