"""Running out of device memory: halve the batch, then the tile, and go on.

:class:`OOMBackoff` wraps a :class:`~fastunet.engine.predictor.Predictor`. When a call raises
``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError``), it halves the tiles per call; at
one tile per call it halves the tile: each input tile is then computed as smaller tiles
placed on the max-pool grid inside it, which gives the same output pixels (the overlap-tile
property the engine rests on). Each reduction is logged once on the ``fastunet.engine``
logger and kept for the rest of the run; out of memory with a single tile whose output is
``2**depth`` pixels is one :class:`~fastunet.errors.UserError` line.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
from typing import TYPE_CHECKING

from .. import geometry
from ..errors import UserError
from .predictor import OUTPUTS, Prediction

if TYPE_CHECKING:
    import torch

__all__ = ["OOMBackoff", "subtile_origins"]

log = logging.getLogger("fastunet.engine")


def subtile_origins(out: int, sub_out: int, depth: int) -> list[int]:
    """Origins (output pixels, from the tile's origin) of the sub-tiles of output edge
    ``sub_out`` that cover a tile's output edge ``out``: steps on the ``2**depth`` grid,
    the last one ending at ``out`` (valid output sizes share their remainder mod ``2**depth``,
    so ``out - sub_out`` is on the grid too)."""
    q = geometry.grid_step(depth)
    step = sub_out - sub_out % q
    if step < q or (out - sub_out) % q:
        raise ValueError(f"Cannot cover an output of {out} with sub-tiles of {sub_out} on the {q}-pixel grid.")
    origins = list(range(0, out - sub_out, step))
    return origins + [out - sub_out]


class OOMBackoff:
    """A predictor that answers an out-of-memory error by computing in smaller pieces.

    Parameters
    ----------
    predictor : Predictor
        The network on its device (``predict(tiles, output) -> Prediction``).
    depth : int
        The network's number of max-pools (the sub-tile grid is ``2**depth``).
    pools : tuple, optional
        The network's pools per spatial axis (``UNetConfig.axis_pools``): three for a 3D
        network, whose tiles are then cut along Z too; default ``depth`` along Y and X.
    """

    def __init__(self, predictor, *, depth: int, pools: tuple | None = None):
        self.predictor = predictor
        self.depth = int(depth)
        self.pools = tuple(pools) if pools is not None else (self.depth, self.depth)
        self.max_batch: int | None = None  # tiles per call, once an OOM asked for fewer
        self.max_tiles: tuple[int, ...] | None = None  # input tile edges, once an OOM asked for smaller
        self._lock = threading.Lock()

    @property
    def max_tile(self) -> int | None:
        """The largest input tile edge allowed since an out-of-memory error (None before)."""
        return None if self.max_tiles is None else max(self.max_tiles)

    @property
    def device(self):
        return self.predictor.device

    @property
    def backend(self) -> str:
        return self.predictor.backend

    @property
    def outputs(self) -> tuple:
        """What the predictor's ``predict`` can compute (its ``output=`` values)."""
        return tuple(getattr(self.predictor, "outputs", OUTPUTS))

    @property
    def takes_numpy(self) -> bool:
        """Whether the predictor takes numpy tiles (and gives numpy back: OpenVINO)."""
        return bool(getattr(self.predictor, "takes_numpy", False))

    @property
    def dtype(self) -> str:
        return self.predictor.dtype

    @property
    def config(self):
        return self.predictor.config

    @property
    def start(self):
        """The predictor's asynchronous call, ``start(tiles, output)`` -> a pending prediction
        (``query()``, ``result()``), where it has one (OpenVINO, which raises no
        ``torch.OutOfMemoryError``) and no out-of-memory error has made the calls smaller; else None."""
        start = getattr(self.predictor, "start", None)
        return start if self.max_batch is None and self.max_tiles is None else None

    def predict(self, tiles: torch.Tensor, output: str = "labels") -> Prediction:
        """As :meth:`Predictor.predict`, in smaller calls after an out-of-memory error."""
        while True:
            try:
                return self._predict(tiles, output)
            except Exception as exc:
                torch = sys.modules.get("torch")  # no torch imported: no torch out-of-memory error
                if torch is None or not isinstance(exc, torch.OutOfMemoryError):
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self._shrink(tiles, exc)

    def _shrink(self, tiles: torch.Tensor, exc: BaseException) -> None:
        with self._lock:
            batch = self.max_batch or tiles.shape[0]
            edges = self.max_tiles or tuple(int(n) for n in tiles.shape[-len(self.pools):])
            if batch > 1:
                self.max_batch = batch // 2
                log.warning("out of memory on %s with %d tiles per call; going on with %d", self.device, batch,
                            self.max_batch)
                return
            smaller = tuple(_half_tile(edge, p) for edge, p in zip(edges, self.pools))
            if smaller == edges:
                raise UserError(
                    f"Out of memory on {self.device} even for one tile of {_edges(edges)} pixels ({exc}); free the "
                    "device (other processes?), use a smaller model, or run on another device."
                ) from None
            self.max_tiles = smaller
            log.warning("out of memory on %s with one tile of %s pixels; going on with tiles of %s", self.device,
                        _edges(edges), _edges(smaller))

    def _predict(self, tiles: torch.Tensor, output: str) -> Prediction:
        batch = self.max_batch or tiles.shape[0]
        parts = [self._call(tiles[i:i + batch], output) for i in range(0, tiles.shape[0], batch)]
        if len(parts) == 1:
            return parts[0]
        import torch  # more than one part only after an out-of-memory error: torch tensors

        return Prediction(
            probs=None if parts[0].probs is None else torch.cat([p.probs for p in parts]),
            labels=None if parts[0].labels is None else torch.cat([p.labels for p in parts]),
        )

    def _call(self, tiles: torch.Tensor, output: str) -> Prediction:
        edges = tuple(int(n) for n in tiles.shape[-len(self.pools):])
        if self.max_tiles is None or all(e <= m for e, m in zip(edges, self.max_tiles)):
            return self.predictor.predict(tiles, output)
        outs = [geometry.output_size(e, p) for e, p in zip(edges, self.pools)]
        subs = [min(geometry.output_size(m, p), o) for m, o, p in zip(self.max_tiles, outs, self.pools)]
        origins = [subtile_origins(o, s, p) if s < o else [0] for o, s, p in zip(outs, subs, self.pools)]
        labels = probs = None
        for corner in itertools.product(*origins):
            piece = tiles[(..., *(slice(c, c + geometry.input_size_for_output(s, p))
                                  for c, s, p in zip(corner, subs, self.pools)))]
            pred = self.predictor.predict(piece, output)
            where = tuple(slice(c, c + s) for c, s in zip(corner, subs))
            if pred.labels is not None:
                if labels is None:
                    labels = pred.labels.new_empty((tiles.shape[0], *outs))
                labels[(slice(None), *where)] = pred.labels
            if pred.probs is not None:
                if probs is None:
                    probs = pred.probs.new_empty((tiles.shape[0], pred.probs.shape[1], *outs))
                probs[(slice(None), slice(None), *where)] = pred.probs
        return Prediction(probs=probs, labels=labels)


def _half_tile(edge: int, depth) -> int:
    """The input edge of about half ``edge``'s output on the max-pool grid (``edge`` itself
    when its output is already one grid cell)."""
    out = geometry.output_size(edge, depth)
    q = geometry.grid_step(depth)
    half = max(q, out // 2)
    sub_out = max((o for o in range(q, half + 1) if (out - o) % q == 0), default=None)
    if sub_out is None or sub_out >= out:
        return edge
    return geometry.input_size_for_output(sub_out, depth)


def _edges(edges: tuple[int, ...]) -> str:
    """``"92"`` for a square (cubic) tile, ``"20x92x92"`` otherwise."""
    return str(edges[0]) if len(set(edges)) == 1 else "x".join(map(str, edges))
