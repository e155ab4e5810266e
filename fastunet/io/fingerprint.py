"""Which input an output was made from: :func:`input_fingerprint`, recorded in
``attrs["fastunet"]["input_id"]`` of a zarr output, and the check of a resume against it
(:func:`check_input`), which refuses another input (or one changed since) and warns
(:class:`InputMovedWarning`) when the same input was moved or copied.

The fingerprint reads the array's metadata document and the chunks around a fixed lattice of
points (O(1) requests), and lists the array's chunk files once (:func:`chunk_files`: each
file's size and modification time, or its ETag on an object store; one listing request per
1000 objects there, small beside a run that reads every chunk). An edit of any chunk since the
interrupted run — even one between the sampled points, even one that keeps the file's size —
then refuses ``resume=True``, naming the chunks that changed (the listing is kept in the
output, :data:`FILES_RECORD`). Modification times count only for the same path: a copy or a
move of an unchanged input (new times, same sizes and values) is accepted with a warning.
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

__all__ = ["input_fingerprint", "InputMovedWarning", "chunk_files", "write_files_record", "FINGERPRINT_POINTS",
           "CHUNK_SAMPLE_BYTES", "FULL_HASH_BYTES", "FILES_RECORD"]

FINGERPRINT_POINTS = 4  # sample positions per spatial axis
CHUNK_SAMPLE_BYTES = 32 * 1024**2  # decoded bytes of the chunks around the sample points that are hashed
FULL_HASH_BYTES = 256 * 1024**2  # TIFF files up to this size are hashed whole
FILES_RECORD = "_fastunet_input_files.json"  # in the output: the input's chunk files when it was started
_VOLATILE = ("chunk_times", "mtime_ns")  # entries that a copy of the same input changes


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
    chunk that holds no sample point is not seen by these. zarr: a digest of the chunk files'
    names and sizes (``chunk_sizes``) and of their modification times or ETags
    (``chunk_times``), from one listing (:func:`chunk_files`); a TIFF too large to hash: its
    modification time (``mtime_ns``). Those two count only for the same path (a copy has new
    times).
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
        st = os.stat(source.path)
        fp["size"] = int(st.st_size)
        if fp["size"] <= FULL_HASH_BYTES:
            with open(source.path, "rb") as f:
                fp["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()[:32]
        else:  # too large to hash: an edit in place shows in its modification time
            fp["mtime_ns"] = int(st.st_mtime_ns)
    elif isinstance(stored, zarr.Array):
        doc = json.dumps(stored.metadata.to_dict(), sort_keys=True, default=str)
        fp["metadata"] = hashlib.sha256(doc.encode()).hexdigest()[:32]
        files = chunk_files(source)
        if files is not None:
            fp["chunk_sizes"] = _digest(len(files), sorted((k, v[0]) for k, v in files.items()))
            fp["chunk_times"] = _digest(len(files), sorted((k, v[1]) for k, v in files.items()))
    if isinstance(stored, zarr.Array):
        fp["sample"], fp["chunks"] = _chunk_digests(source, stored)
    else:
        fp["sample"] = _sample_digest(source)
    return fp


def _digest(count: int, items) -> str:
    return f"{count}:" + hashlib.sha256(json.dumps(items).encode()).hexdigest()[:32]


def _array_location(source: VolumeSource):
    from .stores import location

    root = location(source.path, source.storage_options, what="source")
    return root / source.key if source.key else root


def chunk_files(source: VolumeSource) -> dict | None:
    """The files of a zarr input's array, ``{name: [size, stamp]}`` (names relative to the
    array; stamp: the modification time in ns, or an object store's ETag), from one listing;
    None for inputs that are not zarr stores."""
    if source.kind not in ("zarr", "ome-zarr") or not source.path:
        return None
    from .stores import is_remote

    root = _array_location(source)
    files = {}
    if not is_remote(root):
        for folder, _, names in os.walk(root):
            for name in names:
                st = os.stat(os.path.join(folder, name))
                files[os.path.relpath(os.path.join(folder, name), root)] = [int(st.st_size), int(st.st_mtime_ns)]
        return files
    fs, key = root.fs, root.path.rstrip("/")
    for name, info in fs.find(key, detail=True).items():
        stamp = next((str(info[k]) for k in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "updated")
                      if info.get(k) is not None), "")
        files[name[len(key):].lstrip("/")] = [int(info.get("size") or 0), stamp.strip('"')]
    return files


def write_files_record(out, source: VolumeSource) -> None:
    """Keep the input's chunk files (:func:`chunk_files`) in the output ``out``, so that a
    refused resume can name the chunks that changed."""
    from .stores import filesystem

    files = chunk_files(source)
    if files is None:
        return
    fs, key = filesystem(out)
    fs.pipe_file(f"{key.rstrip('/')}/{FILES_RECORD}", json.dumps(files).encode())


def _changed_chunks(out, source: VolumeSource | None, *, times: bool) -> list[str]:
    """The chunk files of ``source`` that differ from those recorded in the output ``out``
    (sizes, and with ``times`` modification times or ETags); empty when unknown."""
    from .stores import filesystem

    if source is None:
        return []
    try:
        fs, key = filesystem(out)
        old = json.loads(fs.cat_file(f"{key.rstrip('/')}/{FILES_RECORD}"))
        new = chunk_files(source) or {}
    except (OSError, ValueError):
        return []
    index = 1 if times else 0
    return sorted(n for n in set(old) | set(new)
                  if n not in old or n not in new or old[n][0] != new[n][0] or old[n][index] != new[n][index])


def _lattice(n: int) -> list[int]:
    k = min(FINGERPRINT_POINTS, n)
    return sorted({(2 * i + 1) * n // (2 * k) for i in range(k)})


def _add(digest, values: np.ndarray) -> None:
    """Hash ``values`` as little-endian bytes: the same digest on any machine (hashed from the
    array's own buffer when it is C-contiguous and little-endian already: no copy)."""
    digest.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")))


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
        block = _read_runs(source, stored, selection)
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


def _runs(picked: np.ndarray) -> list[tuple[int, int, int]]:
    """The runs of consecutive indices in the sorted ``picked``: ``(start, stop, at)``, ``at``
    where the run starts in ``picked``."""
    breaks = np.flatnonzero(np.diff(picked) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(picked)]])
    return [(int(picked[a]), int(picked[b - 1]) + 1, int(a)) for a, b in zip(starts, stops)]


def _read_runs(source: VolumeSource, stored: zarr.Array, selection: tuple) -> np.ndarray:
    """``stored.get_orthogonal_selection(selection)`` (index arrays on the spatial axes, whole
    slices elsewhere) read box by box, each box a run of consecutive indices per axis, through
    the input's chunk cache (:meth:`VolumeSource.read_stored`): the chunks the statistics and
    the blocks read are decoded once for all of them."""
    shape = [len(s) if isinstance(s, np.ndarray) else n for s, n in zip(selection, stored.shape)]
    out = np.empty(shape, stored.dtype)
    per_axis = [_runs(s) if isinstance(s, np.ndarray) else [(0, n, 0)] for s, n in zip(selection, stored.shape)]
    for box in itertools.product(*per_axis):
        dst = tuple(slice(at, at + stop - start) for start, stop, at in box)
        out[dst] = source.read_stored(tuple(slice(start, stop) for start, stop, _ in box))
    return out


def describe_mismatch(path: Path, old: dict, new: dict, changed: list[str] | None = None) -> str:
    """Why a resume's input is not the recorded one, in words (the message of the refusal);
    ``changed`` names chunk files that differ."""
    def differs(*keys):
        return any(old.get(k) != new.get(k) for k in keys)

    named = ""
    if changed:
        named = f" ({len(changed)} chunk file(s): {', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''})"
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
    elif differs("chunk_sizes"):
        reason = f"the input's chunk files changed since it was started (names or sizes){named}"
    elif differs("chunk_times"):
        reason = f"the input's chunk files were modified since it was started (times or ETags){named}"
    elif differs("mtime_ns"):
        reason = "the input file was modified since it was started (its modification time differs)"
    else:
        reason = "the input array's chunk files changed since it was started (names or sizes)"
    return (
        f"Cannot resume {str(path)!r}: {reason}; resuming would mix two inputs in one output. Resume with "
        "the same, unchanged input, or start over with overwrite=True."
    )


def check_input(path: Path, meta: dict, want: dict, *, source: VolumeSource | None = None) -> None:
    """The resumed output's recorded input (``meta["input_id"]``) against this run's ``want``
    (see :func:`input_fingerprint`): refuse another or changed input, naming the chunk files
    that changed when ``source`` is given; warn when the same input moved."""
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

    def lasting(d):  # what a copy keeps: not the path, not modification times
        return {k: v for k, v in d.items() if k != "path" and k not in _VOLATILE}

    if isinstance(old, dict) and old.get("path") != want.get("path") and lasting(old) == lasting(want):
        warnings.warn(
            f"Resuming {str(path)!r}, started on {old.get('path')!r}, with {want.get('path')!r}: the same "
            "array (shape, dtype, metadata, sampled values and chunk sizes agree), so the input was moved or copied.",
            InputMovedWarning,
            stacklevel=3,
        )
        return
    changed = []
    if isinstance(old, dict) and old.get("path") == want.get("path") and (
            old.get("chunk_sizes") != want.get("chunk_sizes") or old.get("chunk_times") != want.get("chunk_times")):
        changed = _changed_chunks(path, source, times=old.get("chunk_sizes") == want.get("chunk_sizes"))
    raise UserError(describe_mismatch(path, old, want, changed))
