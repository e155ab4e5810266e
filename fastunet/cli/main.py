"""The ``fastunet`` command: the parser of every sub-command, and the entry point."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from typing import NoReturn

from ..errors import UserError
from . import bench, demo, evaluate, export, info, segment, train
from .common import (
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USER,
    cli_logging,
    configure_process,
    to_flags,
)
from .signals import CommandSignals, Terminated, kept

__all__ = ["main", "console_main", "build_parser", "Terminated"]

log = logging.getLogger("fastunet.cli")

# One module per sub-command, each with add_parser(sub) and run(args); in the order of --help.
COMMANDS = (segment, train, evaluate, demo, export, info, bench)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="fastunet",
        description="U-Net segmentation of huge biomedical images (Ronneberger et al. 2015).",
        epilog="'fastunet COMMAND --help' shows a command's options and examples; 'fastunet' alone prints this "
        "help (status 0).\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _error(command: str | None, message: str) -> int:
    print(f"fastunet{' ' + command if command else ''}: error: {message}", file=sys.stderr)
    return EXIT_USER


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastunet`` command; returns the exit status (see ``--help``).

    ``fastunet`` alone prints the help (status 0); a flag of cellpose, StarDist or nnU-Net is
    answered with fastunet's own (:func:`~fastunet.cli.validate.foreign_flag`, status 2).
    Before any work every flag is checked (:func:`~fastunet.cli.validate.validate_flags`) and
    every file the command will write (:func:`~fastunet.cli.files.check_files`: the rule of
    :func:`fastunet.paths.check_output_file`). User errors are one line on standard error
    (status 2); an interrupt says what was kept (130, SIGTERM 143; a second one stops at once,
    :mod:`fastunet.cli.signals`); any other exception is a bug and propagates with its
    traceback (status 1).
    """
    from .files import check_files
    from .validate import foreign_flag, validate_flags

    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    parser = build_parser()
    if not argv:
        parser.print_help()
        return EXIT_OK
    command = argv[0] if argv[0] in {c.__name__.rsplit(".", 1)[1] for c in COMMANDS} else None
    hint = foreign_flag(argv)
    if hint is not None:
        return _error(command, hint)
    args = parser.parse_args(argv)
    with CommandSignals(args.command):
        try:
            try:
                validate_flags(args)
                check_files(args)
            except UserError as exc:  # before the log file is opened: the terminal only
                return _error(args.command, to_flags(str(exc), args))
            with cli_logging(args.command, verbose=args.verbose, log_file=args.log_file,
                             mode=getattr(args, "log_mode", "a")):
                log.debug("fastunet %s", " ".join(argv))
                return _run(args)
        except UserError as exc:  # the log file itself could not be opened
            return _error(args.command, to_flags(str(exc), args))
        except KeyboardInterrupt as exc:  # while the log file opened or closed
            return _interrupted(args, exc, logged=False)
        finally:
            if "zarr.core.sync" in sys.modules:  # store requests still in flight end before the exit
                from ..io.stores import settle_pending_io

                settle_pending_io()


def console_main() -> NoReturn:
    """The ``fastunet`` program (the console script and ``python -m fastunet``): :func:`main`,
    then a quick exit.

    When :func:`main` has returned, the command's files are written and closed and its thread
    pools are shut down: what the interpreter's teardown still does (freeing every module and
    object one by one) is work the operating system does at once. For a process that imported
    torch it took 0.37 s on the 2-core test machine (median of 7 processes, ``import torch``
    with and without ``os._exit``), a tenth of a small ``fastunet segment``. So, once the
    standard streams and the log handlers are flushed, and when no other non-daemon thread is
    left (Python would wait for it), the process leaves with :func:`os._exit`. An exception
    from :func:`main` (a bug) propagates as usual, with its traceback.
    """
    status = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe or stream: Python's own exit says what it says
        sys.exit(status)
    logging.shutdown()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(status)
    os._exit(status)


def _interrupted(args: argparse.Namespace, exc: KeyboardInterrupt, *, logged: bool = True) -> int:
    what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
    line = f"{what}; {kept()}"
    if logged:
        log.error("%s", line, extra={"plain": True})
    else:
        print(f"fastunet {args.command}: {line}", file=sys.stderr)
    return EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    try:
        configure_process(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        log.error("%s", to_flags(str(exc), args))
        return EXIT_USER
    except KeyboardInterrupt as exc:
        return _interrupted(args, exc)
    except Exception:
        log.debug("internal error", exc_info=True)  # into the log file; Python prints the traceback
        raise
