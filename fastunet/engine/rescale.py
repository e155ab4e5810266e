"""Segmenting at another scale: the network runs on the input resampled on a global grid.

With ``object_size=`` (:mod:`fastunet.objectsize`) the input is rescaled by ``factor`` (the
model's training object size over the input's) so that its objects look like those the model
was trained on; the labels are mapped back to the input grid. All of it happens inside each
block task, so it streams and stays seamless:

* **the rescaled grid** has ``n' = round(n * factor)`` pixels along Y and X (Z and channels
  are left alone); rescaled pixel ``j`` sits at input coordinate ``(j + 0.5) * n / n' - 0.5``
  (pixel centres, as ``scipy.ndimage.zoom(grid_mode=True)``).
* **the rescaled input** (:class:`RescaledSource`, a read-only volume like the input):
  when shrinking (``factor < 1``) the input is first smoothed by a Gaussian of
  ``sigma = (n / n' - 1) / 2`` input pixels (anti-aliasing, as ``skimage.transform.rescale``),
  then sampled linearly at the rescaled pixels' coordinates. A block reads the input around
  the part it needs (:func:`fastunet.engine.tiling.read_mirrored`: mirrored beyond the edges,
  plus the filter's radius), and every rescaled pixel is computed from global coordinates by
  the same arithmetic, so its value is the same whichever block computes it.
* **the network** runs on the rescaled grid exactly as on any input: the global tile grid,
  mirrored beyond the rescaled image's edges (:func:`predict_rescaled` hands the block task a
  block of the rescaled grid).
* **back to the input grid**: each input pixel takes the linear interpolation of the class
  probabilities of the rescaled pixels around it (clamped at the edges), and its class is
  their argmax. (Taking the class of the nearest rescaled pixel instead moves every
  boundary by up to half a rescaled pixel: measured with the default model at each image's
  true object size, 4 images per style, foreground IoU classic 0.898 -> 0.910, large 0.886 ->
  0.898, huge 0.908 -> 0.923 with the interpolated probabilities.)

Reference semantics (what the tests compare against): smooth the whole input (mirrored),
sample it at the rescaled grid (``scipy.ndimage.map_coordinates``, order 1), segment that image
as usual, interpolate its probabilities at the input pixels and take their argmax.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .predictor import CONFIDENCE_SCALE
from .tiling import Block, Layout, read_mirrored

__all__ = ["Rescale", "RescaledSource", "predict_rescaled", "rescaled_size"]

_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default: the kernel's radius in sigmas


def rescaled_size(n: int, factor: float) -> int:
    """Pixels of an axis of ``n`` pixels rescaled by ``factor`` (at least one)."""
    return max(1, int(round(n * factor)))


@dataclass(frozen=True)
class Rescale:
    """How a block task resamples: the input's ``(Y, X)`` size, the rescaled one, and the
    network's input tile on the rescaled grid. Picklable (travels in the Job)."""

    shape: tuple[int, int]
    rescaled: tuple[int, int]
    tile: tuple[int, int]

    @classmethod
    def make(cls, shape: tuple[int, int], factor: float, tile: tuple[int, int]) -> "Rescale":
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"Expected a positive rescaling factor; got {factor!r}.")
        shape = tuple(int(n) for n in shape)
        return cls(shape, tuple(rescaled_size(n, factor) for n in shape), tuple(int(t) for t in tile))

    def step(self, axis: int) -> float:
        """Input pixels per rescaled pixel along Y (0) or X (1)."""
        return self.shape[axis] / self.rescaled[axis]

    def sigma(self, axis: int) -> float:
        """The anti-aliasing Gaussian's sigma (input pixels) along Y (0) or X (1); 0 when enlarging."""
        return max(0.0, (self.step(axis) - 1.0) / 2.0)

    def layout(self, base: Layout) -> Layout:
        """The layout of the rescaled grid (only its geometry is used: tiles, context)."""
        shape = (*base.shape[:-2], *self.rescaled)
        ones = (1,) * base.ndim
        return Layout(shape=shape, depth=base.depth, tile=self.tile, chunks=ones, block=ones)

    # --- input grid -> rescaled grid -------------------------------------------------------
    def source_coords(self, axis: int, start: int, stop: int) -> np.ndarray:
        """Input coordinates (float64) of the rescaled pixels ``[start, stop)``."""
        return (np.arange(start, stop, dtype=np.float64) + 0.5) * self.step(axis) - 0.5

    # --- rescaled grid -> input grid -------------------------------------------------------
    def linear(self, axis: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For input pixels ``[start, stop)``: the two rescaled pixels around each (clamped to
        the grid) and the weight of the second (float32)."""
        ratio = self.rescaled[axis] / self.shape[axis]
        t = (np.arange(start, stop, dtype=np.float64) + 0.5) * ratio - 0.5
        j0 = np.floor(t)
        w = (t - j0).astype(np.float32)
        j0 = j0.astype(np.int64)
        last = self.rescaled[axis] - 1
        return np.clip(j0, 0, last), np.clip(j0 + 1, 0, last), w

    def needed(self, axis: int, start: int, stop: int) -> tuple[int, int]:
        """The rescaled range whose prediction input pixels ``[start, stop)`` sample."""
        j0, j1, _ = self.linear(axis, start, stop)
        return int(j0.min()), int(j1.max()) + 1


def _interpolate(data: np.ndarray, coords: np.ndarray, base: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``data`` along ``axis`` at the global coordinates ``coords``,
    where ``data``'s first entry along ``axis`` is global index ``base`` (float32 arithmetic,
    the same for every block)."""
    i0 = np.floor(coords)
    w = (coords - i0).astype(np.float32)
    i0 = i0.astype(np.int64) - base
    shape = [1] * data.ndim
    shape[axis] = len(coords)
    w = w.reshape(shape)
    lo = np.take(data, i0, axis=axis)
    hi = np.take(data, i0 + 1, axis=axis)
    return lo * (np.float32(1.0) - w) + hi * w


class RescaledSource:
    """A read-only view of a volume resampled on the rescaled grid (float32); reads compute
    the requested region from the input (see the module docstring). Picklable when the
    input is."""

    def __init__(self, source, rescale: Rescale):
        self.source = source
        self.rescale = rescale
        self.axes = source.axes
        spatial = list(source.shape)
        spatial[-2:] = rescale.rescaled
        self.shape = tuple(spatial)
        self.dtype = "float32"
        self.channels = source.channels
        self.spatial_axes = source.spatial_axes
        self.chunks = self.shape

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(n for a, n in zip(self.axes, self.shape) if a != "C")

    def describe(self) -> str:
        inner = self.source.describe() if hasattr(self.source, "describe") else "the input"
        return f"{inner} rescaled to {self.rescale.rescaled[0]} x {self.rescale.rescaled[1]}"

    def read(self, region) -> np.ndarray:
        """The rescaled values of ``region`` (slices in canonical axes, inside the grid)."""
        rs = self.rescale
        region = tuple(region)
        lead = region[:-2]
        box, coords, sigmas = [], [], []
        has_c = self.axes.startswith("C")
        for sl, n in zip(lead[1:] if has_c else lead, self.spatial_shape[:-2]):
            start, stop, _ = sl.indices(n)
            box.append((start, stop))
        for axis, sl in enumerate(region[-2:]):
            start, stop, _ = sl.indices(rs.rescaled[axis])
            x = rs.source_coords(axis, start, stop)
            radius = int(_TRUNCATE * rs.sigma(axis) + 0.5)
            lo = int(np.floor(x.min())) - radius
            box.append((lo, int(np.floor(x.max())) + 2 + radius))
            coords.append(x)
            sigmas.append(rs.sigma(axis))
        data = read_mirrored(self.source, box).astype(np.float32)
        if has_c:
            data = data[region[0]]
        if any(sigmas):
            from scipy import ndimage as ndi

            data = ndi.gaussian_filter(data, [0.0] * (data.ndim - 2) + sigmas, truncate=_TRUNCATE)
        data = _interpolate(data, coords[0], box[-2][0], data.ndim - 2)
        return _interpolate(data, coords[1], box[-1][0], data.ndim - 1)


def _lerp(values: np.ndarray, linear, base: int, axis: int) -> np.ndarray:
    """``values`` (float32) interpolated along ``axis`` by ``linear`` (the index pairs and the
    second one's weight, :meth:`Rescale.linear`; indices from ``base``): ``lo + (hi - lo) * w``,
    computed in place in one new array."""
    a, b, w = linear
    lo = np.take(values, a - base, axis=axis)
    out = np.take(values, b - base, axis=axis)
    out -= lo
    out *= w.reshape(w.shape + (1,) * (-1 - axis))  # along Y: one weight a row
    out += lo
    return out


def _sample_back(job, block: Block, ranges, probs):
    """The rescaled probabilities ``(K, bz, h, w)`` over ``ranges``, interpolated at the block's
    input pixels: the labels (their argmax) and/or the probabilities, as the job asks. For the
    labels (and the object probability) of a two-class network one channel is interpolated,
    the background's probability ``q`` (the object's is ``1 - q``, interpolated alike): the
    labels are where ``q < 1/2`` (the argmax of the pair but at exact ties, which take class 0
    either way), at half the arithmetic of both classes."""
    rs = job.rescale
    (y0, y1), (x0, x1) = block.box[-2:]
    kind = job.output_kind  # what the network produces (fastunet.kinds.network_output)
    pair = probs.shape[0] == 2 and kind in ("labels", "confidence")
    p = np.asarray(probs[:1] if pair else probs, np.float32)
    p = _lerp(p, rs.linear(0, y0, y1), ranges[0][0], axis=-2)
    p = _lerp(p, rs.linear(1, x0, x1), ranges[1][0], axis=-1)
    if pair:
        labels = (p[0] < 0.5).view(np.uint8)
        if kind == "labels":
            return labels, None
        # the object probability alone (min_confidence), as the predictor gives it: (1 - q) in 1/255 steps
        p *= -CONFIDENCE_SCALE
        p += CONFIDENCE_SCALE
        return labels, np.rint(p, out=p).astype(np.uint8)
    labels = p.argmax(axis=0).astype(np.uint8) if kind in ("labels", "both", "confidence") else None
    if kind == "confidence":
        return labels, np.rint((1.0 - p[:1]) * CONFIDENCE_SCALE).astype(np.uint8)
    return labels, (p if kind in ("probs", "both") else None)  # float32: run_block writes float16


def predict_rescaled(job, block: Block, compute):
    """One block of ``job`` (whose ``rescale`` is set), predicted on the rescaled grid.

    ``compute(job, block)`` is the block task's computation at scale 1
    (:func:`fastunet.engine.blocks.compute_block`): it runs here on a block of the rescaled
    grid (the range the block's input pixels sample) of a job whose source is the
    :class:`RescaledSource`, asked for the probabilities. Returns ``(labels, probs, nonfinite)``
    as it does, the probabilities interpolated onto ``block`` and the labels their argmax.
    """
    rs = job.rescale
    ranges = [rs.needed(axis, *block.box[-2 + axis]) for axis in (0, 1)]
    inner = Block(index=block.index, box=(*block.box[:-2], *ranges))
    rjob = dataclasses.replace(job, source=RescaledSource(job.source, rs), layout=rs.layout(job.layout),
                               rescale=None, output_kind="probs")
    _, probs, nonfinite = compute(rjob, inner)
    labels, probs = _sample_back(job, block, ranges, probs)
    return labels, probs, nonfinite
