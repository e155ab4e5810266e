"""The ``fastunet`` command: the parser of every sub-command, and the entry point."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UserError
from . import bench, demo, evaluate, export, info, segment, train
from .common import EXIT_CODES, EXIT_INTERRUPTED, EXIT_USER, cli_logging, configure_process, to_flags

__all__ = ["main", "build_parser"]

log = logging.getLogger("fastunet.cli")

# One module per sub-command, each with add_parser(sub) and run(args); in the order of --help.
COMMANDS = (segment, train, evaluate, demo, export, info, bench)

_RESUME_HINTS = {
    "segment": "; the finished blocks are kept: run the same command with --resume to continue",
    "train": "; run the same command with --resume to continue from the checkpoint",
}


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="fastunet",
        description="U-Net segmentation of huge biomedical images (Ronneberger et al. 2015).",
        epilog="'fastunet COMMAND --help' shows a command's options and examples.\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastunet`` command; returns the exit status (see ``--help``).

    User errors are one line on standard error (status 2), an interrupt says how to resume
    (130); any other exception is a bug and propagates with its traceback (status 1).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with cli_logging(args.command, verbose=args.verbose, log_file=args.log_file):
            log.debug("fastunet %s", " ".join(sys.argv[1:] if argv is None else argv))
            return _run(args)
    except UserError as exc:  # the log file itself could not be opened
        print(f"fastunet {args.command}: error: {to_flags(str(exc), args)}", file=sys.stderr)
        return EXIT_USER


def _run(args: argparse.Namespace) -> int:
    try:
        configure_process(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        log.error("%s", to_flags(str(exc), args))
        return EXIT_USER
    except KeyboardInterrupt:
        log.error("interrupted%s", _RESUME_HINTS.get(args.command, ""), extra={"plain": True})
        return EXIT_INTERRUPTED
    except Exception:
        log.debug("internal error", exc_info=True)  # into the log file; Python prints the traceback
        raise
