"""Tile geometry of the valid-convolution U-Net, in one place.

Every 3x3 valid convolution removes one pixel per side, every 2x2 max-pool halves the size
(and needs an even size), every 2x2 up-convolution doubles it. For a network of depth ``D``
(number of max-pools) the valid input sizes along one axis are::

    input(m)  = 2**D * m + 4 * (2**D - 1)          m = size entering the bottom level
    output(m) = 2**D * (m - 4) - 4 * (2**D - 1)
    context   = (input - output) / 2 = 6 * 2**D - 4 pixels per side

so the paper's network (D = 4) maps 572 -> 388 and consumes 92 pixels of context per side.
All functions here work along one axis; a 2D tile is valid when both of its edges are,
except :func:`layer_shapes`, the one table of every layer's sizes and channels at a tile
(what the fused network allocates, the memory estimate, the FLOP count and the benchmarks
read), and :func:`reflect_index`, the mirrored-border index map of overlap-tile reads and
of the training augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Layer",
    "layer_shapes",
    "reflect_index",
    "context",
    "output_size",
    "is_valid_size",
    "valid_input_sizes",
    "nearest_valid_sizes",
    "check_tile_size",
    "input_size_for_output",
    "min_input_size",
]


def _check_depth(depth: int) -> int:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
        raise ValueError(f"depth must be an integer >= 0; got {depth!r}.")
    return depth


def context(depth: int) -> int:
    """Pixels of context the network consumes on each side of its output (92 for depth 4)."""
    return 6 * 2 ** _check_depth(depth) - 4


def _trace(input_size: int, depth: int) -> int | None:
    """Follow a size through the network; the output size, or None if some layer rejects it."""
    size = input_size
    for _ in range(depth):
        size -= 4  # two valid 3x3 convs
        if size < 2 or size % 2:
            return None  # a 2x2 max-pool needs an even size
        size //= 2
    size -= 4  # bottom convs
    if size < 1:
        return None
    for _ in range(depth):
        size = 2 * size - 4  # up-conv, then two valid 3x3 convs
        if size < 1:
            return None
    return size


def is_valid_size(input_size: int, depth: int) -> bool:
    """True when an input edge of ``input_size`` passes through a network of ``depth``."""
    _check_depth(depth)
    return isinstance(input_size, int) and input_size > 0 and _trace(input_size, depth) is not None


def min_input_size(depth: int) -> int:
    """The smallest valid input edge (188 for depth 4, giving a 4-pixel output)."""
    size = 2 ** _check_depth(depth) * 5 + 4 * (2**depth - 1)
    while _trace(size, depth) is None:
        size += 2**depth
    return size


def valid_input_sizes(depth: int, max_size: int = 2048, min_size: int = 1) -> list[int]:
    """All valid input edges in ``[min_size, max_size]``, ascending (every ``2**depth``)."""
    step = 2 ** _check_depth(depth)
    start = min_input_size(depth)
    if min_size > start:
        start += -(-(min_size - start) // step) * step
    return list(range(start, max_size + 1, step))


def nearest_valid_sizes(size: int, depth: int) -> tuple[int | None, int]:
    """The valid input edges just below and just above ``size`` (below is None if none is).

    A valid ``size`` is returned as both neighbours.
    """
    if is_valid_size(size, depth):
        return size, size
    step = 2 ** _check_depth(depth)
    smallest = min_input_size(depth)
    if size < smallest:
        return None, smallest
    below = smallest + ((size - smallest) // step) * step
    return below, below + step


def output_size(input_size: int, depth: int) -> int:
    """Output edge for a valid input edge; raises :class:`ValueError` naming the nearest valid ones."""
    return check_tile_size(input_size, depth)


def check_tile_size(input_size: int, depth: int, what: str = "tile size") -> int:
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
        f"Expected a {what} the network (depth {depth}) can take: every 2x2 max-pool must see "
        f"an even size and the output must not be empty; got {input_size}. Nearest valid: {nearest}."
    )


def input_size_for_output(output: int, depth: int) -> int:
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
    level : int
        The level the layer works at (``depth`` for the bottom, 0 for the head).
    in_size, out_size : (int, int)
        Height and width of the layer's input and output. For a decoder's ``conv1`` the input
        is the up-convolution output; the skip it is concatenated with is ``skip_size`` before
        the center crop.
    c_in, c_out : int
        Input channels (all sources) and output channels.
    c_skip : int
        Channels of the center-cropped skip a decoder's ``conv1`` reads first (0 elsewhere):
        its input is ``cat([crop(skip), up])`` with ``c_in - c_skip`` channels from ``up``.
    skip_size : (int, int) or None
        Size of that skip before the crop.
    pool : bool
        A conv whose output feeds a 2x2 max-pool (the fused kernel writes both).
    """

    name: str
    kind: str
    level: int
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    c_in: int
    c_out: int
    c_skip: int = 0
    skip_size: tuple[int, int] | None = None
    pool: bool = False

    @property
    def macs(self) -> int:
        """Multiply-adds of the layer on one image (0 for the max-pool)."""
        h, w = self.out_size
        taps = {"conv3x3": 9, "upconv": 1, "head": 1, "pool": 0}[self.kind]
        if self.kind == "upconv":  # each input pixel feeds 2 x 2 outputs: (h / 2) (w / 2) 4 = h w
            return self.c_in * self.c_out * h * w
        return taps * self.c_in * self.c_out * h * w

    @property
    def flops(self) -> int:
        """Floating-point operations (2 per multiply-add) on one image."""
        return 2 * self.macs

    @property
    def out_values(self) -> int:
        """Values of the layer's output on one image."""
        return self.c_out * self.out_size[0] * self.out_size[1]


def _sizes(tile) -> tuple[int, int]:
    if isinstance(tile, int):
        return tile, tile
    h, w = tile
    return int(h), int(w)


def layer_shapes(config, tile, kind: str | None = None) -> list[Layer]:
    """Every layer of the network described by ``config`` at input ``tile``, in forward order.

    Parameters
    ----------
    config
        A :class:`~fastunet.model.UNetConfig` (anything with ``in_channels``,
        ``num_classes``, ``depth`` and ``widths``).
    tile : int or (int, int)
        The input tile edge, or its height and width; each must be a valid size.
    kind : {"conv3x3", "pool", "upconv", "head"}, optional
        Only the layers of this kind (e.g. the 18 3x3 convolutions of the paper's network).

    Returns
    -------
    list of Layer
        ``2 * depth + 2`` 3x3 convolutions, ``depth`` max-pools and up-convolutions, and the
        ``head``: 18 + 4 + 4 + 1 layers for the paper's network.
    """
    depth = config.depth
    h, w = _sizes(tile)
    check_tile_size(h, depth, "tile height")
    check_tile_size(w, depth, "tile width")
    widths = config.widths
    layers: list[Layer] = []
    c_in, skips = config.in_channels, []
    for level in range(depth + 1):
        name = f"enc{level}" if level < depth else "bottom"
        c = widths[level]
        layers.append(Layer(f"{name}.conv1", "conv3x3", level, (h, w), (h - 2, w - 2), c_in, c))
        layers.append(Layer(f"{name}.conv2", "conv3x3", level, (h - 2, w - 2), (h - 4, w - 4), c, c,
                            pool=level < depth))
        h, w, c_in = h - 4, w - 4, c
        if level < depth:
            skips.append((h, w))
            layers.append(Layer(f"{name}.pool", "pool", level, (h, w), (h // 2, w // 2), c, c))
            h, w = h // 2, w // 2
    for level in reversed(range(depth)):
        c = widths[level]
        layers.append(Layer(f"dec{level}.up", "upconv", level, (h, w), (2 * h, 2 * w), widths[level + 1], c))
        h, w = 2 * h, 2 * w
        layers.append(Layer(f"dec{level}.conv1", "conv3x3", level, (h, w), (h - 2, w - 2), 2 * c, c,
                            c_skip=c, skip_size=skips[level]))
        layers.append(Layer(f"dec{level}.conv2", "conv3x3", level, (h - 2, w - 2), (h - 4, w - 4), c, c))
        h, w = h - 4, w - 4
    layers.append(Layer("head", "head", 0, (h, w), (h, w), widths[0], config.num_classes))
    if kind is not None:
        if kind not in ("conv3x3", "pool", "upconv", "head"):
            raise ValueError(f"Expected a layer kind among conv3x3, pool, upconv, head; got {kind!r}.")
        layers = [layer for layer in layers if layer.kind == kind]
    return layers


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
