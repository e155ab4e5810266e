"""Tile geometry of the valid-convolution U-Net, in one place.

Every 3x3 (3x3x3) valid convolution removes one pixel per side, every max-pool by 2 halves the
size (and needs an even size), every up-convolution by 2 doubles it. For a network of depth ``D``
(number of max-pools) the valid input sizes along one axis are::

    input(m)  = 2**D * m + 4 * (2**D - 1)          m = size entering the bottom level
    output(m) = 2**D * (m - 4) - 4 * (2**D - 1)
    context   = (input - output) / 2 = 6 * 2**D - 4 pixels per side

so the paper's network (D = 4) maps 572 -> 388 and consumes 92 pixels of context per side.

An axis need not be pooled at every level: the 3D network of an anisotropic stack pools Z by
1 where its voxels are coarse (Cicek et al. 2016 pool 2x2x2; a 1x2x2 pool keeps Z). So the
functions here take ``depth`` either as an int (``depth`` pools by 2, the 2D network and
every isotropic axis) or as the per-level pool factors along the axis, e.g. ``(1, 2, 2)``.
With factors ``f_i`` and ``s_i = f_0 ... f_{i-1}`` (``s_D`` = :func:`grid_step`, the
max-pool grid)::

    input(m) = s_D * m + 4 * (s_0 + ... + s_{D-1}),   context = 4 * (s_0 + ... + s_{D-1}) + 2 * s_D

All functions work along one axis; a tile is valid when each of its edges is, except
:func:`layer_shapes`, the one table of every layer's sizes and channels at a tile (what the
fused network allocates, the memory estimate, the FLOP count and the benchmarks read),
:func:`pools_for_spacing`, which picks the pools of a 3D network from the voxel size, and
:func:`reflect_index`, the mirrored-border index map of overlap-tile reads and of the
training augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Layer",
    "layer_shapes",
    "reflect_index",
    "context",
    "grid_step",
    "axis_factors",
    "output_size",
    "is_valid_size",
    "valid_input_sizes",
    "nearest_valid_sizes",
    "check_tile_size",
    "input_size_for_output",
    "min_input_size",
    "pools_for_spacing",
    "tile_edges",
]


def _check_depth(depth: int) -> int:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise ValueError(f"depth must be an integer >= 0; got {depth!r}.")
    return depth


Depth = int | tuple[int, ...]  # a number of pools by 2, or the per-level pool factors along an axis


def axis_factors(depth: Depth) -> tuple[int, ...]:
    """The pool factor of each level along one axis: ``(2,) * depth`` for an int, the factors
    themselves (each 1 or 2) for a sequence."""
    if isinstance(depth, (tuple, list)):
        factors = tuple(depth)
        if not all(isinstance(f, (int, np.integer)) and not isinstance(f, bool) and f in (1, 2) for f in factors):
            raise ValueError(f"Expected pool factors of 1 or 2 per level; got {depth!r}.")
        return tuple(int(f) for f in factors)
    return (2,) * _check_depth(depth)


def grid_step(depth: Depth) -> int:
    """The max-pool grid along an axis: the product of its pool factors (``2**depth``)."""
    return math.prod(axis_factors(depth))


def _describe(depth: Depth) -> str:
    return f"depth {depth}" if not isinstance(depth, (tuple, list)) else f"pools {tuple(depth)} along this axis"


def _pool_name(depth: Depth) -> str:
    return "2x2 max-pool" if not isinstance(depth, (tuple, list)) else "max-pool by 2"


def context(depth: Depth) -> int:
    """Pixels of context the network consumes on each side of its output (92 for depth 4)."""
    if not isinstance(depth, (tuple, list)):
        return 6 * 2 ** _check_depth(depth) - 4
    factors = axis_factors(depth)
    scales = [math.prod(factors[:i]) for i in range(len(factors) + 1)]
    return 4 * sum(scales[:-1]) + 2 * scales[-1]


def _trace(input_size: int, depth: Depth) -> int | None:
    """Follow a size through the network; the output size, or None if some layer rejects it."""
    factors = axis_factors(depth)
    size = input_size
    for f in factors:
        size -= 4  # two valid 3x3 convs
        if size < f or size % f:
            return None  # a max-pool by 2 needs an even size
        size //= f
    size -= 4  # bottom convs
    if size < 1:
        return None
    for f in reversed(factors):
        size = f * size - 4  # up-conv, then two valid 3x3 convs
        if size < 1:
            return None
    return size


def is_valid_size(input_size: int, depth: Depth) -> bool:
    """True when an input edge of ``input_size`` passes through a network of ``depth``."""
    axis_factors(depth)
    return isinstance(input_size, int) and input_size > 0 and _trace(input_size, depth) is not None


def min_input_size(depth: Depth) -> int:
    """The smallest valid input edge (188 for depth 4, giving a 4-pixel output)."""
    factors = axis_factors(depth)
    step = math.prod(factors)
    size = step * 5 + 4 * sum(math.prod(factors[:i]) for i in range(len(factors)))
    while _trace(size, depth) is None:
        size += step
    return size


def valid_input_sizes(depth: Depth, max_size: int = 2048, min_size: int = 1) -> list[int]:
    """All valid input edges in ``[min_size, max_size]``, ascending (every ``2**depth``)."""
    step = grid_step(depth)
    start = min_input_size(depth)
    if min_size > start:
        start += -(-(min_size - start) // step) * step
    return list(range(start, max_size + 1, step))


def nearest_valid_sizes(size: int, depth: Depth) -> tuple[int | None, int]:
    """The valid input edges just below and just above ``size`` (below is None if none is).

    A valid ``size`` is returned as both neighbours.
    """
    if is_valid_size(size, depth):
        return size, size
    step = grid_step(depth)
    smallest = min_input_size(depth)
    if size < smallest:
        return None, smallest
    below = smallest + ((size - smallest) // step) * step
    return below, below + step


def output_size(input_size: int, depth: Depth) -> int:
    """Output edge for a valid input edge; raises :class:`ValueError` naming the nearest valid ones."""
    return check_tile_size(input_size, depth)


def check_tile_size(input_size: int, depth: Depth, what: str = "tile size") -> int:
    """Validate an input edge and return the output edge it gives.

    Raises
    ------
    ValueError
        With the nearest valid sizes, e.g. ``"Expected a tile size the network can take
        (every max-pool must see an even size); got 570. Nearest valid: 556, 572."``
    """
    if isinstance(input_size, bool) or not isinstance(input_size, int):
        raise TypeError(f"Expected an integer {what}; got {input_size!r}.")
    out = _trace(input_size, depth) if input_size > 0 else None
    if out is not None:
        return out
    below, above = nearest_valid_sizes(max(input_size, 1), depth)
    nearest = ", ".join(str(s) for s in (below, above) if s is not None)
    raise ValueError(
        f"Expected a {what} the network ({_describe(depth)}) can take: every {_pool_name(depth)} must see "
        f"an even size and the output must not be empty; got {input_size}. Nearest valid: {nearest}."
    )


def input_size_for_output(output: int, depth: Depth) -> int:
    """The smallest valid input edge whose output edge is at least ``output``."""
    if output < 1:
        raise ValueError(f"Expected an output size >= 1; got {output}.")
    size = max(output + 2 * context(depth), min_input_size(depth))
    _, above = nearest_valid_sizes(size, depth)
    return above


# ------------------------------------------------------------------------------ layer table


@dataclass(frozen=True)
class Layer:
    """One layer of the valid U-Net at a given input tile (sizes per image, batch left out).

    Attributes
    ----------
    name : str
        ``enc{i}.conv1``, ``enc{i}.conv2``, ``enc{i}.pool``, ``bottom.conv1``, ``bottom.conv2``,
        ``dec{i}.up``, ``dec{i}.conv1``, ``dec{i}.conv2``, ``head`` (``i`` the level, 0 at the top).
    kind : {"conv3x3", "pool", "upconv", "head"}
        ``conv3x3`` is a 3x3 valid convolution, 3x3x3 in a 3D network.
    level : int
        The level the layer works at (``depth`` for the bottom, 0 for the head).
    in_size, out_size : tuple of int
        The spatial sizes of the layer's input and output: ``(H, W)``, or ``(D, H, W)`` in a
        3D network. For a decoder's ``conv1`` the input is the up-convolution output; the skip
        it is concatenated with is ``skip_size`` before the center crop.
    c_in, c_out : int
        Input channels (all sources) and output channels.
    c_skip : int
        Channels of the center-cropped skip a decoder's ``conv1`` reads first (0 elsewhere):
        its input is ``cat([crop(skip), up])`` with ``c_in - c_skip`` channels from ``up``.
    skip_size : tuple of int or None
        Size of that skip before the crop.
    pool : bool
        A conv whose output feeds a max-pool (the fused kernel writes both).
    factor : tuple of int or None
        The pool (or up-convolution) factor per axis of a ``pool`` or ``upconv`` layer and of
        a conv that feeds a pool: ``(2, 2)``, ``(2, 2, 2)``, or ``(1, 2, 2)`` where a 3D
        network keeps Z; None elsewhere.
    """

    name: str
    kind: str
    level: int
    in_size: tuple[int, ...]
    out_size: tuple[int, ...]
    c_in: int
    c_out: int
    c_skip: int = 0
    skip_size: tuple[int, ...] | None = None
    pool: bool = False
    factor: tuple[int, ...] | None = None

    @property
    def ndim(self) -> int:
        """Spatial dimensions: 2 or 3."""
        return len(self.out_size)

    @property
    def taps(self) -> int:
        """Weights per input and output channel: 9 (27 in 3D) for a conv, the factor's volume
        for an up-convolution (4 or 8), 1 for the head, 0 for a max-pool."""
        if self.kind == "conv3x3":
            return 3**self.ndim
        if self.kind == "upconv":
            return math.prod(self.factor or (2,) * self.ndim)
        return 1 if self.kind == "head" else 0

    @property
    def macs(self) -> int:
        """Multiply-adds of the layer on one image (0 for the max-pool)."""
        pixels = math.prod(self.out_size)
        if self.kind == "upconv":  # each output pixel receives one input pixel (windows do not overlap)
            return self.c_in * self.c_out * pixels
        return self.taps * self.c_in * self.c_out * pixels if self.kind != "pool" else 0

    @property
    def flops(self) -> int:
        """Floating-point operations (2 per multiply-add) on one image."""
        return 2 * self.macs

    @property
    def out_values(self) -> int:
        """Values of the layer's output on one image."""
        return self.c_out * math.prod(self.out_size)


def tile_edges(config, tile) -> tuple[int, ...]:
    """A tile as one edge per spatial axis of ``config``'s network (an int: the same edge along
    every axis), unchecked."""
    dims = getattr(config, "spatial_dims", 2)
    if isinstance(tile, (int, np.integer)):
        return (int(tile),) * dims
    edges = tuple(int(t) for t in tile)
    if len(edges) != dims:
        raise ValueError(f"Expected a tile of {dims} edges for a {dims}D network; got {tuple(tile)}.")
    return edges


def _axis_pools(config) -> tuple:
    pools = getattr(config, "axis_pools", None)
    return tuple(pools) if pools is not None else (config.depth, config.depth)


def layer_shapes(config, tile, kind: str | None = None) -> list[Layer]:
    """Every layer of the network described by ``config`` at input ``tile``, in forward order.

    Parameters
    ----------
    config
        A :class:`~fastunet.model.UNetConfig` (anything with ``in_channels``,
        ``num_classes``, ``depth`` and ``widths``; ``spatial_dims`` and ``axis_pools`` for a
        3D network).
    tile : int or tuple of int
        The input tile edge, or one edge per spatial axis (``(H, W)`` or ``(D, H, W)``); each
        must be a valid size along its axis.
    kind : {"conv3x3", "pool", "upconv", "head"}, optional
        Only the layers of this kind (e.g. the 18 3x3 convolutions of the paper's network).

    Returns
    -------
    list of Layer
        ``2 * depth + 2`` 3x3 convolutions, ``depth`` max-pools and up-convolutions, and the
        ``head``: 18 + 4 + 4 + 1 layers for the paper's network.
    """
    depth = config.depth
    size = tile_edges(config, tile)
    pools = _axis_pools(config)
    names = ("tile height", "tile width") if len(size) == 2 else ("tile depth", "tile height", "tile width")
    for edge, axis_depth, what in zip(size, pools, names):
        check_tile_size(edge, axis_depth, what)
    factors = [tuple(axis_factors(p)[level] for p in pools) for level in range(depth)]

    def shrink(s, k):
        return tuple(n - k for n in s)

    widths = config.widths
    layers: list[Layer] = []
    c_in, skips = config.in_channels, []
    for level in range(depth + 1):
        name = f"enc{level}" if level < depth else "bottom"
        c = widths[level]
        f = factors[level] if level < depth else None
        layers.append(Layer(f"{name}.conv1", "conv3x3", level, size, shrink(size, 2), c_in, c))
        layers.append(Layer(f"{name}.conv2", "conv3x3", level, shrink(size, 2), shrink(size, 4), c, c,
                            pool=level < depth, factor=f))
        size, c_in = shrink(size, 4), c
        if level < depth:
            skips.append(size)
            pooled = tuple(n // k for n, k in zip(size, f))
            layers.append(Layer(f"{name}.pool", "pool", level, size, pooled, c, c, factor=f))
            size = pooled
    for level in reversed(range(depth)):
        c, f = widths[level], factors[level]
        up = tuple(n * k for n, k in zip(size, f))
        layers.append(Layer(f"dec{level}.up", "upconv", level, size, up, widths[level + 1], c, factor=f))
        size = up
        layers.append(Layer(f"dec{level}.conv1", "conv3x3", level, size, shrink(size, 2), 2 * c, c,
                            c_skip=c, skip_size=skips[level]))
        layers.append(Layer(f"dec{level}.conv2", "conv3x3", level, shrink(size, 2), shrink(size, 4), c, c))
        size = shrink(size, 4)
    layers.append(Layer("head", "head", 0, size, size, widths[0], config.num_classes))
    if kind is not None:
        if kind not in ("conv3x3", "pool", "upconv", "head"):
            raise ValueError(f"Expected a layer kind among conv3x3, pool, upconv, head; got {kind!r}.")
        layers = [layer for layer in layers if layer.kind == kind]
    return layers


def pools_for_spacing(spacing, depth: int) -> tuple[tuple[int, ...], ...]:
    """The pool factors per level of a 3D network for voxels of ``spacing`` ``(z, y, x)``.

    As nnU-Net plans its pools (Isensee et al. 2021): at each level an axis is pooled by 2
    while its voxel edge is less than twice the finest one's, so a coarse Z is kept
    (``(1, 2, 2)``) until the in-plane pools have made the voxels about isotropic, then
    pooled with them. Isotropic voxels give ``(2, 2, 2)`` at every level (Cicek et al. 2016).

    Parameters
    ----------
    spacing : sequence of 3 positive floats
        Voxel edges ``(z, y, x)`` in any one unit.
    depth : int

    Returns
    -------
    tuple of (int, int, int)
        One ``(fz, fy, fx)`` per level.
    """
    try:
        edges = [float(s) for s in spacing]
    except (TypeError, ValueError):
        raise ValueError(f"Expected a voxel size (z, y, x) of three positive numbers; got {spacing!r}.") from None
    if len(edges) != 3 or not all(e > 0 and math.isfinite(e) for e in edges):
        raise ValueError(f"Expected a voxel size (z, y, x) of three positive numbers; got {spacing!r}.")
    pools = []
    for _ in range(_check_depth(depth)):
        finest = min(edges)
        level = tuple(2 if e < 2 * finest else 1 for e in edges)
        pools.append(level)
        edges = [e * f for e, f in zip(edges, level)]
    return tuple(pools)


# --------------------------------------------------------------------------- mirrored borders


def reflect_index(idx, n: int):
    """Map (possibly out-of-range) indices into ``[0, n)`` by mirroring at the edges.

    Same values as ``np.pad(a, pad, mode="reflect")``: the edge pixel is not repeated
    (``-1 -> 1``, ``n -> n - 2``) and a pad wider than the array keeps reflecting (the map
    is periodic with period ``2 * (n - 1)``). ``n == 1`` maps everything to 0.

    Parameters
    ----------
    idx : array_like or torch.Tensor of int
        Indices, any sign and shape. A torch tensor gives a tensor (the training
        augmentation), anything else a numpy int64 array (the overlap-tile reads).
    n : int
        Length of the axis (>= 1).
    """
    if n < 1:
        raise ValueError(f"Expected an axis length >= 1; got {n}.")
    if not hasattr(idx, "clip"):  # a list or scalar: numpy
        idx = np.asarray(idx, dtype=np.int64)
    if n == 1:
        return idx * 0
    period = 2 * (n - 1)
    m = idx % period  # numpy and torch both take the sign of the divisor: 0 <= m < period
    return m - 2 * (m - (n - 1)).clip(min=0)
