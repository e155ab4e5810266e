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
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..errors import UserError

__all__ = ["is_url", "is_remote", "location", "zarr_store", "filesystem", "remove_tree", "listdir",
           "READ_ONLY_PROTOCOLS"]

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
