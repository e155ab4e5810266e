"""The overlap-tile engine: one dask task per output block, on threads or a cluster.

A block task (:func:`run_block`) reads its input slab with the mirrored context
(:func:`fastunet.tiling.read_mirrored`), normalizes it with statistics computed once for the
whole volume (:func:`fastunet.normalization.normalization_stats`), cuts the tiles of the global tile grid, runs the
network, assembles the block, writes its output chunks and records the block as done
(:meth:`fastunet.io.SegmentationStore.mark_done`). It returns a small summary, never the
data, so memory is bounded by the blocks in flight whatever the volume size.

Where the network runs
----------------------
* torch backend on the CPU: inside the task, one forward at a time per process (a lock);
  the scheduler's other threads read, decompress, normalize and write meanwhile.
* CUDA: one :class:`DeviceRunner` per process and device, a thread that batches tiles from
  several blocks (``batch_size`` per call, padded to a fixed shape), stages them in pinned
  host memory and copies them on a side stream while the previous batch computes.

Scheduling: the dask threaded scheduler in the calling process, or dask.distributed
(``scheduler=ADDRESS`` joins a cluster, ``workers=N`` starts a local one, ``gpus="0,1"``
starts one worker process per GPU). Tasks carry the :class:`~fastunet.io.VolumeSource`
(path and key), a :class:`ModelHandle` (model path or weights as safetensors bytes), the
layout and the output path; each worker process loads the network once
(:func:`cached_network`, keyed by model identity, device, backend, dtype and batch size).

NaN/Inf in the input: ignored by the normalization statistics, set to 0 after
normalization (the value of the normalization offset), counted per block; the total is
returned in the summary (``nonfinite``) and reported by :func:`fastunet.segmentation.segment`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import operator
import os
import queue
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .model import ReferenceUNet, UNetConfig
from .normalization import Normalization, NormStats
from .tiling import Block, Layout, read_mirrored

__all__ = [
    "ModelHandle",
    "LoadedNetwork",
    "DeviceRunner",
    "cached_network",
    "Job",
    "compute_block",
    "run_block",
    "lazy_arrays",
    "execute",
    "open_cluster",
    "parse_gpus",
    "gpu_worker_specs",
]

_FLOAT_DTYPES = ("float16", "float32", "float64")
SCHEDULER_TIMEOUT = 20.0  # seconds to reach a dask scheduler (--scheduler) before giving up


# ----------------------------------------------------------------------------- the model
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
        from .modelfile import read_model

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

        from .modelfile import ModelBundle

        if isinstance(model, ReferenceUNet):
            model = ModelBundle(model)
        if not isinstance(model, ModelBundle):
            raise TypeError(
                f"Expected a ModelBundle, a ReferenceUNet or a model file path; got {type(model).__name__}."
            )
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.module.state_dict().items()}
        data = save(tensors)
        return cls(config=model.config, normalization=model.normalization, key=hashlib.sha256(data).hexdigest(),
                   data=data, module=model.module)

    def load(self) -> ReferenceUNet:
        """The network on the CPU, in eval mode (the in-process module when there is one)."""
        if self.module is not None:
            return self.module
        if self.path is not None:
            from .modelfile import load_model

            return load_model(self.path)
        from safetensors.torch import load

        module = ReferenceUNet(self.config)
        module.load_state_dict(load(self.data))
        return module.eval()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["module"] = None
        return state


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


class LoadedNetwork:
    """A network on one device: ``predict(tiles, output) -> (labels, probs)`` on numpy.

    Without a runner the predictor is called in the calling thread, one call at a time
    (a lock: a CPU forward already uses all cores); with ``use_runner`` the tiles go to a
    :class:`DeviceRunner` that batches them across blocks.
    """

    def __init__(self, handle: ModelHandle, *, device, backend: str, dtype: str | None,
                 batch_size: int, use_runner: bool):
        from .predictor import make_predictor

        self.handle = handle
        self.predictor = make_predictor(handle.load(), backend=backend, device=device, dtype=dtype)
        self.device = str(self.predictor.device)
        self.backend = self.predictor.backend
        self.dtype = self.predictor.dtype
        self.batch_size = int(batch_size)
        self.runner = DeviceRunner(self.predictor, batch_size=batch_size) if use_runner else None
        self._lock = threading.Lock()

    def predict(self, tiles: np.ndarray, output: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Labels (N, h, w) uint8 and/or probabilities (N, K, h, w) float16 of ``tiles``."""
        if self.runner is not None:
            return self.runner.submit(tiles, output).result()
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


# ----------------------------------------------------------------------------- blocks
@dataclass(frozen=True)
class Job:
    """Everything a block task needs; picklable (paths, not data, for file inputs).

    ``store`` is the zarr output (a :class:`~fastunet.io.SegmentationStore`, which pickles as
    its path and reopens in a worker), or None for tasks that return their arrays.
    ``network`` is the in-process :class:`LoadedNetwork` (not pickled; workers load their
    own through :func:`cached_network`).
    """

    source: object
    model: ModelHandle
    layout: Layout
    stats: NormStats
    output_kind: str
    store: object | None
    device: str
    backend: str
    dtype: str | None
    batch_size: int
    use_runner: bool
    torch_threads: int | None = None
    network: LoadedNetwork | None = field(default=None, compare=False, repr=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["network"] = None
        return state

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def get_network(self) -> LoadedNetwork:
        if self.network is not None:
            return self.network
        return cached_network(self.model, device=self.device, backend=self.backend, dtype=self.dtype,
                              batch_size=self.batch_size, use_runner=self.use_runner,
                              torch_threads=self.torch_threads)


def compute_block(job: Job, block: Block) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """Labels ``(bz, by, bx)`` uint8 and/or probabilities ``(K, bz, by, bx)`` float16 of one
    block (``bz = 1`` for YX volumes), and the number of NaN/Inf input values in it."""
    layout = job.layout
    nd = layout.ndim
    box = layout.input_box(block)
    raw = read_mirrored(job.source, box)
    if not job.source.axes.startswith("C"):
        raw = raw[None]
    if nd == 2:
        raw = raw[:, None]
    # raw: (C, bz, Y', X'); the block's own pixels start at (block start - input start).
    y0 = block.box[-2][0] - box[-2][0]
    x0 = block.box[-1][0] - box[-1][0]
    by, bx = block.shape[-2:]
    nonfinite = 0
    is_float = np.dtype(job.source.dtype).name in _FLOAT_DTYPES
    if is_float:
        core = raw[:, :, y0:y0 + by, x0:x0 + bx]
        nonfinite = int(core.size - np.count_nonzero(np.isfinite(core)))
    z0, z1 = (block.box[0] if nd == 3 else (0, 1))
    x = Normalization.apply(raw, *job.stats.for_slices(z0, z1))
    del raw
    if is_float:
        np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    ty, tx = layout.tile
    tiles = layout.block_tiles(block)
    bz = x.shape[1]
    batch = np.empty((bz * len(tiles), x.shape[0], ty, tx), np.float32)
    i = 0
    for z in range(bz):
        for (oy, ox), _, _ in tiles:
            batch[i] = x[:, z, oy:oy + ty, ox:ox + tx]
            i += 1
    del x
    labels, probs = job.get_network().predict(batch, job.output_kind)
    del batch
    out_labels = None if labels is None else np.empty((bz, by, bx), np.uint8)
    out_probs = None if probs is None else np.empty((probs.shape[1], bz, by, bx), np.float16)
    i = 0
    for z in range(bz):
        for _, (sy, sx), (dy, dx) in tiles:
            if out_labels is not None:
                out_labels[z, dy, dx] = labels[i, sy, sx]
            if out_probs is not None:
                out_probs[:, z, dy, dx] = probs[i, :, sy, sx]
            i += 1
    return out_labels, out_probs, nonfinite


def run_block(job: Job, block: Block) -> dict:
    """Compute one block; write it and record it done (zarr output) or return its arrays.

    Returns a small summary ``{"block", "voxels", "nonfinite", "seconds"}`` (plus ``labels``
    / ``probs`` arrays when ``job.store`` is None).
    """
    t0 = time.perf_counter()
    labels, probs, nonfinite = compute_block(job, block)
    summary = {"block": block.name, "voxels": int(math.prod(block.shape)), "nonfinite": nonfinite}
    if job.store is None:
        summary.update(labels=labels, probs=probs, index=block.index)
    else:
        store = job.store
        region = block.slices
        if labels is not None:
            store.labels[region] = labels if job.layout.ndim == 3 else labels[0]
        if probs is not None:
            store.probs[(slice(None), *region)] = probs if job.layout.ndim == 3 else probs[:, 0]
        store.mark_done(block.name)
    summary["seconds"] = time.perf_counter() - t0
    return summary


# --------------------------------------------------------------------------- lazy arrays
def _lazy_block(job: Job, *, block: Block):
    labels, probs, _ = compute_block(job, block)
    if job.layout.ndim == 2:
        labels = None if labels is None else labels[0]
        probs = None if probs is None else probs[:, 0]
    return labels, probs


def lazy_arrays(job: Job):
    """Dask arrays of the labels and probabilities (None for what ``job.output_kind`` leaves
    out), chunked by blocks; nothing is computed or written until they are."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    layout = job.layout
    token = uuid.uuid4().hex
    job_key = f"fastunet-job-{token}"
    pred = f"fastunet-predict-{token}"
    dsk = {job_key: job}
    blocks = list(layout.blocks())
    for b in blocks:
        dsk[(pred, *b.index)] = (partial(_lazy_block, block=b), job_key)
    chunks = tuple(
        tuple(min(b, n - i * b) for i in range(-(-n // b))) for n, b in zip(layout.shape, layout.block)
    )
    out = []
    for pos, name, dtype in ((0, "fastunet-labels", np.uint8), (1, "fastunet-probs", np.float16)):
        want = job.output_kind in (("labels", "both") if pos == 0 else ("probs", "both"))
        if not want:
            out.append(None)
            continue
        name = f"{name}-{token}"
        layer = {}
        for b in blocks:
            key = (name, *b.index) if pos == 0 else (name, 0, *b.index)
            layer[key] = (operator.getitem, (pred, *b.index), pos)
        graph = HighLevelGraph.from_collections(name, {**dsk, **layer}, dependencies=())
        ch = chunks if pos == 0 else ((job.model.config.num_classes,), *chunks)
        out.append(da.Array(graph, name, ch, dtype=dtype))
    return tuple(out)


# ------------------------------------------------------------------------------ clusters
def parse_gpus(gpus) -> tuple[str, ...]:
    """``"0,1"`` / ``[0, 1]`` -> ``("0", "1")``; raises :class:`UserError` on anything else."""
    if isinstance(gpus, str):
        items = [g.strip() for g in gpus.split(",")]
    elif isinstance(gpus, int) and not isinstance(gpus, bool):
        items = [str(gpus)]
    else:
        try:
            items = [str(g).strip() for g in gpus]
        except TypeError:
            items = []
    if not items or any(not g.isdigit() for g in items) or len(set(items)) != len(items):
        raise UserError(f"--gpus expects distinct GPU indices separated by commas, e.g. --gpus 0,1; got {gpus!r}.")
    return tuple(str(int(g)) for g in items)


def gpu_worker_specs(gpus, *, threads_per_worker: int) -> dict:
    """SpecCluster worker specs: one Nanny-managed worker process per GPU, each seeing only
    its GPU (``CUDA_VISIBLE_DEVICES``), so the tasks' ``cuda:0`` is that GPU."""
    from distributed import Nanny

    return {
        f"gpu-{g}": {
            "cls": Nanny,
            "options": {"nthreads": int(threads_per_worker), "env": {"CUDA_VISIBLE_DEVICES": g}},
        }
        for g in parse_gpus(gpus)
    }


class _Cluster:
    """Context manager yielding a distributed Client for ``scheduler``/``workers``/``gpus``."""

    def __init__(self, *, scheduler=None, workers=None, gpus=None, threads_per_worker: int = 1):
        self.scheduler, self.workers, self.gpus = scheduler, workers, gpus
        self.threads = threads_per_worker
        self.cluster = self.client = None

    def __enter__(self):
        from distributed import Client, LocalCluster, Scheduler, SpecCluster

        if self.scheduler is not None:
            try:
                self.client = Client(self.scheduler, timeout=f"{SCHEDULER_TIMEOUT}s")
            except (OSError, TimeoutError) as exc:
                detail = " ".join(str(exc).split())
                raise UserError(
                    f"Cannot reach the dask scheduler at {self.scheduler!r} ({detail}); check the address "
                    "and that the scheduler is running, or leave --scheduler out to run here."
                ) from None
            return self.client
        if self.gpus is not None:
            self.cluster = SpecCluster(
                workers=gpu_worker_specs(self.gpus, threads_per_worker=self.threads),
                scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
            )
        else:
            self.cluster = LocalCluster(n_workers=int(self.workers), processes=True,
                                        threads_per_worker=self.threads, dashboard_address=None)
        self.client = Client(self.cluster)
        return self.client

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        return False


def _shutdown_uninterrupted(pool) -> None:
    """Wait until every running block of ``pool`` has finished (queued ones are cancelled).

    A second Ctrl-C during the wait would otherwise return while blocks still write, and the
    caller could then clean up an output that is still being written; so the wait is
    repeated, and the interrupt is raised once every block has stopped.
    """
    interrupted = None
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def _threads_per_worker(threads, workers, gpus) -> int:
    nworkers = len(parse_gpus(gpus)) if gpus is not None else (workers or 1)
    return threads or max(1, min(8, (os.cpu_count() or 1) // nworkers))


def open_cluster(*, scheduler=None, workers=None, gpus=None, threads: int | None = None) -> _Cluster:
    """A context manager that joins the scheduler at ``scheduler`` or starts ``workers``
    local worker processes or one per GPU in ``gpus``, yielding the distributed Client
    (pass it to :func:`execute`); closes what it started on exit. Raises
    :class:`UserError` when the scheduler cannot be reached within ``SCHEDULER_TIMEOUT``."""
    return _Cluster(scheduler=scheduler, workers=workers, gpus=gpus,
                    threads_per_worker=_threads_per_worker(threads, workers, gpus))


# ------------------------------------------------------------------------------- execute
def execute(job: Job, blocks: list[Block], *, scheduler=None, workers=None, gpus=None,
            threads: int | None = None, progress=None, on_result=None, client=None) -> list[dict]:
    """Run :func:`run_block` for ``blocks``; returns the per-block summaries.

    Parameters
    ----------
    scheduler, workers, gpus
        None for the threaded scheduler in this process; else a distributed scheduler
        address, a number of local worker processes, or GPU indices.
    threads : int, optional
        Threads of the threaded scheduler (default 2 on the CPU, where one forward runs at a
        time while the other thread reads and writes; up to 8 with a device runner), or per
        local worker process (default: the cores shared among the workers, at most 8).
    progress : callable, optional
        Called with each block's summary as it completes (from this thread).
    on_result : callable, optional
        Like ``progress``, for the summaries that carry arrays (``job.store`` is None).
    client : distributed.Client, optional
        An open client (see :func:`open_cluster`) for the scheduler/workers/gpus run;
        without one, the cluster is joined or started here and closed at the end.

    On the threaded scheduler a failing block stops the run after the blocks already
    running have finished (and been recorded): nothing writes to the output once this
    returns or raises.
    """
    summaries = []

    def done(summary):
        if on_result is not None:
            on_result(summary)
        summary.pop("labels", None)
        summary.pop("probs", None)
        summaries.append(summary)
        if progress is not None:
            progress(summary)

    if not blocks:
        return summaries
    if scheduler is None and workers is None and gpus is None:
        import dask.threaded
        from dask.callbacks import Callback

        keys = [f"fastunet-block-{b.name}" for b in blocks]
        dsk = {k: (partial(run_block, job, b),) for k, b in zip(keys, blocks)}
        lock = threading.Lock()

        def posttask(key, result, dsk, state, worker_id):
            with lock:
                done(result)

        n = threads or (min(8, os.cpu_count() or 1) if job.use_runner else 2)
        # Our own pool: on a failure dask raises at once, while the other blocks still run;
        # shutting the pool down waits for them, so no task writes after we return.
        pool_cls = getattr(dask.threaded, "ContextAwareThreadPoolExecutor", ThreadPoolExecutor)
        pool = pool_cls(n)
        try:
            dask.threaded.get(dsk, keys, num_workers=n, pool=pool,
                              callbacks=[Callback(posttask=posttask)._callback])
        finally:
            _shutdown_uninterrupted(pool)
        return summaries

    import contextlib

    from distributed import as_completed

    per_worker = _threads_per_worker(threads, workers, gpus)
    if workers is not None and job.device.startswith("cpu") and job.torch_threads is None:
        job = dataclasses.replace(job, torch_threads=per_worker)
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(_Cluster(scheduler=scheduler, workers=workers, gpus=gpus,
                                                  threads_per_worker=per_worker))
        [job_future] = client.scatter([job], broadcast=True, hash=False)
        futures = [client.submit(run_block, job_future, b, key=f"fastunet-block-{b.name}-{uuid.uuid4().hex[:8]}",
                                 pure=False, retries=0) for b in blocks]
        try:
            for fut in as_completed(futures):
                done(fut.result())
                fut.release()
        except BaseException:
            client.cancel(futures)
            raise
    return summaries
