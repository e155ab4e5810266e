"""How a model expects its input intensities to be normalized, and the statistics of a volume.

The statistics are always computed from the data of a whole volume (or of a whole slice,
when ``scope == "slice"``), never per tile, so that tiled inference has no seams: a fixed
lattice of samples (:func:`sample_indices`) that depends on the volume's shape only, read
once (:func:`normalization_stats`) into per-channel constants (:class:`NormStats`). The
model file stores a :class:`Normalization` in its metadata; training, inference and the
benchmarks share it and these functions.

Numerics at the dtypes' edges: the statistics are float64; 64-bit integer samples are taken
relative to one of their values (exact differences, so an image + 2**60 has the statistics of
the image, shifted); a spread is "no spread" (scale 1) only when it is zero to float64's
resolution at the data's magnitude, so a float32 image scaled to 1e-30 keeps its contrast;
and :meth:`Normalization.apply` subtracts an offset beyond 2**53 from int64 data in integers
first. What remains is the offset's own rounding to float64 (half a unit in its last place:
at most 2**-54 of it, 64 at 2**60).
"""

from __future__ import annotations

import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np

from .errors import UserError

__all__ = ["Normalization", "NormStats", "is_wide", "sample_indices", "normalization_stats"]

_MODES = ("percentile", "meanstd", "fixed", "none")
_SCOPES = ("volume", "slice")


@dataclass(frozen=True)
class Normalization:
    """Intensity normalization ``x -> (x - offset) / scale``, per channel.

    Parameters
    ----------
    mode : {"percentile", "meanstd", "fixed", "none"}
        ``percentile``: offset and scale from the ``low``/``high`` percentiles of the data,
        mapping them to 0 and 1. ``meanstd``: the data's mean and standard deviation.
        ``fixed``: the stored ``offset`` and ``scale`` (e.g. 0 and 255 for 8-bit images).
        ``none``: the data as it is.
    low, high : float
        Percentiles for ``mode="percentile"``.
    offset, scale : float
        Constants for ``mode="fixed"``.
    scope : {"volume", "slice"}
        Statistics from the whole volume, or from each 2D slice separately.
    """

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    offset: float = 0.0
    scale: float = 1.0
    scope: str = "volume"

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"Normalization mode must be one of {_MODES}; got {self.mode!r}.")
        if self.scope not in _SCOPES:
            raise ValueError(f"Normalization scope must be one of {_SCOPES}; got {self.scope!r}.")
        if self.mode == "percentile" and not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(
                f"Expected percentiles 0 <= low < high <= 100; got low={self.low}, high={self.high}."
            )
        if self.mode == "fixed" and not self.scale > 0:
            raise ValueError(f"Expected a positive fixed scale; got {self.scale}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Normalization":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown Normalization fields {unknown}; expected some of {sorted(known)}.")
        return cls(**data)

    def stats(self, sample: np.ndarray) -> tuple[float, float]:
        """``(offset, scale)`` for one channel, from a sample of its values.

        ``sample`` holds the values the statistics are taken over (a whole volume or slice,
        or a uniform subsample of one). NaN values are ignored.
        """
        if self.mode == "none":
            return 0.0, 1.0
        if self.mode == "fixed":
            return float(self.offset), float(self.scale)
        sample = np.asarray(sample)
        if self.mode == "percentile" and _histogram_dtype(sample.dtype):
            lo, hi, unit = _small_int_percentiles(sample, (self.low, self.high))
            return lo, _spread(hi - lo, unit)
        values = np.asarray(sample, dtype=np.float64).ravel()
        finite = np.isfinite(values)
        if not finite.all():  # (a copy only when there is something to drop)
            values = values[finite]
        if values.size == 0:
            return 0.0, 1.0
        unit = float(np.abs(values).max()) or 1.0
        if self.mode == "percentile":
            lo, hi = np.percentile(values, [self.low, self.high])
            offset, scale = float(lo), float(hi - lo)
        else:  # in units of the largest magnitude: no overflow for values near the float64 range
            offset, scale = float(np.mean(values / unit) * unit), float(np.std(values / unit) * unit)
        return offset, _spread(scale, unit)

    @staticmethod
    def apply(x, offset, scale, *, zero_nonfinite: bool = False):
        """``(x - offset) / scale`` as float32, for a numpy array or a torch tensor (on its
        device); ``offset`` and ``scale`` are numbers or arrays/tensors broadcastable to ``x``
        (e.g. :meth:`NormStats.for_slices`, or per tile and channel on the device).

        Inputs that float32 cannot hold exactly (integers of more than 16 bits, float64:
        :func:`is_wide`) are normalized in float64 and then cast, so that a large offset (an
        image + 2**40) keeps its contrast and values beyond the float32 range do not
        overflow; results beyond the float32 range are clipped to it. Everything else is
        normalized in float32. With ``zero_nonfinite``, NaN and +-Inf inputs become 0, the
        value of the offset (in float32 arithmetic so do results that overflow). numpy and
        torch give the same values bit for bit: the same IEEE operations in the same order
        (tested on the CPU for every supported dtype, and on CUDA by a ``gpu`` test)."""
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(x, torch.Tensor):
            return _apply_torch(torch, x, offset, scale, zero_nonfinite)
        x = np.asarray(x)
        wide = is_wide(x.dtype)
        work = np.float64 if wide else np.float32
        if x.dtype == np.int64 and _far(offset):
            hi, lo = _split(offset)
            out = _minus_far_offset(np, x, hi, lo) / np.asarray(scale, np.float64)
        else:
            out = (np.asarray(x, dtype=work) - np.asarray(offset, dtype=work)) / np.asarray(scale, dtype=work)
        if wide:
            if zero_nonfinite and x.dtype.kind == "f":
                out[~np.isfinite(x)] = 0.0  # before the clip, which would make +-Inf the float32 extremes
            np.clip(out, -_F32_MAX, _F32_MAX, out=out)
        elif zero_nonfinite:
            np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return out.astype(np.float32, copy=False)


_F32_MAX = float(np.finfo(np.float32).max)
_EXACT = 2.0**53  # float64 holds every integer of smaller magnitude exactly
_FAR = 2.0**44  # offsets from here on are kept in extended precision (float64: 2**-8 resolution here)
_INT64_RANGE = (-(2.0**63), 2.0**63 - 2**10)  # the float64 values that convert to int64


def _far(offset) -> bool:
    """Is ``offset`` one that int64 data must subtract exactly (extended precision, or beyond 2**53)?"""
    offset = np.asarray(offset) if not hasattr(offset, "abs") else offset
    if isinstance(offset, np.ndarray):
        return offset.dtype == np.longdouble or bool(np.any(np.abs(offset) >= _EXACT))
    return bool((offset.abs() >= _EXACT).any())


def _split(offset) -> tuple[np.ndarray, np.ndarray]:
    """An offset as float64 ``hi + lo`` (``lo`` the part of an extended-precision offset that
    float64 does not hold; 0 for float64 offsets)."""
    offset = np.asarray(offset)
    hi = offset.astype(np.float64)
    lo = (offset - hi).astype(np.float64) if offset.dtype == np.longdouble else np.zeros_like(hi)
    return hi, lo


def _minus_far_offset(xp, x, hi, lo):
    """``x - (hi + lo)`` in float64 for int64 ``x`` and a far offset: its integer part is
    subtracted in int64 (exact, where the difference does not overflow), its fraction and
    ``lo`` in float64, so that the data's own differences survive (float64(x) would round x to
    a multiple of 2**(e - 52)). The same operations for numpy (``xp`` = numpy) and torch."""
    if xp is np:
        base = np.clip(np.floor(hi), *_INT64_RANGE)
        base_int = base.astype(np.int64)
        d = x - base_int
        overflow = ((x ^ base_int) & (x ^ d)) < 0
        near = (d.astype(np.float64) - (hi - base)) - lo
        return np.where(overflow, x.astype(np.float64) - hi, near)
    base = xp.floor(hi).clamp(*_INT64_RANGE)
    base_int = base.to(xp.int64)
    d = x - base_int
    overflow = ((x ^ base_int) & (x ^ d)) < 0
    near = (d.to(xp.float64) - (hi - base)) - lo
    return xp.where(overflow, x.to(xp.float64) - hi, near)


def _spread(scale: float, unit: float) -> float:
    """The scale, or 1 for no spread: nothing at float64's resolution for values of magnitude
    ``unit`` (an absolute threshold would flatten an image whose values are all ~1e-30)."""
    return scale if np.isfinite(scale) and scale > 64 * np.spacing(unit) else 1.0


def _histogram_dtype(dtype) -> bool:
    """Integers of at most 16 bits: percentiles from a histogram of every possible value."""
    dtype = np.dtype(dtype)
    return dtype.kind in "iub" and dtype.itemsize <= 2


def _small_int_percentiles(sample: np.ndarray, qs) -> tuple[float, float, float]:
    """``np.percentile(sample.astype(float64), qs)`` (its default, linear method: the same
    float64 operations, so the same bits) for the two percentiles ``qs`` of integers of at most
    16 bits, from the histogram of their values (one counting pass instead of a float64 copy
    and a partition), and the largest magnitude among the values."""
    values = sample.ravel()
    base = int(np.iinfo(values.dtype).min) if values.dtype.kind == "i" else 0
    counts = np.bincount(values.astype(np.int32) - base if base else values, minlength=1)
    ends = np.cumsum(counts)  # ends[v] values are <= base + v
    n = int(ends[-1])
    present = np.flatnonzero(counts)
    unit = float(max(abs(int(present[0]) + base), abs(int(present[-1]) + base))) or 1.0

    def order(k: int) -> float:  # the k-th smallest value (0-based)
        return float(int(np.searchsorted(ends, k, side="right")) + base)

    out = []
    for q in qs:
        h = (n - 1) * np.true_divide(q, 100)
        i = int(np.floor(h))
        g = h - i
        a, b = order(i), order(min(i + 1, n - 1))
        d = np.float64(b) - np.float64(a)
        out.append(float(b - d * (1 - g)) if g >= 0.5 else float(a + d * g))
    return out[0], out[1], unit


def is_wide(dtype) -> bool:
    """Whether float32 cannot hold every value of ``dtype`` (a numpy or torch dtype) exactly:
    float64 and integers of more than 16 bits, which :meth:`Normalization.apply` normalizes
    in float64."""
    if isinstance(dtype, np.dtype) or not hasattr(dtype, "is_floating_point"):
        dtype = np.dtype(dtype)
        return dtype == np.float64 or (dtype.kind in "iu" and dtype.itemsize > 2)
    if dtype.is_floating_point:  # a torch dtype
        return dtype.itemsize == 8
    return not dtype.is_complex and dtype.itemsize > 2


def _apply_torch(torch, x, offset, scale, zero_nonfinite: bool):
    """:meth:`Normalization.apply` on a tensor. The constants become tensors on ``x``'s
    device (a CPU-scalar divisor would make CUDA multiply by its reciprocal instead: other
    bits than numpy's division)."""
    work = torch.float64 if is_wide(x.dtype) else torch.float32
    lo = None
    if isinstance(offset, np.ndarray) and offset.dtype == np.longdouble:  # torch has no extended precision
        offset, lo = _split(offset)
    offset = torch.as_tensor(offset, dtype=torch.float64).to(x.device, work)  # numbers as numpy takes them
    scale = torch.as_tensor(scale, dtype=torch.float64).to(x.device, work)
    if x.dtype == torch.int64 and (lo is not None or _far(offset)):
        lo = torch.zeros_like(offset) if lo is None else torch.as_tensor(lo).to(x.device)
        out = _minus_far_offset(torch, x, offset, lo) / scale
    else:
        out = (x.to(work) - offset) / scale
    if work == torch.float64:
        if zero_nonfinite and x.dtype.is_floating_point:
            out = out.masked_fill_(~torch.isfinite(x), 0.0)
        out = out.clamp_(-_F32_MAX, _F32_MAX)
    elif zero_nonfinite:
        out = torch.nan_to_num_(out, nan=0.0, posinf=0.0, neginf=0.0)
    return out.to(torch.float32)


# ------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class NormStats:
    """Normalization constants: ``offset``/``scale`` of shape (C,) (volume scope) or (C, Z)
    (slice scope); ``sampled`` values looked at, ``nonfinite`` of them NaN/Inf."""

    offset: np.ndarray
    scale: np.ndarray
    sampled: int = 0
    nonfinite: int = 0

    RECORD_KEYS = ("norm_offset", "norm_offset_lo", "norm_scale")

    def record(self) -> dict:
        """The constants as JSON for an output's metadata (:data:`RECORD_KEYS`): the offset as
        float64 ``norm_offset`` plus, for an extended-precision offset (far int64 data), the part
        float64 does not hold as ``norm_offset_lo`` (else None), so a resumed run subtracts the
        very same offset."""
        hi, lo = _split(self.offset)
        return {"norm_offset": hi.tolist(), "norm_offset_lo": lo.tolist() if self.offset.dtype == np.longdouble else None,
                "norm_scale": self.scale.tolist()}

    @classmethod
    def from_record(cls, meta: dict) -> "NormStats | None":
        """The constants :meth:`record` wrote into ``meta``; None where none are recorded yet."""
        if meta.get("norm_offset") is None:
            return None
        offset = np.asarray(meta["norm_offset"], np.float64)
        if meta.get("norm_offset_lo") is not None:
            offset = offset.astype(np.longdouble) + np.asarray(meta["norm_offset_lo"], np.longdouble)
        return cls(offset, np.asarray(meta["norm_scale"], np.float64))

    def for_slices(self, z0: int, z1: int) -> tuple[np.ndarray, np.ndarray]:
        """Constants broadcastable to a (C, Z, Y, X) slab of slices ``[z0, z1)``."""
        if self.offset.ndim == 1:
            return self.offset[:, None, None, None], self.scale[:, None, None, None]
        return self.offset[:, z0:z1, None, None], self.scale[:, z0:z1, None, None]


def sample_indices(shape: tuple[int, ...], *, max_samples: int, max_planes: int | None = 16) -> list[np.ndarray]:
    """A regular lattice of at most about ``max_samples`` points of a ``(Z,) Y, X`` volume.

    It depends on the shape only (never on chunking or tiling), so the statistics are the
    same however the volume is stored or processed. Volumes up to ``max_samples`` voxels are
    taken whole. Along Z at most ``max_planes`` evenly spaced slices; in each plane a
    regular stride along Y and X (centered). Returns one index array per axis.
    """
    shape = tuple(int(n) for n in shape)
    if math.prod(shape) <= max_samples:
        return [np.arange(n) for n in shape]
    idx = []
    planes = 1
    if len(shape) == 3:
        nz = shape[0] if max_planes is None else min(shape[0], max_planes)
        nz = max(1, min(nz, max_samples))
        idx.append(((np.arange(nz) + 0.5) * shape[0] / nz).astype(np.int64))
        planes = nz
    budget = max(1, max_samples // planes)
    ny, nx = shape[-2:]
    stride = max(1, math.ceil(math.sqrt(ny * nx / budget)))
    for n in (ny, nx):
        s = min(stride, n)
        idx.append(np.arange(s // 2, n, s))
    return idx


def _region(source, z: int | None, rows: slice, cols: slice) -> tuple:
    region = [rows, cols]
    if z is not None:
        region.insert(0, slice(z, z + 1))
    if source.axes.startswith("C"):
        region.insert(0, slice(0, source.channels))
    return tuple(region)


def _pivot(source) -> np.ndarray | None:
    """For 64-bit integer data, one value per channel (at the lattice's first point) that the
    samples are taken relative to, so that their differences are exact in float64; None for
    every other dtype."""
    dtype = np.dtype(source.dtype)
    if dtype.kind not in "iu" or dtype.itemsize < 8:
        return None
    z = 0 if len(source.spatial_shape) == 3 else None
    value = np.asarray(source.read(_region(source, z, slice(0, 1), slice(0, 1))))
    return value.reshape(source.channels).astype(dtype)


def _relative(data: np.ndarray, pivot: np.ndarray) -> np.ndarray:
    """``data - pivot`` (per channel, first axis) in float64, exact for differences below 2**53."""
    pivot = pivot.reshape(-1, *([1] * (data.ndim - 1)))
    if data.dtype.kind == "u":  # wraps to the signed difference
        return (data - pivot).view(np.int64).astype(np.float64)
    return (data - pivot).astype(np.float64)


def _read_lattice(source, z: int | None, ys: np.ndarray, xs: np.ndarray, *, band_voxels: int,
                  pivot: np.ndarray | None = None) -> np.ndarray:
    """Values of one plane at the lattice rows ``ys`` and columns ``xs``: (C, len(ys), len(xs)),
    in the input's dtype for integers of at most 16 bits, else float64, relative to ``pivot``
    when given (see :func:`_pivot`). Reads bands of rows of at most
    ``band_voxels`` voxels per channel, or of whole rows of the input's chunks where a row of
    chunks holds at most ``4 * band_voxels`` (each chunk is then decoded once)."""
    ny, nx = source.spatial_shape[-2:]
    rows = max(1, band_voxels // nx)
    unit = int(source.chunks[-2]) if len(source.chunks) >= 2 else 1  # the chunks' height (Y is next to last)
    aligned = 1 < unit < ny and unit * nx <= 4 * band_voxels
    if aligned:
        rows = unit * max(1, rows // unit)
    c = source.channels
    narrow = pivot is None and _histogram_dtype(source.dtype)  # kept as they are: no float64 copy
    out = np.empty((c, len(ys), len(xs)), np.dtype(source.dtype) if narrow else np.float64)
    i = 0
    while i < len(ys):
        y0 = int(ys[i])
        stop = (y0 // rows + 1) * rows if aligned else y0 + rows  # aligned: the band ends where its chunks do
        j = int(np.searchsorted(ys, stop, side="left"))
        j = max(j, i + 1)
        y1 = int(ys[j - 1]) + 1
        data = np.asarray(source.read(_region(source, z, slice(y0, y1), slice(0, nx))))
        data = data.reshape(c, y1 - y0, nx)[:, ys[i:j] - y0][:, :, xs]
        out[:, i:j] = data if pivot is None else _relative(data, pivot)
        i = j
    return out


def normalization_stats(source, normalization: Normalization, *, max_samples: int = 1 << 21,
                        max_planes: int = 16, threads: int | None = None, band_voxels: int = 1 << 20) -> NormStats:
    """Per-channel ``(offset, scale)`` of a volume (or of each Z slice, for
    ``normalization.scope == "slice"``) from the fixed lattice of :func:`sample_indices`.

    Slice scope takes up to ``max_samples // 4`` values per slice and keeps only each
    slice's constants. Reads go in bands of at most ``band_voxels`` voxels per channel on
    ``threads`` threads (default: the CPU count, at most 8), so memory stays bounded whatever
    the volume size. NaN/Inf values are ignored by the statistics and counted
    (``nonfinite``); a sample without any finite value raises :class:`UserError` (the
    statistics, and any segmentation, would be meaningless). Modes ``fixed`` and ``none``
    read nothing.
    """
    c = source.channels
    spatial = source.spatial_shape
    per_slice = normalization.scope == "slice" and len(spatial) == 3
    if normalization.mode in ("fixed", "none"):
        off, sc = normalization.stats(np.zeros(1))
        shape = (c, spatial[0]) if per_slice else (c,)
        return NormStats(np.full(shape, off, np.float64), np.full(shape, sc, np.float64))
    if per_slice:
        idx = sample_indices(spatial[1:], max_samples=max(1, max_samples // 4))
        planes = [(z, idx[0], idx[1]) for z in range(spatial[0])]
    elif len(spatial) == 3:
        zs, ys, xs = sample_indices(spatial, max_samples=max_samples, max_planes=max_planes)
        planes = [(int(z), ys, xs) for z in zs]
    else:
        ys, xs = sample_indices(spatial, max_samples=max_samples)
        planes = [(None, ys, xs)]
    pivot = _pivot(source)  # 64-bit integers: samples relative to it, offsets shifted back below
    read = partial(_read_lattice, source, band_voxels=band_voxels, pivot=pivot)

    def plane(p):
        sample = read(*p)
        finite = sample.dtype.kind not in "fc"  # integers hold no NaN or Inf
        counts = (sample.size, 0 if finite else int(np.count_nonzero(~np.isfinite(sample))))
        if per_slice:  # keep only this slice's constants: memory does not grow with Z
            return counts, [normalization.stats(sample[ch]) for ch in range(c)]
        return counts, sample

    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(planes)))) as pool:
        results = list(pool.map(plane, planes))
    sampled = sum(r[0][0] for r in results)
    nonfinite = sum(r[0][1] for r in results)
    if sampled and nonfinite == sampled:
        what = source.describe() if hasattr(source, "describe") else "the input"
        raise UserError(
            f"No finite value in the input's sample: all {sampled} values sampled from {what} (a lattice of "
            "planes, rows and columns) are NaN or Inf, so the input cannot be normalized; check the input "
            "(a failed conversion or export?)."
        )
    if per_slice:
        stats = np.array([r[1] for r in results], np.float64).transpose(1, 0, 2)  # (C, Z, 2)
        return NormStats(_shifted(stats[..., 0], pivot), stats[..., 1], sampled, nonfinite)
    samples = [r[1] for r in results]
    stats = np.array([normalization.stats(np.concatenate([s[ch].ravel() for s in samples])) for ch in range(c)])
    return NormStats(_shifted(stats[:, 0], pivot), stats[:, 1].astype(np.float64), sampled, nonfinite)


def _shifted(offsets: np.ndarray, pivot: np.ndarray | None) -> np.ndarray:
    """Offsets taken relative to ``pivot`` (per channel, first axis) as absolute values: float64,
    or, for 64-bit integers whose offset float64 cannot hold to the unit, the platform's extended
    precision (``numpy.longdouble``: 64 significant bits on x86-64 Linux, every int64 exactly),
    which :meth:`Normalization.apply` then subtracts in."""
    offsets = np.asarray(offsets, np.float64)
    if pivot is None:
        return offsets
    out = np.array([int(p) for p in pivot], np.longdouble).reshape(-1, *([1] * (offsets.ndim - 1))) + offsets
    if np.all(np.abs(out) < _FAR):
        return out.astype(np.float64)
    return out
