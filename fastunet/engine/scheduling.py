"""Running the block tasks: threads in this process, or a dask.distributed cluster; lazy arrays.

* :func:`execute` runs :func:`~fastunet.engine.blocks.run_block` for a list of blocks on a
  thread pool here (``concurrent.futures``), or on a dask.distributed cluster: a Client, a
  Cluster or an address to join (``scheduler=``, :func:`check_scheduler`), ``workers=N`` local
  worker processes, or one worker process per GPU (``gpus="0,1"``); :func:`active_client` is
  the Client a user made active, which file outputs use when no scheduler is given.
  Tasks carry the :class:`~fastunet.engine.blocks.Job` (paths, not data); each worker process
  loads the network once (:func:`fastunet.engine.runtime.cached_network`).
* :func:`lazy_arrays` builds dask arrays of the object ids, labels and probabilities, one
  delayed task per block, computed only when they are.

Faults on a cluster: a block whose task fails with a transient error (a storage timeout, a
dropped connection; :func:`fastunet.io.retry.is_transient`) is submitted again, at most
``TASK_RETRIES`` times, each retry logged on the ``fastunet.engine`` logger; a worker that
dies (killed, out of memory) has its running blocks recomputed by the other workers, also
logged. A block records itself done only after all its chunks are written, so a block cut
short is never recorded: it is recomputed, here or by ``resume=True``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np

from ..errors import UserError
from .blocks import Job, compute_block, run_block
from .interrupts import interrupts_held
from .runtime import cancel_predictions
from .tiling import Block

__all__ = ["execute", "default_threads", "lazy_arrays", "open_cluster", "parse_gpus", "gpu_worker_specs", "SCHEDULER_TIMEOUT",
           "active_client", "check_scheduler", "describe_scheduler"]

SCHEDULER_TIMEOUT = 20.0  # seconds to reach a dask scheduler before giving up
TASK_RETRIES = 3  # submissions again of a block whose task failed with a transient error

log = logging.getLogger("fastunet.engine")


# --------------------------------------------------------------------------- lazy arrays
def _lazy_block(job: Job, block: Block):
    labels, probs, _ = compute_block(job, block)
    return labels, probs


def _lazy_part(predicted, i: int, ndim: int):
    part = predicted[i] if i == 0 else predicted[i].astype(np.float16, copy=False)  # probs: as written
    if ndim == 2:
        part = part[0] if i == 0 else part[:, 0]
    return part


def lazy_arrays(job: Job) -> dict:
    """Dask arrays of the kinds ``job`` asks for (``{"instances": ..., "labels": ..., "probs":
    ...}``), chunked by blocks; nothing is computed or written until they are.

    One delayed task per block predicts (computing several kinds together runs each block
    once); the job is one key of the graph, shared by every block task. Instances add a
    labelling task per block, one merge task and a relabel task per block
    (:func:`fastunet.engine.instance_tasks.lazy_instances`).
    """
    import dask
    import dask.array as da

    layout = job.layout
    token = uuid.uuid4().hex
    job_key = dask.delayed(job, name=f"fastunet-job-{token}", traverse=False)
    k = job.model.config.num_classes
    kinds = job.output_kinds
    parts = {name: np.empty(layout.grid, dtype=object) for name in ("labels", "probs") if name in kinds}
    predictions = {}
    for block in layout.blocks():
        pred = dask.delayed(_lazy_block, pure=False)(job_key, block,
                                                      dask_key_name=f"fastunet-predict-{token}-{block.name}")
        predictions[block.index] = pred
        if "labels" in parts:
            part = dask.delayed(_lazy_part, pure=True)(pred, 0, layout.ndim)
            parts["labels"][block.index] = da.from_delayed(part, block.shape, dtype=np.uint8)
        if "probs" in parts:
            part = dask.delayed(_lazy_part, pure=True)(pred, 1, layout.ndim)
            parts["probs"][block.index] = da.from_delayed(part, (k, *block.shape), dtype=np.float16)
    # da.block joins the innermost lists along the last axis, the next along the one before...
    out = {name: da.block(p.tolist()) for name, p in parts.items()}
    if "instances" in kinds:
        from .instance_tasks import lazy_instances

        out["instances"] = lazy_instances(job, job_key, predictions, token)
    return out


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
        raise UserError(f'gpus= expects distinct GPU indices separated by commas, e.g. gpus="0,1"; got {gpus!r}.')
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


def active_client():
    """The dask.distributed Client active in this process (made with ``Client(...)``, or the
    current one inside ``with Client(...)``), or None.

    Looks only when ``distributed`` is already imported: without it no Client can exist, and
    ``import fastunet`` stays light.
    """
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:  # "No clients found"
        return None
    return client if client.status == "running" else None


_ADDRESS = re.compile(r"(?:(?P<scheme>[a-z][a-z0-9+.-]*)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>\d+)/?")
_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss")


def check_scheduler_address(address: str) -> None:
    """Raise ValueError unless ``address`` reads as a dask scheduler's address: a scheme among
    :data:`_SCHEMES` (or none), a host and a port (``tcp://host:8786``), or ``inproc://...``.
    Checked before any work, where distributed would refuse it only when joining."""
    if address.startswith("inproc://"):
        return
    match = _ADDRESS.fullmatch(address.strip())
    if match is None or (match["scheme"] and match["scheme"] not in _SCHEMES) or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"scheduler= expects a dask scheduler's address, e.g. tcp://host:8786 (a scheme among "
                         f"{', '.join(_SCHEMES)}, a host and a port); got {address!r}.")


def check_scheduler(scheduler) -> str:
    """What ``scheduler=`` is: ``"client"`` (a ``distributed.Client``), ``"cluster"`` (a
    ``LocalCluster``, ``SpecCluster``, ... : anything with a ``scheduler_address``) or
    ``"address"`` (a string such as ``"tcp://host:8786"``, checked by
    :func:`check_scheduler_address`). Raises TypeError or ValueError otherwise."""
    if isinstance(scheduler, str):
        check_scheduler_address(scheduler)
        return "address"
    if "distributed" in sys.modules:
        from distributed import Client
        from distributed.deploy import Cluster

        if isinstance(scheduler, Client):
            return "client"
        if isinstance(scheduler, Cluster):
            return "cluster"
    raise TypeError(
        "scheduler= expects a dask.distributed Client, a Cluster (e.g. LocalCluster) or a scheduler address "
        f"such as 'tcp://host:8786'; got {type(scheduler).__name__}."
    )


def describe_scheduler(scheduler) -> str:
    """A readable name of ``scheduler`` for summaries: its address, said with what it is."""
    kind = check_scheduler(scheduler)
    if kind == "client":
        address = scheduler.scheduler_info().get("address", "?")
        return f"dask client {address}"
    if kind == "cluster":
        return f"dask cluster {scheduler.scheduler_address}"
    return scheduler


class _Cluster:
    """Context manager yielding a distributed Client for ``scheduler``/``workers``/``gpus``.

    ``scheduler`` may be a Client (used as it is and left open: it is the caller's), a
    Cluster (a Client is made for it and closed on exit) or an address.
    """

    def __init__(self, *, scheduler=None, workers=None, gpus=None, threads_per_worker: int = 1):
        self.scheduler, self.workers, self.gpus = scheduler, workers, gpus
        self.threads = threads_per_worker
        self.cluster = self.client = None
        self.owns_client = True

    def __enter__(self):
        try:
            from distributed import Client, LocalCluster, Scheduler, SpecCluster
        except ImportError as exc:
            raise UserError(f"Running on dask.distributed (scheduler=, workers=, gpus=) needs the distributed "
                            f"package ({exc}): pip install distributed.") from None
        if self.scheduler is not None:
            kind = check_scheduler(self.scheduler)
            if kind == "client":
                self.client, self.owns_client = self.scheduler, False
            else:
                self.client = self._connect(Client)
            log.info("running on %s", describe_scheduler(self.scheduler))
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
        log.info("started %s", describe_scheduler(self.cluster))
        return self.client

    def _connect(self, Client):
        """A Client of the cluster or address in ``scheduler``; one clear line when unreachable."""
        try:
            return Client(self.scheduler, timeout=f"{SCHEDULER_TIMEOUT}s")
        except (OSError, TimeoutError) as exc:
            detail = " ".join(str(exc).split())
            where = self.scheduler if isinstance(self.scheduler, str) else describe_scheduler(self.scheduler)
            raise UserError(
                f"Cannot reach the dask scheduler at {where!r} ({detail}); check the address "
                "and that the scheduler is running, or leave scheduler= out to run here."
            ) from None

    def __exit__(self, *exc):
        if self.client is not None and self.owns_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        return False


def _threads_per_worker(threads, workers, gpus) -> int:
    nworkers = len(parse_gpus(gpus)) if gpus is not None else (workers or 1)
    return threads or max(1, min(8, (os.cpu_count() or 1) // nworkers))


def open_cluster(*, scheduler=None, workers=None, gpus=None, threads: int | None = None) -> _Cluster:
    """A context manager that uses the Client in ``scheduler``, joins its Cluster or address,
    or starts ``workers`` local worker processes or one per GPU in ``gpus``, yielding the
    distributed Client (pass it to :func:`execute`); closes what it started on exit (never
    the caller's Client). Raises :class:`UserError` when the scheduler cannot be reached
    within ``SCHEDULER_TIMEOUT``, TypeError for a ``scheduler`` of another type."""
    return _Cluster(scheduler=scheduler, workers=workers, gpus=gpus,
                    threads_per_worker=_threads_per_worker(threads, workers, gpus))


# ------------------------------------------------------------------------------- execute
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


def _run_threads(job: Job, blocks: list[Block], threads: int, done) -> None:
    """Run the blocks on ``threads`` threads of this process, calling ``done(summary)`` here
    as each finishes. A failing block stops the run: the queued blocks are cancelled and the
    running ones finish (and are recorded) before the error is raised, so nothing writes to
    the output once this returns or raises (Ctrl-C included)."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fastunet-block")
    try:
        with interrupts_held():  # submit starts the threads: an interrupt there would lose one
            pending = {pool.submit(run_block, job, b) for b in blocks}
        while pending:
            # A timeout, so that this thread runs Python code every 0.2 s: the kernel may hand
            # Ctrl-C (SIGINT) to any thread, and Python raises KeyboardInterrupt only here, in
            # the main thread, once it runs again, not while it sleeps in an untimed wait.
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in finished:
                done(future.result())
    except KeyboardInterrupt:
        cancel_predictions.set()  # blocks waiting on the Triton interpreter give up (not recorded)
        raise
    finally:
        try:
            _shutdown_uninterrupted(pool)
        finally:
            cancel_predictions.clear()


def default_threads(job: Job) -> int:
    """Block threads of the threaded scheduler when none are asked for.

    With a device runner (CUDA, and the CPU) one thread runs the network and the block threads
    mostly wait for it while they read, label and write: on CUDA as many as the cores (at most
    8); on the CPU, where the network takes all the cores (torch's intra-op threads, OpenVINO's
    threads), one more than the cores (at least 3, at most 8), so that the next blocks are read
    and queued while one is labelled and written (measured on 2 cores: 3 block threads x 2
    intra-op threads was the fastest of 1-4 x 1-2, see benchmarks P7). Without a runner
    (the Triton interpreter), 2: one forward at a time while the other reads and writes.
    """
    cores = os.cpu_count() or 1
    if not job.use_runner:
        return 2
    if job.device.startswith("cuda"):
        return min(8, cores)
    return max(3, min(8, cores + 1))


def execute(job: Job, blocks: list[Block], *, scheduler=None, workers=None, gpus=None,
            threads: int | None = None, progress=None, on_result=None, client=None) -> list[dict]:
    """Run :func:`run_block` for ``blocks``; returns the per-block summaries.

    Parameters
    ----------
    scheduler, workers, gpus
        None for the threaded scheduler in this process; else a distributed Client, Cluster
        or scheduler address, a number of local worker processes, or GPU indices.
    threads : int, optional
        Threads of the threaded scheduler (default :func:`default_threads`), or per local
        worker process (default: the cores shared among the workers, at most 8).
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
        _run_threads(job, blocks, threads or default_threads(job), done)
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
        _run_cluster(client, job, blocks, done, as_completed)
    return summaries


def _log_lost_worker(event) -> None:
    """A scheduler event (``client.subscribe_topic("all")``): log a worker that left while
    running fastunet blocks."""
    msg = event[1] if isinstance(event, tuple) and len(event) == 2 else event
    if not isinstance(msg, dict) or msg.get("action") != "remove-worker" or msg.get("expected"):
        return
    keys = [str(k) for k in msg.get("processing-tasks") or () if str(k).startswith("fastunet-block-")]
    if keys:
        names = ", ".join(k[len("fastunet-block-"):].rsplit("-", 1)[0] for k in sorted(keys))
        log.warning("worker %s was lost while running blocks %s; they are recomputed on the other workers",
                    msg.get("worker"), names)


def _run_cluster(client, job: Job, blocks: list[Block], done, as_completed) -> None:
    """Submit the blocks to the cluster and hand each summary to ``done``; a block that fails
    with a transient error is submitted again (at most ``TASK_RETRIES`` times, logged)."""
    from distributed import KilledWorker

    from ..io.retry import is_transient

    [job_future] = client.scatter([job], broadcast=True, hash=False)

    def submit(b):
        return client.submit(run_block, job_future, b, key=f"fastunet-block-{b.name}-{uuid.uuid4().hex[:8]}",
                             pure=False, retries=0)

    owner = {submit(b): b for b in blocks}
    tries = dict.fromkeys((b.name for b in blocks), 0)
    client.subscribe_topic("all", _log_lost_worker)
    try:
        running = as_completed(list(owner))
        for fut in running:
            block = owner.pop(fut)
            try:
                summary = fut.result()
            except KilledWorker:
                raise UserError(
                    f"Block {block.name} killed the workers that ran it (out of memory?); give the workers more "
                    "memory, or use a smaller tile= or block=; the finished blocks are recorded (resume=True)."
                ) from None
            except Exception as exc:
                if not is_transient(exc) or tries[block.name] >= TASK_RETRIES:
                    raise
                tries[block.name] += 1
                log.warning("block %s failed (%s: %s); retry %d of %d", block.name, type(exc).__name__, exc,
                            tries[block.name], TASK_RETRIES)
                again = submit(block)
                owner[again] = block
                running.add(again)
                continue
            done(summary)
            fut.release()
    except BaseException:
        client.cancel(list(owner))
        raise
    finally:
        client.unsubscribe_topic("all")
