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
import logging
import os
import threading
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from .. import geometry
from ..devices import Device, check_visible, cuda_available, describe_dtype, resolve_device, resolve_dtype
from ..errors import UserError
from ..kinds import pick
from ..objectsize import model_min_confidence, model_object_size
from .memory import check_tile_memory, default_max_step
from .options import OutputKind, SegmentOptions, SegmentResult, Source
from .progress import PROGRESS_INTERVAL, ProgressBar
from .returns import is_lazy, returned, stack_time, wants_lazy
from .scaling import Measure, check_resumed, make_rescale, rescaled_block, resolve, stats_source
from .sinks import MAX_TIFF_BYTES, TiffSink, open_sink
from .warmup import Warmup

if TYPE_CHECKING:
    from typing import Unpack

    import torch

    from ..io.channels import ChannelSpec

__all__ = ["segment", "Segmenter", "NonFiniteWarning", "OUTPUT_KINDS", "SegmentOptions"]

log = logging.getLogger("fastunet.segmentation")

OUTPUT_KINDS = ("instances", "labels", "probs", "both")


class NonFiniteWarning(RuntimeWarning):
    """The input held NaN/Inf values (ignored by the statistics, set to 0 after normalization)."""


# ------------------------------------------------------------------------------ defaults
def _check_tile(tile, config) -> int | tuple[int, ...] | None:
    """``tile=`` checked against the network: an edge (square; a cube for a 3D network), or
    for a 3D network one edge per axis ``(Tz, Ty, Tx)``."""
    if tile is None:
        return None
    if config.spatial_dims == 2 and isinstance(tile, (tuple, list)):
        raise UserError(f"tile= expects one edge for this 2D network (its tiles are square), e.g. tile=572; got "
                        f"{tuple(tile)}.")
    if config.spatial_dims == 2 or isinstance(tile, (int, float, str, bool)):
        edges: tuple = (tile,) * config.spatial_dims
    else:
        try:
            edges = tuple(tile)
        except TypeError:
            edges = ()
        if len(edges) != 3:
            raise UserError(f"tile= expects an edge or three edges (Z, Y, X) for this 3D network; got {tile!r}.")
    names = ("tile size (tile=, the network's input edge)",) * 2 if len(edges) == 2 else tuple(
        f"tile {axis} edge (tile=, the network's input edge along {axis})" for axis in "ZYX")
    for edge, axis_depth, what in zip(edges, config.axis_pools, names):
        try:
            out = geometry.check_tile_size(edge, axis_depth, what=what)
        except (TypeError, ValueError) as exc:
            raise UserError(str(exc)) from None
        q = geometry.grid_step(axis_depth)
        if out < q:
            smallest = geometry.input_size_for_output(q, axis_depth)
            raise UserError(
                f"Tile {edge} gives a {out}-pixel output, too small to step on the {q}-pixel "
                f"max-pool grid; the smallest usable tile is {smallest}."
            )
    return int(tile) if config.spatial_dims == 2 else tuple(int(e) for e in edges)


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
        bare network (percentile normalization), None for the bundled default model, or
        ``"3d"`` for the bundled 3D model (volumes segmented as volumes).
    tile : int or (int, int, int), optional
        The network's input tile edge (572 gives 388-pixel outputs for the paper's network);
        by default the largest that fits the device, never larger than a small image needs.
        A 3D network takes a cube's edge or one edge per axis ``(Tz, Ty, Tx)``.
    batch_size : int, optional
        Tiles per network call (default 4 on CUDA, 2 on the CPU; with OpenVINO they run side
        by side, each on its share of the cores).
    device : str, optional
        ``"cuda:0"``, ``"cpu"``, ...; default CUDA when available.
    backend : {"auto", "triton", "torch", "openvino"}
        ``auto``: the fused Triton network on CUDA (with ``fastunet[gpu]``), OpenVINO on the
        CPU (with ``fastunet[openvino]``), PyTorch otherwise.
    dtype : {"auto", "bf16", "fp16", "tf32", "fp32", "int8"}, optional
        ``auto`` (the default): bf16 on CUDA and on CPUs with bf16 matrix units (AMX-BF16,
        AVX512-BF16), fp32 on other CPUs (:func:`fastunet.devices.resolve_dtype`); which one,
        and why, is :attr:`dtype_choice`, also recorded in a zarr output's attributes.
        ``int8``: the OpenVINO backend with the network quantized after training
        (:mod:`fastunet.engine.openvino_int8`; faster, within looser tolerances of fp32:
        :data:`fastunet.bench.dtypes.INT8_TOLERANCES`).
    """

    def __init__(self, model: Any = None, *, tile: int | None = None, batch_size: int | None = None,
                 device: str | torch.device | None = None, backend: str = "auto", dtype: str | None = None) -> None:
        from ..engine import ModelHandle, resolve_backend
        from ..modelfile import bundled_model, default_model_path

        if model is None:
            model = default_model_path()
        model = bundled_model(model)  # "3d": the bundled 3D model
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
        self.dtype = resolve_dtype(dtype, self.device, self.backend)
        self.dtype_asked = "auto" if dtype is None else dtype
        self.dtype_choice = describe_dtype(dtype, self.dtype, self.device)
        if batch_size is None:
            batch_size = 4 if self.device.type == "cuda" else 2
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size= expects a number of tiles >= 1; got {batch_size!r}.")
        self.batch_size = batch_size
        self.tile = _check_tile(tile, self.config)
        self.model_object_size = model_object_size(self.handle.extra)  # the training object diameter, if recorded
        self.model_min_confidence = model_min_confidence(self.handle.extra)  # min_confidence="auto"
        self._network = None
        self._network_lock = threading.Lock()  # the network may be loaded in a helper thread (Warmup)
        self.last_summary: dict | None = None

    # the network in this process -----------------------------------------------------
    def _check_local_device(self) -> None:
        check_visible(self.device)

    @property
    def network(self):
        """The loaded network on ``device`` (made on first use and kept)."""
        with self._network_lock:
            if self._network is None:
                from ..engine import LoadedNetwork

                self._check_local_device()
                self._network = LoadedNetwork(self.handle, device=self.device, backend=self.backend,
                                              dtype=self.dtype, batch_size=self.batch_size,
                                              use_runner=self._uses_runner(self.device))
            return self._network

    def _uses_runner(self, device) -> bool:
        """Whether the tiles go through a :class:`~fastunet.engine.runner.DeviceRunner`: one
        thread that keeps the network busy with the tiles of every block while the block tasks
        read, label and write (CUDA, and the CPU); not for a 3D network's tiles (called
        directly), nor under the Triton interpreter, whose minutes-long batches a queue would
        only hold up after Ctrl-C."""
        if self.config.spatial_dims != 2:
            return False
        return resolve_device(device).type == "cuda" or self.backend != "triton"

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
            if need > 1 and "C" not in vol.axes:
                hint = 'pass the channel axis with axes= (e.g. axes="CYX" or axes="CZYX")'
            elif vol.channels > need:
                names = f" ({', '.join(vol.channel_names)})" if vol.channel_names else ""
                example = ", ".join(str(i) for i in range(need)) if need > 1 else "1"
                hint = (f"pick the channel(s) the model reads with channels= by index or name{names}, e.g. "
                        f"channels={example if need == 1 else '[' + example + ']'}, or use a model made for "
                        f"{vol.channels} channel(s)")
            else:
                hint = f"use a model made for {vol.channels} channel(s)"
            if getattr(vol, "alt_axes", "") and need == 1:
                hint += (f", or, if its {vol.channels} planes are z slices (the file reader took them for "
                         f'RGB channels), pass axes="{vol.alt_axes}"')
            raise UserError(
                f"The model expects {need} input channel(s) but the input has {vol.channels} "
                f"(axes {vol.axes}, shape {vol.shape}); {hint}."
            )

    def _check_dims(self, vol, object_size) -> None:
        """A 3D network needs a volume (Z, Y, X); object_size= rescales in 2D only."""
        if self.config.spatial_dims != 3:
            if len(vol.spatial_shape) == 3 and vol.spatial_shape[0] > 1:
                log.info("a 2D model segments this stack slice by slice; model=\"3d\" (--model 3d) segments it as "
                         "a volume")
            return
        if len(vol.spatial_shape) != 3:
            raise UserError(
                f"This model is a 3D network ({self.config.describe()}): it segments volumes (Z, Y, X), but the input "
                f"is a 2D image (axes {vol.axes}, shape {vol.shape}); use a 2D model (the default model), or pass "
                'the stack with its Z axis (axes="ZYX").'
            )
        if object_size is not None:
            raise UserError("object_size= rescales images for 2D models; a 3D model segments the volume at its "
                            "own voxel size: leave object_size out.")

    def _max_step(self, remote: bool) -> int:
        if not remote and (self.device.type == "cpu" or cuda_available()):
            return default_max_step(self.config, self.device, dtype=self.dtype, batch_size=self.batch_size,
                                    backend=self.backend)
        if self.config.spatial_dims == 3:
            return 256 if self.device.type == "cuda" else 128
        return 1024 if self.device.type == "cuda" else 512

    def _side_by_side(self, remote: bool) -> int:
        """Tiles the network computes at once, each on its share of the cores, for the default
        tile plan (:func:`~fastunet.engine.plan_layout`'s ``side_by_side``): OpenVINO's streams
        in this process (``batch_size`` of them, at most one per thread), else 1. A 1024 x 1024
        image then runs as two 604 x 1116 tiles, one a core on two cores, instead of one tile on
        one core (0.26 s against 0.42 s warm on the 2-core test machine, the same labels)."""
        if remote or self.backend != "openvino" or self.device.type != "cpu":
            return 1
        from ..engine.openvino_backend import stream_count  # the predictor's own rule (openvino imported lazily)

        return stream_count(self.batch_size)[0]

    def _max_block_voxels(self) -> int:
        # A block is one task and one step of the progress bar. 8 Mvoxel blocks keep a GPU
        # busy for a fraction of a second; on a CPU (1-2 Mpx/s) they would take seconds each,
        # so there blocks are 1 Mvoxel: a bar that moves, and blocks enough for the device
        # runner to compute one while the block threads read the next and write the last.
        return 8 * 1024 * 1024 if self.device.type == "cuda" else 1024 * 1024

    def _layout(self, vol, *, chunks, block, tile=None, remote=False, scale=None):
        from ..engine import plan_layout

        tile = tile if tile is not None else self.tile
        grow = max(1.0, scale.factor**2) if scale is not None else 1.0  # enlarged blocks: fewer input pixels
        pools = self.config.axis_pools if self.config.spatial_dims == 3 else None
        try:
            layout = plan_layout(vol.spatial_shape, self.config.depth, source_chunks=_spatial_chunks(vol),
                                 tile=tile, max_step=self._max_step(remote), chunks=chunks, block=block,
                                 max_block_voxels=int(self._max_block_voxels() / grow), pools=pools,
                                 side_by_side=self._side_by_side(remote))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if not remote:  # a tile that cannot fit is refused now, not after minutes of work
            check_tile_memory(self.config, layout.tile, device=self.device, dtype=self.dtype,
                              batch_size=self.batch_size)
        return layout

    def _network_output(self, kinds, confidence: bool, remote) -> str:
        """What the run asks the network for (:func:`fastunet.kinds.network_output`): the
        compact ``"confidence"`` output where this process's predictor has it (a cluster's
        workers pick their own backend)."""
        from ..engine.backends import backend_outputs
        from ..kinds import network_output

        compact = not remote and "confidence" in backend_outputs(self.backend)
        return network_output(kinds, confidence, compact)

    def _job(self, vol, layout, stats, kinds, store, remote, rescale=None, *, confidence: bool = False):
        from ..engine import Job

        device = self.device
        return Job(source=vol, model=self.handle, layout=layout, stats=stats,
                   output_kind=self._network_output(kinds, confidence, remote),
                   store=store, device=str(device), backend=self.backend,
                   dtype=self.dtype_asked if remote else self.dtype,  # "auto": each worker's own CPU decides
                   batch_size=self.batch_size, use_runner=self._uses_runner(device),
                   network=None if remote else self.network, kinds=kinds, rescale=rescale)

    def _new_rescale(self, vol, layout, scale, remote, block):
        """``(layout, rescale)`` of a new run at ``scale``: the rescaled grid (None at scale 1),
        its tile planned as for any input (a resumed run uses the tile it recorded), and
        ``layout`` with blocks that span its tile steps
        (:func:`~fastunet.segmentation.scaling.rescaled_block`) unless ``block`` was given."""
        if scale is None:
            return layout, None
        rescale = make_rescale(vol, self.config.depth, scale, tile=self.tile, max_step=self._max_step(remote),
                               side_by_side=self._side_by_side(remote))
        if block is None:
            layout = dataclasses.replace(layout, block=rescaled_block(layout, rescale))
        return layout, rescale

    def _segment_crop(self, image, object_size):
        """The class map and the foreground probability of a 2D image (``(Y, X)`` or
        ``(C, Y, X)``) at ``object_size``, for the estimate."""
        import dask

        axes = "CYX" if image.ndim == 3 else "YX"
        labels, probs = dask.compute(*self.segment(image, None, axes=axes, output_kind="labels,probs",
                                                   object_size=object_size, progress=False,
                                                   lazy=False))
        return labels, 1.0 - probs[0].astype("float32")

    def estimate_object_size(self, source: Source, *, axes: str | None = None,
                             storage_options: dict | None = None) -> Measure:
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
    def segment(self, source: Source, output: str | os.PathLike | None = None, *, axes: str | None = None,
                channels: ChannelSpec = None, series: int | None = None, output_kind: OutputKind = None,
                lazy: bool | None = None, zarr_format: int | None = None, resume: bool = False,
                overwrite: bool = False, scheduler: Any = None, workers: int | None = None,
                gpus: str | Sequence[int | str] | None = None, progress: bool | None = True,
                chunks: Sequence[int] | None = None, block: Sequence[int] | None = None, threads: int | None = None,
                max_tiff_bytes: int = MAX_TIFF_BYTES, progress_interval: float = PROGRESS_INTERVAL,
                min_size: int | Literal["auto"] = "auto", split: Literal["watershed"] | None = None, connect_z: bool = False,
                label_name: str | None = None, into_input: bool = False, storage_options: dict | None = None,
                break_lock: bool = False, object_size: float | Literal["auto"] | None = None,
                fill_holes: bool = True, min_confidence: float | Literal["auto"] = "auto") -> SegmentResult:
        """Segment ``source``; the options are :class:`~fastunet.segmentation.options.SegmentOptions`,
        the result is what :func:`segment` returns."""
        from .. import io
        from ..engine.instances import InstanceOptions
        from ..kinds import parse_kinds

        call = {k: v for k, v in locals().items() if k not in ("self", "source", "output", "io", "InstanceOptions",
                                                              "parse_kinds")}
        fields = io.plate_fields(source, storage_options)
        if fields is not None:
            return self._segment_plate(source, fields, output, call)
        t_start = time.perf_counter()
        kinds = parse_kinds(output_kind, self.config.num_classes)
        # A 3D network's objects are volumes: they join across Z whatever connect_z says.
        if isinstance(min_confidence, str) and min_confidence == "auto":
            min_confidence = self.model_min_confidence
        options = InstanceOptions(min_size=min_size, split=split, connect_z=connect_z or self.config.spatial_dims == 3,
                                  fill_holes=fill_holes, min_confidence=min_confidence)
        _check_cluster(scheduler, workers, gpus)
        if output is not None and scheduler is None and workers is None and gpus is None:
            from ..engine import active_client

            scheduler = active_client()  # the dask Client the caller made active runs file outputs
        remote = scheduler is not None or workers is not None or gpus is not None
        device = self._run_device(gpus)
        vol = io.open_volume(source, axes=axes, storage_options=storage_options, channels=channels, series=series,
                             timepoints=True)
        self._check_volume(vol)
        self._check_dims(vol, object_size)
        if not remote:
            self._check_local_device()
        first = vol.at_time(0) if vol.timepoints > 1 else vol
        scale = resolve(self._segment_crop, first, object_size, self.model_object_size)  # None: scale 1
        options = dataclasses.replace(options, typical_size=scale.object_size if scale else self.model_object_size)
        if output is None and into_input:
            output = _into_input_path(vol, label_name)
        if output is None:
            eager = not wants_lazy(source, lazy)
            result = self._lazy(vol, kinds=kinds, options=options, resume=resume, overwrite=overwrite, remote=remote,
                                chunks=chunks, block=block, scale=scale)
            return returned(result, source, vol, kinds, lazy=not eager, threads=threads)

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

    def _segment_plate(self, plate, fields: list[str], output, call: dict) -> dict[str, Any]:
        """An HCS plate or well: every field into its own labels group (``into_input``, or an
        ``output`` at ``<plate>/labels/<name>``), or lazily (``output=None``): a dict by field."""
        from pathlib import Path

        into = call["into_input"]
        if output is not None:
            out = Path(output)
            if out.parent.name != "labels" or out.parent.parent.resolve() != Path(plate).resolve():
                raise UserError(f"{str(plate)!r} is an OME-Zarr HCS plate (or well) of {len(fields)} field images: "
                                "each is segmented into its own labels group; pass into_input=True (or output="
                                f"{str(Path(plate) / 'labels' / 'NAME')!r}), or output=None for the arrays.")
            into, call = True, {**call, "label_name": call["label_name"] or out.name}
        root = str(plate).rstrip("/")
        results = {}
        for i, field in enumerate(fields):
            log.info("field %d/%d: %s", i + 1, len(fields), field)
            results[field[len(root):].strip("/")] = self.segment(field, None, **{**call, "into_input": into})
        return results

    def _write(self, sink, vol, kinds, options, t_start, *, device, remote, run, chunks, block, progress,
               progress_interval, scale=None):
        """Plan, set up, create the output, run the block tasks and finish the sink (a time
        series: each time point in turn, :meth:`_write_series`)."""
        if isinstance(sink, TiffSink) and sink.complete:  # resume=True: a TIFF written by an earlier run
            self.last_summary = {"blocks": 1, "computed": 0, "skipped": 1}
            return sink.result()
        if vol.timepoints > 1:
            return self._write_series(sink, vol, kinds, options, t_start, device=device, remote=remote, run=run,
                                      chunks=chunks, block=block, progress=progress,
                                      progress_interval=progress_interval, scale=scale)
        # On the CPU the network is loaded and compiled for the tile while the statistics are taken
        warmup = None
        if not remote and scale is None and self.device.type == "cpu":
            split = "instances" in kinds and options.split is not None  # the watershed's imports
            warmup = Warmup(self, ("scipy.ndimage", "skimage.segmentation") if split else (),
                            self._network_output(kinds, options.confidence, remote))
        try:
            layout, stats, rescale = self._plan(vol, sink, chunks=chunks, block=block, remote=remote, scale=scale,
                                                on_layout=warmup and warmup.start)
        except BaseException:
            if warmup is not None:
                warmup.join(raising=False)
            raise
        if warmup is not None:
            warmup.join()  # a loading error is raised here, before the output is made
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
                           min_confidence=options.min_confidence, **sink.cleanup)
        return sink.finish(summary, source=vol)

    def _write_series(self, sink, vol, kinds, options, t_start, **run):
        """A time series: each time point is a run of its own into the series' output (its own
        plan, normalization and block records: a resumed run skips the finished time points
        and blocks), then the series' output is finished."""
        if sink.complete:
            done = sink.recorded.get("summary") or {}
            self.last_summary = {**done, "computed": 0, "skipped": done.get("blocks")}
            return sink.result()
        parts = []
        for t in range(vol.timepoints):
            log.info("time point %d/%d", t + 1, vol.timepoints)
            self._write(sink.at_time(t), vol.at_time(t), kinds, options, time.perf_counter(), **run)
            parts.append(self.last_summary or {})
        summary = {**parts[-1], "timepoints": vol.timepoints, "seconds": round(time.perf_counter() - t_start, 3)}
        for key in ("blocks", "computed", "skipped", "megapixels", "nonfinite", "objects"):
            if all(key in p for p in parts):
                summary[key] = sum(p[key] for p in parts)
        summary["mpx_per_s"] = round(summary.get("megapixels", 0) / summary["seconds"], 3) if summary["seconds"] else None
        self.last_summary = summary
        return sink.finish(summary, source=vol)

    # the parts of the call ------------------------------------------------------------------
    def _run_device(self, gpus) -> Device:
        """The device the tasks use: ours, or ``cuda:0`` of each GPU worker (it sees only its GPU)."""
        if gpus is None:
            return self.device
        from ..engine import parse_gpus

        gpu_list = parse_gpus(gpus)
        import torch

        if not cuda_available() or torch.cuda.device_count() < max(int(g) for g in gpu_list) + 1:
            raise UserError(
                f'gpus="{",".join(gpu_list)}" asks for CUDA GPUs this machine does not have '
                f"({torch.cuda.device_count()} visible); use workers=N for CPU worker processes."
            )
        return Device("cuda:0")

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
        if vol.timepoints > 1:  # each time point on its own, stacked along a leading axis
            return stack_time([self._lazy(vol.at_time(t), kinds=kinds, options=options, resume=resume,
                                          overwrite=overwrite, remote=remote, chunks=chunks, block=block, scale=scale)
                               for t in range(vol.timepoints)], kinds)
        layout = self._layout(vol, chunks=chunks, block=block, remote=remote, scale=scale)
        layout, rescale = self._new_rescale(vol, layout, scale, remote, block)
        stats = normalization_stats(stats_source(vol, rescale), self.normalization)
        _warn_nonfinite(stats.nonfinite, sampled=True)
        job = dataclasses.replace(self._job(vol, layout, stats, kinds, None, remote, rescale,
                                            confidence=options.confidence), instances=options)
        return pick(kinds, lazy_arrays(job))

    def _expect(self, vol, kinds, options, resume, chunks, block) -> dict:
        """What a resumed output must have recorded: this input (its fingerprint), shape, kinds,
        classes, model, the instance options that shape the recorded blocks (split,
        connect_z, min_confidence when it is on; another min_size only redoes the merge), and
        the tile, chunks and block when they are given."""
        from .. import io
        from ..kinds import kinds_record

        expect: dict[str, Any] = {}
        if resume:  # the input must be the one the interrupted run read (or the complete output's)
            expect["input_id"] = io.input_fingerprint(vol)
        expect.update({"shape": list(vol.spatial_shape), "output": kinds_record(kinds),
                       "num_classes": self.config.num_classes, "model": self.handle.key})
        if "instances" in kinds:
            expect.update(split=options.split, connect_z=options.connect_z, fill_holes=options.fill_holes)
            if options.confidence:  # the recorded blocks must hold their objects' probability sums
                expect["min_confidence"] = options.min_confidence
        if self.tile is not None:
            expect["tile"] = list(geometry.tile_edges(self.config, self.tile))
        for key, value in (("chunks", chunks), ("block", block)):
            if value is not None:
                expect[key] = [int(v) for v in value]
        return expect

    def _plan(self, vol, sink, *, chunks, block, remote, scale=None, on_layout=None):
        """The layout, normalization constants and rescaling (None at scale 1): those of the run
        being resumed, or new ones; ``on_layout(layout)`` is called once the layout is known,
        before the statistics are taken."""

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
            if on_layout is not None:
                on_layout(layout)
            stats = NormStats.from_record(meta)
            if stats is None:  # a time point of a series not started yet
                return layout, normalization_stats(stats_source(vol, rescale), self.normalization), rescale
            return layout, stats, rescale
        layout = self._layout(vol, chunks=chunks, block=block, remote=remote, scale=scale)
        layout, rescale = self._new_rescale(vol, layout, scale, remote, block)
        if sink.block_multiple and any(m > 1 for m in sink.block_multiple):
            from ..io.pyramid import aligned_block

            layout = dataclasses.replace(layout, block=aligned_block(layout.block, layout.chunks, sink.block_multiple))
        if isinstance(sink, TiffSink):
            sink.check_size(vol.spatial_shape, self.config.num_classes)
        if on_layout is not None:
            on_layout(layout)
        return layout, normalization_stats(stats_source(vol, rescale), self.normalization), rescale

    def _run(self, sink, vol, layout, stats, blocks, *, device, remote, client, run, progress, progress_interval,
             rescale=None, scale=None):
        """Create the output, run the block tasks with a progress bar; on a failure the sink
        decides what is left (an interrupt leaves everything, to be resumed)."""
        from ..engine import execute

        attrs = {"model": self.handle.key, "model_path": self.handle.path, "tile": list(layout.tile),
                 "block": list(layout.block), "normalization": self.normalization.to_dict(),
                 **stats.record(), "object_size": None, "backend": self.backend,
                 "dtype": self._dtype_record(remote)}
        if scale is not None:
            attrs.update(scale.record(), rescale_tile=list(rescale.tile))
        sink.create(source=vol, num_classes=self.config.num_classes, chunks=layout.chunks, attrs=attrs, layout=layout)
        try:
            job = sink.prepare(self._job(vol, layout, stats, sink.kinds, sink.store, remote, rescale,
                                         confidence=sink.options.confidence))
            if run["gpus"] is not None:
                job = dataclasses.replace(job, device=str(device), use_runner=self._uses_runner(device), network=None)
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

    def _dtype_record(self, remote) -> str:
        """What the output records of the dtype: the choice and its reason, or, for a cluster
        whose workers choose for their own CPUs, that."""
        if remote and self.dtype_asked == "auto" and self.device.type == "cpu":
            return "auto (each worker: bf16 on CPUs with bf16 matrix units, else fp32)"
        return self.dtype_choice

    def _summary(self, layout, blocks, summaries, t_start, *, device, scheduler, workers, gpus) -> dict:
        from ..engine import describe_scheduler, parse_gpus

        seconds = time.perf_counter() - t_start
        voxels = sum(s["voxels"] for s in summaries)
        return {
            "blocks": layout.num_blocks, "computed": len(summaries), "skipped": layout.num_blocks - len(blocks),
            "megapixels": voxels / 1e6, "seconds": round(seconds, 3),
            "mpx_per_s": round(voxels / 1e6 / seconds, 3) if seconds > 0 else None,
            "device": "gpus " + ",".join(parse_gpus(gpus)) if gpus is not None else str(device),
            "backend": self.backend, "dtype": self.dtype,
            "dtype_choice": self._dtype_record(scheduler is not None or workers is not None or gpus is not None),
            "tile": list(layout.tile), "block": list(layout.block),
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


def segment(source: Source, model: Any = None, output: str | os.PathLike | None = None, *, tile: int | None = None,
            batch_size: int | None = None, device: str | torch.device | None = None, backend: str = "auto",
            dtype: str | None = None, **options: Unpack[SegmentOptions]) -> SegmentResult:
    """Segment a volume with overlap-tile inference (seamless: identical to one pass of the
    network over the whole mirrored image).

    Parameters
    ----------
    source : str, path-like, numpy.ndarray, dask.array.Array, xarray.DataArray or zarr.Array
        A zarr v2/v3 array or group (OME-Zarr: level 0; an HCS plate or well: every field) or
        its URL (``s3://``, ``gs://``, ``https://``, ``memory://``), a TIFF / OME-TIFF file
        (``series=`` picks an image of a multi-series file), a PNG or JPEG file, or an array.
        A time axis (T > 1) is segmented one time point after the other.
    model : str, path-like, ModelBundle, ReferenceUNet or None
        Model file, in-memory network (see :class:`Segmenter`), or None for the bundled
        default model.
    output : str, path-like or None
        A zarr folder (``.zarr``; ``.ome.zarr`` or an OME-Zarr input: an OME-Zarr image with
        label images) or URL (``s3://bucket/out.zarr``), ``<OME-Zarr input>/labels/<name>`` (a
        label image in the input's own labels group; a plate: every field's), a local
        ``.tif``/``.tiff`` file (ImageJ; ``.ome.tif``: OME-TIFF; results that fit in memory),
        or None: arrays returned, nothing written. Other extensions are refused.
    tile, batch_size, device, backend, dtype
        See :class:`Segmenter`.
    **options
        The options of the call (:class:`~fastunet.segmentation.options.SegmentOptions`):
        ``axes``, ``channels``, ``series``, ``output_kind``, ``lazy``, ``resume``,
        ``overwrite``, ``zarr_format``, ``label_name``, ``into_input``, ``object_size``,
        ``min_size``, ``fill_holes``, ``min_confidence``, ``split``, ``connect_z``, ``scheduler``,
        ``workers``, ``gpus``, ``threads``, ``progress``, ``chunks``, ``block``, ``storage_options``,
        ``break_lock``...

    Returns
    -------
    zarr.Array, numpy.ndarray, dask.array.Array, xarray.DataArray, a tuple of them, or a dict
        The written arrays (zarr arrays for a zarr output, numpy arrays for TIFF); with
        ``output=None``, what came in: numpy arrays for a numpy input, a ``DataArray`` (its
        dims, coordinates and attrs) for an xarray input, lazy dask arrays otherwise
        (``lazy=`` chooses). Several kinds: a tuple in the order instances, labels, probs
        (``"both"``: labels, probs). A time series has a leading time axis; an HCS plate gives
        a dict by field path.
    """
    seg = Segmenter(model, tile=tile, batch_size=batch_size, device=device, backend=backend, dtype=dtype)
    result: SegmentResult = None
    try:
        result = seg.segment(source, output, **options)
        return result
    finally:
        if not is_lazy(result):  # lazy arrays keep the network for their computation
            seg.close()
