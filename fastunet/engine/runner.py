"""Batching tiles from many blocks onto one device, and feeding it.

Block tasks hand their tiles to the process's :class:`DeviceRunner` and wait; one thread per
process and device gathers tiles across requests into batches of one shape and dtype. On
CUDA a batch is staged in one of two pinned host buffers *in the tiles' stored dtype*
(uint8, uint16, float32...: no per-pixel float work on the CPU, and 1-2 bytes a pixel to
copy for 8- and 16-bit images instead of float32's 4), copied on a side stream while the
previous batch computes, normalized on the device by :meth:`fastunet.normalization.Normalization.apply`
(the same function, and the same values, as the CPU path) with each tile's constants, and
padded to ``batch_size`` tiles, so the network sees one shape for the whole run (the fused
network captures it once in a CUDA graph). Each request gets its rows back: labels as uint8,
probabilities (only when asked) as float16 (on the CPU in the predictor's float dtype),
through reused pinned buffers. On the CPU the
buffers are numpy arrays, handed to the predictor as they are where it takes numpy
(``takes_numpy``: OpenVINO, which then never needs PyTorch) and as torch tensors sharing their
memory otherwise.
"""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..devices import resolve_device
from ..normalization import Normalization
from .predictor import as_numpy, tiles_for

if TYPE_CHECKING:
    import torch

__all__ = ["DeviceRunner"]

_OUTPUT_DTYPES = {"labels": "uint8", "probs": "float16"}  # numpy's and torch's names alike


class DeviceRunner:
    """One thread per process and device that batches tiles from many blocks.

    Block tasks call :meth:`submit` with their tiles and wait on the returned future; the
    runner thread gathers up to ``batch_size`` tiles across requests (of one output kind,
    dtype and shape), runs the predictor and hands each request its rows back. Two host
    staging buffers (pinned on CUDA) are reused batch after batch: the next batch is
    gathered and its copy issued while the previous one computes.

    Parameters
    ----------
    predictor : Predictor
        The network on its device (``predict(tiles, output) -> Prediction``).
    batch_size : int
        Tiles per network call.
    pad : bool, optional
        Pad every batch to ``batch_size`` tiles (one shape for the whole run); default: on
        CUDA only.
    """

    def __init__(self, predictor, *, batch_size: int, pad: bool | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        self.predictor = predictor
        self.batch_size = int(batch_size)
        self.device = resolve_device(predictor.device)
        self.cuda = self.device.type == "cuda"
        self.pad = self.cuda if pad is None else bool(pad)
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._slots = (_Staging(), _Staging())  # double buffering: the batch computing, the next one
        self._slot = 0
        self._copy_stream = None
        self.batches = 0

    # public -------------------------------------------------------------------------
    def submit(self, tiles: np.ndarray, output: str, norm: tuple | None = None) -> Future:
        """Queue ``tiles`` (N, C, H, W); the future gives ``(labels, probs)`` numpy.

        ``norm=None``: the tiles are the network's input already (float32). Else
        ``norm=(offset, scale)``, each (N, C), the normalization constants of each tile and
        channel: the tiles are in their stored dtype and are normalized on the device.
        """
        tiles = np.asarray(tiles)
        if tiles.ndim != 4:
            raise ValueError(f"Expected tiles (N, C, H, W); got shape {tiles.shape}.")
        offset = scale = None
        if norm is not None:
            offset, scale = (np.asarray(v, np.float64) for v in norm)
            if offset.shape != tiles.shape[:2] or scale.shape != tiles.shape[:2]:
                raise ValueError(f"Expected normalization constants of shape {tiles.shape[:2]} (tiles, channels); "
                                 f"got offset {offset.shape} and scale {scale.shape}.")
        fut: Future = Future()
        if len(tiles) == 0:
            fut.set_result((None, None))
            return fut
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="fastunet-device-runner", daemon=True)
                self._thread.start()
        self._queue.put(_Request(tiles=tiles, output=output, future=fut, offset=offset, scale=scale))
        return fut

    def close(self) -> None:
        """Stop the thread (after the queued requests)."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    # the thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        pending: collections.deque = collections.deque()
        try:
            self._serve(pending)
        except BaseException as exc:  # noqa: BLE001 - never leave a task waiting forever
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    pending.append(item)
            self._fail([(req, 0, 0) for req in pending], exc)
            raise

    def _serve(self, pending) -> None:
        inflight = None
        stop = False
        while not stop or pending or inflight is not None:
            if not stop:
                stop = self._gather(pending, wait=inflight is None and not pending, inflight=inflight)
            batch = self._take(pending)
            launched = None
            if batch:
                try:
                    launched = self._launch(batch)
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting tasks
                    self._fail(batch, exc)
                    self._settle()
            if inflight is not None:
                try:
                    self._finish(inflight)
                except BaseException as exc:  # noqa: BLE001
                    self._fail(inflight.batch, exc)
            inflight = launched

    def _gather(self, pending, *, wait: bool, inflight) -> bool:
        """Move queued requests to ``pending``; True when the stop sentinel arrived."""
        def have():
            return sum(r.tiles.shape[0] - r.taken for r in pending)

        def busy():
            return inflight is not None and inflight.done is not None and not inflight.done.query()

        # An asynchronous CPU batch (OpenVINO: one inference per tile, each on a free stream) is
        # not waited on for a full batch: the next tiles are queued at once, so that a stream
        # that finishes its tile starts the next one instead of idling until the batch fills
        # (with one tile a block, half of the streams idled; on CUDA a batch is one call)
        asynchronous = inflight is not None and inflight.outputs is None

        def enough():
            n = have()
            return n >= self.batch_size or (asynchronous and n > 0)

        while not enough():
            try:
                if wait:
                    item = self._queue.get()
                    wait = False
                elif busy():
                    item = self._queue.get(timeout=0.001)  # the GPU is busy: wait for more tiles
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                if busy():
                    continue
                return False
            if item is None:
                return True
            pending.append(item)
        return False

    def _take(self, pending) -> list:
        """Up to ``batch_size`` tiles from the front of ``pending``, of one output kind,
        dtype and shape (the front request's)."""
        batch, n = [], 0
        while pending and n < self.batch_size:
            req = pending[0]
            if batch and req.key != batch[0][0].key:
                break
            k = min(self.batch_size - n, req.tiles.shape[0] - req.taken)
            batch.append((req, req.taken, req.taken + k))
            req.taken += k
            n += k
            if req.taken == req.tiles.shape[0]:
                pending.popleft()
        return batch

    def _launch(self, batch) -> "_Launched":
        """Stage ``batch`` in the next slot, run it (asynchronously on CUDA)."""
        first = batch[0][0]
        slot = self._slots[self._slot]
        self._slot ^= 1  # this slot's previous batch was finished (synchronized) before we got here
        n = slot.stage(batch, self.batch_size, pin=self.cuda)
        rows = self.batch_size if self.pad else n
        if not self.cuda:
            x = tiles_for(self.predictor, _network_input(slot.tiles[:rows], slot.consts[:rows], first))
            start = getattr(self.predictor, "start", None)
            if start is not None:  # OpenVINO: queued; the next batch is queued behind it before this one is done
                return _Launched(batch, n, None, start(x, first.output))
            return _Launched(batch, n, _host_outputs(self.predictor.predict(x, first.output), n), None)
        import torch

        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):  # overlaps the previous batch's compute
            tiles = slot.tiles[:rows].to(self.device, non_blocking=True)
            consts = slot.consts[:rows].to(self.device, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        compute.wait_event(copied)
        tiles.record_stream(compute)
        consts.record_stream(compute)
        with torch.cuda.stream(compute):
            pred = self.predictor.predict(_network_input(tiles, consts, first), first.output)
            outputs = {}
            for name, dtype in _OUTPUT_DTYPES.items():
                result = getattr(pred, name)
                if result is not None:
                    result = result[:n].to(getattr(torch, dtype))
                    outputs[name] = slot.output(name, result, pin=True)
                    outputs[name][:n].copy_(result, non_blocking=True)
            done = torch.cuda.Event()
            done.record(compute)
        return _Launched(batch, n, outputs, done)

    def _settle(self) -> None:
        """After a failed launch on CUDA: wait for what it issued, so that its slot can be reused."""
        if self.cuda:
            import torch

            try:
                torch.cuda.synchronize(self.device)
            except Exception:  # noqa: BLE001 - the failure itself was already handed on
                pass

    def _finish(self, launched: "_Launched") -> None:
        batch, n, outputs, done = launched
        if outputs is None:  # an asynchronous CPU call (OpenVINO): its prediction, waited for
            outputs = _host_outputs(done.result(), n)
        elif done is not None:
            done.synchronize()
        self.batches += 1
        labels = as_numpy(outputs["labels"][:n]) if "labels" in outputs else None
        probs = as_numpy(outputs["probs"][:n]) if "probs" in outputs else None
        i = 0
        for req, a, b in batch:
            k = b - a
            if labels is not None:
                if req.labels is None:
                    req.labels = np.empty((req.tiles.shape[0], *labels.shape[1:]), labels.dtype)
                req.labels[a:b] = labels[i:i + k]
            if probs is not None:
                if req.probs is None:
                    req.probs = np.empty((req.tiles.shape[0], *probs.shape[1:]), probs.dtype)
                req.probs[a:b] = probs[i:i + k]
            i += k
            req.delivered += k
            if req.delivered == req.tiles.shape[0] and not req.future.done():
                req.future.set_result((req.labels, req.probs))

    @staticmethod
    def _fail(batch, exc) -> None:
        for req, _, _ in batch:
            if not req.future.done():
                req.future.set_exception(exc)


def _host_outputs(pred, n: int) -> dict:
    """The first ``n`` rows of a CPU prediction's outputs (numpy), as the runner hands them on
    (probabilities in the predictor's float dtype: numpy's float16 conversion is slow, and the
    engine converts only what it writes)."""
    outputs = {}
    for name in _OUTPUT_DTYPES:
        value = getattr(pred, name)
        if value is not None:
            value = as_numpy(value[:n])
            outputs[name] = value.astype(_OUTPUT_DTYPES[name], copy=False) if name == "labels" else value
    return outputs


def _network_input(tiles, consts, request: "_Request"):
    """The network's input from staged tiles (numpy, or torch tensors on CUDA): as they are
    (already normalized), or normalized with their constants ``consts`` (rows, 2, C): offset
    and scale per tile and channel."""
    if request.offset is None:
        return tiles
    floating = tiles.dtype.kind == "f" if isinstance(tiles, np.ndarray) else tiles.dtype.is_floating_point
    return Normalization.apply(tiles, consts[:, 0, :, None, None], consts[:, 1, :, None, None],
                               zero_nonfinite=floating)


class _Staging:
    """The host buffers of one batch in flight, reused while the batches keep one dtype and
    shape (reallocated when they change: memory stays bounded): tiles ``(batch_size, C, H, W)``
    in their dtype, their constants ``(batch_size, 2, C)`` float64, and the outputs copied
    back; pinned torch tensors on CUDA, numpy arrays on the CPU."""

    def __init__(self):
        self.key = None
        self.tiles = None
        self.consts = None
        self.outputs: dict = {}

    def stage(self, batch, batch_size: int, *, pin: bool) -> int:
        """Copy the rows of ``batch`` to the front of the buffers; returns how many. The rows
        behind them keep an earlier batch's tiles (or zeros, scale 1): padding, computed and
        dropped."""
        first = batch[0][0]
        key = first.staging_key  # the output kind does not matter here
        if key != self.key:
            self.tiles = self.consts = None  # free before allocating
            self.outputs = {}
            tiles = np.zeros((batch_size, *first.tiles.shape[1:]), key[0])
            consts = np.zeros((batch_size, 2, first.tiles.shape[1]), np.float64)
            consts[:, 1] = 1.0
            if pin:
                import torch

                tiles, consts = (torch.from_numpy(a).pin_memory() for a in (tiles, consts))
            self.tiles, self.consts = tiles, consts
            self.key = key
        tiles, consts = as_numpy(self.tiles), as_numpy(self.consts)
        i = 0
        for req, a, b in batch:
            tiles[i:i + b - a] = req.tiles[a:b]
            if req.offset is not None:
                consts[i:i + b - a, 0] = req.offset[a:b]
                consts[i:i + b - a, 1] = req.scale[a:b]
            i += b - a
        return i

    def output(self, name: str, like: torch.Tensor, *, pin: bool) -> torch.Tensor:
        """The host buffer for output ``name``: ``batch_size`` rows shaped and typed as ``like``'s."""
        shape = (self.tiles.shape[0], *like.shape[1:])
        buf = self.outputs.get(name)
        if buf is None or tuple(buf.shape) != shape or buf.dtype != like.dtype:
            import torch

            buf = self.outputs[name] = torch.empty(shape, dtype=like.dtype, pin_memory=pin)
        return buf


class _Launched(NamedTuple):
    batch: list
    rows: int
    outputs: dict
    done: object  # a CUDA event; on the CPU None, or the pending call (outputs None)


@dataclass(eq=False)
class _Request:
    tiles: np.ndarray
    output: str
    future: Future
    offset: np.ndarray | None = None  # (N, C) per tile and channel; None: tiles already normalized
    scale: np.ndarray | None = None
    taken: int = 0
    delivered: int = 0
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None

    @property
    def staging_key(self) -> tuple:
        """Requests of one staging key can share the pinned buffers: native-order dtype and tile shape."""
        return self.tiles.dtype.newbyteorder("="), self.tiles.shape[1:]

    @property
    def key(self) -> tuple:
        """Requests of one key can share a batch."""
        return self.output, *self.staging_key, self.offset is None
