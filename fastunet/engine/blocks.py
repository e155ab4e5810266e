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

from ..geometry import reflect_index
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
    """Labels ``(bz, by, bx)`` uint8 and/or probabilities ``(K, bz, by, bx)`` float16 or float32
    (as the network gave them; what is written or returned is float16, :func:`run_block`; the
    ``"confidence"`` output: ``(1, bz, by, bx)`` uint8) of one block (``bz = 1`` for YX
    volumes), and the number of NaN/Inf input values in it.

    A 2D tile runs on each Z slice of the block's slab (the slices are a batch); a 3D tile
    (a 3D network) runs on the slab as a volume."""
    if job.rescale is not None:  # predict on the rescaled grid, sample back onto this block
        return predict_rescaled(job, block, compute_block)
    layout = job.layout
    nd, nt = layout.ndim, layout.tiled
    box = layout.input_box(block)
    raw = read_mirrored(job.source, box)
    if not job.source.axes.startswith("C"):
        raw = raw[None]
    if nd == 2 or nt == 3:
        raw = raw[:, None]
    # raw: (C, planes, *tiled): the slices of a 2D tile, or one plane of a 3D slab; the
    # block's own pixels start at (block start - input start) along the tiled axes.
    origin = tuple(block.box[a][0] - box[a][0] for a in range(nd - nt, nd))
    own = tuple(block.shape[-nt:])
    core_index = (slice(None), slice(None), *(slice(o, o + n) for o, n in zip(origin, own)))
    nonfinite = 0
    is_float = np.dtype(job.source.dtype).name in _FLOAT_DTYPES
    if is_float:
        core = raw[core_index]
        nonfinite = int(core.size - np.count_nonzero(np.isfinite(core)))
    offset, scale = _constants(job, block, box)
    network = job.get_network()
    # A device runner takes the tiles in their stored dtype and normalizes them on the device,
    # with one set of constants per tile (a 3D slab with constants per slice is normalized here).
    raw_tiles = network.takes_raw_tiles and (nt == 2 or offset.shape[2] == 1)
    x = raw if raw_tiles else Normalization.apply(raw, offset, scale, zero_nonfinite=is_float)
    del raw
    tiles = layout.block_tiles(block)
    planes = x.shape[1]
    if len(tiles) == 1 and x.shape[2:] == tuple(layout.tile):  # one tile a plane, the whole slab: a view
        batch = x.swapaxes(0, 1)
    else:
        batch = np.empty((planes * len(tiles), x.shape[0], *layout.tile), x.dtype)
        i = 0
        for p in range(planes):
            for start, _, _ in tiles:
                batch[i] = x[(slice(None), p, *(slice(o, o + t) for o, t in zip(start, layout.tile)))]
                i += 1
    del x
    if raw_tiles:
        norm = tuple(_per_tile(v, planes, len(tiles)) for v in (offset, scale))
        labels, probs = network.predict_raw(batch, job.output_kind, *norm)
    else:
        labels, probs = network.predict(batch, job.output_kind)
    del batch
    out_labels = None if labels is None else np.empty((planes, *own), np.uint8)
    out_probs = None if probs is None else np.empty((probs.shape[1], planes, *own), probs.dtype)
    i = 0
    for p in range(planes):
        for _, src, dst in tiles:
            if out_labels is not None:
                out_labels[(p, *dst)] = labels[(i, *src)]
            if out_probs is not None:
                out_probs[(slice(None), p, *dst)] = probs[(i, slice(None), *src)]
            i += 1
    if nt == 3:  # one plane: the block itself
        out_labels = None if out_labels is None else out_labels[0]
        out_probs = None if out_probs is None else out_probs[:, 0]
    return out_labels, out_probs, nonfinite


def _constants(job: Job, block: Block, box) -> tuple[np.ndarray, np.ndarray]:
    """The normalization constants broadcastable to the block's raw slab ``(C, planes,
    *tiled)``: per slice of a 2D tile's slab, or for a 3D slab ``(C, 1, Z', 1, 1)`` with each
    slice's constants (slice scope) at its mirrored Z, or ``(C, 1, 1, 1, 1)``."""
    layout = job.layout
    if layout.tiled == 2:
        z0, z1 = (block.box[0] if layout.ndim == 3 else (0, 1))
        return job.stats.for_slices(z0, z1)
    offset, scale = job.stats.offset, job.stats.scale
    if offset.ndim == 1:
        return offset[:, None, None, None, None], scale[:, None, None, None, None]
    z = reflect_index(np.arange(*box[0]), layout.shape[0])
    return offset[:, None, z, None, None], scale[:, None, z, None, None]


def _per_tile(constants: np.ndarray, planes: int, tiles: int) -> np.ndarray:
    """A slab's normalization constants ``(C, 1 or planes, 1, ...)`` per tile of its batch:
    ``(planes * tiles, C)``, in the batch's order (plane by plane, the tiles of each)."""
    per_plane = np.broadcast_to(constants.reshape(constants.shape[0], -1), (constants.shape[0], planes)).T
    return np.repeat(per_plane, tiles, axis=0)


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

        objects = block_objects(job, block, labels, probs)
    if "labels" not in kinds:
        labels = None
    # computed for the objects' min_confidence only, or written as float16
    probs = probs.astype(np.float16, copy=False) if "probs" in kinds and probs is not None else None
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
