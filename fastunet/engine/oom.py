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

import logging
import threading

import torch

from .. import geometry
from ..errors import UserError
from .predictor import Prediction

__all__ = ["OOMBackoff", "subtile_origins"]

log = logging.getLogger("fastunet.engine")


def subtile_origins(out: int, sub_out: int, depth: int) -> list[int]:
    """Origins (output pixels, from the tile's origin) of the sub-tiles of output edge
    ``sub_out`` that cover a tile's output edge ``out``: steps on the ``2**depth`` grid,
    the last one ending at ``out`` (valid output sizes share their remainder mod ``2**depth``,
    so ``out - sub_out`` is on the grid too)."""
    q = 2**depth
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
    """

    def __init__(self, predictor, *, depth: int):
        self.predictor = predictor
        self.depth = int(depth)
        self.max_batch: int | None = None  # tiles per call, once an OOM asked for fewer
        self.max_tile: int | None = None  # input tile edge, once an OOM asked for smaller
        self._lock = threading.Lock()

    @property
    def device(self):
        return self.predictor.device

    @property
    def backend(self) -> str:
        return self.predictor.backend

    @property
    def dtype(self) -> str:
        return self.predictor.dtype

    @property
    def config(self):
        return self.predictor.config

    def predict(self, tiles: torch.Tensor, output: str = "labels") -> Prediction:
        """As :meth:`Predictor.predict`, in smaller calls after an out-of-memory error."""
        while True:
            try:
                return self._predict(tiles, output)
            except torch.OutOfMemoryError as exc:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self._shrink(tiles, exc)

    def _shrink(self, tiles: torch.Tensor, exc: BaseException) -> None:
        with self._lock:
            batch = self.max_batch or tiles.shape[0]
            tile = self.max_tile or max(tiles.shape[-2:])
            if batch > 1:
                self.max_batch = batch // 2
                log.warning("out of memory on %s with %d tiles per call; going on with %d", self.device, batch,
                            self.max_batch)
                return
            out = geometry.output_size(tile, self.depth)
            q = 2**self.depth
            half = max(q, out // 2)
            sub_out = max((o for o in range(q, half + 1) if (out - o) % q == 0), default=None)
            if sub_out is None or sub_out >= out:
                raise UserError(
                    f"Out of memory on {self.device} even for one tile of {tile} pixels ({exc}); free the device "
                    "(other processes?), use a smaller model, or run on another device."
                ) from None
            self.max_tile = geometry.input_size_for_output(sub_out, self.depth)
            log.warning("out of memory on %s with one tile of %d pixels; going on with tiles of %d", self.device,
                        tile, self.max_tile)

    def _predict(self, tiles: torch.Tensor, output: str) -> Prediction:
        batch = self.max_batch or tiles.shape[0]
        parts = [self._call(tiles[i:i + batch], output) for i in range(0, tiles.shape[0], batch)]
        if len(parts) == 1:
            return parts[0]
        return Prediction(
            probs=None if parts[0].probs is None else torch.cat([p.probs for p in parts]),
            labels=None if parts[0].labels is None else torch.cat([p.labels for p in parts]),
        )

    def _call(self, tiles: torch.Tensor, output: str) -> Prediction:
        ty, tx = tiles.shape[-2:]
        if self.max_tile is None or (ty <= self.max_tile and tx <= self.max_tile):
            return self.predictor.predict(tiles, output)
        oy, ox = geometry.output_size(ty, self.depth), geometry.output_size(tx, self.depth)
        sub = min(geometry.output_size(self.max_tile, self.depth), oy, ox)
        sy = sub if sub < oy else oy
        sx = sub if sub < ox else ox
        labels = probs = None
        for y in subtile_origins(oy, sy, self.depth) if sy < oy else [0]:
            for x in subtile_origins(ox, sx, self.depth) if sx < ox else [0]:
                piece = tiles[..., y:y + geometry.input_size_for_output(sy, self.depth),
                              x:x + geometry.input_size_for_output(sx, self.depth)]
                pred = self.predictor.predict(piece, output)
                if pred.labels is not None:
                    if labels is None:
                        labels = pred.labels.new_empty((tiles.shape[0], oy, ox))
                    labels[:, y:y + sy, x:x + sx] = pred.labels
                if pred.probs is not None:
                    if probs is None:
                        probs = pred.probs.new_empty((tiles.shape[0], pred.probs.shape[1], oy, ox))
                    probs[:, :, y:y + sy, x:x + sx] = pred.probs
        return Prediction(probs=probs, labels=labels)
