"""Autotune choices kept on disk, so that a second process does not benchmark again.

``triton.autotune(cache_results=True)`` (triton 3.6 to 3.9) keys its file by the triton
build, the *compile target* (``cuda:90`` for an H100 and an H200 alike), the kernel source and
the tuning key, inside triton's own cache folder. fastunet keys by the device *name* as well
(two sm_90 parts with different memory systems tune differently), and keeps its entries in a
user cache folder, never in site-packages:

    $FASTUNET_AUTOTUNE_CACHE          (a folder; "0"/"off" disables the disk cache)
    else $XDG_CACHE_HOME/fastunet/autotune, else ~/.cache/fastunet/autotune

One small JSON file per entry, its name the SHA-256 of the key: the device name, the triton
version, the kernel's name and source hash (``JITFunction.cache_key``: a changed kernel is
tuned again) and the autotuner's key (the values of its ``key`` arguments, including the size
class, and the dtypes of the tensor arguments). Files are written to a temporary name and
renamed (atomic on POSIX), so a reader sees a whole entry or none, and two processes tuning
the same key at once both write a valid file. A file that cannot be read or parsed, or whose
config is not among the kernel's current configs, is ignored (and later overwritten).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "entry_path", "load", "store", "config_to_dict", "config_from_dict"]

ENV = "FASTUNET_AUTOTUNE_CACHE"
_OFF = ("0", "off", "false", "no")


def cache_dir() -> Path | None:
    """The folder of the entries, or None when ``FASTUNET_AUTOTUNE_CACHE`` switches it off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "fastunet" / "autotune"


def entry_path(folder: Path, fields: dict) -> Path:
    """The file of the entry with key ``fields`` (a JSON-able dict)."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    return folder / f"{fields.get('kernel', 'kernel')}-{digest[:32]}.json"


def config_to_dict(config) -> dict:
    return dict(kwargs=dict(config.kwargs), num_warps=config.num_warps, num_stages=config.num_stages)


def config_from_dict(data: dict, candidates: list):
    """The candidate config equal to ``data`` (block sizes, warps, stages), or None."""
    for c in candidates:
        if config_to_dict(c) == data:
            return c
    return None


def load(folder: Path | None, fields: dict, candidates: list):
    """The config stored for ``fields`` if it is one of ``candidates``, else None."""
    if folder is None:
        return None
    try:
        data = json.loads(entry_path(folder, fields).read_text())
        if data.get("key") != json.loads(json.dumps(fields, sort_keys=True, default=str)):
            return None  # a hash collision or a hand-edited file
        return config_from_dict(data["config"], candidates)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store(folder: Path | None, fields: dict, config, timings: dict | None = None) -> Path | None:
    """Write the entry for ``fields`` atomically; returns its path (None when disabled or the
    folder cannot be written: tuning results are a convenience, never an error)."""
    if folder is None:
        return None
    path = entry_path(folder, fields)
    data = dict(key=json.loads(json.dumps(fields, sort_keys=True, default=str)), config=config_to_dict(config))
    if timings:
        data["timings_ms"] = timings
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return None
    return path
