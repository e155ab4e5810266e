"""``object_size=``: which scale a segmentation runs at, and the automatic estimate.

The Segmenter asks :func:`resolve` for a :class:`ScalePlan` (None: the network runs at the
input's own scale, exactly as without the option). A plan holds the input's typical object
diameter (given, or estimated with ``object_size="auto"``), the model's training object
diameter (:func:`fastunet.objectsize.model_object_size`) and their ratio, the factor by which
:mod:`fastunet.engine.rescale` resamples the input inside every block task.

The automatic estimate (:func:`estimate_object_size`) measures what the network itself sees,
not the image's intensities (which noise, debris and an uneven background fool): it segments
a crop of the input (the middle plane, at most ``ESTIMATE_CROP`` pixels square around its
centre) at the input's own scale and keeps the objects it is sure of (mean foreground
probability at least :data:`CONFIDENT`, away from the crop's border). Their typical size
(:func:`fastunet.objectsize.typical_size`: the population of objects that holds the most
foreground, so specks and merged clumps do not count) is measured halfway between the
objects' 0.5 contour, which blur widens, and their 0.9 core, which blur narrows (the mean of
the two diameters: within 25 % of the truth on all 192 images of the training styles, sharp
and degraded, where the 0.5 contour alone was off by more on 9; tuned on synthetic images
only). Unless that is the model's own size already, it segments the crop again at that size
and measures once more: the two must agree within :data:`AGREE` (a third round may settle a
first that was far off). When the network is sure of fewer than :data:`MIN_CONFIDENT`
objects, or of fewer than :data:`SURE_FRACTION` of the objects it finds (objects far smaller
or larger than anything it was trained on, or drowned in noise), when the rounds do not
agree, when the objects are barely larger than the image's blur (:func:`blur_sigma` more
than :data:`MAX_BLUR` of their diameter: a blurred object of a few pixels looks as large as
the blur), or when the size is more than :data:`MAX_AUTO_FACTOR` times smaller or larger than the
model's training size, the estimate says so (a warning naming the reason) and the run stays
at the input's own scale: a wrong scale costs far more than none.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..objectsize import check_object_size, scale_for

__all__ = ["ScalePlan", "resolve", "estimate_object_size", "ESTIMATE_CROP", "MAX_AUTO_FACTOR", "rescaled_block",
           "CONFIDENT", "MIN_CONFIDENT", "SURE_FRACTION", "AGREE", "MAX_BLUR", "blur_sigma", "Measure"]

ESTIMATE_CROP = 1024  # the automatic estimate looks at a crop of at most this many pixels square
MAX_AUTO_FACTOR = 4.0  # the automatic estimate rescales by at most this factor either way
CONFIDENT = 0.85  # an object counts when its mean foreground probability is at least this
MIN_CONFIDENT = 10  # objects the network must be sure of for an estimate
SURE_FRACTION = 0.25  # ... and they must be at least this fraction of the objects it finds
AGREE = 0.15  # two rounds of the estimate agree within this fraction
# The estimate refuses when the image's blur (blur_sigma) is more than this fraction of the
# objects' diameter: blurred objects of a few pixels look as large as the blur. Chosen on
# development images, not the benchmark's seeds: seeds 7000-7005 of six styles, sharp and
# blurred by 2 px, where the blurred `tiny` ones (measured 44-67 % too large) were at
# 0.196-0.203, the other blurred ones (within 25 %) at 0.11-0.21 (above 0.18 now a refusal
# rather than a size) and the sharp ones at 0.16 at most.
MAX_BLUR = 0.18
_SAME_SCALE = 1.15  # a first measure this close to the model's size needs no second round
log = logging.getLogger("fastunet.segmentation")


@dataclass(frozen=True)
class ScalePlan:
    """The input's object diameter, the model's, and ``factor = model_size / object_size``."""

    object_size: float
    model_size: float
    estimated: bool = False

    @property
    def factor(self) -> float:
        return scale_for(self.object_size, self.model_size)

    def record(self) -> dict:
        """What the output's attributes and the run summary keep."""
        return {"object_size": round(self.object_size, 3), "model_object_size": self.model_size,
                "scale": round(self.factor, 6), "object_size_estimated": self.estimated}


def resolve(segment_crop, vol, object_size, model_size: float | None) -> ScalePlan | None:
    """The scale plan for ``object_size`` (None, ``"auto"`` or a diameter in pixels).

    ``segment_crop(image, object_size)`` segments a 2D numpy image at that object size (None:
    the input's own scale) and returns its class map, for the automatic estimate. Returns None
    when the network runs at the input's scale: no ``object_size``, a size equal to the
    model's, or an estimate that found too few objects.
    """
    try:
        object_size = check_object_size(object_size, vol.spatial_shape)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if object_size is None:
        return None
    if model_size is None:
        raise UserError(
            "This model records no training object size, so object_size= has no scale to match; leave "
            "object_size out, or retrain it with fastunet train (which records it in the model file)."
        )
    estimated = object_size == "auto"
    if estimated:
        measure = estimate_object_size(segment_crop, vol, float(model_size))
        if measure.size is None:
            log.warning('object_size="auto" is unsure (%s); running at the input\'s own scale. Give object_size= '
                        "(the objects' diameter in pixels) if they are far from %.1f px across.",
                        measure.reason, float(model_size))
            return None
        object_size = measure.size
    plan = ScalePlan(float(object_size), float(model_size), estimated)
    return None if math.isclose(plan.factor, 1.0, rel_tol=1e-9, abs_tol=0.0) else plan


def _crop(vol) -> np.ndarray:
    """The middle plane's central crop (at most ESTIMATE_CROP square), first channel dropped
    only when there are channels: ``(C, Y, X)`` or ``(Y, X)``."""
    spatial = vol.spatial_shape
    region = []
    for axis, n in zip(vol.axes, vol.shape):
        if axis == "C":
            region.append(slice(0, n))
        elif axis == "Z":
            region.append(slice(n // 2, n // 2 + 1))
        else:
            size = min(n, ESTIMATE_CROP)
            start = (n - size) // 2
            region.append(slice(start, start + size))
    data = vol.read(tuple(region))
    if len(spatial) == 3:
        data = data[:, 0] if vol.axes.startswith("C") else data[0]
    return data


@dataclass(frozen=True)
class Measure:
    """An estimate: the diameter (None when unsure), why not, and the diameter of each round."""

    size: float | None
    reason: str = ""
    rounds: tuple = ()


def _diameter(areas: np.ndarray) -> float:
    from ..objectsize import typical_size

    return 2.0 * math.sqrt(typical_size(np.maximum(areas, 1)) / math.pi)


def _measure(segment_crop, crop, size) -> tuple[float | None, str]:
    """The typical diameter of the objects the network is sure of in ``crop`` segmented at
    ``size`` (None: the crop's own scale), measured on the crop's grid; or None and why."""
    from scipy import ndimage as ndi

    from ..objectsize import auto_min_size

    classes, foreground = segment_crop(crop, size)
    foreground = np.asarray(foreground, np.float64)
    objects, count = ndi.label(np.asarray(classes) != 0)
    at = "at the input's own scale" if size is None else f"at {size:.1f} px"
    if count == 0:
        return None, f"the network finds no objects {at}"
    index = np.arange(1, count + 1)
    areas = np.bincount(objects.ravel(), minlength=count + 1)[1:]
    sure = np.asarray(ndi.mean(foreground, objects, index)) >= CONFIDENT
    edge = np.unique(np.concatenate([objects[0], objects[-1], objects[:, 0], objects[:, -1]]))
    inner = np.ones(count, bool)
    inner[edge[edge > 0] - 1] = False
    plausible = inner & (areas >= auto_min_size(areas))  # not a speck
    sure &= inner
    if sure.sum() < MIN_CONFIDENT:
        return None, f"the network is sure of {int(sure.sum())} objects {at}, fewer than {MIN_CONFIDENT}"
    if (sure & plausible).sum() < SURE_FRACTION * plausible.sum():
        return None, (f"the network is sure of {int((sure & plausible).sum())} of the {int(plausible.sum())} objects it "
                      f"finds {at}, fewer than {SURE_FRACTION:.0%}")
    # Halfway between the objects' 0.5 contour (which blur widens) and their 0.9 core (which
    # blur narrows): see the module docstring.
    core = np.bincount(objects[foreground >= 0.9].ravel(), minlength=count + 1)[1:]
    found = 0.5 * (_diameter(areas[sure]) + _diameter(core[sure]))
    if size is None:  # the image's own blur, at the input's scale
        sigma = blur_sigma(crop, objects, index[sure])
        if sigma > MAX_BLUR * found:
            return None, (f"the objects are barely larger than the image's blur (a Gaussian of {sigma:.1f} px, "
                          f"{sigma / found:.0%} of the {found:.1f} px they measure), so their size cannot be told")
    return found, ""


def blur_sigma(image: np.ndarray, objects: np.ndarray, ids: np.ndarray) -> float:
    """How blurred ``image`` is at the edges of the labelled ``objects`` ``ids``: the sigma
    (pixels) of a Gaussian blur, the median over the objects.

    A step of contrast ``c`` blurred by a Gaussian of sigma ``s`` rises with a slope of at most
    ``c / (s sqrt(2 pi))``. Each object's contrast runs from its brightest pixel to the darkest
    of its 3-pixel surround, its slope is the steepest gradient magnitude there, both seen
    through a Gaussian of 1 px, whose own width is taken out (``sqrt(s^2 - 1)``). Channels, if
    any (first axis), are averaged.
    """
    from scipy import ndimage as ndi

    img = np.asarray(image, np.float64)
    if img.ndim == 3:
        img = img.mean(axis=0)
    smooth = ndi.gaussian_filter(img, 1.0)
    slope = ndi.gaussian_gradient_magnitude(img, 1.0)
    around = ndi.grey_dilation(objects, size=(7, 7))  # each object and 3 px around it
    contrast = np.asarray(ndi.maximum(smooth, objects, ids)) - np.asarray(ndi.minimum(smooth, around, ids))
    steepest = np.maximum(np.asarray(ndi.maximum(slope, around, ids)), np.finfo(np.float64).tiny)
    s = contrast / steepest / math.sqrt(2 * math.pi)
    return float(np.median(np.sqrt(np.maximum(s * s - 1.0, 0.0))))


def estimate_object_size(segment_crop, vol, model_size: float) -> Measure:
    """The typical object diameter (pixels) of ``vol`` as the network sees it, or why it is unsure.

    ``segment_crop(image, object_size)`` returns the class map and the foreground probability
    of a 2D image segmented at ``object_size`` (None: its own scale); see the module docstring.
    """
    crop = _crop(vol)
    found, reason = _measure(segment_crop, crop, None)
    rounds = [found]
    if found is None or 1 / _SAME_SCALE <= found / model_size <= _SAME_SCALE:
        return Measure(found, reason, tuple(rounds))
    for _ in range(2):
        if not 1 / MAX_AUTO_FACTOR <= found / model_size <= MAX_AUTO_FACTOR:
            return Measure(None, f"objects of {found:.1f} px would be rescaled more than {MAX_AUTO_FACTOR:g} times to "
                           f"the model's training size ({model_size:.1f} px)", tuple(rounds))  # at the size found; once more if the two were far apart
        again, reason = _measure(segment_crop, crop, found)
        rounds.append(again)
        if again is None:
            return Measure(None, reason, tuple(rounds))
        agreed = abs(again - found) <= AGREE * found
        found = again
        if agreed:
            break
    else:
        sizes = ", ".join(f"{r:.1f}" for r in rounds)
        return Measure(None, f"its measures at the input's scale and rescaled do not agree ({sizes} px)",
                       tuple(rounds))
    if not 1 / MAX_AUTO_FACTOR <= found / model_size <= MAX_AUTO_FACTOR:
        return Measure(None, f"objects of {found:.1f} px would be rescaled more than {MAX_AUTO_FACTOR:g} times to "
                       f"the model's training size ({model_size:.1f} px)", tuple(rounds))
    return Measure(found, "", tuple(rounds))


def make_rescale(vol, depth: int, plan: ScalePlan, *, tile, max_step: int, side_by_side: int = 1):
    """The :class:`~fastunet.engine.rescale.Rescale` of ``plan`` for ``vol``: the rescaled grid
    and the network's tile on it (``tile`` as given, e.g. recorded by an interrupted run, or
    planned for the rescaled shape as for any input, ``side_by_side`` as
    :func:`~fastunet.engine.plan_layout` takes it)."""
    from ..engine import plan_layout
    from ..engine.rescale import Rescale, rescaled_size

    shape = vol.spatial_shape
    rescaled = (*shape[:-2], *(rescaled_size(n, plan.factor) for n in shape[-2:]))
    if tile is None or isinstance(tile, int):
        tile = plan_layout(rescaled, depth, source_chunks=rescaled, tile=tile, max_step=max_step,
                           side_by_side=side_by_side).tile
    return Rescale.make(shape[-2:], plan.factor, tuple(tile))


RESCALED_BLOCK_STEPS = 4  # a rescaled run's blocks span this many of the network's tile steps ...
RESCALED_BLOCK_VOXELS = 16 * 1024 * 1024  # ... within this many voxels of the rescaled grid
RESCALED_BLOCK_INPUT_VOXELS = 48 * 1024 * 1024  # ... and this many of the input's (a shrinking run)


def rescaled_block(layout, rescale) -> tuple[int, ...]:
    """The block shape of a run on the rescaled grid: ``layout``'s, grown along Y and X (in
    whole chunks, within the volume, :data:`RESCALED_BLOCK_VOXELS` once rescaled and
    :data:`RESCALED_BLOCK_INPUT_VOXELS` of the input: an enlarged block holds fewer input
    pixels, as the layout's own blocks do, a shrunk one more) to span
    :data:`RESCALED_BLOCK_STEPS` tile steps of the rescaled grid. A block computes every
    rescaled tile its pixels sample, and the tile grid of the rescaled image does not fall
    on the input's blocks: blocks of a fraction of a tile computed each tile several times
    (a 2300 x 2300 image at object size 30: 20 tiles of 828 px for the 4 that cover it), and
    each boundary between blocks computes a row of rescaled tiles twice (both blocks sample
    the rescaled pixels across it). A 6000 x 6000 image at object size 30 (shrunk by 0.635)
    is one block of 16 rescaled tiles, not three of 16 Mpx computing 24: 12.7 -> 11.6 s (CPU
    23.3 -> 18.1 s; ``benchmarks/results/2026-12-08T020110Z-segment-ab.json``), 1.6 GB of
    memory at the process's peak instead of 1.28, the same objects."""
    steps = rescale.layout(layout).step[-2:]
    block = list(layout.block)
    slices = block[0] if len(block) == 3 else 1
    # the rescaled voxels one Y/X pixel of the block stands for: its Z slices, times the area's scale
    weight = slices * math.prod(r / n for r, n in zip(rescale.rescaled, rescale.shape))
    for axis, s in enumerate(steps):
        i = len(block) - 2 + axis
        n, c = layout.shape[i], layout.chunks[i]
        reach = math.ceil(RESCALED_BLOCK_STEPS * s * rescale.step(axis))
        block[i] = max(block[i], min(-(-reach // c) * c, -(-n // c) * c))

    def too_large() -> bool:
        area = math.prod(block[-2:])
        return weight * area > RESCALED_BLOCK_VOXELS or slices * area > RESCALED_BLOCK_INPUT_VOXELS

    for i in (-2, -1):  # Y, then X, down to the caps (never below the layout's block)
        while too_large() and block[i] - layout.chunks[i] >= layout.block[i]:
            block[i] -= layout.chunks[i]
    return tuple(block)


def stats_source(vol, rescale):
    """What the normalization statistics are taken from: the rescaled input (what the
    network sees), or the input itself at scale 1."""
    from ..engine.rescale import RescaledSource

    return vol if rescale is None else RescaledSource(vol, rescale)


def check_resumed(meta: dict, plan: ScalePlan | None, path) -> None:
    """Refuse to resume an output made at another object size."""
    was = meta.get("object_size")
    now = None if plan is None else plan.record()["object_size"]
    if was != now:
        raise UserError(
            f"Cannot resume {str(path)!r}: it was created with object_size={was}, this run has "
            f"object_size={now}; rerun with the original settings, or start over with overwrite=True."
        )
