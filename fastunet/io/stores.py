"""Where volumes live: local paths and URLs, for inputs, outputs and their records.

A location is a :class:`pathlib.Path` (a local file or folder, resolved) or a
:class:`upath.UPath` (a URL: ``s3://``, ``gs://``, ``http(s)://`` read-only, ``memory://``,
any other fsspec protocol whose package is installed); ``file://`` URLs become local paths.
Both have the pathlib API that :mod:`fastunet.io.outputs` uses (``exists``, ``is_dir``,
``iterdir``, ``parent``, ``name``, ``suffix``, ``/``); this module adds what differs: the zarr
store of a location (:func:`zarr_store`, a :class:`zarr.storage.LocalStore` or an
:class:`zarr.storage.FsspecStore`, either wrapped in a
:class:`~fastunet.io.retry.RetryingStore`), the fsspec file system and key of a location
(:func:`filesystem`), removing a tree (:func:`remove_tree`) and the names in a folder
(:func:`listdir`).

Credentials and endpoints come from where the file-system package looks for them (for S3:
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ...;
for GCS: ``GOOGLE_APPLICATION_CREDENTIALS``), and from ``storage_options=``, passed to the
file system as keyword arguments (``{"anon": True}``, ``{"endpoint_url": "http://..."}``).

When a store fails, :func:`remote_error` says why in one line that names the setting to fix
(missing or refused credentials: which variables or profile; an endpoint that cannot be
reached), and :func:`settle_pending_io` lets the requests still in flight on zarr's event loop
end in their own context before the process exits (otherwise they are destroyed at exit and
the S3 client prints a ``ContextVar`` traceback after the error line).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from pathlib import Path

from ..errors import UserError

__all__ = ["is_url", "is_remote", "location", "zarr_store", "filesystem", "remove_tree", "listdir",
           "READ_ONLY_PROTOCOLS", "remote_error", "remote_errors", "settle_pending_io"]

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# fsspec protocols that cannot be written.
READ_ONLY_PROTOCOLS = ("http", "https")
# The package each common protocol needs, for the message when it is missing.
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp", "https": "aiohttp",
             "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}


def is_url(value) -> bool:
    """Is ``value`` a string that starts with a protocol (``s3://``, ``file://``, ...)?"""
    return isinstance(value, str) and _URL.match(value) is not None


def is_remote(path) -> bool:
    """Is ``path`` a URL location (a :class:`upath.UPath`), not a local path?"""
    return not isinstance(path, Path)


def location(value, storage_options: dict | None = None, *, what: str = "output", resolve: bool = True):
    """A local :class:`~pathlib.Path` (resolved) or a :class:`upath.UPath` for ``value``.

    Parameters
    ----------
    value : str, path-like or UPath
        A path, or a URL with a protocol (``s3://bucket/out.zarr``); ``file://`` URLs are
        local paths.
    storage_options : dict, optional
        Keyword arguments of the URL's file system (fsspec), e.g. ``{"anon": True}``.
    what : str
        The parameter's name, for the error on a wrong type.
    resolve : bool
        Resolve symbolic links of a local path (else only made absolute).

    Raises
    ------
    TypeError
        ``value`` is neither a path nor a URL.
    UserError
        A protocol that fsspec does not know, or whose package is not installed.
    """
    if not is_remote(value):
        path = value.expanduser()
        return path.resolve() if resolve else path.absolute()
    if type(value).__module__.startswith("upath"):
        return value
    if not isinstance(value, (str, os.PathLike)) or isinstance(value, bytes):
        raise TypeError(
            f"{what}= expects a path or a URL (e.g. 'out.zarr' or 's3://bucket/out.zarr'); got "
            f"{type(value).__name__}."
        )
    text = os.fspath(value)
    match = _URL.match(text)
    if match is None:
        path = Path(text).expanduser()
        return path.resolve() if resolve else path.absolute()
    protocol = match.group(1).lower()
    if protocol in ("file", "local"):
        from urllib.parse import unquote

        path = Path(unquote(text[match.end():]))
        return path.resolve() if resolve else path.absolute()
    return _upath(text, protocol, storage_options or {})


def _upath(url: str, protocol: str, storage_options: dict):
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise UserError(
            f"Unknown protocol {protocol!r} in {url!r}; use a local path or a URL such as s3://, gs://, "
            "https://, memory://."
        ) from None
    except ImportError:
        package = _PACKAGES.get(protocol, f"the fsspec package for {protocol}://")
        raise UserError(
            f"Reading or writing {protocol}:// URLs needs {package}, which is not installed: "
            f"pip install 'fastunet[cloud]' (or pip install {package})."
        ) from None
    from upath import UPath

    return UPath(url, **storage_options)


def zarr_store(path, *, read_only: bool, retry: bool = True):
    """The zarr store of a location: a LocalStore or an FsspecStore (URLs), wrapped in a
    :class:`~fastunet.io.retry.RetryingStore` (bounded, logged retries of transient errors;
    a full disk or a refused write as one line) unless ``retry`` is False."""
    from zarr.storage import FsspecStore, LocalStore

    if is_remote(path):
        if not read_only and path.protocol in READ_ONLY_PROTOCOLS:
            raise UserError(f"{str(path)!r} is an {path.protocol}:// URL, which is read-only; write to a local "
                            "path or an object store (s3://, gs://) instead.")
        store = FsspecStore.from_url(str(path), storage_options=dict(path.storage_options), read_only=read_only)
    else:
        store = LocalStore(str(path), read_only=read_only)
    if not retry:
        return store
    from .retry import RetryingStore

    return RetryingStore(store, where=str(path))


def filesystem(path):
    """``(fs, key)``: the fsspec file system of a location and the location's path in it."""
    if is_remote(path):
        return path.fs, path.path
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(auto_mkdir=True), str(path)


def remove_tree(path) -> None:
    """Remove a file or a folder (an object-store prefix) and everything in it."""
    if is_remote(path):
        fs = path.fs
        if fs.exists(path.path):
            fs.rm(path.path, recursive=fs.isdir(path.path))
        fs.invalidate_cache()
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def listdir(path) -> list[str]:
    """The names in a folder (an object-store prefix), sorted."""
    if is_remote(path):
        path.fs.invalidate_cache(path.path)
        return sorted(p.name for p in path.iterdir())
    return sorted(os.listdir(path))


# ------------------------------------------------------------------------- failing stores
_CREDENTIALS = {
    "s3": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE for a profile in ~/.aws/credentials), "
          "or pass --storage-option anon=true for a public bucket",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file (or run gcloud auth application-default "
          "login), or pass --storage-option token=anon for a public bucket",
}
_MISSING_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError",
                        "ProfileNotFound", "CredentialRetrievalError")
_REFUSED_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                        "AuthFailure", "RefreshError")
_UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ServerDisconnectedError",
                "ConnectionClosedError", "ReadTimeoutError")


def _names(exc: BaseException) -> str:
    """The class names and message of ``exc`` and its causes, for recognizing the client's errors
    without importing the clients."""
    seen, parts = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts += [cls.__name__ for cls in type(exc).__mro__] + [str(exc)]
        exc = exc.__cause__ or exc.__context__
    return " ".join(parts)


def remote_error(exc: BaseException, url, *, writing: bool = False):
    """A :class:`UserError` naming why the store of ``url`` failed and what to set; None when
    ``exc`` is not a credentials or connection problem of an object store."""
    if not is_url(str(url)):
        return None
    text = _names(exc)
    protocol = str(url).split("://", 1)[0].lower()
    fix = _CREDENTIALS.get("s3" if protocol in ("s3", "s3a") else "gs" if protocol in ("gs", "gcs") else "", "")
    action = "write" if writing else "read"
    if any(name in text for name in _MISSING_CREDENTIALS):
        return UserError(f"Cannot {action} {str(url)!r}: no credentials were found for {protocol}://; "
                         f"{fix or 'configure the file system credentials'}.")
    if any(name in text for name in _REFUSED_CREDENTIALS):
        return UserError(f"Cannot {action} {str(url)!r}: the credentials were refused (invalid or expired); check "
                         f"{'AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_PROFILE' if fix.startswith('set AWS') else 'them'}.")
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return UserError(f"Cannot {action} {str(url)!r}: access denied; the credentials in use may not {action} "
                         "there (check the bucket's policy, AWS_PROFILE or --storage-option).")
    if any(name in text for name in _UNREACHABLE):
        return UserError(f"Cannot reach the server of {str(url)!r} (a closed endpoint or no network); check "
                         "--storage-option endpoint_url (or AWS_ENDPOINT_URL) and the connection.")
    return None


@contextlib.contextmanager
def remote_errors(url, *, writing: bool = False):
    """Turn a credentials or connection failure of an object store into one line (:func:`remote_error`)."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        error = remote_error(exc, url, writing=writing)
        if error is None:
            raise
        raise error from None


def settle_pending_io(timeout: float = 5.0) -> None:
    """Let the store requests still running on zarr's event loop finish (cancelled after
    ``timeout`` seconds) in their own tasks, so that none is destroyed at exit. zarr runs a
    read of several keys concurrently; when one fails the others go on, and the S3 client's
    requests then end with a ``ContextVar`` traceback at exit. Nothing happens when zarr was
    never used."""
    sync = sys.modules.get("zarr.core.sync")
    if sync is None:
        return
    import asyncio

    async def settle():
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=1.0)

    try:
        sync.sync(settle())
    except Exception:  # noqa: BLE001 - a loop already closed: nothing left to settle
        pass
