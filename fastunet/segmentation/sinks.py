"""Where a segmentation goes: a zarr output (resumable), a TIFF file, each with its own rules.

A sink is opened once the input is known (:func:`open_sink`); it checks the output location
before anything is computed, says which blocks are already done (a resumed zarr output) and
which layout and statistics an interrupted run used, creates the output once the network or
the cluster is ready, receives the blocks' results, runs the instance stage (the merge of the
blocks' objects and the relabel pass), decides what a failure leaves behind, and writes
what remains at the end.

* :class:`ZarrSink` — block tasks write their chunks and record themselves done; a failure
  before the first recorded block removes an output this run created (an interrupt removes
  nothing: the output stays, to be resumed); with instances the merge and the relabel pass
  follow, both resumable; the output is marked complete last.
* :class:`TiffSink` — results are assembled in memory (refused beyond ``max_bytes``) and the
  TIFF is written at the end, so a failure leaves nothing; so with ``resume=True`` a TIFF
  output that exists is finished (:func:`finished_tiff`: read back, nothing computed) and
  one that does not is made.

A time series (T > 1) is one output with a leading ``t`` axis, written one time point after
the other: :meth:`ZarrSink.at_time` / :meth:`TiffSink.at_time` give the sink of one time point
(its own layout plan, normalization, block records, instance stage and completion, so a
resumed run skips the finished time points and the finished blocks of the next one), and
the series' own :meth:`finish` marks the whole output complete (or writes the TIFF).

(``output=None``, lazy dask arrays, needs no sink: nothing is written.)
"""

from __future__ import annotations

import dataclasses
import math
import uuid

import numpy as np

from ..errors import UserError
from ..kinds import kinds_record, pick
from ..normalization import NormStats

__all__ = ["ZarrSink", "TiffSink", "open_sink", "TIFF_SUFFIXES", "MAX_TIFF_BYTES"]

TIFF_SUFFIXES = (".tif", ".tiff")
MAX_TIFF_BYTES = 4 * 1024**3
_BYTES = {"instances": 8, "labels": 1}  # per voxel in memory (ids and their block records)


class ZarrSink:
    """A zarr output: created after set-up, written by the block tasks, resumable.

    After :meth:`open`, ``done`` holds the recorded blocks, and for a resumed output
    ``recorded`` the attributes of the interrupted run (its tile, block, chunks and
    normalization constants, which this run must reuse).
    """

    def __init__(self, path, *, kinds: tuple, resume: bool, overwrite: bool, zarr_format: int | None,
                 options=None, label_name: str | None = None, into_input: bool = False,
                 break_lock: bool = False) -> None:
        self.path = path
        self.kinds = kinds
        self.output_kind = kinds_record(kinds)
        self.break_lock = break_lock
        self.lock = None
        self.resume = resume
        self.overwrite = overwrite
        self.zarr_format = zarr_format
        self.options = options
        self.label_name = label_name
        self.into_input = into_input
        self.store = None
        self.recorded: dict | None = None
        self.done: set[str] = set()
        self.created = False
        self.started = False
        self.block_multiple: tuple | None = None
        self.series = None
        self.count = 0
        self._fingerprint = None  # (source, future of its fingerprint), taken while the statistics are
        self.cleanup: dict = {}

    def at_time(self, t: int) -> "ZarrSink":
        """The sink of time point ``t`` of a time series (see the module)."""
        return _ZarrTimePoint(self, t)

    def open(self, source) -> None:
        """Take the output's lock (one writer per output, :mod:`fastunet.io.lock`; released by
        :meth:`close`), and reopen the output of an interrupted run (``resume=True``)."""
        from ..io.lock import lock_output
        from ..io.pyramid import block_multiple, input_levels

        self.block_multiple = block_multiple(input_levels(source), len(source.spatial_shape))
        self.series = source if source.timepoints > 1 else None
        self.lock = lock_output(self.path, break_lock=self.break_lock)
        try:
            if self.resume and self.path.exists():
                self._reopen()
        except BaseException:
            self.close()
            raise
        if self.store is None:
            self._start_fingerprint(source)

    def _start_fingerprint(self, source) -> None:
        """Take the input's fingerprint, which :meth:`create` records, in a thread of its own: it
        reads and hashes chunks of the input while the segmenter plans the run and takes the
        normalization statistics (an error it meets is raised by :meth:`create`)."""
        from concurrent.futures import ThreadPoolExecutor

        from .. import io

        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastunet-fingerprint")
        self._fingerprint = (source, pool.submit(io.input_fingerprint, source))
        pool.shutdown(wait=False)

    def _reopen(self) -> None:
        from .. import io

        self.store = io.open_output(self.path, expect={})  # check_output compared the record
        self.recorded = self.store.attrs
        self.done = self.store.done()
        summary = self.recorded.get("summary") or {}
        for name in ("min_size", "min_confidence"):
            was, now = summary.get(name), getattr(self.options, name)
            if self.complete and "instances" in self.kinds and was is not None and was != now:
                raise UserError(
                    f"Cannot resume {str(self.path)!r}: it was completed with {name}={was}, this run has "
                    f"{name}={now}; rerun with {name}={was}, or start over with overwrite=True."
                )
        if self.complete:
            io.InstanceRecords(self.path).remove()  # left by a run stopped right after completing

    def close(self) -> None:
        """Release the output's lock (after the run, however it ended)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def complete(self) -> bool:
        return self.store is not None and bool(self.recorded.get("complete"))

    def result(self):
        store = self.store
        return pick(self.kinds, {"instances": store.instances, "labels": store.labels, "probs": store.probs})

    def create(self, *, source, num_classes: int, chunks, attrs: dict, layout=None) -> None:
        """Create the output (unless resumed); call once the network or cluster is ready, so
        that a failing set-up leaves nothing behind."""
        from .. import io

        if self.store is not None:
            return
        if "instances" in self.kinds:
            attrs = {**attrs, **self.options.to_dict()}
        extra = {"label_name": self.label_name} if self.label_name else {}
        if self._fingerprint is not None and self._fingerprint[0] is source:
            extra["input_id"] = self._fingerprint[1].result()
        self.store = io.create_output(self.path, source=source, num_classes=num_classes, output=self.kinds,
                                      chunks=chunks, zarr_format=self.zarr_format, overwrite=self.overwrite,
                                      attrs=attrs, block=layout.block if layout is not None else None,
                                      into_input=self.into_input, **extra)
        self.created = True

    def prepare(self, job):
        """The job of the predict stage: with instances, the records to write."""
        if "instances" not in self.kinds:
            return job
        from .. import io

        return dataclasses.replace(job, records=io.InstanceRecords(self.store.path), instances=self.options)

    def on_result(self, summary: dict) -> None:  # the block task wrote its chunks itself
        pass

    def instances_stage(self, job, run) -> None:
        """Merge the recorded blocks' objects (once; again for another ``min_size`` or
        ``min_confidence``) and run the relabel pass over the blocks not yet relabelled
        (``run(job, blocks)``)."""
        if "instances" not in self.kinds:
            return
        from ..engine.instance_tasks import merge_recorded, relabel_name

        records, layout = job.records, job.layout
        info = records.merge_info()
        options = self.options
        if info is None or (info["min_size"], info.get("min_confidence", 0.0)) != (options.min_size,
                                                                                  options.min_confidence):
            try:
                result = merge_recorded(layout, records, self.options)
            except UserError as exc:
                raise UserError(f"{exc} The network's results are kept in {str(self.path)!r}: run again with "
                                "that min_size and resume=True.") from None
            if result.lut.dtype != self.store.instances.dtype:
                self._retype(str(result.lut.dtype))
            records.put_merge(result, generation=uuid.uuid4().hex[:12])
            info = records.merge_info()
        self.count = info["count"]
        self.cleanup = {k: info[k] for k in ("min_size_used", "objects_removed", "holes_filled", "objects_unsure")
                        if k in info}
        done = self.store.done()
        todo = [b for b in layout.blocks() if relabel_name(info, b.name) not in done]
        run(dataclasses.replace(job, stage="relabel", store=self.store), todo)

    def _retype(self, dtype: str) -> None:
        """Recreate the (empty) instance arrays with ``dtype`` (more objects than uint32 numbers)."""
        import zarr

        from .. import io
        from ..io.output_layout import retype_instances

        retype_instances(zarr.open_group(str(self.store.path), mode="r+"), self.store.attrs, dtype)
        self.store = io.SegmentationStore(self.store.path)

    def abort(self, exc: BaseException, *, remote: bool) -> None:
        """After a failure: remove an output this run created that holds no finished block.

        The threaded scheduler has stopped every task when the run raises; a cluster's tasks
        may still run, so there only a failure before any was submitted removes it. Not
        called for an interrupt (Ctrl-C): the output stays, to be resumed.
        """
        from .. import io

        if self.created and (not self.started or not remote) and not self.store.done():
            try:
                io.discard_output(self.store.path)
            except (OSError, UserError) as cleanup:  # keep the original error; say what is left
                exc.add_note(f"(the unfinished output {str(self.store.path)!r} could not be removed: {cleanup})")

    def finish(self, summary: dict, *, source):
        from .. import io

        self.store.mark_complete(summary)
        io.InstanceRecords(self.store.path).remove()
        return self.result()


class TiffSink:
    """A TIFF output: the blocks' arrays assembled in memory, written at the end."""

    store = None
    recorded = None
    done: set = frozenset()
    complete = False
    block_multiple = None

    def __init__(self, path, *, kinds: tuple, overwrite: bool, max_bytes: int = MAX_TIFF_BYTES,
                 options=None) -> None:
        self.path = path
        self.kinds = kinds
        self.output_kind = kinds_record(kinds)
        self.overwrite = overwrite
        self.max_bytes = max_bytes
        self.options = options
        self.layout = None
        self.labels = self.probs = None
        self.objects: dict = {}
        self.started = False
        self.count = 0
        self.cleanup: dict = {}
        self.series = None
        self.frames: dict = {}  # a time series: time point -> its arrays

    def open(self, source) -> None:
        self.series = source if source.timepoints > 1 else None

    def at_time(self, t: int) -> "TiffSink":
        """The sink of time point ``t`` of a time series: its arrays are kept for :meth:`finish`."""
        part = TiffSink(self.path, kinds=self.kinds, overwrite=self.overwrite,
                        max_bytes=self.max_bytes // self.series.timepoints, options=self.options)
        part.series, part.frames, part.time = None, self.frames, t
        return part

    def close(self) -> None:
        pass

    def check_size(self, spatial_shape, num_classes: int) -> None:
        """Refuse a result too large to assemble in memory."""
        per_voxel = sum(_BYTES.get(k, 2 * num_classes) for k in self.kinds)
        nbytes = math.prod(spatial_shape) * per_voxel
        if nbytes > self.max_bytes:
            raise UserError(
                f"The result ({nbytes / 1024**3:.1f} GiB) is too large for a TIFF output, which is "
                f"built in memory (limit {self.max_bytes / 1024**3:.1f} GiB); write a zarr output "
                'instead, e.g. output="result.zarr".'
            )

    def create(self, *, source, num_classes: int, chunks, attrs: dict, layout=None) -> None:
        self.layout = layout
        spatial = layout.shape if layout.ndim == 3 else (1, *layout.shape)
        self.labels = np.zeros(spatial, np.uint8) if "labels" in self.kinds else None
        self.probs = np.zeros((num_classes, *spatial), np.float16) if "probs" in self.kinds else None

    def prepare(self, job):
        return dataclasses.replace(job, instances=self.options) if "instances" in self.kinds else job

    def on_result(self, summary: dict) -> None:
        """Place one block's arrays (the tasks return them: ``job.store`` is None)."""
        region = self.layout.block_at(summary["index"]).slices
        region = region if self.layout.ndim == 3 else (slice(0, 1), *region)
        if self.labels is not None:
            self.labels[region] = summary["labels"]
        if self.probs is not None:
            self.probs[(slice(None), *region)] = summary["probs"]
        if summary.get("objects") is not None:
            self.objects[tuple(summary["index"])] = summary["objects"]

    def instances_stage(self, job, run) -> None:
        """Merge the blocks' objects in memory (the relabel happens in :meth:`finish`)."""
        if "instances" in self.kinds:
            from ..engine.instance_tasks import merge_returned

            self.merged = merge_returned(self.layout, self.objects, self.options)
            self.count = self.merged.count
            self.cleanup = self.merged.summary()

    def abort(self, exc: BaseException, *, remote: bool) -> None:
        pass  # nothing was written

    def finish(self, summary: dict, *, source):
        """Write the TIFF (a time point of a series: keep its arrays for the series' finish)."""
        from .. import io

        if self.series is not None:  # every time point done: one TIFF with a T axis
            arrays = {k: np.stack([self.frames[t][k] for t in range(self.series.timepoints)])
                      for k in ("instances", "labels", "probs") if k in self.kinds}
            if "probs" in arrays:
                arrays["probs"] = np.moveaxis(arrays["probs"], 0, 1)  # (K, T, ...): write_tiff's order
            axes = "T" + source.spatial_axes
        else:
            arrays, axes = self._assemble(), source.spatial_axes
            if getattr(self, "time", None) is not None:
                self.frames[self.time] = arrays
                return pick(self.kinds, arrays)
        io.write_tiff(self.path, **arrays, axes=axes, overwrite=self.overwrite, pixel=io.pixel_size(source))
        return pick(self.kinds, arrays)

    def _assemble(self) -> dict:
        """The arrays of the finished run (object ids relabelled), by kind."""
        arrays = {"labels": self.labels, "probs": self.probs}
        if self.layout.ndim == 2:
            arrays = {k: None if v is None else (v[0] if k == "labels" else v[:, 0]) for k, v in arrays.items()}
        if "instances" in self.kinds:
            from ..engine.instance_tasks import relabel_returned

            ids = np.zeros(self.layout.shape, self.merged.lut.dtype)
            for block in self.layout.blocks():
                ids[block.slices] = relabel_returned(self.layout, self.objects, self.merged, block)
            arrays["instances"] = ids
            self.objects = {}
        return {k: v for k, v in arrays.items() if v is not None}


class _FinishedTiff(TiffSink):
    """A TIFF output that a previous run wrote (``resume=True``): its arrays, read back."""

    complete = True
    recorded = {"summary": {}}

    def __init__(self, path, *, kinds: tuple, arrays: dict) -> None:
        super().__init__(path, kinds=kinds, overwrite=False)
        self.arrays = arrays

    def result(self):
        return pick(self.kinds, self.arrays)


def finished_tiff(path, *, kinds: tuple, source) -> TiffSink:
    """The TIFF output at ``path`` of a finished run, for ``resume=True``: refused unless it is
    fastunet's and holds every kind with this input's shape."""
    import tifffile

    from .. import io
    from ..io.outputs import fastunet_attrs

    shape = ((source.timepoints,) if source.timepoints > 1 else ()) + source.spatial_shape
    arrays = {}
    for kind, target in io.tiff_paths(path, kinds).items():
        if fastunet_attrs(target) is None:
            raise UserError(f"Cannot resume {str(target)!r}: it is not a fastunet output (or missing); choose the "
                            "output of the earlier run, or start over with overwrite=True.")
        with tifffile.TiffFile(str(target)) as tif:
            data, axes = tif.series[0].asarray(), tif.series[0].axes
        if "C" in axes:  # probabilities: classes first, as returned
            data = np.moveaxis(data, axes.index("C"), 0)
        if data.shape[-len(shape):] != shape or data.ndim != len(shape) + (kind == "probs"):
            raise UserError(f"Cannot resume {str(target)!r}: it holds a {data.shape} result, this input's would be "
                            f"{shape}; it was made from another input: start over with overwrite=True.")
        arrays[kind] = data
    return _FinishedTiff(path, kinds=kinds, arrays=arrays)


class _ZarrTimePoint(ZarrSink):
    """Time point ``t`` of a time-series zarr output: the series sink's output, lock and
    options; its own view of the store (:meth:`~fastunet.io.SegmentationStore.at_time`)."""

    def __init__(self, series: ZarrSink, t: int) -> None:
        self.__dict__.update(series.__dict__)
        self.parent, self.time, self.lock, self.series = series, int(t), None, None
        self.created = False  # only the first time point creates the output
        self.started, self.count = False, 0
        self.store = series.store.at_time(t) if series.store is not None else None
        self.recorded = self.store.attrs if self.store is not None else None
        self.done = self.store.done() if self.store is not None and not self.complete else set()

    def create(self, *, source, num_classes: int, chunks, attrs: dict, layout=None) -> None:
        """Create the series' output (the first time point), then record this time point's
        normalization constants."""
        parent = self.parent
        if parent.store is None:
            parent.create(source=parent.series, num_classes=num_classes, chunks=chunks,
                          attrs={**attrs, **dict.fromkeys(NormStats.RECORD_KEYS)}, layout=layout)
            self.created = True
        self.store = parent.store.at_time(self.time)
        self.store.record_time_point({k: attrs[k] for k in NormStats.RECORD_KEYS})

    def prepare(self, job):
        if "instances" not in self.kinds:
            return job
        from .. import io

        records = io.InstanceRecords(self.store.path, part=f"t{self.time}")
        return dataclasses.replace(job, records=records, instances=self.options)

    def _retype(self, dtype: str) -> None:
        if self.time > 0:
            raise UserError(f"Time point {self.time} holds more objects than {self.store.instances.dtype} ids can "
                            "number; segment the time points into separate outputs.")
        super()._retype(dtype)
        self.store = self.store.at_time(self.time)

    def finish(self, summary: dict, *, source):
        from .. import io

        self.store.mark_complete(summary)
        io.InstanceRecords(self.store.path, part=f"t{self.time}").remove()


def open_sink(output, *, source, kinds: tuple, resume: bool, overwrite: bool, zarr_format: int | None,
              expect: dict, max_tiff_bytes: int = MAX_TIFF_BYTES, options=None, label_name: str | None = None,
              into_input: bool = False, storage_options: dict | None = None, break_lock: bool = False):
    """Check ``output`` for a segmentation of ``source`` (:func:`fastunet.io.check_output`:
    never the input, no overwrite without ``overwrite=True``, a resume only of a matching
    output ``expect``) and open its sink; nothing is computed or written yet.

    ``into_input`` (or an ``output`` at ``<OME-Zarr input>/labels/<name>``) writes one label
    image into the input's own labels group."""
    from .. import io

    into_input = into_input or io.labels_of_input(output, source)
    if resume and str(output).lower().endswith(TIFF_SUFFIXES) and "://" not in str(output):
        from pathlib import Path

        if Path(output).expanduser().exists():
            return finished_tiff(Path(output).expanduser(), kinds=kinds, source=source)
        resume = False  # TIFF outputs are written at once: one that is missing is made
    path = io.check_output(output, source=source, overwrite=overwrite, resume=resume, expect=expect,
                           output_kind=kinds, into_input=into_input, storage_options=storage_options,
                           label_name=label_name)
    if path.suffix.lower() in TIFF_SUFFIXES:
        sink = TiffSink(path, kinds=kinds, overwrite=overwrite, max_bytes=max_tiff_bytes, options=options)
    else:
        sink = ZarrSink(path, kinds=kinds, resume=resume, overwrite=overwrite, zarr_format=zarr_format,
                        options=options, label_name=label_name, into_input=into_input, break_lock=break_lock)
    sink.open(source)
    return sink
