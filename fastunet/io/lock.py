"""One writer per output: a lock held while a run creates or resumes a zarr output.

* **Local outputs**: an OS file lock (:class:`filelock.FileLock`) on ``.<name>.fastunet-lock``
  beside the output (inside it when its folder refuses writes), removed when the run ends.
  The operating system releases the lock when the holder's process ends, however it ends
  (a killed run leaves the file, which the next run simply takes).
* **Object stores** (``s3://``, ``gs://``, ``memory://``, ...): a lease object at the same
  name, created only if absent (a conditional write), holding its expiry; the holder renews
  it every ``LEASE_SECONDS / 5`` seconds from a thread and deletes it when done. A lease that
  expired (its holder was killed) is taken over, with a warning on the ``fastunet.io`` logger.

Both record the holder (host, pid, start time), so a second run is refused with one line
naming it and saying how to break a stale lock (``break_lock=True``, or deleting the lock
file or object).
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import threading
import time
import uuid

from ..errors import UserError
from .stores import is_remote

__all__ = ["OutputLock", "lock_output", "lock_location", "release_held", "LEASE_SECONDS"]

log = logging.getLogger("fastunet.io")

LEASE_SECONDS = 300.0  # an object-store lease not renewed for this long is stale
_SUFFIX = ".fastunet-lock"
_held: set = set()  # the locks this process holds (released by release_held before an immediate exit)


def lock_location(path):
    """Where the lock of the output ``path`` lives: ``.<name>.fastunet-lock`` beside it."""
    return path.parent / f".{path.name}{_SUFFIX}"


def _holder(token: str, lease: float | None) -> dict:
    now = time.time()
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "token": token}
    if lease is not None:
        info["expires"] = now + lease
    return info


def _refusal(out, where, holder: dict | None) -> UserError:
    if holder:
        who = f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"
    else:
        who = "a run that recorded no details"
    return UserError(
        f"Output {str(out)!r} is being written by another run ({who}); wait for it to finish. If that run is "
        f"gone, break its lock with break_lock=True (or delete {str(where)!r})."
    )


class OutputLock:
    """The lock of one output; :meth:`acquire` it before creating or resuming, :meth:`release`
    it when the run ends (also a context manager).

    Parameters
    ----------
    path : pathlib.Path or upath.UPath
        The output (a zarr folder or URL).
    break_lock : bool
        Take the lock even when another run holds it (a stale lock of a run that is gone).
    lease : float
        Seconds an object-store lease stays valid without renewal.
    """

    def __init__(self, path, *, break_lock: bool = False, lease: float = LEASE_SECONDS):
        self.path = path
        self.where = lock_location(path)
        self.break_lock = bool(break_lock)
        self.lease = float(lease)
        self.token = uuid.uuid4().hex
        self._file_lock = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.held = False

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -------------------------------------------------------------------- acquire
    def acquire(self) -> "OutputLock":
        """Take the lock, or raise :class:`UserError` naming the run that holds it."""
        if self.held:
            return self
        if is_remote(self.path):
            self._acquire_lease()
        else:
            self._acquire_file()
        self.held = True
        _held.add(self)
        return self

    def _acquire_file(self) -> None:
        try:
            self._try_file()
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not self.path.is_dir():
                raise UserError(f"Cannot lock {str(self.path)!r} ({exc.strerror or exc}): its folder refuses "
                                "writes; choose a writable output location.") from None
            self.where = self.path / _SUFFIX  # the folder refuses writes: the lock lives in the output
            self._try_file()

    def _try_file(self) -> None:
        import filelock

        if self.break_lock and self.where.exists():
            log.warning("breaking the lock %s of %s (break_lock=True)", self.where, self.path)
            self.where.unlink()
        for _ in range(3):
            lock = filelock.FileLock(str(self.where), timeout=0)
            try:
                lock.acquire()
            except filelock.Timeout:
                raise _refusal(self.path, self.where, _read_json(self.where.read_bytes)) from None
            if self.where.exists():  # not a file its last holder removed while we opened it
                break
            lock.release()
        self._file_lock = lock
        with open(self.where, "r+b") as f:  # the holder, for the message of a refused run
            f.truncate(0)
            f.write(json.dumps(_holder(self.token, None)).encode())

    def _acquire_lease(self) -> None:
        fs, key = self.where.fs, self.where.path
        for _ in range(3):
            try:
                fs.pipe_file(key, json.dumps(_holder(self.token, self.lease)).encode(), mode="create")
                break
            except FileExistsError:
                holder = _read_json(lambda: fs.cat_file(key))
                stale = holder is None or float(holder.get("expires", 0)) < time.time()
                if not (stale or self.break_lock):
                    raise _refusal(self.path, self.where, holder) from None
                why = "break_lock=True" if self.break_lock else "it expired"
                log.warning("breaking the lease %s of %s held by %s (%s)", self.where, self.path, holder, why)
                try:
                    fs.rm_file(key)
                except FileNotFoundError:
                    pass
        else:
            raise _refusal(self.path, self.where, _read_json(lambda: fs.cat_file(key)))
        holder = _read_json(lambda: fs.cat_file(key))  # a store without conditional writes: check who won
        if not holder or holder.get("token") != self.token:
            raise _refusal(self.path, self.where, holder)
        self._renewer = threading.Thread(target=self._renew, name="fastunet-lease", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        fs, key = self.where.fs, self.where.path
        while not self._stop.wait(self.lease / 5):
            try:
                holder = _read_json(lambda: fs.cat_file(key))
                if not holder or holder.get("token") != self.token:
                    log.error("the lease %s of %s was taken by another run (%s): two runs may now write the same "
                              "output", self.where, self.path, holder)
                    return
                holder["expires"] = time.time() + self.lease
                fs.pipe_file(key, json.dumps(holder).encode())
            except Exception as exc:  # noqa: BLE001 - tried again at the next period
                log.warning("could not renew the lease %s (%s: %s)", self.where, type(exc).__name__, exc)

    # -------------------------------------------------------------------- release
    def release(self) -> None:
        """Give the lock up (the lock file or lease object is removed)."""
        if not self.held:
            return
        self.held = False
        _held.discard(self)
        if self._file_lock is not None:
            try:
                self.where.unlink()  # while still holding it: a run that opened it then retries
            except OSError:
                pass
            self._file_lock.release()
            self._file_lock = None
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        fs, key = self.where.fs, self.where.path
        try:
            holder = _read_json(lambda: fs.cat_file(key))
            if holder and holder.get("token") == self.token:
                fs.rm_file(key)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself
            log.warning("could not delete the lease %s (%s: %s); it expires by itself", self.where,
                        type(exc).__name__, exc)


def release_held(timeout: float = 2.0) -> None:
    """Release every lock this process holds, waiting at most ``timeout`` seconds (before an
    immediate exit: a second Ctrl-C). Local locks go with the process anyway; an object-store
    lease would otherwise refuse the next run until it expires."""
    locks = list(_held)
    if not locks:
        return
    worker = threading.Thread(target=lambda: [lock.release() for lock in locks], daemon=True)
    worker.start()
    worker.join(timeout)


def _read_json(read) -> dict | None:
    try:
        value = json.loads(read() or b"null")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def lock_output(path, *, break_lock: bool = False) -> OutputLock:
    """Acquire and return the :class:`OutputLock` of the output ``path``."""
    return OutputLock(path, break_lock=break_lock).acquire()
