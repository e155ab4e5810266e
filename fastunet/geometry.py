"""Tile geometry of the valid-convolution U-Net, in one place.

Every 3x3 valid convolution removes one pixel per side, every 2x2 max-pool halves the size
(and needs an even size), every 2x2 up-convolution doubles it. For a network of depth ``D``
(number of max-pools) the valid input sizes along one axis are::

    input(m)  = 2**D * m + 4 * (2**D - 1)          m = size entering the bottom level
    output(m) = 2**D * (m - 4) - 4 * (2**D - 1)
    context   = (input - output) / 2 = 6 * 2**D - 4 pixels per side

so the paper's network (D = 4) maps 572 -> 388 and consumes 92 pixels of context per side.
All functions here work along one axis; a 2D tile is valid when both of its edges are.
"""

from __future__ import annotations

__all__ = [
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
