"""Instance labels through the engine: the block tasks' side of :mod:`fastunet.engine.instances`.

* In the predict stage each block task labels its class map (:func:`block_objects`) and,
  for a zarr output, records the block's ids, tables and faces (``job.records``, a
  :class:`fastunet.io.InstanceRecords`) before it marks the block done.
* :func:`merge_recorded` joins the recorded blocks (in the calling process: it reads the
  tables and two face planes at a time, never the ids).
* The relabel stage (:func:`relabel_block`, run by :func:`fastunet.engine.scheduling.execute`
  like any block task, on threads or a cluster) maps each block's ids to the final ids and
  writes them with their resolution levels; it is recorded per block (:func:`relabel_name`)
  and can run again any number of times.
* In memory (TIFF outputs) and lazily (``output=None``) the same functions run on the
  blocks' returned records: :func:`merge_returned`, :func:`lazy_instances`.
"""

from __future__ import annotations

import math
import time
import uuid

import numpy as np

from .instances import InstanceOptions, Merge, face_planes, label_block, merge, merge_tables

__all__ = ["block_objects", "merge_recorded", "merge_returned", "relabel_block", "lazy_instances",
           "relabel_name", "RELABEL_PREFIX"]

RELABEL_PREFIX = "relabel-"  # resume records of the relabel stage: see relabel_name


def relabel_name(info: dict, block_name: str) -> str:
    """The resume record of a relabelled block, for the merge recorded as ``info``."""
    return f"{RELABEL_PREFIX}{info['generation']}-{block_name}"


def block_objects(job, block, classes: np.ndarray, probs: np.ndarray | None = None) -> dict:
    """The instance record of one block (its local ids, tables and face planes) from its
    class map ``(bz, by, bx)`` (and its probabilities, for ``min_confidence``: see
    :func:`~fastunet.engine.instances.label_block`)."""
    layout = job.layout
    origin = tuple(s for s, _ in block.box)
    found = label_block(classes, origin, layout.shape, job.model.config.num_classes, job.instances, probs)
    return found.arrays(face_planes(found.ids, block.box, layout.shape, job.instances.connect_z))


def _linear(layout, block) -> int:
    return int(np.ravel_multi_index(block.index, layout.grid))


def merge_recorded(layout, records, options: InstanceOptions) -> Merge:
    """Merge the blocks recorded in ``records`` (every block of ``layout`` must be)."""
    names = [b.name for b in layout.blocks()]
    keys = merge_tables(options)
    return merge(layout.grid, lambda b: records.get(names[b], *keys),
                 lambda b, key: records.get(names[b], key)[0], ndim=layout.ndim, options=options)


def merge_returned(layout, objects: dict, options: InstanceOptions) -> Merge:
    """Merge blocks whose records are in memory: ``objects[block index] -> record``."""
    order = [objects[b.index] for b in layout.blocks()]
    keys = merge_tables(options)
    return merge(layout.grid, lambda b: tuple(order[b][k] for k in keys),
                 lambda b, key: order[b][key], ndim=layout.ndim, options=options)


def relabel_block(job, block) -> dict:
    """Write one block's final ids (and their resolution levels), then record it done."""
    t0 = time.perf_counter()
    layout = job.layout
    (ids,) = job.records.get(block.name, "ids")
    final = job.records.block_lut(_linear(layout, block))[ids]
    job.store.write("instances", block.slices, final if layout.ndim == 3 else final[0])
    job.store.mark_done(relabel_name(job.records.merge_info(), block.name))
    return {"block": block.name, "voxels": int(math.prod(block.shape)), "nonfinite": 0,
            "seconds": time.perf_counter() - t0}


def relabel_returned(layout, objects: dict, result: Merge, block) -> np.ndarray:
    """One block's final ids from its in-memory record, ``(Z,) Y, X``."""
    final = result.block_lut(_linear(layout, block))[objects[block.index]["ids"]]
    return final if layout.ndim == 3 else final[0]


# ------------------------------------------------------------------------------- lazily
def _objects_task(job, block, predicted):
    return block_objects(job, block, predicted[0], predicted[1])


def _tables_task(record):
    return {k: v for k, v in record.items() if k != "ids"}


def _merge_task(layout, options, *tables):
    return merge_returned(layout, {b.index: t for b, t in zip(layout.blocks(), tables)}, options)


def _relabel_task(layout, result, record, block):
    if result.lut.dtype != np.uint32:
        from ..errors import UserError

        raise UserError(f"The volume holds {result.count} objects, more than uint32 ids can number; write it to a "
                        'zarr output (output="seg.zarr"), which stores uint64 ids.')
    return relabel_returned(layout, {block.index: record}, result, block)


def lazy_instances(job, job_key, predictions: dict, token: str | None = None):
    """A dask array of the final ids: per block, label (from the block's prediction task in
    ``predictions[index]``, whose first item is the class map ``(bz, by, bx)``), one merge
    task over the blocks' tables and faces, and per block the relabel. Ids are consistent
    across chunks and equal to those of a file output."""
    import dask
    import dask.array as da

    layout = job.layout
    token = token or uuid.uuid4().hex
    records, tables = {}, []
    for block in layout.blocks():
        rec = dask.delayed(_objects_task, pure=True)(job_key, block, predictions[block.index],
                                                     dask_key_name=f"fastunet-objects-{token}-{block.name}")
        records[block.index] = rec
        tables.append(dask.delayed(_tables_task, pure=True)(rec, dask_key_name=f"fastunet-faces-{token}-{block.name}"))
    result = dask.delayed(_merge_task, pure=True)(layout, job.instances, *tables,
                                                  dask_key_name=f"fastunet-merge-{token}")
    dtype = np.uint32  # the relabel tasks refuse a volume that needs uint64 ids
    parts = np.empty(layout.grid, dtype=object)
    for block in layout.blocks():
        task = dask.delayed(_relabel_task, pure=True)(layout, result, records[block.index], block,
                                                      dask_key_name=f"fastunet-relabel-{token}-{block.name}")
        parts[block.index] = da.from_delayed(task, block.shape, dtype=dtype)
    return da.block(parts.tolist())
