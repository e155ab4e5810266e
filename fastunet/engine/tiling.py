"""Overlap-tile layout: output blocks, network tiles and mirrored reads.

The engine cuts a volume ``(Z,) Y, X`` into **output blocks** (unions of output chunks, so
no two blocks ever write the same chunk) and each block into **tiles**, the network's input
windows. Seamlessness rests on two rules:

* Tile origins lie on one **global grid** whose step along Y and X is a multiple of
  ``2**depth`` (the largest one not above the tile's output edge), independent of block and
  chunk sizes. Every max-pool window then falls on the same pixels as when the network runs
  once on the whole mirrored image, so each output pixel sees exactly the same arithmetic.
* Beyond the volume's edge the context is **mirrored** with numpy ``reflect`` semantics
  (the edge pixel is not repeated; wider pads keep reflecting, as ``np.pad`` does), see
  :func:`fastunet.geometry.reflect_index`. :func:`read_mirrored` reads the bounding slab of the in-volume
  pixels a block needs once and fancy-indexes the mirror from it.

Z (for ``ZYX`` volumes) is never tiled: the 2D network runs slice by slice, so blocks take
whole chunks along Z and need no context there.

Reference semantics (what the tests compare against): pad the whole image by the context
``c`` on every side (plus extra pixels at the bottom/right so the padded size is a valid
input size) with ``np.pad(mode="reflect")``, run the network once, crop to the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .. import geometry

__all__ = [
    "mirrored_read_plan",
    "read_mirrored",
    "Block",
    "Layout",
    "tile_for_extent",
    "pick_step",
    "output_chunks",
    "block_shape",
    "plan_layout",
]


def mirrored_read_plan(start: int, stop: int, n: int) -> tuple[slice, np.ndarray | None]:
    """How to read the mirrored range ``[start, stop)`` of an axis of length ``n``.

    Returns the slice of in-volume pixels to read (their bounding range) and the indices
    into that read which give the mirrored range, or None when the range lies inside the
    volume and the read is already the answer.
    """
    if stop <= start:
        raise ValueError(f"Expected a non-empty range; got [{start}, {stop}).")
    if 0 <= start and stop <= n:
        return slice(start, stop), None
    idx = geometry.reflect_index(np.arange(start, stop, dtype=np.int64), n)
    lo = int(idx.min())
    return slice(lo, int(idx.max()) + 1), idx - lo


def read_mirrored(source, box) -> np.ndarray:
    """Read a box that may reach beyond the volume, mirroring the missing part.

    Parameters
    ----------
    source : VolumeSource
        Anything with ``axes`` (canonical, e.g. ``"CZYX"``), ``shape`` and
        ``read(region)``; the region read is one box inside the volume.
    box : sequence of (start, stop)
        One range per spatial axis (``(Z,) Y, X``), in global coordinates; channels are
        always read whole.

    Returns
    -------
    numpy.ndarray
        Canonical order (``C`` first when the source has one), the stored dtype.
    """
    has_c = source.axes.startswith("C")
    spatial = tuple(source.shape[1:] if has_c else source.shape)
    if len(box) != len(spatial):
        raise ValueError(f"Expected {len(spatial)} ranges for a {source.axes} volume; got {len(box)}.")
    region, takes = [], []
    for (start, stop), n in zip(box, spatial):
        read, take = mirrored_read_plan(int(start), int(stop), int(n))
        region.append(read)
        takes.append(take)
    if has_c:
        region.insert(0, slice(0, source.shape[0]))
        takes.insert(0, None)
    data = source.read(tuple(region))
    for axis, take in enumerate(takes):
        if take is not None:
            data = np.take(data, take, axis=axis)
    return data


@dataclass(frozen=True)
class Block:
    """One output block: ``index`` in the block grid, ``box`` its spatial ``(start, stop)``
    ranges (clipped to the volume)."""

    index: tuple[int, ...]
    box: tuple[tuple[int, int], ...]

    @property
    def name(self) -> str:
        """A file-name-safe name that encodes the box, e.g. ``"z0-4_y0-256_x256-512"``; a
        record made under another block shape never matches a different box."""
        letters = "zyx"[3 - len(self.box):]
        return "_".join(f"{a}{s}-{e}" for a, (s, e) in zip(letters, self.box))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(e - s for s, e in self.box)

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(s, e) for s, e in self.box)


@dataclass(frozen=True)
class Layout:
    """Blocks and tiles of one volume for a network of ``depth``.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape ``(Z,) Y, X``.
    depth : int
        The network's number of max-pools.
    tile : (int, int)
        Input tile edges ``(Ty, Tx)``; valid sizes whose output is at least ``2**depth``.
    chunks : tuple of int
        Output chunk shape, one per spatial axis.
    block : tuple of int
        Output block shape, a multiple of ``chunks`` along every axis.
    """

    shape: tuple[int, ...]
    depth: int
    tile: tuple[int, int]
    chunks: tuple[int, ...]
    block: tuple[int, ...]

    def __post_init__(self) -> None:
        nd = len(self.shape)
        if nd not in (2, 3):
            raise ValueError(f"Expected a spatial shape (Y, X) or (Z, Y, X); got {self.shape}.")
        if any(int(n) < 1 for n in self.shape):
            raise ValueError(f"Expected a non-empty volume; got shape {self.shape}.")
        if len(self.tile) != 2 or len(self.chunks) != nd or len(self.block) != nd:
            raise ValueError(
                f"Expected a (Ty, Tx) tile and chunks/block with {nd} entries; got tile {self.tile}, "
                f"chunks {self.chunks}, block {self.block}."
            )
        for t in self.tile:
            out = geometry.check_tile_size(int(t), self.depth)
            if out < 2**self.depth:
                raise ValueError(
                    f"Expected a tile whose output ({out}) is at least 2**depth = {2**self.depth}, "
                    f"so that tiles can step on the max-pool grid; got {t}. Smallest usable: "
                    f"{geometry.input_size_for_output(2**self.depth, self.depth)}."
                )
        for c, b in zip(self.chunks, self.block):
            if c < 1 or b < c or b % c:
                raise ValueError(f"Expected a block shape that is a multiple of the chunks {self.chunks}; got {self.block}.")

    # --- geometry -------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def context(self) -> int:
        """Pixels of context per side along Y and X."""
        return geometry.context(self.depth)

    @property
    def out(self) -> tuple[int, int]:
        """Output tile edges ``(oy, ox)``."""
        return tuple(geometry.output_size(int(t), self.depth) for t in self.tile)

    @property
    def step(self) -> tuple[int, int]:
        """Tile grid step ``(sy, sx)``: the largest multiple of ``2**depth`` <= the output edge."""
        q = 2**self.depth
        return tuple(o - o % q for o in self.out)

    def last_tile(self, axis: int) -> int:
        """Index of the last tile along Y (``axis=0``) or X (``axis=1``)."""
        n = self.shape[self.ndim - 2 + axis]
        o, s = self.out[axis], self.step[axis]
        return max(0, -(-(n - o) // s))

    def tile_of(self, axis: int, g: int) -> int:
        """The tile whose output supplies pixel ``g`` along Y (0) or X (1)."""
        return min(g // self.step[axis], self.last_tile(axis))

    def tile_range(self, axis: int, start: int, stop: int) -> range:
        """Tiles along Y (0) or X (1) that supply the output range ``[start, stop)``."""
        return range(self.tile_of(axis, start), self.tile_of(axis, stop - 1) + 1)

    def assigned(self, axis: int, k: int) -> tuple[int, int]:
        """The output range tile ``k`` supplies (tiles overlap by ``out - step`` pixels; each
        pixel is taken from exactly one tile)."""
        n = self.shape[self.ndim - 2 + axis]
        s = self.step[axis]
        stop = n if k == self.last_tile(axis) else (k + 1) * s
        return k * s, min(stop, n)

    # --- blocks ---------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, ...]:
        """Number of blocks along each spatial axis."""
        return tuple(-(-n // b) for n, b in zip(self.shape, self.block))

    @property
    def num_blocks(self) -> int:
        return math.prod(self.grid)

    def block_at(self, index: tuple[int, ...]) -> Block:
        box = tuple((i * b, min((i + 1) * b, n)) for i, b, n in zip(index, self.block, self.shape))
        return Block(index=tuple(int(i) for i in index), box=box)

    def blocks(self) -> Iterator[Block]:
        """All blocks in C order."""
        for index in np.ndindex(*self.grid):
            yield self.block_at(index)

    def input_box(self, block: Block) -> tuple[tuple[int, int], ...]:
        """The input range a block reads (global coordinates; Y/X reach into the mirror)."""
        box = list(block.box[:-2])
        c = self.context
        for axis in (0, 1):
            start, stop = block.box[self.ndim - 2 + axis]
            ks = self.tile_range(axis, start, stop)
            s, t = self.step[axis], self.tile[axis]
            box.append((ks[0] * s - c, ks[-1] * s - c + t))
        return tuple(box)

    def block_tiles(self, block: Block) -> list[tuple[tuple[int, int], tuple[slice, slice], tuple[slice, slice]]]:
        """The tiles of one block (per Z slice), as ``(origin, src, dst)`` triples.

        ``origin`` is the tile's ``(y, x)`` offset inside the block's input slab (see
        :meth:`input_box`), ``src`` the part of the tile's output to keep and ``dst`` where
        it goes inside the block.
        """
        tiles = []
        per_axis = []
        for axis in (0, 1):
            start, stop = block.box[self.ndim - 2 + axis]
            ks = self.tile_range(axis, start, stop)
            s = self.step[axis]
            entries = []
            for k in ks:
                a0, a1 = self.assigned(axis, k)
                a0, a1 = max(a0, start), min(a1, stop)
                entries.append(((k - ks[0]) * s, slice(a0 - k * s, a1 - k * s), slice(a0 - start, a1 - start)))
            per_axis.append(entries)
        for oy, src_y, dst_y in per_axis[0]:
            for ox, src_x, dst_x in per_axis[1]:
                tiles.append(((oy, ox), (src_y, src_x), (dst_y, dst_x)))
        return tiles


# --- defaults -----------------------------------------------------------------------
def tile_for_extent(extent: int, depth: int) -> int:
    """The smallest usable input tile whose single tile covers an axis of ``extent`` pixels."""
    return geometry.input_size_for_output(max(int(extent), 2**depth), depth)


def pick_step(depth: int, *, chunk: int, max_step: int, min_step: int | None = None) -> int:
    """A tile grid step (multiple of ``2**depth``) no larger than ``max_step``.

    Prefers steps that divide the chunk or that the chunk divides, so that blocks (unions of
    chunks) hold whole tiles and no tile is computed twice by two blocks.
    """
    q = 2**depth
    top = max(q, max_step - max_step % q)
    low = max(q, min_step if min_step is not None else top // 2)
    for s in range(top, low - 1, -q):
        if chunk % s == 0 or s % chunk == 0:
            return s
    return top


def output_chunks(shape: tuple[int, ...], source_chunks: tuple[int, ...], *, max_yx: int = 1024, max_z: int = 16) -> tuple[int, ...]:
    """Output chunks along the input's chunking: the input's spatial chunk, split (by an
    integer factor where it divides) to at most ``max_z`` along Z and ``max_yx`` along Y/X,
    and never larger than the volume."""
    chunks = []
    nd = len(shape)
    for axis, (n, c) in enumerate(zip(shape, source_chunks)):
        cap = max_z if nd == 3 and axis == 0 else max_yx
        c = max(1, min(int(c), int(n)))
        if c > cap:
            divs = [c // k for k in range(2, c + 1) if c % k == 0 and c // k <= cap]
            c = divs[0] if divs and divs[0] >= cap // 2 else cap
        chunks.append(c)
    return tuple(chunks)


def block_shape(
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    step: tuple[int, int],
    *,
    max_voxels: int = 8 * 1024 * 1024,
    target_yx: int = 2048,
) -> tuple[int, ...]:
    """A block shape: a multiple of ``chunks``, a multiple of the tile step along Y/X where
    the least common multiple stays reasonable, about ``target_yx`` along Y/X and at most
    ``max_voxels`` voxels (never below one chunk)."""
    nd = len(shape)
    cz = chunks[0] if nd == 3 else 1
    target = max(1, min(target_yx, int(math.sqrt(max_voxels / cz))))
    yx = []
    for axis in (0, 1):
        n, c, s = shape[nd - 2 + axis], chunks[nd - 2 + axis], step[axis]
        unit = math.lcm(c, s)
        if unit > target:
            unit = c
        b = unit * max(1, target // unit)
        b = min(b, -(-n // c) * c)  # never beyond the volume's last chunk
        yx.append(b)
    if nd == 2:
        return tuple(yx)
    per_slice = yx[0] * yx[1]
    kz = max(1, max_voxels // (per_slice * cz))
    bz = min(cz * kz, -(-shape[0] // cz) * cz)
    return (bz, *yx)


def _user_shape(value, nd: int, option: str) -> tuple[int, ...]:
    """A user-given chunks/block shape: one positive int per spatial axis. ``option`` names
    the parameter in messages (``block="1,512,512"``, which the CLI shows as ``--block 1,512,512``)."""
    def show(text):
        return f'{option}="{text}"'

    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{option} expects pixel counts, e.g. {show(_example(nd))}; got {value!r}.") from None
    axes = "Z,Y,X" if nd == 3 else "Y,X"
    if len(out) != nd:
        if len(out) > nd:
            example = ",".join(map(str, out[-nd:]))
        elif nd == 3 and len(out) == 2:  # a 2-D block for a z-stack: one slice deep
            example = ",".join(map(str, (1, *out)))
        elif nd == 2 and len(out) == 1:  # one edge for an image: a square block
            example = f"{out[0]},{out[0]}"
        else:
            example = _example(nd)
        raise ValueError(
            f"{show(','.join(map(str, out)))} has {len(out)} entries but the image is {nd}-D: give one size "
            f"per spatial axis ({axes}), e.g. {show(example)}."
        )
    if any(v < 1 for v in out):
        raise ValueError(f"{show(','.join(map(str, out)))} has a size below 1; give positive pixel counts "
                         f"({axes}), e.g. {show(_example(nd))}.")
    return out


def _example(nd: int) -> str:
    return "1,512,512" if nd == 3 else "512,512"


def plan_layout(
    shape: tuple[int, ...],
    depth: int,
    *,
    source_chunks: tuple[int, ...],
    tile: int | tuple[int, int] | None = None,
    max_step: int = 512,
    chunks: tuple[int, ...] | None = None,
    block: tuple[int, ...] | None = None,
    max_block_voxels: int = 8 * 1024 * 1024,
) -> Layout:
    """Pick tile, output chunks and blocks for a volume.

    ``tile`` given: used as is (an int is square). Otherwise per axis the smallest tile that
    covers the axis when it is short, else a step of at most ``max_step`` aligned with the
    chunks (see :func:`pick_step`). ``chunks`` default to :func:`output_chunks` of the
    input's chunks, ``block`` to :func:`block_shape`. A ``chunks`` or ``block`` of the
    wrong length, with a size below 1, or a block that is not a multiple of the chunks
    raises ValueError naming the parameter (``block=``) and a valid value.
    """
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    if chunks is not None:
        chunks = _user_shape(chunks, nd, "chunks")
    if block is not None:
        block = _user_shape(block, nd, "block")
    if chunks is None:
        chunks = output_chunks(shape, source_chunks)
    chunks = tuple(int(c) for c in chunks)
    if block is not None and any(b % c for b, c in zip(block, chunks)):
        fixed = ",".join(str(-(-b // c) * c) for b, c in zip(block, chunks))
        raise ValueError(
            f'block="{",".join(map(str, block))}" must be a multiple of the chunks '
            f"({','.join(map(str, chunks))}) along every axis, so that no two blocks write one chunk; "
            f'e.g. block="{fixed}".'
        )
    if tile is None:
        tiles = []
        for axis in (0, 1):
            n, c = shape[nd - 2 + axis], chunks[nd - 2 + axis]
            if n <= max_step:  # one tile covers the axis: never larger than needed
                tiles.append(tile_for_extent(n, depth))
            else:
                s = pick_step(depth, chunk=c, max_step=max_step)
                tiles.append(geometry.input_size_for_output(s, depth))
        tile = tuple(tiles)
    elif isinstance(tile, int):
        tile = (tile, tile)
    tile = tuple(int(t) for t in tile)
    if block is None:
        q = 2**depth
        step = tuple(o - o % q for o in (geometry.output_size(t, depth) for t in tile))
        block = block_shape(shape, chunks, step, max_voxels=max_block_voxels)
    return Layout(shape=shape, depth=depth, tile=tile, chunks=chunks, block=tuple(int(b) for b in block))
