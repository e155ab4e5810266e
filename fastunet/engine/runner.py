"""Batching tiles from many blocks onto one device.

Block tasks hand their normalized tiles to the process's :class:`DeviceRunner` and wait; one
thread per process and device gathers tiles across requests into full batches, stages them in
pinned host memory, copies them on a side stream while the previous batch computes, and hands
each request its rows back.
"""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DeviceRunner"]


class DeviceRunner:
    """One thread per process and device that batches tiles from many blocks.

    Block tasks call :meth:`submit` with their normalized tiles and wait on the returned
    future; the runner thread gathers up to ``batch_size`` tiles across requests, runs the
    predictor and hands each request its rows back. On CUDA each batch is staged in one of
    two pinned host buffers, copied on a side stream and padded to ``batch_size`` tiles (one
    shape for the whole run); the next batch is gathered and its copy issued while the
    previous one computes.
    """

    def __init__(self, predictor, *, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
        self.predictor = predictor
        self.batch_size = int(batch_size)
        self.device = torch.device(predictor.device)
        self.cuda = self.device.type == "cuda"
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._staging: dict = {}
        self._slot = 0
        self._copy_stream = None
        self.batches = 0

    # public -------------------------------------------------------------------------
    def submit(self, tiles: np.ndarray, output: str) -> Future:
        """Queue ``tiles`` (N, C, H, W) float32; the future gives ``(labels, probs)`` numpy."""
        fut: Future = Future()
        if len(tiles) == 0:
            fut.set_result((None, None))
            return fut
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="fastunet-device-runner", daemon=True)
                self._thread.start()
        self._queue.put(_Request(tiles=tiles, output=output, future=fut))
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
            if inflight is not None:
                try:
                    self._finish(inflight)
                except BaseException as exc:  # noqa: BLE001
                    self._fail(inflight[0], exc)
            inflight = launched

    def _gather(self, pending, *, wait: bool, inflight) -> bool:
        """Move queued requests to ``pending``; True when the stop sentinel arrived."""
        def have():
            return sum(r.tiles.shape[0] - r.taken for r in pending)

        while have() < self.batch_size:
            try:
                if wait:
                    item = self._queue.get()
                    wait = False
                elif inflight is not None and self.cuda and not inflight[3].query():
                    item = self._queue.get(timeout=0.001)  # the GPU is busy: wait for more tiles
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                if inflight is not None and self.cuda and not inflight[3].query():
                    continue
                return False
            if item is None:
                return True
            pending.append(item)
        return False

    def _take(self, pending) -> list:
        """Up to ``batch_size`` tiles from the front of ``pending``, one output kind."""
        batch, n = [], 0
        while pending and n < self.batch_size:
            req = pending[0]
            if batch and req.output != batch[0][0].output:
                break
            k = min(self.batch_size - n, req.tiles.shape[0] - req.taken)
            batch.append((req, req.taken, req.taken + k))
            req.taken += k
            n += k
            if req.taken == req.tiles.shape[0]:
                pending.popleft()
        return batch

    def _launch(self, batch):
        output = batch[0][0].output
        shape = batch[0][0].tiles.shape[1:]
        if not self.cuda:
            tiles = np.concatenate([r.tiles[a:b] for r, a, b in batch]) if len(batch) > 1 else batch[0][0].tiles[batch[0][1]:batch[0][2]]
            pred = self.predictor.predict(torch.from_numpy(np.ascontiguousarray(tiles)), output)
            return batch, pred.labels, pred.probs, None
        key = (tuple(shape), self._slot)
        host = self._staging.get(key)
        if host is None:
            host = torch.zeros((self.batch_size, *shape), dtype=torch.float32, pin_memory=True)
            self._staging[key] = host
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(self.device)
        self._slot ^= 1
        view = host.numpy()
        i = 0
        for r, a, b in batch:
            view[i:i + b - a] = r.tiles[a:b]
            i += b - a
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._copy_stream):
            dev = host.to(self.device, non_blocking=True)  # always batch_size tiles: one shape
            copied = torch.cuda.Event()
            copied.record(self._copy_stream)
        compute.wait_event(copied)
        dev.record_stream(compute)
        with torch.cuda.stream(compute):
            pred = self.predictor.predict(dev, output)
            labels = probs = None
            if pred.labels is not None:
                labels = torch.empty(pred.labels.shape, dtype=pred.labels.dtype, pin_memory=True)
                labels.copy_(pred.labels, non_blocking=True)
            if pred.probs is not None:
                probs = torch.empty(pred.probs.shape, dtype=pred.probs.dtype, pin_memory=True)
                probs.copy_(pred.probs, non_blocking=True)
            done = torch.cuda.Event()
            done.record(compute)
        return batch, labels, probs, done

    def _finish(self, inflight) -> None:
        batch, labels, probs, done = inflight
        if done is not None:
            done.synchronize()
        self.batches += 1
        labels = None if labels is None else labels.numpy()
        probs = None if probs is None else probs.numpy()
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


@dataclass(eq=False)
class _Request:
    tiles: np.ndarray
    output: str
    future: Future
    taken: int = 0
    delivered: int = 0
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None
