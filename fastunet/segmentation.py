"""``fastunet.segment`` and ``fastunet.Segmenter``: overlap-tile segmentation of volumes.

>>> labels = fastunet.segment("stack.zarr", "unet.safetensors", "out.zarr", axes="ZYX")
>>> lazy = fastunet.segment(numpy_image, model, output=None)        # a dask array
>>> with fastunet.Segmenter("unet.safetensors", device="cuda") as seg:
...     for path in paths:
...         seg.segment(path, f"{path}.labels.zarr")

What happens: the input is opened read-only (:func:`fastunet.io.open_volume`) and checked
against the model; the output is checked (:func:`fastunet.io.check_output`) before anything
is computed; normalization statistics are taken once from a fixed subsample of the whole
volume (:func:`fastunet.normalization.normalization_stats`); the cluster is joined (or the network
loaded) before the output is created, which records the input's identity
(:func:`fastunet.io.input_fingerprint`); blocks are planned on the global tile grid
(:mod:`fastunet.tiling`) and run by dask (:func:`fastunet.engine.execute`); each finished
block is recorded so an interrupted run can be resumed; the output is marked complete last.
A run that fails before its first block is recorded removes the output it created.

This module imports no dask, zarr or tifffile at import time (``import fastunet`` stays light).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import warnings

import torch

from . import geometry
from .devices import check_visible, default_dtype, resolve_device
from .errors import UserError

__all__ = [
    "segment", "Segmenter", "NonFiniteWarning", "summary_line", "default_max_step", "activation_bytes", "OUTPUT_KINDS",
]

OUTPUT_KINDS = ("labels", "probs", "both")
TIFF_SUFFIXES = (".tif", ".tiff")
MAX_TIFF_BYTES = 4 * 1024**3
PROGRESS_INTERVAL = 30.0  # seconds between plain progress lines when stderr is not a terminal


class NonFiniteWarning(RuntimeWarning):
    """The input held NaN/Inf values (ignored by the statistics, set to 0 after normalization)."""


# ------------------------------------------------------------------------------ defaults
def activation_bytes(config, tile: int, *, dtype: str = "fp32") -> int:
    """Upper bound of the activation memory of one ``tile x tile`` forward (bytes): the input,
    every layer's output (:func:`fastunet.geometry.layer_shapes`; an eager forward frees some
    of them earlier), the concatenation after each up-convolution and the softmax and argmax
    beside the scores."""
    size = 2 if dtype in ("bf16", "fp16") else 4
    total = config.in_channels * tile * tile
    for layer in geometry.layer_shapes(config, tile):
        total += layer.out_values
        if layer.kind == "upconv":  # torch.cat([crop(skip), up]): twice the up-conv's output
            total += 2 * layer.out_values
        elif layer.kind == "head":  # softmax and argmax
            total += 2 * layer.out_values
    return int(total * size)


def default_max_step(config, device: torch.device, *, dtype: str, batch_size: int) -> int:
    """Largest tile step (output edge, about) the default tile may use.

    CPU: 512 (moderate tiles, a forward of a few seconds for the paper's network). CUDA: the
    largest step up to 2048 whose ``batch_size`` tiles need at most half of the free device
    memory by :func:`activation_bytes`.
    """
    q = 2**config.depth
    if device.type != "cuda":
        return 512
    free, _ = torch.cuda.mem_get_info(device)
    best = q
    for step in range(q, 2049, q):
        tile = geometry.input_size_for_output(step, config.depth)
        if batch_size * activation_bytes(config, tile, dtype=dtype) <= free // 2:
            best = step
    return best


def _check_tile(tile, depth: int) -> int | None:
    if tile is None:
        return None
    try:
        out = geometry.check_tile_size(tile, depth, what="tile size (--tile, the network's input edge)")
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if out < 2**depth:
        smallest = geometry.input_size_for_output(2**depth, depth)
        raise UserError(
            f"Tile {tile} gives a {out}-pixel output, too small to step on the {2**depth}-pixel "
            f"max-pool grid; the smallest usable tile is {smallest}."
        )
    return int(tile)


def _check_cluster(scheduler, workers, gpus) -> None:
    given = [name for name, v in (("--scheduler", scheduler), ("--workers", workers), ("--gpus", gpus)) if v is not None]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} exclude each other; pass one of them.")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UserError(f"--workers expects a number of worker processes >= 1; got {workers!r}.")


# ----------------------------------------------------------------------------- Segmenter
class Segmenter:
    """A network kept loaded for segmenting many volumes (pipelines, notebooks).

    Parameters
    ----------
    model : str, path-like, ModelBundle, ReferenceUNet or None
        A fastunet ``.safetensors`` model file, an in-memory network with its normalization
        (:class:`~fastunet.modelfile.ModelBundle`, e.g. from :func:`fastunet.read_model`), a
        bare network (percentile normalization), or None for the bundled default model.
    tile : int, optional
        The network's input tile edge (572 gives 388-pixel outputs for the paper's network);
        by default the largest that fits the device, never larger than a small image needs.
    batch_size : int, optional
        Tiles per network call (default 4 on CUDA, 2 on the CPU).
    device : str, optional
        ``"cuda:0"``, ``"cpu"``, ...; default CUDA when available.
    backend : {"auto", "triton", "torch"}
        ``auto``: the fused Triton network on CUDA, PyTorch elsewhere.
    dtype : {"bf16", "fp16", "tf32", "fp32"}, optional
        Default bf16 on CUDA, fp32 on the CPU.
    """

    def __init__(self, model=None, *, tile: int | None = None, batch_size: int | None = None, device=None,
                 backend: str = "auto", dtype: str | None = None):
        from .engine import ModelHandle
        from .modelfile import default_model_path
        from .predictor import DTYPES, resolve_backend

        if model is None:
            model = default_model_path()
        if isinstance(model, (str, os.PathLike)):
            self.handle = ModelHandle.from_path(model)
        else:
            self.handle = ModelHandle.from_module(model)
        self.config = self.handle.config
        self.normalization = self.handle.normalization
        self.device = resolve_device(device)
        try:
            self.backend = resolve_backend(backend, self.device)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if dtype is None:
            dtype = default_dtype(self.device)
        if dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}.")
        self.dtype = dtype
        if batch_size is None:
            batch_size = 4 if self.device.type == "cuda" else 2
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"--batch-size expects a number of tiles >= 1; got {batch_size!r}.")
        self.batch_size = batch_size
        self.tile = _check_tile(tile, self.config.depth)
        self._network = None
        self.last_summary: dict | None = None

    # the network in this process -----------------------------------------------------
    def _check_local_device(self) -> None:
        check_visible(self.device)

    @property
    def network(self):
        """The loaded network on ``device`` (made on first use and kept)."""
        if self._network is None:
            from .engine import LoadedNetwork

            self._check_local_device()
            self._network = LoadedNetwork(self.handle, device=self.device, backend=self.backend, dtype=self.dtype,
                                          batch_size=self.batch_size, use_runner=self.device.type == "cuda")
        return self._network

    def close(self) -> None:
        """Stop the device runner thread (if any) and drop the loaded network."""
        if self._network is not None:
            self._network.close()
            self._network = None

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # planning ------------------------------------------------------------------------------
    def _check_volume(self, vol) -> None:
        need = self.config.in_channels
        if vol.channels != need:
            hint = (
                "pass the channel axis with --axes (e.g. --axes CYX or CZYX)"
                if need > 1 and "C" not in vol.axes
                else f"use a model made for {vol.channels} channel(s)"
            )
            if getattr(vol, "alt_axes", "") and need == 1:
                hint += (f", or, if its {vol.channels} planes are z slices (the file reader took them for "
                         f"RGB channels), pass --axes {vol.alt_axes}")
            raise UserError(
                f"The model expects {need} input channel(s) but the input has {vol.channels} "
                f"(axes {vol.axes}, shape {vol.shape}); {hint}."
            )

    def _max_step(self, remote: bool) -> int:
        if self.device.type == "cuda" and not remote and torch.cuda.is_available():
            return default_max_step(self.config, self.device, dtype=self.dtype, batch_size=self.batch_size)
        return 1024 if self.device.type == "cuda" else 512

    def _max_block_voxels(self) -> int:
        # A block is one task and one step of the progress bar. 8 Mvoxel blocks keep a GPU
        # busy for a fraction of a second; on a CPU (~0.5 Mpx/s) they would take ~15 s each,
        # so there blocks are 2 Mvoxel: a bar that moves, and work for every thread.
        return 8 * 1024 * 1024 if self.device.type == "cuda" else 2 * 1024 * 1024

    def _layout(self, vol, *, chunks, block, tile=None, remote=False):
        from .tiling import plan_layout

        tile = tile if tile is not None else self.tile
        try:
            return plan_layout(vol.spatial_shape, self.config.depth, source_chunks=_spatial_chunks(vol),
                               tile=tile, max_step=self._max_step(remote), chunks=chunks, block=block,
                               max_block_voxels=self._max_block_voxels())
        except ValueError as exc:
            raise UserError(str(exc)) from None

    def _job(self, vol, layout, stats, output_kind, store, remote):
        from .engine import Job

        device = self.device
        return Job(source=vol, model=self.handle, layout=layout, stats=stats, output_kind=output_kind, store=store,
                   device=str(device), backend=self.backend, dtype=self.dtype, batch_size=self.batch_size,
                   use_runner=device.type == "cuda", network=None if remote else self.network)

    # the call ------------------------------------------------------------------------------
    def segment(self, source, output=None, *, axes: str | None = None, output_kind: str = "labels",
                zarr_format: int = 3, resume: bool = False, overwrite: bool = False, scheduler=None,
                workers: int | None = None, gpus=None, progress: bool | None = True, chunks=None, block=None,
                threads: int | None = None, max_tiff_bytes: int = MAX_TIFF_BYTES,
                progress_interval: float = PROGRESS_INTERVAL):
        """Segment ``source``; see :func:`segment` for the parameters and what is returned."""
        import numpy as np

        from . import io
        from .engine import execute, lazy_arrays, open_cluster, parse_gpus
        from .normalization import NormStats, normalization_stats

        t_start = time.perf_counter()
        if output_kind not in OUTPUT_KINDS:
            raise UserError(f"--output must be one of {', '.join(OUTPUT_KINDS)}; got {output_kind!r}.")
        _check_cluster(scheduler, workers, gpus)
        remote = scheduler is not None or workers is not None or gpus is not None
        device = self.device
        if gpus is not None:
            gpu_list = parse_gpus(gpus)
            if not torch.cuda.is_available() or torch.cuda.device_count() < max(int(g) for g in gpu_list) + 1:
                raise UserError(
                    f"--gpus {','.join(gpu_list)} asks for CUDA GPUs this machine does not have "
                    f"({torch.cuda.device_count()} visible); use --workers N for CPU worker processes."
                )
            device = torch.device("cuda:0")  # each GPU worker sees only its GPU
        vol = io.open_volume(source, axes=axes)
        self._check_volume(vol)
        if not remote:
            self._check_local_device()

        if output is None:
            if resume or overwrite:
                raise UserError("resume/overwrite need an output path.")
            if remote:
                raise UserError(
                    "With output=None the result is a lazy dask array: compute it on your own "
                    "distributed Client instead of passing scheduler/workers/gpus."
                )
            layout = self._layout(vol, chunks=chunks, block=block, remote=remote)
            stats = normalization_stats(vol, self.normalization)
            _warn_nonfinite(stats.nonfinite, sampled=True)
            job = self._job(vol, layout, stats, output_kind, None, remote)
            labels, probs = lazy_arrays(job)
            return _pick(output_kind, labels, probs)

        expect = {}
        if resume:  # the input must be the one the interrupted run read (or the complete output's)
            expect["input_id"] = io.input_fingerprint(vol)
        expect.update({"shape": list(vol.spatial_shape), "output": output_kind,
                       "num_classes": self.config.num_classes, "model": self.handle.key})
        if self.tile is not None:
            expect["tile"] = [self.tile, self.tile]
        for key, value in (("chunks", chunks), ("block", block)):
            if value is not None:
                expect[key] = [int(v) for v in value]
        path = io.check_output(output, source=vol, overwrite=overwrite, resume=resume, expect=expect,
                               output_kind=output_kind)
        tiff = path.suffix.lower() in TIFF_SUFFIXES
        store = None
        skip: set[str] = set()
        if tiff:
            layout = self._layout(vol, chunks=chunks, block=block, remote=remote)
            nbytes = math.prod(vol.spatial_shape) * (
                (output_kind != "probs") + 2 * self.config.num_classes * (output_kind != "labels"))
            if nbytes > max_tiff_bytes:
                raise UserError(
                    f"The result ({nbytes / 1024**3:.1f} GiB) is too large for a TIFF output, which is "
                    f"built in memory (limit {max_tiff_bytes / 1024**3:.1f} GiB); write a zarr output "
                    "instead, e.g. -o result.zarr."
                )
        elif resume and path.exists():
            store = io.open_output(path, expect={})  # check_output compared ``expect`` just above
            meta = store.attrs
            layout = self._layout(vol, chunks=meta["chunks"], block=meta["block"], tile=tuple(meta["tile"]),
                                  remote=remote)
            skip = store.done()
            if store.complete:
                self.last_summary = {**meta.get("summary", {}), "computed": 0, "skipped": layout.num_blocks}
                return _pick(output_kind, store.labels, store.probs)
        else:
            layout = self._layout(vol, chunks=chunks, block=block, remote=remote)
        if store is not None:  # resume: the constants the interrupted run used, not a recomputation
            stats = NormStats(np.asarray(meta["norm_offset"], np.float64), np.asarray(meta["norm_scale"], np.float64))
        else:
            stats = normalization_stats(vol, self.normalization)

        with contextlib.ExitStack() as stack:
            # Join the cluster / load the network BEFORE creating the output: a setup failure
            # (unreachable scheduler, broken device) then leaves nothing behind.
            client = None
            if remote:
                client = stack.enter_context(open_cluster(scheduler=scheduler, workers=workers, gpus=gpus,
                                                          threads=threads))
            else:
                self.network  # noqa: B018 - loads the network now
            created = False
            if store is None and not tiff:
                attrs = {"model": self.handle.key, "model_path": self.handle.path, "tile": list(layout.tile),
                         "block": list(layout.block), "normalization": self.normalization.to_dict(),
                         "norm_offset": stats.offset.tolist(), "norm_scale": stats.scale.tolist()}
                store = io.create_output(path, source=vol, num_classes=self.config.num_classes,
                                         output=output_kind, chunks=layout.chunks, zarr_format=zarr_format,
                                         overwrite=overwrite, attrs=attrs)
                created = True
            submitted = False
            try:
                job = self._job(vol, layout, stats, output_kind, store, remote)
                if gpus is not None:
                    job = _replace(job, device=str(device), use_runner=True)
                blocks = [b for b in layout.blocks() if b.name not in skip]

                result = {}
                if tiff:
                    spatial = layout.shape if layout.ndim == 3 else (1, *layout.shape)
                    result["labels"] = np.zeros(spatial, np.uint8) if output_kind != "probs" else None
                    result["probs"] = (np.zeros((self.config.num_classes, *spatial), np.float16)
                                       if output_kind != "labels" else None)

                def place(summary):
                    z = layout.block_at(summary["index"]).slices
                    z = z if layout.ndim == 3 else (slice(0, 1), *z)
                    if result["labels"] is not None:
                        result["labels"][z] = summary["labels"]
                    if result["probs"] is not None:
                        result["probs"][(slice(None), *z)] = summary["probs"]

                bar = _ProgressBar(total=layout.num_blocks, done=layout.num_blocks - len(blocks), enabled=progress,
                                   interval=progress_interval)
                try:
                    submitted = True
                    summaries = execute(job, blocks, scheduler=scheduler, workers=workers, gpus=gpus,
                                        threads=threads, progress=bar.update, on_result=place if tiff else None,
                                        client=client)
                finally:
                    bar.close()
            except Exception as exc:
                # An output this run created and that holds no finished block is removed, so
                # that running again needs no --overwrite / --resume. The threaded scheduler
                # has stopped every task when execute raises; a cluster's tasks may still run,
                # so there only a failure before any was submitted removes it. An interrupt
                # (Ctrl-C) removes nothing: the output stays, to be resumed.
                if created and (not submitted or not remote) and not store.done():
                    try:
                        io.discard_output(store.path)
                    except (OSError, UserError) as cleanup:  # keep the original error; say what is left
                        exc.add_note(f"(the unfinished output {str(store.path)!r} could not be removed: {cleanup})")
                raise
        seconds = time.perf_counter() - t_start
        voxels = sum(s["voxels"] for s in summaries)
        nonfinite = sum(s["nonfinite"] for s in summaries)
        summary = {
            "blocks": layout.num_blocks, "computed": len(summaries), "skipped": layout.num_blocks - len(blocks),
            "megapixels": voxels / 1e6, "seconds": round(seconds, 3),
            "mpx_per_s": round(voxels / 1e6 / seconds, 3) if seconds > 0 else None,
            "device": "gpus " + ",".join(parse_gpus(gpus)) if gpus is not None else str(device),
            "backend": self.backend, "dtype": self.dtype, "tile": list(layout.tile), "block": list(layout.block),
            "batch_size": self.batch_size, "nonfinite": nonfinite,
            "scheduler": scheduler or (f"{workers} local workers" if workers else ("gpus" if gpus else "threads")),
        }
        self.last_summary = summary
        _warn_nonfinite(nonfinite, sampled=False)
        if tiff:
            labels, probs = result["labels"], result["probs"]
            if layout.ndim == 2:
                labels = None if labels is None else labels[0]
                probs = None if probs is None else probs[:, 0]
            io.write_tiff(path, labels=labels, probs=probs, axes=vol.spatial_axes, overwrite=overwrite)
            return _pick(output_kind, labels, probs)
        store.mark_complete(summary)
        return _pick(output_kind, store.labels, store.probs)


class _ProgressBar:
    """Progress over blocks with Mpx/s. ``enabled`` False: nothing. Otherwise a tqdm bar when
    stderr is a terminal, and when it is not (a batch job's log) a plain line every
    ``interval`` seconds: blocks done/total, Mpx/s, ETA."""

    def __init__(self, *, total: int, done: int, enabled, interval: float = PROGRESS_INTERVAL):
        self.t0 = time.perf_counter()
        self.voxels = 0
        self.total, self.done, self.start_done = total, done, done
        self.bar = None
        self._stop = threading.Event()
        self._thread = None
        if enabled is False:
            return
        stream = sys.stderr
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        if tty:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="block", desc="segment", file=stream,
                            dynamic_ncols=True)
        elif done < total:
            self.stream = stream
            self._thread = threading.Thread(target=self._report, args=(float(interval),), daemon=True,
                                            name="fastunet-progress")
            self._thread.start()

    def rate(self) -> float:
        return self.voxels / 1e6 / max(time.perf_counter() - self.t0, 1e-9)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        computed = self.done - self.start_done
        if computed:
            eta = _duration(elapsed / computed * (self.total - self.done))
        else:
            eta = "unknown"
        return (f"segment: {self.done}/{self.total} blocks, {self.rate():.2f} Mpx/s, "
                f"{_duration(elapsed)} elapsed, ETA {eta}")

    def _report(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                print(self.line(), file=self.stream, flush=True)
            except (OSError, ValueError):  # the stream was closed
                return

    def update(self, summary: dict) -> None:
        self.voxels += summary["voxels"]
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.rate():.2f} Mpx/s", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def summary_line(summary: dict, output) -> str:
    """One line for the end of a run: blocks, Mpx, seconds, Mpx/s, device, backend, dtype."""
    s = summary
    if s.get("computed") == 0 and s.get("skipped") == s.get("blocks"):
        return f"{output} is already complete ({s.get('blocks')} blocks); nothing to do."
    tile = "x".join(str(t) for t in s["tile"])
    skipped = f", {s['skipped']} skipped (resume)" if s["skipped"] else ""
    line = (
        f"segmented {s['computed']} of {s['blocks']} blocks{skipped} -> {output}: {s['megapixels']:.2f} Mpx "
        f"in {s['seconds']:.1f} s = {s['mpx_per_s'] or 0:.2f} Mpx/s on {s['device']} "
        f"({s['backend']}, {s['dtype']}, tile {tile}, batch {s['batch_size']}, {s['scheduler']})"
    )
    if s.get("nonfinite"):
        line += f"; {s['nonfinite']} NaN/Inf input values set to 0"
    return line


def _spatial_chunks(vol) -> tuple[int, ...]:
    return tuple(c for a, c in zip(vol.axes, vol.chunks) if a != "C")


def _replace(job, **changes):
    import dataclasses

    return dataclasses.replace(job, **changes, network=None)


def _pick(kind: str, labels, probs):
    return labels if kind == "labels" else probs if kind == "probs" else (labels, probs)


def _warn_nonfinite(count: int, *, sampled: bool) -> None:
    if not count:
        return
    where = "in the normalization sample" if sampled else "in the input"
    warnings.warn(
        f"{count} NaN/Inf values {where}: ignored by the normalization statistics and set to 0 "
        "after normalization.",
        NonFiniteWarning,
        stacklevel=3,
    )


def segment(source, model=None, output=None, *, axes: str | None = None, tile: int | None = None,
            batch_size: int | None = None, device=None, backend: str = "auto", dtype: str | None = None,
            output_kind: str = "labels", zarr_format: int = 3, resume: bool = False, overwrite: bool = False,
            scheduler=None, workers: int | None = None, gpus=None, progress: bool | None = True,
            chunks=None, block=None, threads: int | None = None, progress_interval: float = PROGRESS_INTERVAL):
    """Segment a volume with overlap-tile inference (seamless: identical to one pass of the
    network over the whole mirrored image).

    Parameters
    ----------
    source : str, path-like, numpy.ndarray, dask.array.Array or zarr.Array
        A zarr v2/v3 array or group (OME-Zarr: level 0), a TIFF / OME-TIFF file, or an array.
    model : str, path-like, ModelBundle, ReferenceUNet or None
        Model file, in-memory network (see :class:`Segmenter`), or None for the bundled
        default model.
    output : str, path-like or None
        A zarr folder (``.zarr``), a ``.tif``/``.tiff`` file (results that fit in memory),
        or None for lazy dask arrays (nothing is computed until they are).
    axes : str, optional
        Axes of a plain array or zarr array without metadata, e.g. ``"ZYX"``, ``"CYX"``.
    tile, batch_size, device, backend, dtype
        See :class:`Segmenter`.
    output_kind : {"labels", "probs", "both"}
        uint8 labels (argmax), float16 class probabilities ``(K, ...)``, or both.
    zarr_format : {3, 2}
    resume : bool
        Continue an interrupted run into the same output, skipping recorded blocks. Refused
        unless the input is the recorded one (path, array, axes, shape, dtype, and a
        fingerprint: zarr metadata and sampled values, or a TIFF's size and mtime).
    overwrite : bool
        Replace an existing fastunet output.
    scheduler, workers, gpus
        Run on dask.distributed: join the scheduler at this address, start ``workers`` local
        worker processes, or one worker process per GPU (``"0,1"``). Default: dask threads.
    progress : bool or None
        Progress bar on a terminal; when stderr is not a terminal (a batch job's log), a
        plain line (blocks done/total, Mpx/s, ETA) every ``progress_interval`` seconds.
        False: neither.
    chunks, block : tuple of int, optional
        Output chunk and block shapes ``((Z,) Y, X)``; by default along the input's chunks.
    threads : int, optional
        Threads of the threaded scheduler (or per worker).
    progress_interval : float
        Seconds between the plain progress lines (default 30).

    Returns
    -------
    zarr.Array, numpy.ndarray, dask.array.Array or a (labels, probs) pair
        The written labels / probabilities (zarr arrays for a zarr output, numpy arrays for
        TIFF), or lazy dask arrays when ``output`` is None.
    """
    seg = Segmenter(model, tile=tile, batch_size=batch_size, device=device, backend=backend, dtype=dtype)
    try:
        result = seg.segment(source, output, axes=axes, output_kind=output_kind, zarr_format=zarr_format,
                             resume=resume, overwrite=overwrite, scheduler=scheduler, workers=workers, gpus=gpus,
                             progress=progress, chunks=chunks, block=block, threads=threads,
                             progress_interval=progress_interval)
    finally:
        if output is not None:
            seg.close()
    return result
