"""The ``camplug`` command. Each command lives in its own module of this package (``audit``:
demo and audit, ``compare``, ``describe``, ...), which registers its parser and the function
that runs it; this module assembles them and reports errors. The commands parse arguments and
call the library; building the parser and printing help import no torch."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from camplug.version import __version__

from .options import PROTOCOLS, USER_ERRORS, UserError

# The modules that register commands, in the order ``--help`` lists them.
COMMAND_MODULES = ("audit", "compare", "describe", "explain", "sanity", "export", "diff")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command. Building it and printing help import no torch."""
    parser = argparse.ArgumentParser(
        prog="camplug", description="Class activation maps for PyTorch classifiers.")
    parser.add_argument("--version", action="version", version=f"camplug {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of errors reported as 'camplug: error'")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"camplug.cli.{name}").register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Bad input (``USER_ERRORS``) ends in ``camplug: error: ...`` on stderr and status 2, an
    interrupt in status 130; any other exception is a bug and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        if args.traceback:
            raise
        print(f"camplug: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.traceback:
            raise
        resumable = getattr(args, "resumable", False)
        resume = " (the same command resumes the audit)" if resumable else ""
        print(f"camplug: interrupted{resume}", file=sys.stderr)
        return 130


__all__ = ["PROTOCOLS", "USER_ERRORS", "UserError", "build_parser", "main"]
