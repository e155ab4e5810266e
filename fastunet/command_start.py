"""Ctrl-C (or SIGTERM) while the ``fastunet`` command starts: one line, status 130 (143).

Loading the command (``import fastunet`` and its command line; numpy) takes a moment before
:func:`fastunet.cli.main` can take the signals over (:mod:`fastunet.cli.signals`: the
libraries a command then needs, PyTorch or OpenVINO, SciPy, zarr, load under its handlers);
a Ctrl-C in that time printed an import traceback. :func:`guard` (called first thing by the
package, and only when the process is the ``fastunet`` command: never in a Python program
that imports fastunet) answers it with one line instead; :func:`release` gives the signals
back.
Importing this module calls :func:`guard` (``fastunet/__init__.py`` imports it first).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

__all__ = ["guard", "release"]


def _is_command() -> bool:
    """Is this process the ``fastunet`` command (the console script, or ``python -m fastunet``)?"""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
    return argv0 == "fastunet" or list(getattr(sys, "orig_argv", []))[1:3] == ["-m", "fastunet"]


def _stop(signum, frame) -> None:
    word = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    os.write(2, f"fastunet: {word} while starting; nothing was done\n".encode())
    os._exit(128 + signum)


def guard() -> None:
    """While the command imports its modules, SIGINT and SIGTERM end it with one line."""
    if _is_command() and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):
                signal.signal(signum, _stop)


def release() -> None:
    """Give SIGINT and SIGTERM back to Python's default handlers (``main`` takes them next)."""
    if threading.current_thread() is not threading.main_thread():
        return
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    for signum, default in defaults.items():
        if signal.getsignal(signum) is _stop:
            signal.signal(signum, default)


guard()
