"""Resolution levels of outputs: the input image's pyramid, and writing a block's share of
every level as the block finishes.

Level ``l`` of an output has the shape of level ``l`` of the input image and takes level-0
pixel ``i * f`` for its pixel ``i`` (nearest-neighbour downsampling by the integer factor
``f`` of each spatial axis: class maps and object ids stay values that exist, probabilities
are sampled). A block ``[a, b)`` writes the level-``l`` pixels ``ceil(a/f) .. ceil(b/f)``:
with blocks that are multiples of every factor and level chunks that divide ``block / f``,
no two blocks ever write one chunk of any level, so blocks run in parallel and a resumed run
rewrites whole chunks only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import zarr

__all__ = ["Level", "input_levels", "level_chunks", "block_multiple", "aligned_block", "write_region",
           "write_values", "sampled_transforms"]


@dataclass(frozen=True)
class Level:
    """One resolution level of an output: integer ``factor`` and ``shape`` per spatial axis,
    and its NGFF ``transforms`` (spatial axes)."""

    factor: tuple[int, ...]
    shape: tuple[int, ...]
    transforms: list


def _spatial(transforms, idx) -> list:
    out = []
    for t in transforms or []:
        kind = t.get("type")
        if kind in ("scale", "translation") and isinstance(t.get(kind), list):
            out.append({"type": kind, kind: [float(t[kind][i]) for i in idx]})
    return out


def input_levels(source) -> list[Level] | None:
    """The pyramid of an OME-Zarr input (its first multiscale image), level 0 first, on its
    spatial axes; None for other inputs or a pyramid that is not a nearest-neighbour one
    (a level larger than level 0, or no integer factor)."""
    if source.kind != "ome-zarr" or not source.path:
        return None
    from .ome import find_multiscales, ngff_section

    group = zarr.open_group(source.path, mode="r")
    attrs = group.attrs.asdict()
    multiscales = find_multiscales(attrs, ngff_section(attrs)) or []
    if not multiscales:
        return None
    native = source.native_axes or source.axes
    idx = [native.index(a) for a in source.spatial_axes]
    base = source.spatial_shape
    levels = []
    for ds in multiscales[0].get("datasets") or []:
        try:
            shape = tuple(int(group[str(ds["path"])].shape[i]) for i in idx)
        except (KeyError, IndexError, TypeError):
            return None
        if any(s < 1 or s > n for s, n in zip(shape, base)):
            return None
        factor = tuple(max(1, round(n / s)) for n, s in zip(base, shape))
        if any(-(-n // f) < s for n, f, s in zip(base, factor, shape)):
            return None
        levels.append(Level(factor, shape, _spatial(ds.get("coordinateTransformations"), idx)))
    return levels or None


def sampled_transforms(transforms: list, factor: tuple[int, ...]) -> list:
    """The NGFF transforms of a level sampled from level 0 (``transforms``) at ``factor``: its
    pixel ``i`` is level-0 pixel ``i * f``, so the scale grows by ``f`` and the translation
    stays level 0's (not that of an input level whose pixels are averages)."""
    return [{"type": "scale", "scale": [s * f for s, f in zip(t["scale"], factor)]} if t["type"] == "scale" else dict(t)
            for t in transforms]


def block_multiple(levels: list[Level] | None, ndim: int) -> tuple[int, ...]:
    """What every block must be a multiple of along each spatial axis (the factors' lcm)."""
    out = [1] * ndim
    for level in levels or []:
        out = [math.lcm(a, f) for a, f in zip(out, level.factor)]
    return tuple(out)


def level_chunks(chunks: tuple[int, ...], block: tuple[int, ...], factor: tuple[int, ...]) -> tuple[int, ...]:
    """Chunks of a level: the largest divisor of ``block / factor`` not above level 0's chunk."""
    out = []
    for c, b, f in zip(chunks, block, factor):
        span = b // f
        out.append(max(d for d in range(1, min(c, span) + 1) if span % d == 0))
    return tuple(out)


def _level_part(region: tuple[slice, ...], factor: tuple[int, ...], shape: tuple[int, ...]):
    """The level pixels a region writes and where they sit in the region's data."""
    dst, src = [], []
    for s, f, n in zip(region, factor, shape):
        i0, i1 = -(-s.start // f), min(-(-s.stop // f), n)
        if i1 <= i0:
            return None
        dst.append(slice(i0, i1))
        src.append(slice(i0 * f - s.start, (i1 - 1) * f - s.start + 1, f))
    return tuple(dst), tuple(src)


def write_region(levels: list[tuple[zarr.Array, tuple[int, ...]]], region: tuple[slice, ...],
                 data: np.ndarray, prefix: tuple[int, ...] = ()) -> None:
    """Write ``data`` (leading non-spatial axes allowed, e.g. classes) at the spatial
    ``region`` of every level ``(array, factor)``; level 0 has factor 1. ``prefix``: indices
    of the arrays' leading axes that ``data`` lacks (the time point of a time series)."""
    lead = (slice(None),) * (data.ndim - len(region))
    for array, factor in levels:
        spatial_shape = array.shape[len(prefix) + len(lead):]
        part = _level_part(region, factor, spatial_shape)
        if part is not None:
            dst, src = part
            write_values(array, prefix + lead + dst, data[lead + src])


def write_values(array: zarr.Array, index: tuple, values: np.ndarray) -> None:
    """``array[index] = values``; integer values that are not all zero skip zarr's check of
    each chunk for its fill value.

    zarr compares each chunk it writes with the fill value, so as not to store a chunk that
    holds nothing (``write_empty_chunks=False``): about 5 ms for a 1024 x 1024 uint32 chunk,
    four times its zstd encoding (measured here). Object ids and class maps (fill value 0)
    are checked here instead, in one pass over the whole block (0.2 ms for 1024 x 1024): an
    all-zero block still goes through zarr's check (its chunks are not stored), any other
    is written with ``write_empty_chunks=True`` (a zero chunk inside it is stored, as a few
    bytes; the values read back are the same).
    """
    if values.dtype.kind in "iub" and array.fill_value == 0 and values.size and values.any():
        array = zarr.Array(zarr.AsyncArray(metadata=array.metadata, store_path=array.store_path,
                                           config={"write_empty_chunks": True}))
    array[index] = values


def aligned_block(block: tuple[int, ...], chunks: tuple[int, ...], multiple: tuple[int, ...]) -> tuple[int, ...]:
    """``block`` rounded up to a multiple of both the chunks and the pyramid's ``multiple``
    (so that no two blocks write one chunk of any level)."""
    out = []
    for b, c, m in zip(block, chunks, multiple):
        unit = math.lcm(c, m)
        out.append(-(-b // unit) * unit)
    return tuple(out)
