"""The instance labelling's records in a zarr output, kept until the output is complete.

Under ``<output>/_fastunet_instances/``:

* ``<block>.npz``: one record per block (written whole or not at all: a local file under a
  temporary name and renamed, an object-store key in one PUT), a zip of the block's local
  ids, its per-object tables and face planes (see :mod:`fastunet.engine.instances`), each an
  ``.npy`` in a zstd frame;
* ``merge-lut.npy``, ``merge-offsets.npy`` and ``merge.json`` (written last, the mark that
  the merge is complete): the result of the merge, which the relabel pass reads.

The records go through the output's file system (fsspec: a local folder or an object store,
:func:`fastunet.io.stores.filesystem`), like the block records of
:class:`~fastunet.io.outputs.SegmentationStore`. The relabel pass reads the ids from these
records and writes the final ids, so it can be run again any number of times (a resumed run
repeats the blocks it had not recorded). The records are removed once the output is marked
complete.
"""

from __future__ import annotations

import io
import json
import os
import threading
import uuid
import zipfile

import numpy as np

from .stores import filesystem, is_remote, location

__all__ = ["InstanceRecords", "RECORDS_DIR"]

RECORDS_DIR = "_fastunet_instances"


class InstanceRecords:
    """Per-block instance records of the output at ``path`` (a local path or a URL location;
    picklable); ``part``: those of one time point of a time series (a folder of their own).

    The blocks this object recorded are also kept in memory, newest last, up to
    ``memory_bytes`` (default 256 MiB), so that the merge and the relabel pass of the same
    process read them without inflating the files again (the files are written all the same:
    another process, or a resumed run, reads those). A copy sent to another process starts
    with none.
    """

    def __init__(self, path, part: str | None = None, *, memory_bytes: int = 256 << 20):
        self.root = location(path, resolve=False) if isinstance(path, str) else path
        self.path = self.root / RECORDS_DIR if part is None else self.root / RECORDS_DIR / part
        self._merge = None  # an object store's merge tables, read once per process
        self._written = None  # the merge this object recorded: (info, offsets, lut), read back from memory
        self.memory_bytes = int(memory_bytes)
        self._kept: dict[str, dict] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_kept", "_lock")} | {"_merge": None,
                                                                                           "_written": None}

    def __setstate__(self, state):
        self.__dict__.update(state, _kept={}, _lock=threading.Lock())

    def __repr__(self) -> str:
        return f"InstanceRecords({str(self.path)!r})"

    def _key(self, name: str) -> tuple:
        fs, root = filesystem(self.path)
        return fs, f"{root}/{name}"

    def _put(self, name: str, data: bytes) -> None:
        fs, key = self._key(name)
        if is_remote(self.path):  # one PUT: the key holds the whole record or nothing
            fs.pipe_file(key, data)
            return
        os.makedirs(os.path.dirname(key), exist_ok=True)
        tmp = f"{os.path.dirname(key)}/.tmp-{os.getpid()}-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, key)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _get(self, name: str) -> bytes:
        fs, key = self._key(name)
        return fs.cat_file(key)

    @staticmethod
    def _npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    # blocks -------------------------------------------------------------------------
    def put(self, name: str, arrays: dict) -> None:
        """Record one block's arrays (call before the block is marked done): a zip of one
        entry per array, ``<key>.npy.zst``, its ``.npy`` bytes in a zstd frame (level 1,
        numcodecs' zstd, which zarr reads chunks with: a block's ids in about a quarter of the
        CPU time of deflate at level 1, measured here), its ``ids`` in the narrowest unsigned
        type that holds them (uint16 for fewer than 65536 objects: half the bytes), which
        :meth:`get` then gives. :meth:`get` reads deflated ``<key>.npy`` entries too (the
        records of earlier versions)."""
        from numcodecs import Zstd

        codec = Zstd(level=1)
        buffer = io.BytesIO()
        kept = {}
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as z:
            for key, value in arrays.items():
                given = value = np.asarray(value)
                if key == "ids" and value.size and value.dtype.kind == "u":
                    value = value.astype(np.min_scalar_type(int(value.max())), copy=False)
                z.writestr(f"{key}.npy.zst", codec.encode(self._npy(value)))
                # not the caller's array, which it may change later (the narrowed ids are a copy already)
                kept[key] = value.copy() if value is given else value
                kept[key].flags.writeable = False  # and what get() gives is read-only
        self._put(f"{name}.npz", buffer.getvalue())
        self._keep(name, kept)

    def _keep(self, name: str, arrays: dict) -> None:
        size = sum(a.nbytes for a in arrays.values())
        with self._lock:
            self._kept.pop(name, None)
            if size > self.memory_bytes:
                return
            self._kept[name] = arrays
            while sum(a.nbytes for r in self._kept.values() for a in r.values()) > self.memory_bytes:
                del self._kept[next(iter(self._kept))]  # the oldest

    def get(self, name: str, *keys: str) -> tuple:
        """The arrays ``keys`` of one block's record (read-only); an absent face key gives an
        empty plane."""
        with self._lock:
            kept = self._kept.get(name)
        if kept is not None:
            return tuple(kept[k] if k in kept else np.zeros((0, 0), np.uint32) for k in keys)
        with zipfile.ZipFile(io.BytesIO(self._get(f"{name}.npz"))) as z:
            return tuple(_entry(z, k) for k in keys)

    # the merge ------------------------------------------------------------------------
    def put_merge(self, merge, *, generation: str) -> None:
        """Record a :class:`~fastunet.engine.instances.Merge` (``merge.json`` last) under a
        new ``generation`` name (the relabel pass records its blocks under it, so a new
        merge relabels every block again). This object then answers :meth:`merge_info` and
        :meth:`block_lut` from memory (a copy sent to another process reads the files)."""
        self._written = None
        self._put("merge-lut.npy", self._npy(merge.lut))
        self._put("merge-offsets.npy", self._npy(merge.offsets))
        info = {"count": merge.count, "largest": merge.largest, "min_size": merge.min_size,
                "min_confidence": merge.min_confidence,
                "dtype": str(merge.lut.dtype), "generation": generation, **merge.summary()}
        self._put("merge.json", json.dumps(info).encode())
        # the info as merge.json gives it back (JSON's types), the tables as copies
        self._written = (json.loads(json.dumps(info)), np.array(merge.offsets), np.array(merge.lut))

    def merge_info(self) -> dict | None:
        """The recorded merge's count, largest object, min_size and dtype; None if none."""
        if self._written is not None:
            return dict(self._written[0])
        try:
            return json.loads(self._get("merge.json"))
        except FileNotFoundError:
            return None

    def drop_merge(self) -> None:
        """Forget the recorded merge (another ``min_size``: the merge runs again)."""
        self._written = None
        fs, key = self._key("merge.json")
        if fs.exists(key):
            fs.rm(key)

    def block_lut(self, b: int) -> np.ndarray:
        """Local id -> final id of block ``b`` (C order of the block grid); memory-mapped
        from a local output, read whole from an object store (or, after this object's
        :meth:`put_merge`, from memory)."""
        if self._written is not None:
            _, offsets, lut = self._written
        elif is_remote(self.path):
            generation = (self.merge_info() or {}).get("generation")
            if self._merge is None or self._merge[0] != generation:
                self._merge = (generation, np.load(io.BytesIO(self._get("merge-offsets.npy"))),
                               np.load(io.BytesIO(self._get("merge-lut.npy"))))
            _, offsets, lut = self._merge
        else:
            offsets = np.load(self.path / "merge-offsets.npy", mmap_mode="r")
            lut = np.load(self.path / "merge-lut.npy", mmap_mode="r")
        start, stop = int(offsets[b]), int(offsets[b + 1])
        out = np.zeros(stop - start + 1, lut.dtype)
        out[1:] = lut[start:stop]
        return out

    def remove(self) -> None:
        """Remove the records (the output is complete)."""
        self._written = None
        with self._lock:
            self._kept.clear()
        fs, root = filesystem(self.path)
        try:
            fs.rm(root, recursive=True)
        except (FileNotFoundError, OSError):
            pass


def _entry(z: zipfile.ZipFile, key: str) -> np.ndarray:
    """The array ``key`` of a block record (see :meth:`InstanceRecords.put`); an empty plane
    when the record has none (a face the block does not have)."""
    names = set(z.namelist())
    if f"{key}.npy.zst" in names:
        from numcodecs import Zstd

        data = Zstd().decode(z.read(f"{key}.npy.zst"))
        return np.load(io.BytesIO(data), allow_pickle=False)
    if f"{key}.npy" in names:
        with z.open(f"{key}.npy") as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    return np.zeros((0, 0), np.uint32)
