"""An open fastunet zarr output: its arrays, and the records that make a run resumable.

:class:`SegmentationStore` is what block tasks write through: the arrays of each kind
(level 0 and the pyramid's levels, :func:`fastunet.io.pyramid.write_region`), one record per
finished block (an empty key ``_fastunet_done/<block>.done`` written through the output's
file system, a local folder or an object store), and the completion mark in
``attrs["fastunet"]``. It is created by :func:`fastunet.io.outputs.create_output` and reopened
for ``resume=True`` by :func:`fastunet.io.outputs.open_output`.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote, unquote

import numpy as np
import zarr

from ..errors import UserError
from .inputs import DONE_DIR
from .output_layout import LAYOUT_VERSION
from .pyramid import write_region
from .retry import is_permanent, retry_call, storage_error
from .stores import filesystem, location, zarr_store

__all__ = ["SegmentationStore", "jsonable"]

_DONE_SUFFIX = ".done"


def jsonable(value):
    """tuples -> lists, numpy scalars -> Python, Paths -> str (what JSON attrs can hold)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Cannot store {type(obj).__name__} in the output's attributes.")


# ------------------------------------------------------------------------------ create_output


class SegmentationStore:
    """A fastunet output: the zarr arrays plus the run's bookkeeping.

    Picklable: a worker process reopens it from its path (or URL, with its storage options).
    The block records are empty keys ``_fastunet_done/<block>.done`` written through the
    store's file system (fsspec): no rename, no listing of the arrays.

    Attributes
    ----------
    path : Path or upath.UPath
    instances : zarr.Array or None
        uint32 (or uint64) object ids, shape ``(Z,) Y, X``.
    labels : zarr.Array or None
        uint8 labels, shape ``(Z,) Y, X``.
    probs : zarr.Array or None
        float16 class probabilities, shape ``(K, (Z,) Y, X)``.
    time : int or None
        The time point of a time series this view writes (arrays with a leading ``T`` axis;
        :meth:`at_time`): its blocks, records and completion are its own.
    """

    def __init__(self, path, *, mode: str = "r+", time: int | None = None):
        self.path = location(path, resolve=False)
        self._mode = mode
        self.time = time
        try:
            root = zarr.open_group(zarr_store(self.path, read_only=mode == "r"), mode=mode)
        except (zarr.errors.NodeNotFoundError, FileNotFoundError):
            raise UserError(f"{str(self.path)!r} is not a zarr group; not a fastunet output.") from None
        meta = root.attrs.get("fastunet")
        if not isinstance(meta, dict):
            raise UserError(f"{str(self.path)!r} is not a fastunet output (no attrs['fastunet']).")
        arrays = meta.get("arrays") or {}
        if int(meta.get("layout", 1)) > LAYOUT_VERSION:
            raise UserError(f"{str(self.path)!r} was written by a newer fastunet (output layout {meta['layout']}); "
                            "update fastunet to resume or read it.")
        try:
            if not arrays:
                raise KeyError("(none recorded)")
            self.instances = root[arrays["instances"]] if arrays.get("instances") else None
            self.labels = root[arrays["labels"]] if arrays.get("labels") else None
            self.probs = root[arrays["probs"]] if arrays.get("probs") else None
            self.levels = {kind: [(root[p], tuple(f)) for p, f in entries]
                           for kind, entries in (meta.get("levels") or {}).items()}
        except KeyError as exc:  # a run that died while creating the output
            raise UserError(
                f"{str(self.path)!r} is an unfinished fastunet output without its array {exc}: its run "
                "stopped while creating it; start over with overwrite=True."
            ) from None
        self._done_dir = self.path / DONE_DIR

    def __reduce__(self):
        return (_reopen_store, (self.path, self._mode, self.time))

    def __repr__(self) -> str:
        when = f", time={self.time}" if self.time is not None else ""
        return f"SegmentationStore({str(self.path)!r}{when}, complete={self.complete})"

    def at_time(self, t: int) -> "SegmentationStore":
        """The view of time point ``t`` of a time-series output."""
        return SegmentationStore(self.path, mode=self._mode, time=int(t))

    @property
    def attrs(self) -> dict:
        """``attrs["fastunet"]`` as stored now (read afresh); a time point's view overlays its
        own record (``time_points[t]``: normalization constants, ``complete``, ``summary``)."""
        meta = dict(zarr.open_group(zarr_store(self.path, read_only=True), mode="r").attrs["fastunet"])
        if self.time is None:
            return meta
        own = (meta.get("time_points") or {}).get(str(self.time)) or {}
        return {**meta, "norm_offset": None, "norm_offset_lo": None, "norm_scale": None, "complete": False,
                "summary": None, **own}

    def record_time_point(self, entries: dict) -> None:
        """Add ``entries`` to this time point's record (``attrs["fastunet"]["time_points"][t]``)."""
        root = zarr.open_group(zarr_store(self.path, read_only=False), mode="r+")
        meta = dict(root.attrs["fastunet"])
        points = dict(meta.get("time_points") or {})
        points[str(self.time)] = {**points.get(str(self.time), {}), **jsonable(entries)}
        root.attrs["fastunet"] = {**meta, "time_points": points}

    @property
    def complete(self) -> bool:
        """True once :meth:`mark_complete` ran (read afresh from the store)."""
        return bool(self.attrs.get("complete"))

    def write(self, kind: str, region: tuple[slice, ...], data) -> None:
        """Write a block of ``kind`` at the spatial ``region``, and its share of every
        resolution level (:func:`fastunet.io.pyramid.write_region`)."""
        level0 = {"instances": self.instances, "labels": self.labels, "probs": self.probs}[kind]
        prefix = () if self.time is None else (self.time,)
        write_region([(level0, (1,) * len(region)), *self.levels.get(kind, [])], region, data, prefix)

    def mark_done(self, block: str) -> None:
        """Record that ``block`` is finished; call AFTER its chunks are written.

        One empty key per block (an object-store PUT, or an empty file), so any number of
        processes may record blocks at the same time; transient errors are retried, a full
        disk or a refused write is one :class:`UserError` line.
        """
        fs, root = filesystem(self._done_dir)
        key = f"{root}/{quote(self._prefix + str(block), safe='')}{_DONE_SUFFIX}"
        try:
            retry_call(lambda: fs.pipe_file(key, b""), what=f"recording block {block} in {self.path}")
        except OSError as exc:
            if is_permanent(exc):
                raise storage_error(exc, writing=True, where=str(self.path), key=f"{DONE_DIR}/{block}") from exc
            raise

    def done(self) -> set[str]:
        """Names of the blocks recorded by :meth:`mark_done` (one listing of the records)."""
        fs, root = filesystem(self._done_dir)
        fs.invalidate_cache(root)
        try:
            entries = retry_call(lambda: fs.ls(root, detail=False), what=f"listing the records of {self.path}")
        except FileNotFoundError:
            return set()
        names = (str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)
        names = (unquote(e[: -len(_DONE_SUFFIX)]) for e in names if e.endswith(_DONE_SUFFIX))
        n = len(self._prefix)
        return {e[n:] for e in names if e.startswith(self._prefix)}

    @property
    def _prefix(self) -> str:
        """The block records of a time point are named ``t<t>:<block>``."""
        return "" if self.time is None else f"t{self.time}:"

    def mark_complete(self, summary: dict) -> None:
        """Mark the output complete (``attrs["fastunet"]["complete"] = True`` and ``summary``)
        and remove the per-block records (a time point's view: records its completion)."""
        if self.time is not None:  # the block records stay until the whole series is complete
            self.record_time_point({"complete": True, "summary": summary})
            return
        root = zarr.open_group(zarr_store(self.path, read_only=False), mode="r+")
        meta = dict(root.attrs["fastunet"])
        meta.update(complete=True, summary=jsonable(summary))
        root.attrs["fastunet"] = meta
        fs, done = filesystem(self._done_dir)
        try:
            fs.rm(done, recursive=True)
        except OSError:
            pass


def _reopen_store(path, mode: str, time: int | None = None) -> SegmentationStore:
    return SegmentationStore(path, mode=mode, time=time)
