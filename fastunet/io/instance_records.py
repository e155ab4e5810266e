"""The instance labelling's records in a zarr output, kept until the output is complete.

Under ``<output>/_fastunet_instances/``:

* ``<block>.npz``: one file per block (written under a temporary name and renamed, so a
  killed task leaves none or a whole one): the block's local ids, its per-object tables and
  face planes (see :mod:`fastunet.engine.instances`);
* ``merge-lut.npy``, ``merge-offsets.npy`` and ``merge.json`` (written last, the mark that
  the merge is complete): the result of the merge, which the relabel pass reads.

The relabel pass reads the ids from these files and writes the final ids, so it can be run
again any number of times (a resumed run repeats the blocks it had not recorded). The
folder is removed once the output is marked complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

__all__ = ["InstanceRecords", "RECORDS_DIR"]

RECORDS_DIR = "_fastunet_instances"


def _atomic(target: Path, write) -> None:
    tmp = target.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex}{target.suffix}")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


class InstanceRecords:
    """Per-block instance records of the output at ``path`` (picklable: a path)."""

    def __init__(self, path):
        self.path = Path(path) / RECORDS_DIR

    def __repr__(self) -> str:
        return f"InstanceRecords({str(self.path)!r})"

    def _block(self, name: str) -> Path:
        return self.path / f"{name}.npz"

    # blocks -------------------------------------------------------------------------
    def put(self, name: str, arrays: dict) -> None:
        """Record one block's arrays (call before the block is marked done)."""
        os.makedirs(self.path, exist_ok=True)

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

        _atomic(self._block(name), write)

    def get(self, name: str, *keys: str) -> tuple:
        """The arrays ``keys`` of one block's record; an absent face key gives an empty plane."""
        with np.load(self._block(name)) as z:
            return tuple(z[k] if k in z.files else np.zeros((0, 0), np.uint32) for k in keys)

    # the merge ------------------------------------------------------------------------
    def put_merge(self, merge, *, generation: str) -> None:
        """Record a :class:`~fastunet.engine.instances.Merge` (``merge.json`` last) under a
        new ``generation`` name (the relabel pass records its blocks under it, so a new
        merge relabels every block again)."""
        os.makedirs(self.path, exist_ok=True)
        _atomic(self.path / "merge-lut.npy", lambda tmp: np.save(tmp, merge.lut))
        _atomic(self.path / "merge-offsets.npy", lambda tmp: np.save(tmp, merge.offsets))
        info = {"count": merge.count, "largest": merge.largest, "min_size": merge.min_size,
                "dtype": str(merge.lut.dtype), "generation": generation}
        _atomic(self.path / "merge.json", lambda tmp: tmp.write_text(json.dumps(info)))

    def merge_info(self) -> dict | None:
        """The recorded merge's count, largest object, min_size and dtype; None if none."""
        try:
            return json.loads((self.path / "merge.json").read_text())
        except FileNotFoundError:
            return None

    def drop_merge(self) -> None:
        """Forget the recorded merge (another ``min_size``: the merge runs again)."""
        (self.path / "merge.json").unlink(missing_ok=True)

    def block_lut(self, b: int) -> np.ndarray:
        """Local id -> final id of block ``b`` (C order of the block grid), memory-mapped."""
        offsets = np.load(self.path / "merge-offsets.npy", mmap_mode="r")
        lut = np.load(self.path / "merge-lut.npy", mmap_mode="r")
        start, stop = int(offsets[b]), int(offsets[b + 1])
        out = np.zeros(stop - start + 1, lut.dtype)
        out[1:] = lut[start:stop]
        return out

    def remove(self) -> None:
        """Remove the records (the output is complete)."""
        shutil.rmtree(self.path, ignore_errors=True)
