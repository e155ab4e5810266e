"""Which input an output was made from: :func:`input_fingerprint`, recorded in
``attrs["fastunet"]["input_id"]`` of a zarr output, and the check of a resume against it
(:func:`check_input`), which refuses another input (or one changed since) and warns
(:class:`InputMovedWarning`) when the same input was moved or copied.

The fingerprint costs O(1) requests in the number of chunks (an object store holds millions):
the array's metadata document and one read of the chunks around a fixed lattice of points,
never a listing of the store.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import warnings
from pathlib import Path

import numpy as np
import zarr

from ..errors import UserError
from .inputs import VolumeSource
from .stores import is_url

__all__ = ["input_fingerprint", "InputMovedWarning", "FINGERPRINT_POINTS", "CHUNK_SAMPLE_BYTES", "FULL_HASH_BYTES"]

FINGERPRINT_POINTS = 4  # sample positions per spatial axis
CHUNK_SAMPLE_BYTES = 32 * 1024**2  # decoded bytes of the chunks around the sample points that are hashed
FULL_HASH_BYTES = 256 * 1024**2  # TIFF files up to this size are hashed whole


class InputMovedWarning(UserWarning):
    """A resumed output was started on the same input at another path."""


def input_fingerprint(source: VolumeSource) -> dict:
    """A cheap identity of an input, recorded in the output so that ``resume=True`` can refuse
    another input (or one changed since). It is a check, not a proof: it catches another
    file, another shape or dtype, and edits that change what it samples.

    Parameters
    ----------
    source : VolumeSource

    Returns
    -------
    dict
        JSON-able entries, compared as a whole (see :func:`check_input`).

    Notes
    -----
    Always: the resolved path or the URL (None in memory), array key / TIFF series, kind,
    axes, shape and dtype. TIFF: the file's size and, up to ``FULL_HASH_BYTES``, the SHA-256
    of the whole file. zarr: a digest of the array's metadata document (``zarr.json`` /
    ``.zarray``). All: a digest of the values at a fixed lattice of at most
    ``FINGERPRINT_POINTS`` positions per spatial axis (every channel), which depends on the
    shape only (``sample``); zarr and TIFF: a content hash of the chunks (pages, tiles) that
    hold those points (``chunks``; at most ``CHUNK_SAMPLE_BYTES`` decoded bytes, else windows
    around the points inside those chunks), read in one request per chunk. An edit of a
    chunk that holds no sample point is not seen. Modification times are left out: a copy of
    an unchanged file still matches.
    """
    fp = {
        "path": (source.path if is_url(source.path) else os.path.realpath(source.path)) if source.path else None,
        "key": source.key,
        "kind": source.kind,
        "axes": source.axes,
        "native_axes": source.native_axes or source.axes,
        "shape": [int(n) for n in source.shape],
        "dtype": source.dtype,
    }
    if source.select:  # the channels (and time point) read
        fp["select"] = [list(p) if isinstance(p, tuple) else p for p in source.select]
    if source.timepoints > 1:
        fp["timepoints"] = source.timepoints
    stored = source.stored()
    if source.kind in ("tiff", "image"):
        fp["size"] = int(os.stat(source.path).st_size)
        if fp["size"] <= FULL_HASH_BYTES:
            with open(source.path, "rb") as f:
                fp["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()[:32]
    elif isinstance(stored, zarr.Array):
        doc = json.dumps(stored.metadata.to_dict(), sort_keys=True, default=str)
        fp["metadata"] = hashlib.sha256(doc.encode()).hexdigest()[:32]
    if isinstance(stored, zarr.Array):
        fp["sample"], fp["chunks"] = _chunk_digests(source, stored)
    else:
        fp["sample"] = _sample_digest(source)
    return fp


def _lattice(n: int) -> list[int]:
    k = min(FINGERPRINT_POINTS, n)
    return sorted({(2 * i + 1) * n // (2 * k) for i in range(k)})


def _add(digest, values: np.ndarray) -> None:
    """Hash ``values`` as little-endian bytes: the same digest on any machine."""
    digest.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())


def _sample_digest(source: VolumeSource) -> str:
    """Digest of the values at the lattice points of an in-memory array (read point by point)."""
    digest = hashlib.sha256()
    grids = [[None] if a == "C" else _lattice(n) for a, n in zip(source.axes, source.shape)]
    times = [source] if source.timepoints <= 1 else [source.at_time(t) for t in _lattice(source.timepoints)]
    for volume in times:
        for point in itertools.product(*grids):
            _add(digest, volume.read(tuple(slice(0, n) if p is None else slice(p, p + 1)
                                           for p, n in zip(point, source.shape))))
    return digest.hexdigest()[:32]


def _windows(n: int, chunk: int, half: int | None) -> np.ndarray:
    """Indices along one axis: around each lattice point, its chunk (``half`` None) or the
    part of its chunk within ``half`` of the point."""
    picked = set()
    for p in _lattice(n):
        lo = p // chunk * chunk
        hi = min(lo + chunk, n)
        if half is not None:
            lo, hi = max(lo, p - half), min(hi, p + half + 1)
        picked.update(range(lo, hi))
    return np.array(sorted(picked), dtype=np.int64)


def _chunk_digests(source: VolumeSource, stored: zarr.Array) -> tuple[str, str]:
    """``(sample, chunks)``: digests of the values at the lattice points and of the chunks
    around them, from one orthogonal selection in native axes (each chunk decoded once)."""
    native = source.native_axes or source.axes
    spatial = [i for i, a in enumerate(native) if a != "C"]
    itemsize = np.dtype(stored.dtype).itemsize
    channels = int(np.prod([stored.shape[i] for i, a in enumerate(native) if a == "C"]))
    half = None
    while True:
        index = {i: _windows(stored.shape[i], stored.chunks[i], half) for i in spatial}
        if itemsize * channels * int(np.prod([len(v) for v in index.values()])) <= CHUNK_SAMPLE_BYTES or half == 0:
            break
        edge = max(stored.chunks[i] for i in spatial) if half is None else half
        half = edge // 2
    selection = tuple(index[i] if i in index else slice(None) for i in range(len(native)))
    try:
        block = np.asarray(stored.get_orthogonal_selection(selection))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"The input {source.path!r} cannot be read for its fingerprint: {exc}.") from None
    points = tuple(np.searchsorted(index[i], _lattice(stored.shape[i])) if i in index else slice(None)
                   for i in range(len(native)))
    sample, chunks = hashlib.sha256(), hashlib.sha256()
    _add(sample, block[np.ix_(*[p if isinstance(p, np.ndarray) else np.arange(block.shape[i])
                                for i, p in enumerate(points)])])
    for i in spatial:
        _add(chunks, index[i])
    _add(chunks, block)
    return sample.hexdigest()[:32], chunks.hexdigest()[:32]


def describe_mismatch(path: Path, old: dict, new: dict) -> str:
    """Why a resume's input is not the recorded one, in words (the message of the refusal)."""
    def differs(*keys):
        return any(old.get(k) != new.get(k) for k in keys)

    if not isinstance(old, dict):
        reason = "its input record is unreadable"
    elif differs("path"):
        reason = f"it was started on the input {old.get('path')!r}, this run reads {new.get('path')!r}"
    elif differs("key", "kind"):
        reason = (f"it was started on the array {old.get('key')!r} ({old.get('kind')}) of the input, this run "
                  f"reads {new.get('key')!r} ({new.get('kind')})")
    elif differs("axes", "native_axes", "shape", "dtype"):
        reason = (f"it was started on an input with axes {old.get('native_axes')} -> {old.get('axes')}, shape "
                  f"{old.get('shape')}, dtype {old.get('dtype')}; this run's input has axes "
                  f"{new.get('native_axes')} -> {new.get('axes')}, shape {new.get('shape')}, dtype {new.get('dtype')}")
    elif differs("select"):
        reason = (f"it was started on the channels (and time point) {old.get('select')} of its stored axes "
                  f"{old.get('native_axes')}, this run reads {new.get('select')}")
    elif differs("size"):
        reason = "the input file changed since it was started (its size differs)"
    elif differs("metadata"):
        reason = "the input array's metadata changed since it was started"
    elif differs("sample"):
        reason = "the input's values differ from those it was started on (a sample at fixed positions)"
    elif differs("chunks"):
        reason = ("the input's values differ from those it was started on (a content hash of the chunks around "
                  "fixed positions)")
    elif differs("sha256"):
        reason = "the input file's contents changed since it was started (its SHA-256 differs)"
    else:
        reason = "the input array's chunk files changed since it was started (names or sizes differ)"
    return (
        f"Cannot resume {str(path)!r}: {reason}; resuming would mix two inputs in one output. Resume with "
        "the same, unchanged input, or start over with overwrite=True."
    )



def check_input(path: Path, meta: dict, want: dict) -> None:
    """The resumed output's recorded input (``meta["input_id"]``) against this run's ``want``
    (see :func:`input_fingerprint`): refuse another or changed input, warn when it moved."""
    old = meta.get("input_id")
    if old is None:
        if meta.get("complete"):
            return  # finished by an older fastunet that kept no record: nothing will be written
        raise UserError(
            f"Cannot resume {str(path)!r}: it does not record which input it was made from (an "
            "output of an older fastunet), so resuming could mix two inputs; start over with overwrite=True."
        )
    if isinstance(old, dict):  # an older fastunet recorded other entries: compare those both have
        old, want = ({k: v for k, v in d.items() if k in old and k in want} for d in (old, want))
    if old == want:
        return
    if isinstance(old, dict) and {k: v for k, v in old.items() if k != "path"} == {
        k: v for k, v in want.items() if k != "path"
    }:
        warnings.warn(
            f"Resuming {str(path)!r}, started on {old.get('path')!r}, with {want.get('path')!r}: the same "
            "array (shape, dtype, metadata and sampled values agree), so the input was moved or copied.",
            InputMovedWarning,
            stacklevel=3,
        )
        return
    raise UserError(describe_mismatch(path, old, want))

