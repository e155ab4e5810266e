"""Holding Ctrl-C (SIGINT) and SIGTERM over a few lines that must not be cut in the middle.

Python runs a signal's handler in the main thread, between any two bytecodes, and the
handlers that stop a run raise there (``KeyboardInterrupt``, or the CLI's ``Terminated``).
Raised inside ``ThreadPoolExecutor.submit`` while it starts a worker thread (``Thread.start``
waits on an event, and that wait is interruptible), the interrupt leaves a running thread the
pool does not know of: ``shutdown(wait=True)`` does not wait for it, and the block it runs
is cut short at interpreter exit. :func:`interrupts_held` defers the interrupt to the end of
such a section instead.
"""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["interrupts_held"]

_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_held():
    """Within the block, SIGINT and SIGTERM are recorded instead of handled; on leaving it
    the handlers are restored and the first signal recorded is handed to its handler (which
    raises as it would have, now at a point where nothing is half done).

    Only signals with a Python handler are held (the default Ctrl-C handler, the CLI's
    SIGTERM handler); ignored or default-action signals, and calls from a thread other than
    the main thread (which gets no signals), are left as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, object]] = []
    previous = {}
    for signum in _HELD:
        handler = signal.getsignal(signum)
        if callable(handler):
            previous[signum] = signal.signal(signum, lambda s, frame: caught.append((s, frame)))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        signum, frame = caught[0]
        previous[signum](signum, frame)
