"""Which input an output was made from: :func:`input_fingerprint`, recorded in
``attrs["fastunet"]["input_id"]`` of a zarr output, and the check of a resume against it
(:func:`check_input`), which refuses another input (or one changed since) and warns
(:class:`InputMovedWarning`) when the same input was moved or copied.
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

__all__ = ["input_fingerprint", "InputMovedWarning", "FINGERPRINT_POINTS"]

FINGERPRINT_POINTS = 4  # sample positions per spatial axis


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
    Always: the resolved path (None in memory), array key / TIFF series, kind, axes, shape
    and dtype. TIFF: the file's size. zarr: a digest of the array's metadata document
    (``zarr.json`` / ``.zarray``) and, in a local store, of its chunk files' names and sizes
    (an edited chunk usually compresses to another size). All: a digest of the values at a
    fixed lattice of at most ``FINGERPRINT_POINTS`` positions per spatial axis (every
    channel), which depends on the shape only; a zarr array decodes each chunk of it once.
    Modification times are left out: a copy of an unchanged file still matches.
    """
    fp = {
        "path": os.path.realpath(source.path) if source.path else None,
        "key": source.key,
        "kind": source.kind,
        "axes": source.axes,
        "native_axes": source.native_axes or source.axes,
        "shape": [int(n) for n in source.shape],
        "dtype": source.dtype,
    }
    stored = source.stored()
    if source.kind == "tiff":
        fp["size"] = int(os.stat(source.path).st_size)
    elif isinstance(stored, zarr.Array):
        doc = json.dumps(stored.metadata.to_dict(), sort_keys=True, default=str)
        fp["metadata"] = hashlib.sha256(doc.encode()).hexdigest()[:32]
        chunks = _chunk_files_digest(source)
        if chunks is not None:
            fp["chunk_files"] = chunks
    fp["sample"] = _sample_digest(source, stored)
    return fp


def _lattice(n: int) -> list[int]:
    k = min(FINGERPRINT_POINTS, n)
    return sorted({(2 * i + 1) * n // (2 * k) for i in range(k)})


def _sample_digest(source: VolumeSource, stored) -> str:
    digest = hashlib.sha256()

    def add(values: np.ndarray) -> None:  # little-endian bytes: the same digest on any machine
        digest.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())

    if isinstance(stored, zarr.Array):  # one orthogonal selection in native axes: each chunk decoded once
        native = source.native_axes or source.axes
        selection = tuple(slice(None) if a == "C" else _lattice(n) for a, n in zip(native, stored.shape))
        try:
            add(np.asarray(stored.get_orthogonal_selection(selection)))
        except Exception as exc:
            raise UserError(f"The input {source.path!r} cannot be read for its fingerprint: {exc}.") from None
        return digest.hexdigest()[:32]
    grids = [[None] if a == "C" else _lattice(n) for a, n in zip(source.axes, source.shape)]
    for point in itertools.product(*grids):
        add(source.read(tuple(slice(0, n) if p is None else slice(p, p + 1) for p, n in zip(point, source.shape))))
    return digest.hexdigest()[:32]


def _chunk_files_digest(source: VolumeSource) -> str | None:
    """Digest of the (relative name, size) of every chunk file of a zarr array in a local
    folder store; None when the array is not such a folder (or in memory)."""
    if not source.path:
        return None
    root = Path(source.path)
    if source.key:
        root = root / source.key
    if not root.is_dir():
        return None
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(folder, root)
        for name in files:
            if name in ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"):
                continue
            if name.startswith("."):  # hidden files (editor or OS droppings) are no chunks
                continue
            entries.append((os.path.join(rel, name), os.stat(os.path.join(folder, name)).st_size))
    entries.sort()
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:32]


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
    elif differs("size"):
        reason = "the input file changed since it was started (its size differs)"
    elif differs("metadata"):
        reason = "the input array's metadata changed since it was started"
    elif differs("sample"):
        reason = "the input's values differ from those it was started on (a sample at fixed positions)"
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

