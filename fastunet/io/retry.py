"""Storage errors: which are worth retrying, which stop a run, and the store that retries.

* **Transient** (:func:`is_transient`): a timeout, a dropped connection, an I/O error of a
  network file system or object store: retried a bounded number of times
  (:data:`ATTEMPTS`), each retry logged on the ``fastunet.io`` logger.
* **Permanent** (:func:`is_permanent`): a full disk or quota (``ENOSPC``, ``EDQUOT``,
  ``EFBIG``), a refused write (``EACCES``, ``EPERM``, ``EROFS``): never retried, turned into
  one :class:`~fastunet.errors.UserError` line naming the place and the fix
  (:func:`storage_error`).
* Anything else (a missing key, a codec error) passes through unchanged.

:class:`RetryingStore` wraps a zarr store with these rules around every chunk read and
write, and counts the writes in flight in this process, so that an output is removed only
once every write to it has stopped (:func:`wait_for_writes`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
import threading

from zarr.storage import WrapperStore

from ..errors import UserError

__all__ = ["ATTEMPTS", "is_transient", "is_permanent", "storage_error", "retry_call", "RetryingStore",
           "wait_for_writes"]

log = logging.getLogger("fastunet.io")

ATTEMPTS = 4  # tries of one chunk read or write (so three retries)
DELAY = 0.05  # seconds before the first retry; doubled for each further one
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)
_NOT_TRANSIENT = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


def is_permanent(exc: BaseException) -> bool:
    """A full disk or quota, or a refused write: retrying cannot help."""
    return isinstance(exc, OSError) and (exc.errno in _FULL + _REFUSED or isinstance(exc, PermissionError))


def is_transient(exc: BaseException) -> bool:
    """An error that may pass when tried again: timeouts, dropped connections, I/O errors of
    a network store (not a missing file, not a full disk or a refused write)."""
    if isinstance(exc, _NOT_TRANSIENT) or is_permanent(exc) or isinstance(exc, UserError):
        return False
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError)):
        return True
    aiohttp = sys.modules.get("aiohttp")  # the HTTP client of s3fs, gcsfs and http://
    return aiohttp is not None and isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))


def storage_error(exc: OSError, *, writing: bool, where: str, key: str | None = None) -> UserError:
    """One line for a full disk or a refused read or write of ``where``, with the fix."""
    what = f"{'writing' if writing else 'reading'} {where!r}" + (f" ({key})" if key else "")
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _FULL:
        fix = "free some space (or raise the quota), then run the same command again with resume=True"
    elif writing:
        fix = "make the output location writable (or choose another), then run again with resume=True"
    else:
        fix = "make the input readable, then run again"
    note = "; the finished blocks stay recorded" if writing else ""
    return UserError(f"{reason} while {what}{note}: {fix}.")


def retry_call(call, *, what: str, attempts: int = ATTEMPTS, delay: float = DELAY):
    """``call()`` with bounded retries of transient errors (:func:`is_transient`), each logged;
    other errors, and the last transient one, are raised."""
    import time

    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            log.warning("%s failed (%s: %s); retry %d of %d", what, type(exc).__name__, exc, attempt, attempts - 1)
            time.sleep(delay * 2 ** (attempt - 1))


# ------------------------------------------------------------------ writes in flight
_writes = 0
_idle = threading.Condition()


def _begin_write() -> None:
    global _writes
    with _idle:
        _writes += 1


def _end_write() -> None:
    global _writes
    with _idle:
        _writes -= 1
        if _writes == 0:
            _idle.notify_all()


def wait_for_writes(timeout: float = 60.0) -> bool:
    """Wait until no :class:`RetryingStore` write of this process is in flight (zarr writes
    a block's chunks concurrently, and a failing chunk raises while the others still write);
    False when some still run after ``timeout`` seconds."""
    with _idle:
        return _idle.wait_for(lambda: _writes == 0, timeout=timeout)


class RetryingStore(WrapperStore):
    """A zarr store whose chunk reads and writes retry transient errors (bounded, logged) and
    turn a full disk or a refused write into one :class:`UserError` line.

    Parameters
    ----------
    store : zarr.abc.store.Store
        The store to wrap (LocalStore, FsspecStore, a TIFF's store...).
    where : str
        The location in words, for the log and the errors.
    """

    def __init__(self, store, *, where: str) -> None:
        super().__init__(store)
        self.where = where

    def _with_store(self, store):
        return type(self)(store, where=self.where)

    async def _retry(self, call, *, key: str, writing: bool):
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await call()
            except Exception as exc:
                if is_permanent(exc):
                    raise storage_error(exc, writing=writing, where=self.where, key=key) from exc
                if attempt == ATTEMPTS or not is_transient(exc):
                    raise
                log.warning("%s %s/%s failed (%s: %s); retry %d of %d", "writing" if writing else "reading",
                            self.where, key, type(exc).__name__, exc, attempt, ATTEMPTS - 1)
                await asyncio.sleep(DELAY * 2 ** (attempt - 1))

    async def get(self, key, prototype, byte_range=None):
        return await self._retry(lambda: super(RetryingStore, self).get(key, prototype, byte_range),
                                 key=key, writing=False)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        return await self._retry(lambda: super(RetryingStore, self).get_partial_values(prototype, key_ranges),
                                 key=key_ranges[0][0] if key_ranges else "", writing=False)

    async def set(self, key, value) -> None:
        _begin_write()
        try:
            await self._retry(lambda: super(RetryingStore, self).set(key, value), key=key, writing=True)
        finally:
            _end_write()
