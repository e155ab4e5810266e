"""Where a segmentation goes: a zarr output (resumable), a TIFF file, each with its own rules.

A sink is opened once the input is known (:func:`open_sink`); it checks the output location
before anything is computed, says which blocks are already done (a resumed zarr output) and
which layout and statistics an interrupted run used, creates the output once the network or
the cluster is ready, receives the blocks' results, decides what a failure leaves behind,
and writes what remains at the end.

* :class:`ZarrSink` — block tasks write their chunks and record themselves done; a failure
  before the first recorded block removes an output this run created (an interrupt removes
  nothing: the output stays, to be resumed); the output is marked complete last.
* :class:`TiffSink` — results are assembled in memory (refused beyond ``max_bytes``) and the
  TIFF is written at the end, so a failure leaves nothing.

(``output=None``, lazy dask arrays, needs no sink: nothing is written.)
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserError

__all__ = ["ZarrSink", "TiffSink", "open_sink", "pick", "TIFF_SUFFIXES", "MAX_TIFF_BYTES"]

TIFF_SUFFIXES = (".tif", ".tiff")
MAX_TIFF_BYTES = 4 * 1024**3


def pick(kind: str, labels, probs):
    """What a segmentation returns for ``output_kind``: labels, probabilities, or both."""
    return labels if kind == "labels" else probs if kind == "probs" else (labels, probs)


class ZarrSink:
    """A zarr output: created after set-up, written by the block tasks, resumable.

    After :meth:`open`, ``done`` holds the recorded blocks, and for a resumed output
    ``recorded`` the attributes of the interrupted run (its tile, block, chunks and
    normalization constants, which this run must reuse).
    """

    def __init__(self, path, *, output_kind: str, resume: bool, overwrite: bool, zarr_format: int,
                 break_lock: bool = False) -> None:
        self.path = path
        self.break_lock = break_lock
        self.lock = None
        self.output_kind = output_kind
        self.resume = resume
        self.overwrite = overwrite
        self.zarr_format = zarr_format
        self.store = None
        self.recorded: dict | None = None
        self.done: set[str] = set()
        self.created = False
        self.started = False

    def open(self) -> None:
        """Take the output's lock (one writer per output, :mod:`fastunet.io.lock`; released by
        :meth:`close`), and reopen the output of an interrupted run (``resume=True``)."""
        from .. import io
        from ..io.lock import lock_output

        self.lock = lock_output(self.path, break_lock=self.break_lock)
        try:
            if self.resume and self.path.exists():
                self.store = io.open_output(self.path, expect={})  # check_output compared the record
                self.recorded = self.store.attrs
                self.done = self.store.done()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the output's lock (after the run, however it ended)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def complete(self) -> bool:
        return self.store is not None and bool(self.recorded.get("complete"))

    def result(self):
        return pick(self.output_kind, self.store.labels, self.store.probs)

    def create(self, *, source, num_classes: int, chunks, attrs: dict) -> None:
        """Create the output (unless resumed); call once the network or cluster is ready, so
        that a failing set-up leaves nothing behind."""
        from .. import io

        if self.store is not None:
            return
        self.store = io.create_output(self.path, source=source, num_classes=num_classes, output=self.output_kind,
                                      chunks=chunks, zarr_format=self.zarr_format, overwrite=self.overwrite,
                                      attrs=attrs)
        self.created = True

    def on_result(self, summary: dict) -> None:  # the block task wrote its chunks itself
        pass

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

    def finish(self, summary: dict, *, spatial_axes: str):
        self.store.mark_complete(summary)
        return self.result()


class TiffSink:
    """A TIFF output: the blocks' arrays assembled in memory, written at the end."""

    store = None
    recorded = None
    done: set = frozenset()
    complete = False

    def __init__(self, path, *, output_kind: str, overwrite: bool, max_bytes: int = MAX_TIFF_BYTES) -> None:
        self.path = path
        self.output_kind = output_kind
        self.overwrite = overwrite
        self.max_bytes = max_bytes
        self.layout = None
        self.labels = self.probs = None
        self.started = False

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def check_size(self, spatial_shape, num_classes: int) -> None:
        """Refuse a result too large to assemble in memory."""
        nbytes = math.prod(spatial_shape) * (
            (self.output_kind != "probs") + 2 * num_classes * (self.output_kind != "labels"))
        if nbytes > self.max_bytes:
            raise UserError(
                f"The result ({nbytes / 1024**3:.1f} GiB) is too large for a TIFF output, which is "
                f"built in memory (limit {self.max_bytes / 1024**3:.1f} GiB); write a zarr output "
                'instead, e.g. output="result.zarr".'
            )

    def create(self, *, source, num_classes: int, chunks, attrs: dict, layout=None) -> None:
        self.layout = layout
        spatial = layout.shape if layout.ndim == 3 else (1, *layout.shape)
        self.labels = np.zeros(spatial, np.uint8) if self.output_kind != "probs" else None
        self.probs = np.zeros((num_classes, *spatial), np.float16) if self.output_kind != "labels" else None

    def on_result(self, summary: dict) -> None:
        """Place one block's arrays (the tasks return them: ``job.store`` is None)."""
        region = self.layout.block_at(summary["index"]).slices
        region = region if self.layout.ndim == 3 else (slice(0, 1), *region)
        if self.labels is not None:
            self.labels[region] = summary["labels"]
        if self.probs is not None:
            self.probs[(slice(None), *region)] = summary["probs"]

    def abort(self, exc: BaseException, *, remote: bool) -> None:
        pass  # nothing was written

    def finish(self, summary: dict, *, spatial_axes: str):
        from .. import io

        labels, probs = self.labels, self.probs
        if self.layout.ndim == 2:
            labels = None if labels is None else labels[0]
            probs = None if probs is None else probs[:, 0]
        io.write_tiff(self.path, labels=labels, probs=probs, axes=spatial_axes, overwrite=self.overwrite)
        return pick(self.output_kind, labels, probs)


def open_sink(output, *, source, output_kind: str, resume: bool, overwrite: bool, zarr_format: int,
              expect: dict, max_tiff_bytes: int = MAX_TIFF_BYTES, storage_options: dict | None = None,
              break_lock: bool = False):
    """Check ``output`` for a segmentation of ``source`` (:func:`fastunet.io.check_output`:
    never the input, no overwrite without ``overwrite=True``, a resume only of a matching
    output ``expect``) and open its sink; nothing is computed or written yet."""
    from .. import io

    path = io.check_output(output, source=source, overwrite=overwrite, resume=resume, expect=expect,
                           output_kind=output_kind, storage_options=storage_options)
    if path.suffix.lower() in TIFF_SUFFIXES:
        sink = TiffSink(path, output_kind=output_kind, overwrite=overwrite, max_bytes=max_tiff_bytes)
    else:
        sink = ZarrSink(path, output_kind=output_kind, resume=resume, overwrite=overwrite, zarr_format=zarr_format,
                        break_lock=break_lock)
    sink.open()
    return sink
