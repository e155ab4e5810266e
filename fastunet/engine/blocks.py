"""One output block of the overlap-tile engine: read, normalize, predict, assemble, write.

A block task (:func:`run_block`) reads its input slab with the mirrored context
(:func:`fastunet.engine.tiling.read_mirrored`), cuts the tiles of the global tile grid,
normalizes them with the statistics computed once for the whole volume
(:func:`fastunet.normalization.normalization_stats`; here on the CPU, on the device when a
device runner takes the tiles in their stored dtype), runs the network, assembles the block,
writes its output chunks and records the block as done
(:meth:`fastunet.io.SegmentationStore.mark_done`). It returns a small summary, never the data,
so memory is bounded by the blocks in flight whatever the volume size.

NaN/Inf in the input: ignored by the normalization statistics, set to 0 after normalization
(the value of the normalization offset), counted per block (``nonfinite`` in the summary).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..normalization import Normalization, NormStats
from .instances import InstanceOptions
from .rescale import Rescale, predict_rescaled
from .runtime import LoadedNetwork, ModelHandle, cached_network
from .tiling import Block, Layout, read_mirrored

__all__ = ["Job", "compute_block", "run_block"]

_FLOAT_DTYPES = ("float16", "float32", "float64")


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
    rescale: Rescale | None = None  # object_size: run on a rescaled grid (engine/rescale.py)
    # The output side: the kinds written (see fastunet.kinds; empty: those of output_kind),
    # the instance options and records, and the stage ("predict", or "relabel": the pass
    # that writes the final object ids, see fastunet.engine.instance_tasks).
    kinds: tuple = ()
    instances: InstanceOptions | None = None
    records: object | None = None
    stage: str = "predict"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["network"] = None
        return state

    def __setstate__(self, state):
        for k, v in state.items():
            object.__setattr__(self, k, v)

    @property
    def output_kinds(self) -> tuple:
        """The kinds this job writes or returns."""
        if self.kinds:
            return tuple(self.kinds)
        return ("labels", "probs") if self.output_kind == "both" else (self.output_kind,)

    def get_network(self) -> LoadedNetwork:
        if self.network is not None:
            return self.network
        return cached_network(self.model, device=self.device, backend=self.backend, dtype=self.dtype,
                              batch_size=self.batch_size, use_runner=self.use_runner,
                              torch_threads=self.torch_threads)


def compute_block(job: Job, block: Block) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """Labels ``(bz, by, bx)`` uint8 and/or probabilities ``(K, bz, by, bx)`` float16 of one
    block (``bz = 1`` for YX volumes), and the number of NaN/Inf input values in it."""
    if job.rescale is not None:  # predict on the rescaled grid, sample back onto this block
        return predict_rescaled(job, block, compute_block)
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
    offset, scale = job.stats.for_slices(z0, z1)
    network = job.get_network()
    # A device runner takes the tiles in their stored dtype and normalizes them on the device.
    raw_tiles = network.takes_raw_tiles
    x = raw if raw_tiles else Normalization.apply(raw, offset, scale, zero_nonfinite=is_float)
    del raw
    ty, tx = layout.tile
    tiles = layout.block_tiles(block)
    bz = x.shape[1]
    batch = np.empty((bz * len(tiles), x.shape[0], ty, tx), x.dtype)
    i = 0
    for z in range(bz):
        for (oy, ox), _, _ in tiles:
            batch[i] = x[:, z, oy:oy + ty, ox:ox + tx]
            i += 1
    del x
    if raw_tiles:
        norm = tuple(_per_tile(v, bz, len(tiles)) for v in (offset, scale))
        labels, probs = network.predict_raw(batch, job.output_kind, *norm)
    else:
        labels, probs = network.predict(batch, job.output_kind)
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


def _per_tile(constants: np.ndarray, bz: int, tiles: int) -> np.ndarray:
    """A slab's normalization constants ``(C, 1 or bz, 1, 1)`` per tile of its batch: ``(bz *
    tiles, C)``, in the batch's order (slice by slice, the tiles of each)."""
    per_slice = np.broadcast_to(constants[:, :, 0, 0], (constants.shape[0], bz)).T
    return np.repeat(per_slice, tiles, axis=0)


def run_block(job: Job, block: Block) -> dict:
    """Compute one block; write it and record it done (zarr output) or return its arrays.

    Returns a small summary ``{"block", "voxels", "nonfinite", "seconds"}`` (plus ``labels``
    / ``probs`` arrays, and ``objects``, the block's instance record, when ``job.store`` is
    None). With instances the block's local objects are recorded (``job.records``) before the
    block is marked done; the relabel stage (``job.stage == "relabel"``) writes the final ids
    (:func:`fastunet.engine.instance_tasks.relabel_block`).
    """
    if job.stage == "relabel":
        from .instance_tasks import relabel_block

        return relabel_block(job, block)
    t0 = time.perf_counter()
    labels, probs, nonfinite = compute_block(job, block)
    summary = {"block": block.name, "voxels": int(math.prod(block.shape)), "nonfinite": nonfinite}
    kinds = job.output_kinds
    objects = None
    if "instances" in kinds:
        from .instance_tasks import block_objects

        objects = block_objects(job, block, labels)
    if "labels" not in kinds:
        labels = None
    if job.store is None:
        summary.update(labels=labels, probs=probs, objects=objects, index=block.index)
    else:
        store = job.store
        region = block.slices
        if objects is not None:
            job.records.put(block.name, objects)
        if labels is not None:
            store.write("labels", region, labels if job.layout.ndim == 3 else labels[0])
        if probs is not None:
            store.write("probs", region, probs if job.layout.ndim == 3 else probs[:, 0])
        store.mark_done(block.name)
    summary["seconds"] = time.perf_counter() - t0
    return summary
