"""S1: ``segment`` on a dask cluster of 1, 2 and 4 worker processes, each with a memory limit,
over a volume many times that limit: throughput and peak memory per worker.

The cluster is a ``distributed.LocalCluster`` of Nanny-managed worker processes, each with
``memory_limit`` (dask pauses a worker at 80 % of it and kills it at 95 %), and ``segment``
joins it by its scheduler's address (``scheduler=``): the same code path as a cluster of many
machines. The volume (:func:`~fastunet.bench.volume.bench_volume`, uint16, generated once in
the cache folder) holds ``factor`` times one worker's limit, so a run whose memory grew with
the volume would be killed. Per worker count the result records the wall time of the whole
``segment`` call (statistics, output creation, every block), the throughput in Mvoxel/s and
each worker's peak resident memory (``ru_maxrss`` of the worker process: torch and the model
included) against the limit.

Runs on the CPU (``device="cpu"``, torch backend) or on CUDA (``device="cuda"``: one GPU per
worker is not arranged here: use ``gpus=`` of :func:`fastunet.segment` for that). CPU figures
are CPU figures: they say how the engine's memory stays bounded and how throughput scales
with processes on this machine's cores, not how fast a GPU is.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

__all__ = ["bench_scale", "parse_bytes"]


def parse_bytes(value) -> int:
    """``"1GiB"``, ``"512 MiB"``, ``"2e9"`` or a number -> bytes (dask's parser)."""
    from dask.utils import parse_bytes as dask_parse

    return int(value) if isinstance(value, (int, float)) else int(dask_parse(str(value)))


def _worker_peak() -> int:
    """Peak resident memory of this process in bytes (run on each worker)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _one_run(n: int, *, limit: int, model: Path, volume: Path, out: Path, device: str, tile, block) -> dict:
    import os

    from distributed import Client, LocalCluster

    from ..segmentation import Segmenter

    threads = str(max(1, (os.cpu_count() or 1) // n))  # torch's threads per worker: the cores shared out
    with LocalCluster(n_workers=n, threads_per_worker=2, processes=True, memory_limit=limit, dashboard_address=None,
                      env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}) as cluster, \
            Client(cluster) as client:
        with Segmenter(model, device=device, backend="torch", tile=tile, dtype="fp32" if device == "cpu" else None) as seg:
            start = time.perf_counter()
            seg.segment(str(volume), str(out), axes="ZYX", overwrite=True, progress=False,
                        scheduler=cluster.scheduler_address, block=block)
            seconds = time.perf_counter() - start
            summary = dict(seg.last_summary)
        peaks = client.run(_worker_peak)
        restarts = len(client.scheduler_info()["workers"]) != n
    voxels = summary["megapixels"] * 1e6
    return {
        "workers": n,
        "seconds": round(seconds, 2),
        "mvoxel_per_s": round(voxels / 1e6 / seconds, 3),
        "peak_worker_bytes": sorted(int(v) for v in peaks.values()),
        "peak_worker_fraction_of_limit": round(max(peaks.values()) / limit, 3),
        "tile": summary["tile"],
        "block": summary["block"],
        "blocks": summary["blocks"],
        "workers_lost": bool(restarts),
    }


def bench_scale(*, workers=(1, 2, 4), memory_limit="2GiB", factor: float = 16, chunk: int = 512, device: str = "cpu",
                model=None, tile: int | None = None, block=None, cache_dir=None) -> tuple[dict, dict]:
    """S1: ``segment`` over a volume of ``factor`` times one worker's ``memory_limit``, on
    clusters of each of ``workers`` worker processes.

    Parameters
    ----------
    workers : sequence of int
        Worker processes per run (one run each, one fresh cluster each).
    memory_limit : int or str
        Memory limit of each worker (``"2GiB"``).
    factor : float
        The volume's size in units of ``memory_limit`` (uint16 voxels, planes of
        ``chunk * 4`` pixels square).
    chunk : int
        The volume's chunk edge in Y and X (chunks of one plane).
    device : {"cpu", "cuda"}
    model : path-like, optional
        A model file; default the bundled model.
    tile, block : optional
        As for :func:`fastunet.segment` (default: the engine's).
    cache_dir : path-like, optional
        Folder of the generated volume and the outputs (default
        :func:`~fastunet.bench.volume.default_cache_dir`).

    Returns
    -------
    (dict, dict)
        Figures (``runs``: one entry per worker count, the volume's shape and bytes, the
        limit) and ratios (throughput of each run over the one-worker run).
    """
    from ..modelfile import default_model_path
    from .volume import bench_volume, cache_volume_path, default_cache_dir

    limit = parse_bytes(memory_limit)
    edge = 4 * int(chunk)
    planes = max(1, math.ceil(factor * limit / 2 / edge**2))
    shape = (planes, edge, edge)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    volume = cache_volume_path(cache, shape)
    bench_volume(volume, shape, chunks=(1, chunk, chunk))
    model = Path(model) if model is not None else default_model_path()
    out = cache / f"scale-{'x'.join(map(str, shape))}.zarr"
    runs = []
    try:
        for n in workers:
            runs.append(_one_run(int(n), limit=limit, model=model, volume=volume, out=out, device=device, tile=tile,
                                 block=block))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    figures = {"device": device, "memory_limit_bytes": limit, "volume_shape": list(shape),
               "volume_bytes": 2 * math.prod(shape), "factor": round(2 * math.prod(shape) / limit, 2),
               "model": str(model), "runs": runs}
    base = runs[0]["mvoxel_per_s"] if runs else None
    ratios = {f"throughput_{r['workers']}_vs_{runs[0]['workers']}_workers": round(r["mvoxel_per_s"] / base, 3)
              for r in runs[1:]} if base else {}
    return figures, ratios
