"""P4: ``segment`` disk to disk against the raw fused forward, and the pieces P5 shares:
timing the engine on a zarr volume, and counting the tiles it computes.

P4  ``segment`` disk-to-disk on a zarr volume (64 x 4096 x 4096 uint16, 1.07 Gvoxel, made
    once by :func:`~fastunet.bench.volume.bench_volume`) with the fused network in bf16, vs
    the raw fused forward (:class:`~fastunet.engine.fused.FusedUNet`, inputs already on the GPU,
    only the network timed) on the same tiles, tile size and batch.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import timing
from .volume import bench_volume, cache_volume_path, default_cache_dir, random_model_file

__all__ = ["bench_segment", "engine_tile_count", "grid_tile_count", "time_segment"]


def engine_tile_count(layout) -> int:
    """Tiles the engine runs through the network for ``layout``: per block and Z slice,
    every tile that supplies one of its pixels. Tiles on a boundary between blocks are
    counted once per block.

    Parameters
    ----------
    layout : fastunet.engine.tiling.Layout

    Returns
    -------
    int
    """
    return layout.tile_count()


def grid_tile_count(layout) -> int:
    """Tiles of the global tile grid that cover the volume, each counted once (the fewest a
    run with this tile size can compute).

    Parameters
    ----------
    layout : fastunet.engine.tiling.Layout

    Returns
    -------
    int
    """
    planes = layout.shape[0] if layout.ndim == 3 else 1
    return planes * (layout.last_tile(0) + 1) * (layout.last_tile(1) + 1)


def time_segment(model_path, volume_path, out_path, *, tile: int | None, batch: int, device="cuda",
                 backend: str = "triton", dtype: str = "bf16", repeats: int = 1) -> dict:
    """Time ``Segmenter.segment`` from the zarr ``volume_path`` to the zarr ``out_path``.

    The run is warmed up first on the volume's first two slices (kernel compilation,
    autotuning, the device runner thread), with the same tile and batch; ``tile=None``
    takes the engine's default for this volume and device, found by that warm-up and then
    fixed, so the timed runs cannot pick another one. Each timed run includes everything
    ``segment`` does: opening the volume, the normalization statistics, creating the output,
    reading, normalizing, tiling, the network, assembling and writing the labels.

    Parameters
    ----------
    model_path, volume_path, out_path : path-like
        The model file, the input zarr array (Z, Y, X) and the output zarr (overwritten).
    tile : int or None
        The square input tile edge, or None for the engine's default.
    batch : int
        Tiles per network call.
    device, backend, dtype : str
        As for :class:`~fastunet.segmentation.Segmenter`.
    repeats : int
        Timed runs.

    Returns
    -------
    dict
        ``{"seconds": [...], "summary": {...}, "layout": Layout, "batches": float | None}``
        (``batches``: network calls per run made by the device runner; None without one).
    """
    import zarr

    from ..engine.tiling import Layout
    from ..segmentation import Segmenter

    options = dict(batch_size=batch, device=device, backend=backend, dtype=dtype)
    source = zarr.open_array(str(volume_path), mode="r")
    warm = np.asarray(source[: min(2, source.shape[0])])
    warm_out = Path(out_path).with_name(Path(out_path).stem + "-warmup.zarr")
    if tile is None:
        with Segmenter(model_path, **options) as probe:
            probe.segment(warm, warm_out, axes="ZYX", overwrite=True, progress=False, output_kind="labels")
            ty, tx = probe.last_summary["tile"]
        if ty != tx:
            raise ValueError(f"The engine's default tile is {ty}x{tx} here; pass tile= a square tile's edge.")
        tile = ty
    times = []
    with Segmenter(model_path, tile=tile, **options) as seg:
        seg.segment(warm, warm_out, axes="ZYX", overwrite=True, progress=False, output_kind="labels")
        runner = seg.network.runner
        before = None if runner is None else runner.batches
        for _ in range(repeats):
            timing.synchronize(device)
            start = time.perf_counter()
            labels = seg.segment(str(volume_path), str(out_path), axes="ZYX", overwrite=True, progress=False,
                                 output_kind="labels")
            times.append(time.perf_counter() - start)
        summary = dict(seg.last_summary)
        batches = None if runner is None else (runner.batches - before) / repeats
        depth = seg.config.depth
    shutil.rmtree(warm_out, ignore_errors=True)
    layout = Layout(shape=tuple(source.shape), depth=depth, tile=tuple(summary["tile"]),
                    chunks=tuple(labels.chunks), block=tuple(summary["block"]))
    return {"seconds": times, "summary": summary, "layout": layout, "batches": batches}


def _raw_batch_ms(model, tile: tuple[int, int], batch: int) -> float:
    """Median milliseconds of :meth:`FusedUNet.predict` (labels) of ``model`` in bf16 on
    ``batch`` fresh random tiles already on the GPU, as a CUDA graph (as the engine runs it);
    the fused network lives only here."""
    from ..engine.fused import FusedUNet

    net = FusedUNet(model, device="cuda", dtype="bf16", cuda_graph=True)
    return timing.cuda_median_ms(lambda x: net.predict(x, "labels"),
                                 make_inputs=lambda: (torch.randn(batch, 1, *tile, device="cuda"),))


def bench_segment(*, shape=(64, 4096, 4096), tile: int | None = None, batch: int = 4, repeats: int = 3,
                  cache_dir=None) -> tuple[dict, dict]:
    """P4: ``segment`` zarr to zarr (fused network, bf16) vs the raw fused forward on the same tiles.

    The volume is :func:`~fastunet.bench.volume.bench_volume` (uint16, chunks ``(1, 1024, 1024)``) in ``cache_dir``;
    the network the paper's (base 64, depth 4) with random weights. ``tile=None`` is the
    engine's default tile on this GPU. The segment time is the median of ``repeats`` runs
    (wall clock, see :func:`time_segment`; the volume was just written or read, so the
    OS page cache may hold it: reads are not cold-disk reads). The raw forward is
    :meth:`FusedUNet.predict` (labels, as the engine asks; replayed as a CUDA graph, as in the
    engine) on ``batch`` fresh random tiles already on the GPU, timed with CUDA events; its
    time for the volume is that median times
    the batches needed: ``ceil(tiles / batch)`` for the tiles the engine computed
    (``P4.segment_vs_raw``, the goal >= 0.9) and for the global tile grid counted once
    (``P4.segment_vs_raw_grid``: also charges the engine for tiles computed twice on
    block boundaries).

    Parameters
    ----------
    shape : (Z, Y, X)
        The volume's shape.
    tile : int or None
        The square input tile edge, or None for the engine's default.
    batch : int
        Tiles per network call, on both sides.
    repeats : int
        Timed segment runs.
    cache_dir : path-like, optional
        The folder of the volume (default :func:`~fastunet.bench.volume.default_cache_dir`).

    Returns
    -------
    figures, ratios : dict
        ``P4.segment_s``, ``P4.segment_mpx_s``, ``P4.raw_mpx_s``, the tile counts, ...;
        ``P4.segment_vs_raw``, ``P4.segment_vs_raw_grid``.
    """
    from ..modelfile import load_model

    timing.require_cuda()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    volume = cache_volume_path(cache, shape)
    bench_volume(volume, shape)
    out_path = cache / "p4-fastunet.zarr"
    with tempfile.TemporaryDirectory() as tmp:
        model_path = random_model_file(Path(tmp) / "unet-random.safetensors")
        timed = time_segment(model_path, volume, out_path, tile=tile, batch=batch, repeats=repeats)
        model = load_model(model_path)
    shutil.rmtree(out_path, ignore_errors=True)
    layout = timed["layout"]
    batch_ms = _raw_batch_ms(model, layout.tile, batch)
    voxels = math.prod(shape)
    tiles, grid = engine_tile_count(layout), grid_tile_count(layout)
    seg_s = statistics.median(timed["seconds"])
    raw_s = math.ceil(tiles / batch) * batch_ms * 1e-3
    raw_grid_s = math.ceil(grid / batch) * batch_ms * 1e-3
    figures = {
        "P4.volume_voxels": voxels, "P4.tile": layout.tile[0], "P4.batch": batch,
        "P4.block_voxels": math.prod(layout.block), "P4.repeats": repeats,
        "P4.tiles_computed": tiles, "P4.tiles_grid": grid, "P4.runner_batches": timed["batches"],
        "P4.segment_s": seg_s, "P4.segment_s_min": min(timed["seconds"]), "P4.segment_mpx_s": voxels / seg_s / 1e6,
        "P4.raw_batch_ms": batch_ms, "P4.raw_s": raw_s, "P4.raw_mpx_s": voxels / raw_s / 1e6,
        "P4.raw_grid_mpx_s": voxels / raw_grid_s / 1e6,
    }
    ratios = {"P4.segment_vs_raw": raw_s / seg_s, "P4.segment_vs_raw_grid": raw_grid_s / seg_s}
    return figures, ratios
