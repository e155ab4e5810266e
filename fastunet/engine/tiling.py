"""Overlap-tile layout: output blocks, network tiles and mirrored reads.

The engine cuts a volume ``(Z,) Y, X`` into **output blocks** (unions of output chunks, so
no two blocks ever write the same chunk) and each block into **tiles**, the network's input
windows. Seamlessness rests on two rules:

* Tile origins lie on one **global grid** whose step along each tiled axis is a multiple of
  ``2**depth`` (the largest one not above the tile's output edge; along a Z axis that a 3D
  network pools by 1 at some levels, a multiple of its smaller max-pool grid), independent
  of block and chunk sizes. Every max-pool window then falls on the same pixels as when the
  network runs once on the whole mirrored image, so each output pixel sees exactly the same
  arithmetic.
* Beyond the volume's edge the context is **mirrored** with numpy ``reflect`` semantics
  (the edge pixel is not repeated; wider pads keep reflecting, as ``np.pad`` does), see
  :func:`fastunet.geometry.reflect_index`. :func:`read_mirrored` reads the bounding slab of the in-volume
  pixels a block needs once and fancy-indexes the mirror from it.

Z (for ``ZYX`` volumes) is tiled only for a 3D network (a tile of three edges, ``pools``
per axis): then it has its tile grid and its mirrored context like Y and X. The 2D network
runs slice by slice, so its blocks take whole chunks along Z and need no context there.

Reference semantics (what the tests compare against): pad the whole image by the context
``c`` on every side (plus extra pixels at the bottom/right so the padded size is a valid
input size) with ``np.pad(mode="reflect")``, run the network once, crop to the image.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property
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
    "min_split_step",
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
    tile : (int, int) or (int, int, int)
        Input tile edges ``(Ty, Tx)`` (the 2D network; a ``ZYX`` volume slice by slice) or
        ``(Tz, Ty, Tx)`` (a 3D network); valid sizes whose output is at least the max-pool grid.
    chunks : tuple of int
        Output chunk shape, one per spatial axis.
    block : tuple of int
        Output block shape, a multiple of ``chunks`` along every axis.
    pools : tuple, optional
        Per tiled axis, the network's pools along it as :mod:`fastunet.geometry` takes them
        (``UNetConfig.axis_pools``); default ``depth`` pools by 2 along every tiled axis.

    Methods that take an ``axis`` count the tiled axes: 0 is Y and 1 is X for a 2D tile, 0
    is Z, 1 is Y and 2 is X for a 3D one.
    """

    shape: tuple[int, ...]
    depth: int
    tile: tuple[int, ...]
    chunks: tuple[int, ...]
    block: tuple[int, ...]
    pools: tuple | None = None

    def __post_init__(self) -> None:
        nd = len(self.shape)
        if nd not in (2, 3):
            raise ValueError(f"Expected a spatial shape (Y, X) or (Z, Y, X); got {self.shape}.")
        if any(int(n) < 1 for n in self.shape):
            raise ValueError(f"Expected a non-empty volume; got shape {self.shape}.")
        if len(self.tile) not in (2, nd) or len(self.chunks) != nd or len(self.block) != nd:
            raise ValueError(
                f"Expected a (Ty, Tx) tile (or (Tz, Ty, Tx) for a 3D network) and chunks/block with {nd} entries; "
                f"got tile {self.tile}, chunks {self.chunks}, block {self.block}."
            )
        if self.pools is None:
            object.__setattr__(self, "pools", (self.depth,) * len(self.tile))
        elif len(self.pools) != len(self.tile):
            raise ValueError(f"Expected pools for each of the {len(self.tile)} tiled axes; got {self.pools}.")
        for t, p in zip(self.tile, self.pools):
            out = geometry.check_tile_size(int(t), p)
            q = geometry.grid_step(p)
            if out < q:
                what = "2**depth" if not isinstance(p, tuple) else "the max-pool grid"
                raise ValueError(
                    f"Expected a tile whose output ({out}) is at least {what} = {q}, "
                    f"so that tiles can step on the max-pool grid; got {t}. Smallest usable: "
                    f"{geometry.input_size_for_output(q, p)}."
                )
        for c, b in zip(self.chunks, self.block):
            if c < 1 or b < c or b % c:
                raise ValueError(f"Expected a block shape that is a multiple of the chunks {self.chunks}; got {self.block}.")

    # --- geometry -------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def tiled(self) -> int:
        """Number of tiled axes: 2 (Y, X), or 3 for a 3D network."""
        return len(self.tile)

    def _n(self, axis: int) -> int:
        return self.shape[self.ndim - self.tiled + axis]

    @cached_property
    def context(self) -> int:
        """Pixels of context per side along Y and X."""
        return geometry.context(self.pools[-1])

    @cached_property
    def contexts(self) -> tuple[int, ...]:
        """Pixels of context per side along each tiled axis."""
        return tuple(geometry.context(p) for p in self.pools)

    @cached_property
    def grid_steps(self) -> tuple[int, ...]:
        """The max-pool grid along each tiled axis (``2**depth``)."""
        return tuple(geometry.grid_step(p) for p in self.pools)

    @cached_property
    def out(self) -> tuple[int, ...]:
        """Output tile edges ``(oy, ox)`` (``(oz, oy, ox)``)."""
        return tuple(geometry.output_size(int(t), p) for t, p in zip(self.tile, self.pools))

    @cached_property
    def step(self) -> tuple[int, ...]:
        """Tile grid step per tiled axis: the largest multiple of the max-pool grid <= the output edge."""
        return tuple(o - o % q for o, q in zip(self.out, self.grid_steps))

    def last_tile(self, axis: int) -> int:
        """Index of the last tile along tiled ``axis`` (Y: 0, X: 1 for a 2D tile)."""
        n = self._n(axis)
        o, s = self.out[axis], self.step[axis]
        return max(0, -(-(n - o) // s))

    def tile_of(self, axis: int, g: int) -> int:
        """The tile whose output supplies pixel ``g`` along tiled ``axis``."""
        return min(g // self.step[axis], self.last_tile(axis))

    def tile_range(self, axis: int, start: int, stop: int) -> range:
        """Tiles along tiled ``axis`` that supply the output range ``[start, stop)``."""
        return range(self.tile_of(axis, start), self.tile_of(axis, stop - 1) + 1)

    def assigned(self, axis: int, k: int) -> tuple[int, int]:
        """The output range tile ``k`` supplies (tiles overlap by ``out - step`` pixels; each
        pixel is taken from exactly one tile)."""
        n = self._n(axis)
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
        """The input range a block reads (global coordinates; tiled axes reach into the mirror)."""
        nt = self.tiled
        box = list(block.box[:self.ndim - nt])
        for axis in range(nt):
            start, stop = block.box[self.ndim - nt + axis]
            ks = self.tile_range(axis, start, stop)
            s, t, c = self.step[axis], self.tile[axis], self.contexts[axis]
            box.append((ks[0] * s - c, ks[-1] * s - c + t))
        return tuple(box)

    def tile_count(self) -> int:
        """Tiles the engine runs through the network: per block and Z slice (a 2D tile), every
        tile that supplies one of its pixels (a tile on a boundary between blocks counts once
        per block). Blocks form a grid, so this is the product over the tiled axes of the
        tiles the blocks along each take (times the Z slices for a 2D tile)."""
        nd, nt = self.ndim, self.tiled
        count = self.shape[0] if nd == 3 and nt == 2 else 1  # a 2D network runs a ZYX volume slice by slice
        for axis in range(nt):
            n, b = self._n(axis), self.block[nd - nt + axis]
            count *= sum(len(self.tile_range(axis, start, min(start + b, n))) for start in range(0, n, b))
        return count

    def block_tiles(self, block: Block) -> list[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]]:
        """The tiles of one block (per Z slice for a 2D tile), as ``(origin, src, dst)`` triples.

        ``origin`` is the tile's offset along the tiled axes inside the block's input slab
        (see :meth:`input_box`), ``src`` the part of the tile's output to keep and ``dst``
        where it goes inside the block.
        """
        nt = self.tiled
        per_axis = []
        for axis in range(nt):
            start, stop = block.box[self.ndim - nt + axis]
            ks = self.tile_range(axis, start, stop)
            s = self.step[axis]
            entries = []
            for k in ks:
                a0, a1 = self.assigned(axis, k)
                a0, a1 = max(a0, start), min(a1, stop)
                entries.append(((k - ks[0]) * s, slice(a0 - k * s, a1 - k * s), slice(a0 - start, a1 - start)))
            per_axis.append(entries)
        return [tuple(zip(*combo)) for combo in itertools.product(*per_axis)]


# --- defaults -----------------------------------------------------------------------
def tile_for_extent(extent: int, depth) -> int:
    """The smallest usable input tile whose single tile covers an axis of ``extent`` pixels
    (``depth``: the pools along the axis, as :mod:`fastunet.geometry` takes them)."""
    return geometry.input_size_for_output(max(int(extent), geometry.grid_step(depth)), depth)


def pick_step(depth, *, chunk: int, max_step: int, min_step: int | None = None) -> int:
    """A tile grid step (multiple of ``2**depth``, the max-pool grid) no larger than ``max_step``.

    Prefers steps that divide the chunk or that the chunk divides, so that blocks (unions of
    chunks) hold whole tiles and no tile is computed twice by two blocks.
    """
    q = geometry.grid_step(depth)
    top = max(q, max_step - max_step % q)
    aligned = _aligned_step(depth, chunk=chunk, max_step=max_step, min_step=min_step)
    return top if aligned is None else aligned


def _aligned_step(depth, *, chunk: int, max_step: int, min_step: int | None = None) -> int | None:
    """:func:`pick_step`'s chunk-aligned step, from ``max_step`` down to ``min_step`` (default
    half of it); None when none is."""
    q = geometry.grid_step(depth)
    top = max(q, max_step - max_step % q)
    low = max(q, min_step if min_step is not None else top // 2)
    for s in range(top, low - 1, -q):
        if _aligned(chunk, s):
            return s
    return None


def _aligned(chunk: int, step: int) -> bool:
    """Whether blocks of whole chunks can hold whole tiles: the step divides the chunk or the
    chunk the step."""
    return chunk % step == 0 or step % chunk == 0


def _even_step(n: int, depth, most: int) -> int:
    """The step of the fewest tiles, of a step of at most ``most``, that cover an axis of
    ``n`` pixels, all of one size (the last no emptier than the others): a multiple of the
    max-pool grid."""
    q = geometry.grid_step(depth)
    most = max(q, most - most % q)
    share = -(-n // -(-n // most))  # n over the fewest tiles of at most ``most``
    return share + (-share % q)


MAX_YX_CHUNK = 1024  # output chunks are at most this long along Y and X ...
MAX_Z_CHUNK = 16  # ... and along Z


def output_chunks(shape: tuple[int, ...], source_chunks: tuple[int, ...], *, max_yx: int = MAX_YX_CHUNK,
                  max_z: int = MAX_Z_CHUNK) -> tuple[int, ...]:
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
    ``max_voxels`` voxels (never below one chunk), but never shorter than a step that the
    chunks divide, whatever ``max_voxels`` says (:func:`_axis_block`). With a step along Z too
    (a 3D network), every axis is treated so, about the cube root of ``max_voxels`` along each."""
    nd = len(shape)
    if len(step) == 3:
        return _block_3d(shape, chunks, step, max_voxels)
    cz = chunks[0] if nd == 3 else 1
    target = max(1, min(target_yx, int(math.sqrt(max_voxels / cz))))
    yx = []
    for axis in (0, 1):
        yx.append(_axis_block(shape[nd - 2 + axis], chunks[nd - 2 + axis], step[axis], target))
    if nd == 2:
        return tuple(yx)
    per_slice = yx[0] * yx[1]
    kz = max(1, max_voxels // (per_slice * cz))
    bz = min(cz * kz, -(-shape[0] // cz) * cz)
    return (bz, *yx)


def _block_3d(shape, chunks, step, max_voxels: int) -> tuple[int, ...]:
    """A 3D network's block: per axis a multiple of the chunk (and of the step where their
    least common multiple is not above the target), about ``max_voxels ** (1/3)`` along each."""
    target = max(1, round(max_voxels ** (1 / 3)))
    return tuple(_axis_block(n, c, s, target) for n, c, s in zip(shape, chunks, step))


def _axis_block(n: int, chunk: int, step: int, target: int) -> int:
    """A block's length along an axis of ``n`` pixels: a multiple of the chunk, and of the tile
    step where their least common multiple is not above ``target`` or is the step itself (a
    step longer than the target, e.g. of a user's ``tile=``: a block of a part of it would
    compute the whole tile for each of its blocks), about ``target`` long, never beyond the
    volume's last chunk."""
    unit = math.lcm(chunk, step)
    if unit > max(target, step):
        unit = chunk
    return min(unit * max(1, target // unit), -(-n // chunk) * chunk)


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
    tile: int | tuple[int, ...] | None = None,
    max_step: int | tuple[int, ...] = 512,
    chunks: tuple[int, ...] | None = None,
    block: tuple[int, ...] | None = None,
    max_block_voxels: int = 8 * 1024 * 1024,
    pools: tuple | None = None,
    side_by_side: int = 1,
) -> Layout:
    """Pick tile, output chunks and blocks for a volume.

    ``tile`` given: used as is (an int is square, or a cube for a 3D network). Otherwise per
    axis the smallest tile that covers the axis when it is short, else a step of at most
    ``max_step`` (one for every tiled axis, or one per axis) aligned with the chunks (see
    :func:`pick_step`). Unless ``chunks`` or ``block`` is given, the chunks follow the tiles
    where that saves work (fewer tiles computed): an axis whose chunks no step fits (a TIFF of
    2300 px: chunks of 575) or whose aligned tiles would compute :data:`EVEN_GAIN` more input
    pixels along it than the fewest equal tiles (1037 px on chunks of 1024: two tiles of 1116)
    takes those equal tiles, and its output chunk fits their step (the most steps within 1024
    px along Y/X, 16 along Z, or the step's largest divisor within that), so that every block
    holds whole tiles and no tile is computed for two blocks (the 2300 px image: 9 tiles of 860
    px instead of 36 of 1116). A device that computes ``side_by_side`` tiles at once, each on
    its share of the cores (OpenVINO's streams on the CPU), computes a run in rounds of that
    many tiles; when the run has few tiles (fewer than :data:`SPLIT_ROUNDS` rounds), the
    longest default step is split further (one tile more along its axis at a time, never under
    :data:`MIN_SPLIT_STEP` px of output) and the plan kept is the one of the fewest rounds
    times the tile's area (a stand-in for its time): one 1024 x 1024 image on two streams runs
    as two 604 x 1116 tiles, three slices as six, rather than leave a stream idle (a 3D
    network's steps are split down to :func:`min_split_step`); a longer run
    whose last round is not full tries up to :data:`LAST_ROUND_SPLITS` such splits (a 2304 x
    2304 image: 12 tiles of 668 x 860 px in 6 rounds rather than 9 of 860 px in 5, the last
    half idle). ``chunks`` default to :func:`output_chunks` of the input's chunks (changed as
    above where the chunks follow the tiles), ``block`` to :func:`block_shape`. A ``chunks`` or
    ``block`` of the wrong length, with a size below 1, or a block that is not a multiple of
    the chunks raises ValueError naming the parameter (``block=``) and a valid value.

    ``pools``: a 3D network's pools per spatial axis (``UNetConfig.axis_pools``, three
    entries) tile Z too; None (the 2D network) tiles Y and X with ``depth`` pools.
    """
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    pools = tuple(pools) if pools is not None else (depth, depth)
    if len(pools) > nd:
        raise ValueError(f"A {len(pools)}D network needs a volume of {len(pools)} spatial axes; got shape {shape}.")
    nt = len(pools)
    free = chunks is None and block is None  # the chunks may follow the tiles
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
    steps = (max_step,) * nt if isinstance(max_step, int) else tuple(max_step)
    layout_pools = None if nt == 2 and pools == (depth, depth) else pools

    caps = tuple(MAX_Z_CHUNK if nd == 3 and axis == 0 else MAX_YX_CHUNK for axis in range(nd))

    def planned(tile, steps, split=()) -> Layout:
        if tile is None:  # a split axis takes its step as it is: its tiles are few, the chunks no matter
            tile = tuple(_default_tile(shape[nd - nt + axis], chunks[nd - nt + axis], p, most, exact=axis in split,
                                       free=free)
                         for axis, p, most in zip(range(nt), pools, steps))
        elif isinstance(tile, int):
            tile = (tile,) * nt
        tile = tuple(int(t) for t in tile)
        grid = [geometry.grid_step(p) for p in pools]
        out = tuple(geometry.output_size(t, p) for t, p in zip(tile, pools))
        step = tuple(o - o % q for o, q in zip(out, grid))

        def made(chunks):
            shaped = block if block is not None else block_shape(shape, chunks, step, max_voxels=max_block_voxels)
            return Layout(shape=shape, depth=depth, tile=tile, chunks=chunks, block=tuple(int(b) for b in shaped),
                          pools=layout_pools)

        layout = made(chunks)
        tiled = _chunks_for_tiles(shape, chunks, step, out, caps=caps) if free else chunks
        if tiled != chunks:  # blocks along the input's chunks would compute some tiles twice
            other = made(tiled)
            if other.tile_count() < layout.tile_count():
                return other
        return layout

    layout = planned(tile, steps)
    if tile is not None or side_by_side < 2:
        return layout  # a given tile, or one tile at a time
    return _split_for_streams(layout, lambda limits, split: planned(None, limits, split), steps, side_by_side)


def _split_for_streams(layout: Layout, planned, steps, side_by_side: int) -> Layout:
    """:func:`plan_layout`'s search for ``side_by_side`` streams: the longest default step split
    one tile more at a time (``planned(limits, split)`` plans with those steps at most, the
    ``split`` axes at exactly theirs), while the run has fewer than :data:`SPLIT_ROUNDS` rounds
    or, when its last round is not full, up to :data:`LAST_ROUND_SPLITS` times; the plan of the
    fewest rounds times the tile's area wins."""
    def cost(plan: Layout, tiles: int) -> int:  # rounds of side_by_side tiles x the tile's area
        return -(-tiles // side_by_side) * math.prod(plan.tile)

    tiles = layout.tile_count()
    long_run = tiles >= SPLIT_ROUNDS * side_by_side
    if long_run and tiles % side_by_side == 0:
        return layout  # tiles enough, the last round full
    best, best_cost, limits, split, tries = layout, cost(layout, tiles), list(steps), set(), 0
    while tries < LAST_ROUND_SPLITS if long_run else tiles < SPLIT_ROUNDS * side_by_side:
        tries += 1
        axis = max(range(layout.tiled), key=lambda a: layout.step[a])  # the longest step (Y on a tie)
        n, q = layout.shape[layout.ndim - layout.tiled + axis], layout.grid_steps[axis]
        most = -(-n // (layout.last_tile(axis) + 2))  # one tile more along the axis
        most += -most % q
        if most < min_split_step(layout.pools[axis], layout.tiled) or most >= layout.step[axis]:
            break
        limits[axis] = most
        split.add(axis)
        layout = planned(tuple(limits), split)
        tiles = layout.tile_count()
        if cost(layout, tiles) < best_cost:
            best, best_cost = layout, cost(layout, tiles)
    return best


MIN_SPLIT_STEP = 128  # plan_layout splits no tile step below this many output pixels (or min_split_step's)
SPLIT_ROUNDS = 4  # ... nor a run of this many rounds of side-by-side tiles or more ...
LAST_ROUND_SPLITS = 2  # ... but for up to this many steps when its last round leaves a stream idle


def min_split_step(pools, tiled: int = 2) -> int:
    """The shortest step :func:`plan_layout` splits an axis (of ``pools``, one of ``tiled``
    axes) into for side-by-side tiles: :data:`MIN_SPLIT_STEP` px for a 2D network; for a 3D
    one, whose default steps are at most 128 already, twice the axis's context (the bundled
    3D model's 20 px in Y and X, 12 px in Z: steps of 40 and 24), so that a tile still computes
    more output than context."""
    return MIN_SPLIT_STEP if tiled < 3 else min(MIN_SPLIT_STEP, 2 * geometry.context(pools))


def _default_tile(n: int, chunk: int, pools, most: int, *, exact: bool = False, free: bool = False) -> int:
    """The default input tile along one axis of ``n`` pixels: the smallest that covers it when
    it is short, else one of a step of at most ``most`` aligned with the chunks (``exact``: of
    the step ``most`` itself). ``free``: chunks that may follow the tiles; then the fewest
    equal tiles of at most ``most`` (:func:`_even_step`) when no step fits the chunks, or when
    they compute at least :data:`EVEN_GAIN` fewer input pixels along the axis than the
    aligned ones (e.g. 1037 px: two tiles of 612 rather than of 1116)."""
    if n <= most:  # one tile covers the axis: never larger than needed
        return tile_for_extent(n, pools)
    step = _aligned_step(pools, chunk=chunk, max_step=most, min_step=most if exact else None)
    if free:
        even = _even_step(n, pools, most)
        if step is None or _axis_pixels(n, even, pools) <= (1 - EVEN_GAIN) * _axis_pixels(n, step, pools):
            step = even
    elif step is None:
        step = pick_step(pools, chunk=chunk, max_step=most)
    return geometry.input_size_for_output(step, pools)


EVEN_GAIN = 0.1  # equal tiles replace chunk-aligned ones that compute this much more along an axis


def _axis_pixels(n: int, step: int, pools) -> int:
    """Input pixels the tiles of ``step`` compute along an axis of ``n`` pixels."""
    tile = geometry.input_size_for_output(step, pools)
    out = geometry.output_size(tile, pools)
    return (max(0, -(-(n - out) // step)) + 1) * tile


def _chunks_for_tiles(shape, chunks, step, out, *, caps) -> tuple[int, ...]:
    """``chunks`` with each tiled axis of more than one tile whose chunk no step fits (see
    :func:`_aligned`) given a chunk that fits the step instead, so that blocks hold whole
    tiles: the most steps within that axis's cap in ``caps`` and the axis, or the step's
    largest divisor within the cap."""
    chunks = list(chunks)
    nd, nt = len(shape), len(step)
    for axis, (s, o, cap) in enumerate(zip(step, out, caps[nd - nt:])):
        i = nd - nt + axis
        if shape[i] > o and not _aligned(chunks[i], s):
            if s <= cap:
                chunks[i] = s * max(1, min(cap, shape[i]) // s)
            else:
                chunks[i] = next(s // k for k in range(2, s + 1) if s % k == 0 and s // k <= cap)
    return tuple(chunks)
