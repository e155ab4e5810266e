"""The network in a process: the loaded network.

A :class:`~fastunet.engine.handle.ModelHandle` travels with every block task (a model file's
path, or the weights as safetensors bytes: never a pickled module). :func:`cached_network`
loads it once per process and settings into a :class:`LoadedNetwork`, which runs batches of
tiles on its device through a :class:`~fastunet.engine.runner.DeviceRunner`, one thread that
batches tiles across blocks and keeps the network busy while the block tasks read, label and
write (on CUDA the tiles come in their stored dtype and are normalized on the device; on the
CPU the task normalizes them), or, without a runner, in the calling thread (one forward at a
time).

The predictor is wrapped in :class:`~fastunet.engine.oom.OOMBackoff` (an out-of-memory error
halves the batch, then the tile). Under the Triton interpreter (``backend="triton"`` on the
CPU, minutes per block, no runner) the network runs in a helper thread and the block waits for
it interruptibly: after Ctrl-C (:data:`cancel_predictions` set by the scheduler) the block
gives up at once, unrecorded, instead of holding the run for minutes; a block waits for a
CUDA device runner in the same way.
"""

from __future__ import annotations

import collections
import threading

import numpy as np

from ..normalization import Normalization
from .handle import ModelHandle
from .oom import OOMBackoff
from .predictor import as_numpy, tiles_for
from .runner import DeviceRunner

__all__ = ["ModelHandle", "LoadedNetwork", "cached_network", "cancel_predictions", "PredictionCancelled"]

# Set (by the scheduler, on Ctrl-C or SIGTERM) to make blocks waiting on an interruptible
# network give up; cleared once the run has stopped.
cancel_predictions = threading.Event()


class PredictionCancelled(Exception):
    """A block gave up waiting for the network because the run was interrupted."""


class LoadedNetwork:
    """A network on one device: ``predict(tiles, output) -> (labels, probs)`` on numpy.

    Without a runner the predictor is called in the calling thread, one call at a time
    (a lock: a CPU forward already uses all cores); with ``use_runner`` the tiles go to a
    :class:`DeviceRunner` that batches them across blocks, takes them in their stored dtype
    and normalizes them on the device (:meth:`predict_raw`; :attr:`takes_raw_tiles`), and
    pads every batch to ``batch_size`` tiles on CUDA, where the fused network then runs as a
    CUDA graph captured once per tile shape (on the CPU the batches are not padded: a tile's
    result does not depend on the batch it runs in there).
    """

    def __init__(self, handle: ModelHandle, *, device, backend: str, dtype: str | None,
                 batch_size: int, use_runner: bool, threads: int | None = None):
        from .backends import make_predictor

        self.handle = handle
        predictor = make_predictor(handle, backend=backend, device=device, dtype=dtype,
                                   cuda_graph=use_runner,  # the runner's batches have one shape
                                   batch_size=batch_size,  # OpenVINO: the tiles run side by side
                                   threads=threads)  # OpenVINO's threads (torch's are set by cached_network)
        self.predictor = OOMBackoff(predictor, depth=handle.config.depth, pools=handle.config.axis_pools)
        self.device = str(self.predictor.device)
        self.backend = self.predictor.backend
        self.dtype = self.predictor.dtype
        # The Triton interpreter takes minutes per block: wait for it interruptibly.
        self.interruptible = self.backend == "triton" and self.predictor.device.type == "cpu"
        # After Ctrl-C a block waiting for the network gives up (unrecorded) under the
        # interpreter and on CUDA's runner; on the CPU it waits (seconds) and is recorded.
        self.gives_up_on_interrupt = self.interruptible or self.predictor.device.type == "cuda"
        self.batch_size = int(batch_size)
        self.runner = DeviceRunner(self.predictor, batch_size=batch_size) if use_runner else None
        self.raw_tiles = self.predictor.device.type == "cuda"  # see takes_raw_tiles
        self._lock = threading.Lock()

    def prepare(self, tile: tuple, output: str = "labels") -> None:
        """Make the network ready for tiles of spatial edges ``tile`` and the network output
        ``output`` (OpenVINO compiles it for that shape; other backends prepare on their first call)."""
        prepare = getattr(self.predictor.predictor, "prepare", None)
        if prepare is not None:
            prepare(tuple(int(t) for t in tile), output)

    @property
    def takes_raw_tiles(self) -> bool:
        """Whether tiles should come in their stored dtype, to :meth:`predict_raw` (a CUDA
        runner normalizes them on its device), rather than normalized, to :meth:`predict`. On
        the CPU the block task normalizes them (numpy: extended precision for 64-bit integers,
        and the work is done beside the network, not in the runner's thread)."""
        return self.runner is not None and self.raw_tiles

    def predict(self, tiles: np.ndarray, output: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Labels (N, h, w) uint8 and/or probabilities (N, K, h, w) float16 (float32 from
        OpenVINO) of ``tiles`` (normalized, float32)."""
        if self.runner is not None:
            return self._runner_result(self.runner.submit(tiles, output))
        if self.interruptible:
            return _wait_interruptibly(lambda: self._predict(tiles, output))
        return self._predict(tiles, output)

    def predict_raw(self, tiles: np.ndarray, output: str, offset: np.ndarray, scale: np.ndarray):
        """As :meth:`predict`, for ``tiles`` (N, C, H, W) in their stored dtype with the
        normalization constants of each tile and channel, ``offset`` and ``scale`` (N, C)
        (:meth:`fastunet.normalization.Normalization.apply`; NaN/Inf of float inputs become 0):
        normalized by the runner on its device, or here without one."""
        if self.runner is not None:
            return self._runner_result(self.runner.submit(tiles, output, norm=(offset, scale)))
        spatial = (1,) * (tiles.ndim - 2)  # (N, C) constants over (N, C, *tile)
        x = Normalization.apply(tiles, np.asarray(offset).reshape(*np.shape(offset), *spatial),
                                np.asarray(scale).reshape(*np.shape(scale), *spatial), zero_nonfinite=tiles.dtype.kind == "f")
        return self.predict(x, output)

    def _runner_result(self, future):
        """The runner's answer: given up once the run is interrupted where
        :attr:`gives_up_on_interrupt` (CUDA), else waited for (the CPU: a block's tiles take
        seconds there, and a block that has started finishes and is recorded)."""
        if self.gives_up_on_interrupt:
            return _result_interruptibly(future)
        return future.result()

    def _predict(self, tiles: np.ndarray, output: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        labels, probs = [], []
        tiles = tiles_for(self.predictor, tiles)
        with self._lock:
            for i in range(0, tiles.shape[0], self.batch_size):
                pred = self.predictor.predict(tiles[i:i + self.batch_size], output)
                if pred.labels is not None:
                    labels.append(as_numpy(pred.labels))
                if pred.probs is not None:
                    probs.append(as_numpy(pred.probs))
        return (np.concatenate(labels) if labels else None, np.concatenate(probs) if probs else None)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


def _wait_interruptibly(call):
    """``call()`` in a helper thread, waited for until it returns or :data:`cancel_predictions`
    is set (then :class:`PredictionCancelled`; the helper finishes on its own, unused)."""
    from concurrent.futures import Future

    future: Future = Future()

    def work():
        try:
            future.set_result(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting block
            future.set_exception(exc)

    threading.Thread(target=work, name="fastunet-interpreter", daemon=True).start()
    return _result_interruptibly(future)


def _result_interruptibly(future):
    """``future.result()``, given up (:class:`PredictionCancelled`) once :data:`cancel_predictions`
    is set."""
    from concurrent.futures import TimeoutError as Waiting

    while True:
        try:
            return future.result(timeout=0.1)
        except Waiting:
            if cancel_predictions.is_set():
                raise PredictionCancelled("the run was interrupted; this block is left for resume") from None


# One loaded network per (model, device, backend, dtype, batch size, runner) and process:
# dask workers load a model once, not once per task. Two entries at most (GPU memory).
_NETWORKS: "collections.OrderedDict[tuple, LoadedNetwork]" = collections.OrderedDict()
_NETWORKS_LOCK = threading.Lock()


def cached_network(handle: ModelHandle, *, device, backend: str, dtype: str | None, batch_size: int,
                   use_runner: bool, torch_threads: int | None = None) -> LoadedNetwork:
    """The process's :class:`LoadedNetwork` for these settings, loading it on first use."""
    key = (handle.key, str(device), backend, dtype, int(batch_size), bool(use_runner))
    with _NETWORKS_LOCK:
        net = _NETWORKS.get(key)
        if net is None:
            if torch_threads and backend != "openvino":  # OpenVINO takes them as its own setting
                import torch

                torch.set_num_threads(int(torch_threads))
            net = LoadedNetwork(handle, device=device, backend=backend, dtype=dtype, batch_size=batch_size,
                                use_runner=use_runner, threads=torch_threads)
            _NETWORKS[key] = net
            while len(_NETWORKS) > 2:
                _, old = _NETWORKS.popitem(last=False)
                old.close()
        _NETWORKS.move_to_end(key)
        return net
