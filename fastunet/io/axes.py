"""Axis letters of input volumes: what the user says (``axes="ZYX"``), what the file says, and
the canonical order the engine reads in.

Every input ends up with *canonical axes*, a subsequence of ``"CZYX"``. The stored axes are
named by letters from ``"TCZYXS"`` (T time, C channel, Z, Y, X, S RGB samples); then ``T`` of
length 1 is dropped (T > 1 is an error), RGB samples ``S`` become ``C``, and a ``C`` of length 1
is dropped (one channel either way): :func:`plan_axes`. A time axis of length > 1 stays
(native letter ``T``) for the callers that segment time points one by one.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError

__all__ = ["parse_axes", "SUPPORTED_DTYPES", "AXES_LETTERS", "CANONICAL"]

SUPPORTED_DTYPES = (
    "uint8", "uint16", "uint32", "int8", "int16", "int32", "int64", "float16", "float32", "float64",
)
AXES_LETTERS = "TCZYXS"
CANONICAL = "CZYX"
_GENERIC_TIFF_AXES = "IQ"
_TIFF_AXIS_NAMES = {
    "A": "angle", "P": "phase", "R": "tile", "H": "lifetime histogram", "E": "wavelength",
    "L": "exposure", "V": "event", "M": "mosaic", "O": "other",
}
_AXES_HINT = 'e.g. axes="ZYX" for a z-stack or axes="CYX" for a multi-channel image'


def parse_axes(axes: str, ndim: int, *, what: str = "the input") -> str:
    """Validate user-given axes for an array of ``ndim`` dimensions; return them upper-case.

    Parameters
    ----------
    axes : str
        Letters from ``"TCZYXS"`` (any case), no repeats, one per dimension, Y and X present.
    ndim : int
        Number of dimensions of the stored array.
    what : str
        The array in words, for messages.

    Returns
    -------
    str
        ``axes`` upper-case, e.g. ``"ZYX"``.

    Raises
    ------
    TypeError
        ``axes`` is not a string.
    UserError
        Unknown or repeated letters, the wrong number of them, or no Y and X.
    """
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string such as 'ZYX'; got {type(axes).__name__}.")
    up = axes.strip().upper()
    bad = sorted({a for a in up if a not in AXES_LETTERS})
    if bad:
        raise UserError(
            f"Axes {axes!r} contain {', '.join(map(repr, bad))}; use letters from "
            f'{AXES_LETTERS} (T time, C channel, Z, Y, X, S RGB samples), e.g. axes="ZYX".'
        )
    repeated = sorted({a for a in up if up.count(a) > 1})
    if repeated:
        raise UserError(
            f"Axes {axes!r} repeat {', '.join(map(repr, repeated))}; name each axis once, e.g. axes=\"CZYX\"."
        )
    if len(up) != ndim:
        raise UserError(
            f"Axes {axes!r} name {len(up)} axes but {what} has {ndim}; give one letter per axis, "
            f'e.g. axes="{example_axes(ndim)}".'
        )
    if "Y" not in up or "X" not in up:
        raise UserError(f'Axes {axes!r} lack Y and X; an image needs both, e.g. axes="{example_axes(ndim)}".')
    return up


def example_axes(ndim: int) -> str:
    """Plausible axes of an ``ndim``-dimensional image, for the examples in messages."""
    return {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}.get(ndim, "ZYX")


def plan_axes(letters: str, shape: tuple[int, ...], what: str) -> tuple[str, str]:
    """Map native per-dimension letters (``TCZYXS``, or ``1`` for a dropped length-1 axis) to
    canonical axes. Returns ``(native_axes, canonical_axes)`` where ``native_axes`` has one
    letter per stored dimension: the canonical letter it becomes, ``1`` when dropped, or ``T``
    for a time axis of length > 1 (not canonical: its time points are read one at a time)."""
    out = list(letters)
    size = dict(zip(letters, shape))
    if "T" in size and size["T"] == 1:
        out[letters.index("T")] = "1"
    if "S" in size:
        s = letters.index("S")
        if size["S"] == 1:
            out[s] = "1"
        elif size.get("C", 1) > 1:
            raise UserError(
                f"{what} has both channels (C={size['C']}) and RGB samples (S={size['S']}); "
                "fastunet takes one channel axis: save the channels you need as one axis first."
            )
        else:
            if "C" in size:
                out[letters.index("C")] = "1"
            out[s] = "C"
    if "C" in size and out[letters.index("C")] == "C" and size["C"] == 1:
        out[letters.index("C")] = "1"
    native = "".join(out)
    canonical = "".join(a for a in CANONICAL if a in native)
    return native, canonical


def check_shape_dtype(shape: tuple[int, ...], dtype, what: str) -> str:
    """Refuse empty volumes and unsupported data types; return the dtype's name."""
    if any(int(n) == 0 for n in shape):
        raise UserError(f"{what} is empty (shape {tuple(shape)}: an axis has length 0); pass a non-empty volume.")
    dt = np.dtype(dtype)
    if dt.name not in SUPPORTED_DTYPES:
        hint = " (for a mask, convert it to uint8)" if dt.kind == "b" else ""
        raise UserError(
            f"{what} has the unsupported data type {dt}{hint}; fastunet reads "
            f"{', '.join(SUPPORTED_DTYPES)}: convert it first, e.g. `.astype('float32')`."
        )
    return dt.name


def letters_from_names(names) -> str | None:
    """Single-letter dimension names from TCZYXS (any case, no repeats) -> letters, else None."""
    if not names or any(not isinstance(n, str) or len(n) != 1 for n in names):
        return None
    up = "".join(n.upper() for n in names)
    if any(a not in AXES_LETTERS for a in up) or len(set(up)) != len(up):
        return None
    return up


def default_letters(ndim: int, shape, what: str) -> str:
    """The axes of an array without axes metadata: ``YX`` for 2-D; any other needs ``axes``."""
    if ndim == 2:
        return "YX"
    if ndim < 2 or ndim > 6:
        raise UserError(
            f"{what} has {ndim} axes (shape {tuple(shape)}); fastunet segments 2-D to 4-D images "
            "(YX, ZYX, CYX, CZYX, plus T of length 1): pass an image, not a "
            f"{'profile' if ndim < 2 else 'stack of volumes'}."
        )
    raise UserError(
        f"{what} has {ndim} axes (shape {tuple(shape)}) and no axes metadata; say what they are, {_AXES_HINT}."
    )


def tiff_letters(axes: str, shape: tuple[int, ...], what: str) -> str:
    """tifffile series axes -> TCZYXS letters ('1' for a dropped length-1 axis).

    tifffile's generic letters ``I`` (a plain stack of pages) and ``Q`` (a shaped array
    without axes metadata) mean Z when there is exactly one of them and no Z; any other
    letter (``A``, ``E``, ``P``, ``R``, ...) of length > 1 needs ``axes``.
    """
    out = []
    generic = [i for i, a in enumerate(axes) if a in _GENERIC_TIFF_AXES and shape[i] > 1]
    for i, a in enumerate(axes):
        if a in AXES_LETTERS:
            out.append(a)
        elif shape[i] == 1:
            out.append("1")
        elif a in _GENERIC_TIFF_AXES and len(generic) == 1 and "Z" not in axes:
            out.append("Z")  # a plain stack of pages: a z-stack
        else:
            name = _TIFF_AXIS_NAMES.get(a, "generic")
            raise UserError(
                f"{what} has axes {axes} (shape {shape}); its axis {a!r} ({name}, length {shape[i]}) "
                f'has no meaning for fastunet: say what the axes are, e.g. axes="{example_axes(len(axes))}".'
            )
    return "".join(out)
