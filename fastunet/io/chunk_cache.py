"""Decoded chunks of an input, kept while they are reused: :class:`ChunkCache`.

The engine reads each block with the network's context around it, so a block reads the edges
of its neighbours' chunks too; zarr decodes a whole chunk for any part of it, so without a
cache each chunk of a volume is decoded up to nine times (its own block's read and its eight
neighbours'), once more by the normalization statistics. :meth:`ChunkCache.read` reads a box
chunk by chunk, each chunk decoded once while it stays among the most recently used (a
budget in bytes, shared by the threads of the process); the values are those zarr returns.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from concurrent.futures import Future

import numpy as np

__all__ = ["ChunkCache", "CHUNK_CACHE_BYTES"]

CHUNK_CACHE_BYTES = 64 * 1024**2  # decoded chunks kept per input and process


class ChunkCache:
    """The most recently used decoded chunks of a zarr array, up to ``max_bytes``.

    Parameters
    ----------
    array : zarr.Array
        Read-only; its regular chunk grid (``array.chunks``) is the cache's.
    max_bytes : int
        Bytes of decoded chunks kept (:attr:`useful` says whether four chunks fit: else the
        input is read through zarr alone).
    """

    def __init__(self, array, max_bytes: int = CHUNK_CACHE_BYTES):
        self.array = array
        self.chunks = tuple(int(c) for c in array.chunks)
        self.shape = tuple(int(n) for n in array.shape)
        self.max_bytes = int(max_bytes)
        self.chunk_bytes = int(np.prod(self.chunks)) * np.dtype(array.dtype).itemsize
        self._kept: OrderedDict = OrderedDict()  # chunk index -> Future of its array
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def useful(self) -> bool:
        """Whether chunks fit the budget (else :meth:`read` would only add copies)."""
        return 4 * self.chunk_bytes <= self.max_bytes

    def read(self, index: tuple) -> np.ndarray:
        """``array[index]`` for an index of ints and slices of step 1 (one per axis), inside the
        array; assembled from whole decoded chunks."""
        per_axis, shape = [], []
        for ix, c, n in zip(index, self.chunks, self.shape):
            if isinstance(ix, slice):
                start, stop, _ = ix.indices(n)
                shape.append(stop - start)
                per_axis.append([(k, slice(max(start, k * c) - k * c, min(stop, (k + 1) * c) - k * c),
                                  slice(max(start, k * c) - start, min(stop, (k + 1) * c) - start))
                                 for k in range(start // c, -(-stop // c))])
            else:
                per_axis.append([(int(ix) // c, int(ix) % c, None)])
        out = np.empty(shape, self.array.dtype)
        for parts in itertools.product(*per_axis):
            chunk = self._chunk(tuple(k for k, _, _ in parts))
            out[tuple(d for _, _, d in parts if d is not None)] = chunk[tuple(s for _, s, _ in parts)]
        return out

    def _chunk(self, key: tuple) -> np.ndarray:
        """One decoded chunk (read once while it stays in the cache; threads that want a chunk
        being read wait for that read)."""
        with self._lock:
            future = self._kept.get(key)
            mine = future is None
            if mine:
                future = self._kept[key] = Future()
            else:
                self._kept.move_to_end(key)
        if not mine:
            return future.result()
        try:
            box = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(key, self.chunks, self.shape))
            data = np.asarray(self.array[box])
        except BaseException as exc:
            with self._lock:
                self._kept.pop(key, None)
            future.set_exception(exc)
            raise
        future.set_result(data)
        with self._lock:
            self._bytes += data.nbytes
            while self._bytes > self.max_bytes and len(self._kept) > 1:
                old_key, old = next(iter(self._kept.items()))
                if not old.done():  # still being read: the oldest finished one goes
                    break
                del self._kept[old_key]
                self._bytes -= old.result().nbytes
        return data
