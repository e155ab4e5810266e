"""Ctrl-C (SIGINT) and SIGTERM while a command runs: one clean exit in every phase.

The command owns the process while :func:`fastunet.cli.main` runs. The first signal raises
``KeyboardInterrupt`` (SIGTERM: :class:`Terminated`, a subclass) in the main thread, as
Python's own handler does: a segmentation lets its running blocks finish and be recorded, a
training writes its checkpoint, and ``main`` ends with one line saying what was kept (status
130, or 143). A second signal does not wait: it prints that line at once, removes the
temporary file of a write in progress (:func:`fastunet.paths.remove_partial_files`), gives the
output's lock back (:func:`fastunet.io.lock.release_held`, at most 2 s: an object store's lease
would refuse the next run until it expires) and ends the process with :func:`os._exit` (130 / 143) — no interpreter shutdown, so no thread still
inside PyTorch is torn down under it (which aborted the process). Blocks cut short that way
are not recorded; ``--resume`` computes them again.

What was kept is said by the command: :func:`set_kept` registers a function that looks at
what is on disk (an output's recorded blocks, a checkpoint) when the line is printed. A TIFF
output keeps nothing (it is written whole at the end), so its line never promises
``--resume``. While the command starts (before ``main`` runs: importing PyTorch takes
seconds) :mod:`fastunet.command_start` answers the same signals.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

__all__ = ["Terminated", "CommandSignals", "set_kept", "kept", "NOTHING"]

NOTHING = "nothing was written"
_state = {"kept": None}


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's stop, ``kill``), handled as Ctrl-C is: the running blocks
    finish and are recorded, the output stays resumable; the exit status is 143."""


def set_kept(describe) -> None:
    """Register ``describe()``, which says (as a clause) what the command has kept so far."""
    _state["kept"] = describe


def kept() -> str:
    """What the running command has kept, in words (never raises)."""
    describe = _state["kept"]
    try:
        return describe() if describe is not None else NOTHING
    except Exception:  # noqa: BLE001 - said while the process stops: never a second failure
        return "what was written so far is kept"


class CommandSignals:
    """SIGINT and SIGTERM for one run of a command (a context manager; main thread only)."""

    def __init__(self, command: str):
        self.command = command
        self.count = 0
        self.previous: dict = {}

    def __enter__(self) -> "CommandSignals":
        from ..command_start import release

        release()
        _state["kept"] = None
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
        _state["kept"] = None

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        self.exit_now(signum)

    def exit_now(self, signum) -> None:
        """The second signal: one line, the partial files removed, and out at once."""
        from ..paths import remove_partial_files

        word = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
        line = f"fastunet {self.command}: {word} again: stopped at once; {kept()}"
        try:
            logging.getLogger("fastunet.cli").debug(line)
            for handler in logging.getLogger("fastunet").handlers:
                handler.flush()
            sys.stdout.flush()
        except Exception:  # noqa: BLE001
            pass
        os.write(2, (line + "\n").encode())
        remove_partial_files()
        if "fastunet.io.lock" in sys.modules:  # an object store's lease would refuse the next run for minutes
            sys.modules["fastunet.io.lock"].release_held(timeout=2.0)
        os._exit(143 if signum == signal.SIGTERM else 130)
