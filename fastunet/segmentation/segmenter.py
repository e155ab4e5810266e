"""``fastunet.segment`` and ``fastunet.Segmenter``: overlap-tile segmentation of volumes.

>>> labels = fastunet.segment("stack.zarr", "unet.safetensors", "out.zarr", axes="ZYX")
>>> lazy = fastunet.segment(numpy_image, model, output=None)        # a dask array
>>> with fastunet.Segmenter("unet.safetensors", device="cuda") as seg:
...     for path in paths:
...         seg.segment(path, f"{path}.labels.zarr")

What happens, in order: the input is opened read-only (:func:`fastunet.io.open_volume`) and
checked against the model; the output is checked and its sink opened
(:func:`fastunet.segmentation.sinks.open_sink`: a zarr output, resumable, or a TIFF file)
before anything is computed; the blocks are planned on the global tile grid
(:func:`fastunet.engine.tiling.plan_layout`) and the normalization statistics taken once from
a fixed subsample of the whole volume (:func:`fastunet.normalization.normalization_stats`),
or both reused from the interrupted run being resumed; the cluster is joined (or the network
loaded) before the sink creates the output; the block tasks run
(:func:`fastunet.engine.scheduling.execute`), each finished block recorded so an interrupted
run can be resumed; the sink finishes the output last. With ``output=None`` the result is a
lazy dask array and nothing is written.

This module imports no dask, zarr or tifffile at import time (``import fastunet`` stays light).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings

import torch

from .. import geometry
from ..devices import check_visible, default_dtype, resolve_device
from ..errors import UserError
from ..kinds import pick
from .memory import check_tile_memory, default_max_step
from .progress import PROGRESS_INTERVAL, ProgressBar
from .scaling import check_resumed, make_rescale, model_size_of, resolve, stats_source
from .sinks import MAX_TIFF_BYTES, TiffSink, open_sink

__all__ = ["segment", "Segmenter", "NonFiniteWarning", "OUTPUT_KINDS"]

OUTPUT_KINDS = ("instances", "labels", "probs", "both")


class NonFiniteWarning(RuntimeWarning):
    """The input held NaN/Inf values (ignored by the statistics, set to 0 after normalization)."""


# ------------------------------------------------------------------------------ defaults
def _check_tile(tile, depth: int) -> int | None:
    if tile is None:
        return None
    try:
        out = geometry.check_tile_size(tile, depth, what="tile size (tile=, the network's input edge)")
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
    given = [name for name, v in (("scheduler", scheduler), ("workers", workers), ("gpus", gpus)) if v is not None]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} exclude each other; pass one of them.")
    if scheduler is not None:
        from ..engine import check_scheduler

        check_scheduler(scheduler)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UserError(f"workers= expects a number of worker processes >= 1; got {workers!r}.")


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
        from ..engine import DTYPES, ModelHandle, resolve_backend
        from ..modelfile import default_model_path

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
            raise UserError(f"dtype= must be one of {', '.join(DTYPES)}; got {dtype!r}.")
        self.dtype = dtype
        if batch_size is None:
            batch_size = 4 if self.device.type == "cuda" else 2
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size= expects a number of tiles >= 1; got {batch_size!r}.")
        self.batch_size = batch_size
        self.tile = _check_tile(tile, self.config.depth)
        self.model_object_size = model_size_of(model)  # the training object diameter, if recorded
        self._network = None
        self.last_summary: dict | None = None

    # the network in this process -----------------------------------------------------
    def _check_local_device(self) -> None:
        check_visible(self.device)

    @property
    def network(self):
        """The loaded network on ``device`` (made on first use and kept)."""
        if self._network is None:
            from ..engine import LoadedNetwork

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
                'pass the channel axis with axes= (e.g. axes="CYX" or axes="CZYX")'
                if need > 1 and "C" not in vol.axes
                else f"use a model made for {vol.channels} channel(s)"
            )
            if getattr(vol, "alt_axes", "") and need == 1:
                hint += (f", or, if its {vol.channels} planes are z slices (the file reader took them for "
                         f'RGB channels), pass axes="{vol.alt_axes}"')
            raise UserError(
                f"The model expects {need} input channel(s) but the input has {vol.channels} "
                f"(axes {vol.axes}, shape {vol.shape}); {hint}."
            )

    def _max_step(self, remote: bool) -> int:
        if not remote and (self.device.type == "cpu" or torch.cuda.is_available()):
            return default_max_step(self.config, self.device, dtype=self.dtype, batch_size=self.batch_size)
        return 1024 if self.device.type == "cuda" else 512

    def _max_block_voxels(self) -> int:
        # A block is one task and one step of the progress bar. 8 Mvoxel blocks keep a GPU
        # busy for a fraction of a second; on a CPU (~0.5 Mpx/s) they would take ~15 s each,
        # so there blocks are 2 Mvoxel: a bar that moves, and work for every thread.
        return 8 * 1024 * 1024 if self.device.type == "cuda" else 2 * 1024 * 1024

    def _layout(self, vol, *, chunks, block, tile=None, remote=False, scale=None):
        from ..engine import plan_layout

        tile = tile if tile is not None else self.tile
        grow = max(1.0, scale.factor**2) if scale is not None else 1.0  # enlarged blocks: fewer input pixels
        try:
            layout = plan_layout(vol.spatial_shape, self.config.depth, source_chunks=_spatial_chunks(vol),
                                 tile=tile, max_step=self._max_step(remote), chunks=chunks, block=block,
                                 max_block_voxels=int(self._max_block_voxels() / grow))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if not remote:  # a tile that cannot fit is refused now, not after minutes of work
            check_tile_memory(self.config, layout.tile, device=self.device, dtype=self.dtype,
                              batch_size=self.batch_size)
        return layout

    def _job(self, vol, layout, stats, kinds, store, remote, rescale=None):
        from ..engine import Job
        from ..kinds import network_output

        device = self.device
        return Job(source=vol, model=self.handle, layout=layout, stats=stats, output_kind=network_output(kinds),
                   store=store, device=str(device), backend=self.backend, dtype=self.dtype,
                   batch_size=self.batch_size, use_runner=device.type == "cuda",
                   network=None if remote else self.network, kinds=kinds, rescale=rescale)

    def _new_rescale(self, vol, scale, remote):
        """The rescaled grid of a new run at ``scale`` (None at scale 1), its tile planned as
        for any input (a resumed run uses the tile it recorded)."""
        if scale is None:
            return None
        return make_rescale(vol, self.config.depth, scale, tile=self.tile, max_step=self._max_step(remote))

    def _segment_crop(self, image, object_size):
        """The class map and the foreground probability of a 2D image (``(Y, X)`` or
        ``(C, Y, X)``) at ``object_size``, for the estimate."""
        import dask

        axes = "CYX" if image.ndim == 3 else "YX"
        labels, probs = dask.compute(*self.segment(image, None, axes=axes, output_kind="labels,probs",
                                                   object_size=object_size, progress=False))
        return labels, 1.0 - probs[0].astype("float32")

    def estimate_object_size(self, source, *, axes: str | None = None, storage_options: dict | None = None):
        """What ``object_size="auto"`` would find in ``source``: a
        :class:`~fastunet.segmentation.scaling.Measure` (``size`` in pixels, or None and the
        ``reason`` it is unsure; ``rounds``: each round's measure). Nothing is written."""
        from .. import io
        from .scaling import estimate_object_size

        if self.model_object_size is None:
            raise UserError("This model records no training object size, so there is no object size to estimate; "
                            "retrain it with fastunet train (which records it in the model file).")
        vol = io.open_volume(source, axes=axes, storage_options=storage_options)
        self._check_volume(vol)
        return estimate_object_size(self._segment_crop, vol, float(self.model_object_size))

    # the call ------------------------------------------------------------------------------
    def segment(self, source, output=None, *, axes: str | None = None, output_kind=None,
                zarr_format: int | None = None, resume: bool = False, overwrite: bool = False, scheduler=None,
                workers: int | None = None, gpus=None, progress: bool | None = True, chunks=None, block=None,
                threads: int | None = None, max_tiff_bytes: int = MAX_TIFF_BYTES,
                progress_interval: float = PROGRESS_INTERVAL, min_size: int | str = "auto",
                split: str | None = None, connect_z: bool = False, label_name: str | None = None,
                into_input: bool = False, storage_options: dict | None = None, break_lock: bool = False,
                object_size=None, fill_holes: bool = True):
        """Segment ``source``; see :func:`segment` for the parameters and what is returned."""
        from .. import io
        from ..engine.instances import InstanceOptions
        from ..kinds import parse_kinds

        t_start = time.perf_counter()
        kinds = parse_kinds(output_kind, self.config.num_classes)
        options = InstanceOptions(min_size=min_size, split=split, connect_z=connect_z, fill_holes=fill_holes)
        _check_cluster(scheduler, workers, gpus)
        if output is not None and scheduler is None and workers is None and gpus is None:
            from ..engine import active_client

            scheduler = active_client()  # the dask Client the caller made active runs file outputs
        remote = scheduler is not None or workers is not None or gpus is not None
        device = self._run_device(gpus)
        vol = io.open_volume(source, axes=axes, storage_options=storage_options)
        self._check_volume(vol)
        if not remote:
            self._check_local_device()
        scale = resolve(self._segment_crop, vol, object_size, self.model_object_size)  # None: scale 1
        options = dataclasses.replace(options, typical_size=scale.object_size if scale else self.model_object_size)
        if output is None and into_input:
            output = _into_input_path(vol, label_name)
        if output is None:
            return self._lazy(vol, kinds=kinds, options=options, resume=resume, overwrite=overwrite, remote=remote,
                              chunks=chunks, block=block, scale=scale)

        sink = open_sink(output, source=vol, kinds=kinds, resume=resume, overwrite=overwrite,
                         zarr_format=zarr_format, expect=self._expect(vol, kinds, options, resume, chunks, block),
                         max_tiff_bytes=max_tiff_bytes, options=options, label_name=label_name,
                         into_input=into_input, storage_options=storage_options, break_lock=break_lock)
        try:  # the sink holds the output's lock until the run ends, however it ends
            return self._write(sink, vol, kinds, options, t_start, device=device, remote=remote,
                               run=dict(scheduler=scheduler, workers=workers, gpus=gpus, threads=threads),
                               chunks=chunks, block=block, progress=progress, progress_interval=progress_interval,
                               scale=scale)
        finally:
            sink.close()

    def _write(self, sink, vol, kinds, options, t_start, *, device, remote, run, chunks, block, progress,
               progress_interval, scale=None):
        """Plan, set up, create the output, run the block tasks and finish the sink."""
        layout, stats, rescale = self._plan(vol, sink, chunks=chunks, block=block, remote=remote, scale=scale)
        if sink.complete:
            self.last_summary = {**sink.recorded.get("summary", {}), "computed": 0, "skipped": layout.num_blocks}
            return sink.result()
        blocks = [b for b in layout.blocks() if b.name not in sink.done]
        with contextlib.ExitStack() as stack:
            # Join the cluster / load the network BEFORE creating the output: a setup failure
            # (unreachable scheduler, broken device) then leaves nothing behind.
            client = None
            if remote:
                from ..engine import open_cluster

                client = stack.enter_context(open_cluster(**run))
            else:
                self.network  # noqa: B018 - loads the network now
            summaries = self._run(sink, vol, layout, stats, blocks, device=device, remote=remote, client=client,
                                  run=run, progress=progress, progress_interval=progress_interval,
                                  rescale=rescale, scale=scale)
        summary = self._summary(layout, blocks, summaries, t_start, device=device, scheduler=run["scheduler"],
                                workers=run["workers"], gpus=run["gpus"])
        summary.update(scale.record() if scale is not None else {})
        self.last_summary = summary
        _warn_nonfinite(summary["nonfinite"], sampled=False)
        if "instances" in kinds:
            summary.update(objects=sink.count, min_size=options.min_size, fill_holes=options.fill_holes,
                           **sink.cleanup)
        return sink.finish(summary, source=vol)

    # the parts of the call ------------------------------------------------------------------
    def _run_device(self, gpus) -> torch.device:
        """The device the tasks use: ours, or ``cuda:0`` of each GPU worker (it sees only its GPU)."""
        if gpus is None:
            return self.device
        from ..engine import parse_gpus

        gpu_list = parse_gpus(gpus)
        if not torch.cuda.is_available() or torch.cuda.device_count() < max(int(g) for g in gpu_list) + 1:
            raise UserError(
                f'gpus="{",".join(gpu_list)}" asks for CUDA GPUs this machine does not have '
                f"({torch.cuda.device_count()} visible); use workers=N for CPU worker processes."
            )
        return torch.device("cuda:0")

    def _lazy(self, vol, *, kinds, options, resume, overwrite, remote, chunks, block, scale=None):
        """``output=None``: dask arrays of the result, computed when they are."""
        from ..engine import lazy_arrays
        from ..normalization import normalization_stats

        if resume or overwrite:
            raise UserError("resume=True and overwrite=True need an output path.")
        if remote:
            raise UserError(
                "With output=None the result is a lazy dask array: compute it on your own "
                "distributed Client instead of passing scheduler/workers/gpus."
            )
        layout = self._layout(vol, chunks=chunks, block=block, remote=remote, scale=scale)
        rescale = self._new_rescale(vol, scale, remote)
        stats = normalization_stats(stats_source(vol, rescale), self.normalization)
        _warn_nonfinite(stats.nonfinite, sampled=True)
        job = dataclasses.replace(self._job(vol, layout, stats, kinds, None, remote, rescale), instances=options)
        return pick(kinds, lazy_arrays(job))

    def _expect(self, vol, kinds, options, resume, chunks, block) -> dict:
        """What a resumed output must have recorded: this input (its fingerprint), shape, kinds,
        classes, model, the instance options that shape the recorded blocks (split,
        connect_z; another min_size only redoes the merge), and the tile, chunks and block
        when they are given."""
        from .. import io
        from ..kinds import kinds_record

        expect = {}
        if resume:  # the input must be the one the interrupted run read (or the complete output's)
            expect["input_id"] = io.input_fingerprint(vol)
        expect.update({"shape": list(vol.spatial_shape), "output": kinds_record(kinds),
                       "num_classes": self.config.num_classes, "model": self.handle.key})
        if "instances" in kinds:
            expect.update(split=options.split, connect_z=options.connect_z, fill_holes=options.fill_holes)
        if self.tile is not None:
            expect["tile"] = [self.tile, self.tile]
        for key, value in (("chunks", chunks), ("block", block)):
            if value is not None:
                expect[key] = [int(v) for v in value]
        return expect

    def _plan(self, vol, sink, *, chunks, block, remote, scale=None):
        """The layout, normalization constants and rescaling (None at scale 1): those of the run
        being resumed, or new ones."""
        import numpy as np

        from ..normalization import NormStats, normalization_stats

        meta = sink.recorded
        if meta is not None:  # resume: the constants the interrupted run used, not a recomputation
            check_resumed(meta, scale, sink.path)
            layout = self._layout(vol, chunks=meta["chunks"], block=meta["block"], tile=tuple(meta["tile"]),
                                  remote=remote, scale=scale)
            rescale = None if scale is None else make_rescale(vol, self.config.depth, scale,
                                                              tile=meta["rescale_tile"], max_step=0)
            if sink.complete:
                return layout, None, rescale
            return layout, NormStats(np.asarray(meta["norm_offset"], np.float64),
                                     np.asarray(meta["norm_scale"], np.float64)), rescale
        layout = self._layout(vol, chunks=chunks, block=block, remote=remote, scale=scale)
        if sink.block_multiple and any(m > 1 for m in sink.block_multiple):
            from ..io.pyramid import aligned_block

            layout = dataclasses.replace(layout, block=aligned_block(layout.block, layout.chunks, sink.block_multiple))
        if isinstance(sink, TiffSink):
            sink.check_size(vol.spatial_shape, self.config.num_classes)
        rescale = self._new_rescale(vol, scale, remote)
        return layout, normalization_stats(stats_source(vol, rescale), self.normalization), rescale

    def _run(self, sink, vol, layout, stats, blocks, *, device, remote, client, run, progress, progress_interval,
             rescale=None, scale=None):
        """Create the output, run the block tasks with a progress bar; on a failure the sink
        decides what is left (an interrupt leaves everything, to be resumed)."""
        from ..engine import execute

        attrs = {"model": self.handle.key, "model_path": self.handle.path, "tile": list(layout.tile),
                 "block": list(layout.block), "normalization": self.normalization.to_dict(),
                 "norm_offset": stats.offset.tolist(), "norm_scale": stats.scale.tolist(), "object_size": None}
        if scale is not None:
            attrs.update(scale.record(), rescale_tile=list(rescale.tile))
        sink.create(source=vol, num_classes=self.config.num_classes, chunks=layout.chunks, attrs=attrs, layout=layout)
        try:
            job = sink.prepare(self._job(vol, layout, stats, sink.kinds, sink.store, remote, rescale))
            if run["gpus"] is not None:
                job = dataclasses.replace(job, device=str(device), use_runner=True, network=None)
            bar = ProgressBar(total=layout.num_blocks, done=layout.num_blocks - len(blocks), enabled=progress,
                              interval=progress_interval)
            try:
                sink.started = True
                summaries = execute(job, blocks, **run, progress=bar.update, on_result=sink.on_result, client=client)
            finally:
                bar.close()
            sink.instances_stage(job, lambda stage_job, todo: _relabel(stage_job, todo, run, client, progress,
                                                                       progress_interval, layout.num_blocks))
            return summaries
        except Exception as exc:
            sink.abort(exc, remote=remote)
            raise

    def _summary(self, layout, blocks, summaries, t_start, *, device, scheduler, workers, gpus) -> dict:
        from ..engine import describe_scheduler, parse_gpus

        seconds = time.perf_counter() - t_start
        voxels = sum(s["voxels"] for s in summaries)
        return {
            "blocks": layout.num_blocks, "computed": len(summaries), "skipped": layout.num_blocks - len(blocks),
            "megapixels": voxels / 1e6, "seconds": round(seconds, 3),
            "mpx_per_s": round(voxels / 1e6 / seconds, 3) if seconds > 0 else None,
            "device": "gpus " + ",".join(parse_gpus(gpus)) if gpus is not None else str(device),
            "backend": self.backend, "dtype": self.dtype, "tile": list(layout.tile), "block": list(layout.block),
            "batch_size": self.batch_size, "nonfinite": sum(s["nonfinite"] for s in summaries),
            "scheduler": describe_scheduler(scheduler) if scheduler is not None else (
                f"{workers} local workers" if workers else ("gpus" if gpus else "threads")),
        }


def _relabel(job, blocks, run: dict, client, progress, interval: float, total: int) -> None:
    """The relabel pass of the instance stage: block tasks on the same scheduler."""
    from ..engine import execute

    bar = ProgressBar(total=total, done=total - len(blocks), enabled=progress and bool(blocks), interval=interval,
                      desc="relabel")
    try:
        execute(job, blocks, **run, progress=bar.update, client=client)
    finally:
        bar.close()


def _into_input_path(vol, label_name: str | None):
    """``into_input=True``: the label image ``<OME-Zarr input>/labels/<label_name>``."""
    from pathlib import Path

    from ..io import LABEL_NAME

    if vol.kind != "ome-zarr" or not vol.path:
        raise UserError("into_input=True writes into an OME-Zarr input's labels group; this input is "
                        f"{vol.describe()}: pass an output path instead.")
    name = label_name or LABEL_NAME
    if not name or "/" in name or name.startswith(".") or name in ("labels",):
        raise UserError(f'label_name= expects a plain name such as "nuclei"; got {label_name!r}.')
    return Path(vol.path) / "labels" / name


def _spatial_chunks(vol) -> tuple[int, ...]:
    return tuple(c for a, c in zip(vol.axes, vol.chunks) if a != "C")


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
            output_kind=None, zarr_format: int | None = None, resume: bool = False, overwrite: bool = False,
            scheduler=None, workers: int | None = None, gpus=None, progress: bool | None = True,
            chunks=None, block=None, threads: int | None = None, progress_interval: float = PROGRESS_INTERVAL,
            min_size: int | str = "auto", split: str | None = None, connect_z: bool = False,
            label_name: str | None = None, into_input: bool = False, storage_options: dict | None = None,
            break_lock: bool = False, object_size=None, fill_holes: bool = True):
    """Segment a volume with overlap-tile inference (seamless: identical to one pass of the
    network over the whole mirrored image).

    Parameters
    ----------
    source : str, path-like, numpy.ndarray, dask.array.Array or zarr.Array
        A zarr v2/v3 array or group (OME-Zarr: level 0) or its URL (``s3://``, ``gs://``,
        ``https://``, ``memory://``), a TIFF / OME-TIFF file, or an array.
    model : str, path-like, ModelBundle, ReferenceUNet or None
        Model file, in-memory network (see :class:`Segmenter`), or None for the bundled
        default model.
    output : str, path-like or None
        A zarr folder (``.zarr``; ``.ome.zarr`` or an OME-Zarr input: an OME-Zarr image with
        label images) or URL (``s3://bucket/out.zarr``), ``<OME-Zarr input>/labels/<name>`` (a
        label image in the input's own labels group), a local ``.tif``/``.tiff`` file (ImageJ;
        ``.ome.tif``: OME-TIFF; results that fit in memory), or None for lazy dask arrays
        (nothing is computed until they are). Other extensions are refused.
    axes : str, optional
        Axes of a plain array or zarr array without metadata, e.g. ``"ZYX"``, ``"CYX"``.
    tile, batch_size, device, backend, dtype
        See :class:`Segmenter`.
    output_kind : str, tuple of str or None
        ``"instances"`` (object ids: the connected components of the foreground, unique in
        the whole volume, uint32 or uint64), ``"labels"`` (the uint8 argmax class map),
        ``"probs"`` (float16 class probabilities ``(K, ...)``), ``"both"`` (labels and
        probs), or several (``"instances,probs"``, a tuple). Default: instances for
        two-class models, labels otherwise (see :mod:`fastunet.kinds`).
    zarr_format : {3, 2}, optional
        Default: the OME-Zarr input's format (NGFF 0.4 on v2, 0.5 on v3), else 3.
    resume : bool
        Continue an interrupted run into the same output, skipping recorded blocks. Refused
        unless the input is the recorded one (path, array, axes, shape, dtype, and a
        fingerprint: zarr metadata and sampled values, or a TIFF's size and mtime).
    overwrite : bool
        Replace an existing fastunet output.
    scheduler, workers, gpus
        Run on dask.distributed: a ``distributed.Client`` (left open), a Cluster such as
        ``LocalCluster``, or a scheduler address to join; ``workers`` local worker processes;
        or one worker process per GPU (``"0,1"``). Default: the active Client for a file
        output when there is one (``distributed.default_client()``), else threads here.
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
    min_size : int or "auto"
        Instances: objects of fewer voxels are removed; ``"auto"`` (the default): those
        smaller than 1/16 of the volume's typical object (a quarter of its diameter;
        :func:`fastunet.objectsize.auto_min_size`; the model's training object size when the
        volume has fewer than 5 objects), 0: none. Specks, not nuclei: the run's summary says
        how many were removed (``objects_removed``, ``min_size_used``).
    fill_holes : bool
        Instances: fill the background that one object encloses with that object (default
        True; ``holes_filled`` in the summary). ``min_size=0, fill_holes=False`` gives the
        connected components of the class map as they are.
    split : {None, "watershed"}
        Instances: split touching objects by a seeded watershed on the distance transform.
    connect_z : bool
        Instances of ``ZYX`` stacks: join objects across slices (default: each slice on its own).
    label_name : str, optional
        Name of the label image under ``labels/`` of an OME-Zarr output (default
        ``"segmentation"``).
    into_input : bool
        With ``output=None``: write the label image into the OME-Zarr input's own labels
        group (``<input>/labels/<label_name>``), as ``output="<input>/labels/NAME"`` does.
    storage_options : dict, optional
        Options of the file system of URL inputs and outputs (fsspec), e.g.
        ``{"endpoint_url": "http://127.0.0.1:9000"}`` or ``{"anon": True}``; credentials
        otherwise come from the usual environment variables (``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``...).
    break_lock : bool
        Take the output's lock from another run that holds it (one whose process is gone):
        one run at a time writes a zarr output (:mod:`fastunet.io.lock`).
    object_size : float or "auto", optional
        The typical object diameter in the input, in pixels (like cellpose's diameter): the
        input is rescaled so that its objects match the size the model was trained on (its
        file records it, ``extra["object_size"]``) and the results are mapped back to the input
        grid, block by block (:mod:`fastunet.engine.rescale`). ``"auto"`` estimates it from a
        first pass over a central crop (:mod:`fastunet.segmentation.scaling`). Default: the
        input's own scale. A model that records no training object size refuses it.

    Returns
    -------
    zarr.Array, numpy.ndarray, dask.array.Array or a tuple of them
        The written arrays (zarr arrays for a zarr output, numpy arrays for TIFF), or lazy
        dask arrays when ``output`` is None; several kinds as a tuple in the order instances,
        labels, probs (``"both"``: labels, probs).
    """
    seg = Segmenter(model, tile=tile, batch_size=batch_size, device=device, backend=backend, dtype=dtype)
    try:
        result = seg.segment(source, output, axes=axes, output_kind=output_kind, zarr_format=zarr_format,
                             resume=resume, overwrite=overwrite, scheduler=scheduler, workers=workers, gpus=gpus,
                             progress=progress, chunks=chunks, block=block, threads=threads,
                             progress_interval=progress_interval, min_size=min_size, split=split,
                             connect_z=connect_z, label_name=label_name, into_input=into_input,
                             storage_options=storage_options, break_lock=break_lock, object_size=object_size,
                             fill_holes=fill_holes)
    finally:
        if output is not None:
            seg.close()
    return result
