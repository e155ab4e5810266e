"""``object_size=``: which scale a segmentation runs at, and the automatic estimate.

The Segmenter asks :func:`resolve` for a :class:`ScalePlan` (None: the network runs at the
input's own scale, exactly as without the option). A plan holds the input's typical object
diameter (given, or estimated with ``object_size="auto"``), the model's training object
diameter (:func:`fastunet.objectsize.model_object_size`) and their ratio, the factor by which
:mod:`fastunet.engine.rescale` resamples the input inside every block task.

The automatic estimate (:func:`estimate_object_size`) segments a crop of the input (the
middle plane, at most ``ESTIMATE_CROP`` pixels square around its centre) at the input's own
scale, measures the median equivalent diameter of the predicted objects
(:func:`fastunet.objectsize.median_diameter`), then segments the crop again at that size and
measures once more (a network that fragments or merges objects far from its training size
measures them better the second time). An estimate more than :data:`MAX_AUTO_FACTOR` times
smaller or larger than the model's training size is brought back to that bound, with a
warning: such an estimate comes from a prediction that fragments noise into specks or merges
everything (the cost of a rescaled run grows with the square of the factor), and a size
given explicitly is taken as it is.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..errors import UserError
from ..objectsize import MIN_OBJECTS, check_object_size, median_diameter, model_object_size, scale_for

__all__ = ["ScalePlan", "resolve", "estimate_object_size", "model_size_of", "ESTIMATE_CROP", "MAX_AUTO_FACTOR"]

ESTIMATE_CROP = 1024  # the automatic estimate looks at a crop of at most this many pixels square
MAX_AUTO_FACTOR = 4.0  # the automatic estimate rescales by at most this factor either way
log = logging.getLogger("fastunet.segmentation")
_ROUNDS = 2  # native scale, then at the first estimate


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


def model_size_of(model) -> float | None:
    """The training object diameter recorded by ``model`` (a path, a ModelBundle or a bare network)."""
    import os

    from ..modelfile import ModelBundle, read_model_metadata

    if isinstance(model, (str, os.PathLike)):
        return model_object_size(read_model_metadata(model)[2])
    if isinstance(model, ModelBundle):
        return model_object_size(model.extra)
    return None


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
        object_size = estimate_object_size(segment_crop, vol)
        if object_size is None:
            return None
        object_size = _bounded(object_size, float(model_size))
    plan = ScalePlan(float(object_size), float(model_size), estimated)
    return None if math.isclose(plan.factor, 1.0, rel_tol=1e-9, abs_tol=0.0) else plan


def _bounded(estimate: float, model_size: float) -> float:
    """The estimate within MAX_AUTO_FACTOR of the model's size, with a warning when it was not."""
    low, high = model_size / MAX_AUTO_FACTOR, model_size * MAX_AUTO_FACTOR
    if low <= estimate <= high:
        return estimate
    bounded = min(max(estimate, low), high)
    log.warning("object_size=\"auto\" estimated %.1f px, more than %g times the model's training size (%.1f px); "
                "using %.1f px. Give object_size= explicitly if the objects really are that size.",
                estimate, MAX_AUTO_FACTOR, model_size, bounded)
    return bounded


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


def estimate_object_size(segment_crop, vol) -> float | None:
    """The typical object diameter (pixels) of ``vol``, measured on the network's prediction
    of a central crop (see the module docstring); None when it finds fewer than
    :data:`~fastunet.objectsize.MIN_OBJECTS` objects."""
    crop = _crop(vol)
    size = None
    for _ in range(_ROUNDS):
        objects, count = ndi.label(np.asarray(segment_crop(crop, size)) == 1)
        if count < MIN_OBJECTS:
            return size
        found = median_diameter(objects)
        if size is not None and abs(found - size) < 0.02 * size:
            return found
        size = found
    return size


def make_rescale(vol, depth: int, plan: ScalePlan, *, tile, max_step: int):
    """The :class:`~fastunet.engine.rescale.Rescale` of ``plan`` for ``vol``: the rescaled grid
    and the network's tile on it (``tile`` as given, e.g. recorded by an interrupted run, or
    planned for the rescaled shape as for any input)."""
    from ..engine import plan_layout
    from ..engine.rescale import Rescale, rescaled_size

    shape = vol.spatial_shape
    rescaled = (*shape[:-2], *(rescaled_size(n, plan.factor) for n in shape[-2:]))
    if tile is None or isinstance(tile, int):
        tile = plan_layout(rescaled, depth, source_chunks=rescaled, tile=tile, max_step=max_step).tile
    return Rescale.make(shape[-2:], plan.factor, tuple(tile))


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
