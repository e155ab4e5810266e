"""The ``fastunet`` command: the parser of every sub-command, and the entry point."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UserError
from . import bench, demo, evaluate, export, info, segment, train
from .common import (
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USER,
    cli_logging,
    configure_process,
    to_flags,
)

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


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's stop, ``kill``), handled as Ctrl-C is: the running blocks
    finish and are recorded, the output stays resumable; the exit status is 143."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastunet`` command; returns the exit status (see ``--help``).

    User errors are one line on standard error (status 2), an interrupt says how to resume
    (130); any other exception is a bug and propagates with its traceback (status 1). The
    command owns the process: while it runs, SIGTERM raises :class:`Terminated` (a
    ``KeyboardInterrupt``) in the main thread, so a terminated run stops as an interrupted
    one does (status 143).
    """
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (main() called from a thread): leave signals alone
        previous = None
    try:
        with cli_logging(args.command, verbose=args.verbose, log_file=args.log_file):
            log.debug("fastunet %s", " ".join(sys.argv[1:] if argv is None else argv))
            return _run(args)
    except UserError as exc:  # the log file itself could not be opened
        print(f"fastunet {args.command}: error: {to_flags(str(exc), args)}", file=sys.stderr)
        return EXIT_USER
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        configure_process(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        log.error("%s", to_flags(str(exc), args))
        return EXIT_USER
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        log.error("%s%s", what, _RESUME_HINTS.get(args.command, ""), extra={"plain": True})
        return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED
    except Exception:
        log.debug("internal error", exc_info=True)  # into the log file; Python prints the traceback
        raise
