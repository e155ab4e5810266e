"""The network in a process: a picklable handle to the weights, and the loaded network.

A :class:`ModelHandle` travels with every block task (a model file's path, or the weights as
safetensors bytes: never a pickled module). :func:`cached_network` loads it once per process
and settings into a :class:`LoadedNetwork`, which runs batches of tiles on its device: normalized
tiles in the calling thread on the CPU (one forward at a time), or tiles in their stored dtype
through a :class:`~fastunet.engine.runner.DeviceRunner` on CUDA, which batches tiles across
blocks and normalizes them on the device.

The predictor is wrapped in :class:`~fastunet.engine.oom.OOMBackoff` (an out-of-memory error
halves the batch, then the tile). Under the Triton interpreter (``backend="triton"`` on the
CPU, minutes per block) the network runs in a helper thread and the block waits for it
interruptibly: after Ctrl-C (:data:`cancel_predictions` set by the scheduler) the block gives
up at once, unrecorded, instead of holding the run for minutes; a block waits for the device
runner in the same way.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from pathlib import Path

import numpy as np
import torch

from ..model import ReferenceUNet, UNetConfig
from ..normalization import Normalization
from .oom import OOMBackoff
from .runner import DeviceRunner

__all__ = ["ModelHandle", "LoadedNetwork", "cached_network", "cancel_predictions", "PredictionCancelled"]

# Set (by the scheduler, on Ctrl-C or SIGTERM) to make blocks waiting on an interruptible
# network give up; cleared once the run has stopped.
cancel_predictions = threading.Event()


class PredictionCancelled(Exception):
    """A block gave up waiting for the network because the run was interrupted."""


class ModelHandle:
    """A picklable reference to a network: a model file, or the weights as safetensors bytes.

    ``key`` identifies the weights (sha256 of the file or of the bytes). The loaded module
    (``module``) stays in the process that made the handle and is never pickled; a worker
    loads the weights from the path or bytes instead (never unpickling anything).
    """

    def __init__(self, *, config: UNetConfig, normalization: Normalization, key: str,
                 path: str | None = None, data: bytes | None = None, module: ReferenceUNet | None = None):
        if (path is None) == (data is None):
            raise ValueError("A ModelHandle needs exactly one of path or data.")
        self.config = config
        self.normalization = normalization
        self.key = key
        self.path = path
        self.data = data
        self.module = module

    @classmethod
    def from_path(cls, path) -> "ModelHandle":
        """Load a model file (raises :class:`~fastunet.errors.ModelFileError` when broken)."""
        from ..modelfile import read_model

        path = Path(path).expanduser().resolve()
        bundle = read_model(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
        return cls(config=bundle.config, normalization=bundle.normalization, key=digest.hexdigest(),
                   path=str(path), module=bundle.module)

    @classmethod
    def from_module(cls, model) -> "ModelHandle":
        """Wrap an in-memory :class:`~fastunet.modelfile.ModelBundle` or :class:`ReferenceUNet`
        (percentile normalization); the weights travel as safetensors bytes."""
        from safetensors.torch import save

        from ..modelfile import ModelBundle

        if isinstance(model, ReferenceUNet):
            model = ModelBundle(model)
        if not isinstance(model, ModelBundle):
            raise TypeError(
                "model= expects a fastunet model file path, a ModelBundle or a ReferenceUNet (or None for the "
                f"bundled model); got {type(model).__module__}.{type(model).__qualname__}."
            )
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.module.state_dict().items()}
        bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
        if bad:
            from ..errors import UserError

            raise UserError(f"The network's weights {', '.join(bad[:3])} hold NaN or Inf values (the training "
                            "diverged?); segmenting with them would give nothing but background.")
        data = save(tensors)
        return cls(config=model.config, normalization=model.normalization, key=hashlib.sha256(data).hexdigest(),
                   data=data, module=model.module)

    def load(self) -> ReferenceUNet:
        """The network on the CPU, in eval mode (the in-process module when there is one)."""
        if self.module is not None:
            return self.module
        if self.path is not None:
            from ..modelfile import load_model

            return load_model(self.path)
        from safetensors.torch import load

        module = ReferenceUNet(self.config)
        module.load_state_dict(load(self.data))
        return module.eval()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["module"] = None
        return state


class LoadedNetwork:
    """A network on one device: ``predict(tiles, output) -> (labels, probs)`` on numpy.

    Without a runner the predictor is called in the calling thread, one call at a time
    (a lock: a CPU forward already uses all cores); with ``use_runner`` the tiles go to a
    :class:`DeviceRunner` that batches them across blocks, takes them in their stored dtype
    and normalizes them on the device (:meth:`predict_raw`; :attr:`takes_raw_tiles`), and
    pads every batch to ``batch_size`` tiles on CUDA, where the fused network then runs as a
    CUDA graph captured once per tile shape.
    """

    def __init__(self, handle: ModelHandle, *, device, backend: str, dtype: str | None,
                 batch_size: int, use_runner: bool):
        from .backends import make_predictor

        self.handle = handle
        predictor = make_predictor(handle.load(), backend=backend, device=device, dtype=dtype,
                                   cuda_graph=use_runner)  # the runner's batches have one shape
        self.predictor = OOMBackoff(predictor, depth=handle.config.depth, pools=handle.config.axis_pools)
        self.device = str(self.predictor.device)
        self.backend = self.predictor.backend
        self.dtype = self.predictor.dtype
        # The Triton interpreter takes minutes per block: wait for it interruptibly.
        self.interruptible = self.backend == "triton" and self.predictor.device.type == "cpu"
        self.batch_size = int(batch_size)
        self.runner = DeviceRunner(self.predictor, batch_size=batch_size) if use_runner else None
        self._lock = threading.Lock()

    @property
    def takes_raw_tiles(self) -> bool:
        """Whether tiles should come in their stored dtype, to :meth:`predict_raw` (a runner
        normalizes them on its device), rather than normalized, to :meth:`predict`."""
        return self.runner is not None

    def predict(self, tiles: np.ndarray, output: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Labels (N, h, w) uint8 and/or probabilities (N, K, h, w) float16 of ``tiles``
        (normalized, float32)."""
        if self.runner is not None:
            return _result_interruptibly(self.runner.submit(tiles, output))
        if self.interruptible:
            return _wait_interruptibly(lambda: self._predict(tiles, output))
        return self._predict(tiles, output)

    def predict_raw(self, tiles: np.ndarray, output: str, offset: np.ndarray, scale: np.ndarray):
        """As :meth:`predict`, for ``tiles`` (N, C, H, W) in their stored dtype with the
        normalization constants of each tile and channel, ``offset`` and ``scale`` (N, C)
        (:meth:`fastunet.normalization.Normalization.apply`; NaN/Inf of float inputs become 0):
        normalized by the runner on its device, or here without one."""
        if self.runner is not None:
            return _result_interruptibly(self.runner.submit(tiles, output, norm=(offset, scale)))
        spatial = (1,) * (tiles.ndim - 2)  # (N, C) constants over (N, C, *tile)
        x = Normalization.apply(tiles, np.asarray(offset).reshape(*np.shape(offset), *spatial),
                                np.asarray(scale).reshape(*np.shape(scale), *spatial), zero_nonfinite=tiles.dtype.kind == "f")
        return self.predict(x, output)

    def _predict(self, tiles: np.ndarray, output: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        labels, probs = [], []
        with self._lock:
            for i in range(0, tiles.shape[0], self.batch_size):
                pred = self.predictor.predict(torch.from_numpy(tiles[i:i + self.batch_size]), output)
                if pred.labels is not None:
                    labels.append(pred.labels.cpu().numpy())
                if pred.probs is not None:
                    probs.append(pred.probs.cpu().numpy())
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
            if torch_threads:
                torch.set_num_threads(int(torch_threads))
            net = LoadedNetwork(handle, device=device, backend=backend, dtype=dtype,
                                batch_size=batch_size, use_runner=use_runner)
            _NETWORKS[key] = net
            while len(_NETWORKS) > 2:
                _, old = _NETWORKS.popitem(last=False)
                old.close()
        _NETWORKS.move_to_end(key)
        return net
