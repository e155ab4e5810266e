"""Object size: the typical diameter of the objects in an image, and the scale it implies.

A model trained on objects of diameter ``D`` (recorded in its file, ``extra["object_size"]``)
segments an image whose objects measure ``d`` best when the image is first rescaled by
``D / d`` (cellpose's "diameter"). This module holds the pieces that do not need the engine:

* :func:`median_diameter` the typical size of labelled objects (median equivalent diameter);
* :func:`check_object_size` the user's ``object_size=`` (a number, ``"auto"`` or None);
* :func:`model_object_size` the training object size a model records, if any;
* :func:`scale_for` the rescaling factor;
* :func:`typical_size` the typical object of a segmentation, robust to specks and merged
  clumps, and :func:`auto_min_size` the ``min_size="auto"`` it gives (objects smaller than
  :data:`AUTO_MIN_FRACTION` of it are removed), :func:`check_min_size` the user's ``min_size``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["median_diameter", "check_object_size", "model_object_size", "scale_for", "MIN_OBJECTS", "typical_size",
           "auto_min_size", "check_min_size", "AUTO_MIN_FRACTION", "model_min_confidence"]

MIN_OBJECTS = 5  # fewer objects than this give no size estimate
AUTO_MIN_FRACTION = 1 / 16  # min_size="auto": objects under 1/16 of the typical area (1/4 of its diameter)
_BAND = 4.0  # typical_size: a population spans sizes within this factor either way (16x: as min_size="auto")


def _diameters(labels: np.ndarray, *, exclude_border: bool) -> np.ndarray:
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    if labels.dtype == bool or (labels.size and labels.max() <= 1):
        labels = ndi.label(labels != 0)[0]
    areas = np.bincount(labels.ravel().astype(np.intp, copy=False))
    keep = areas > 0
    keep[0] = False
    if exclude_border and labels.ndim == 2 and min(labels.shape) > 2:
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        inner = keep.copy()
        inner[edge] = False
        if inner.sum() >= MIN_OBJECTS:  # objects cut by the border measure too small
            keep = inner
    return 2.0 * np.sqrt(areas[keep] / np.pi)


def median_diameter(labels, *, exclude_border: bool = True) -> float:
    """Median equivalent diameter ``2 sqrt(area / pi)`` of the objects of a label image.

    Parameters
    ----------
    labels : ndarray or sequence of 2D ndarrays
        Instance labels (0 = background) or a foreground mask (its connected components are
        the objects); a sequence (or a 3D stack) pools the objects of every 2D slice.
    exclude_border : bool
        Leave out objects that touch the image border (cut, so too small), unless fewer than
        :data:`MIN_OBJECTS` would remain.

    Returns
    -------
    float
        The median diameter in pixels; NaN when there is no object.
    """
    planes = list(labels) if isinstance(labels, (list, tuple)) or np.ndim(labels) == 3 else [labels]
    sizes = np.concatenate([_diameters(p, exclude_border=exclude_border) for p in planes] or [np.zeros(0)])
    return float(np.median(sizes)) if sizes.size else float("nan")


def check_object_size(object_size, image_shape: tuple[int, ...] | None = None):
    """``object_size`` checked: None, ``"auto"`` or a positive number of pixels (a float).

    Raises a one-line ``ValueError`` for zero, negative, non-finite or non-numeric sizes, and
    for a size larger than the image's larger Y/X edge (``image_shape``: the spatial shape).
    """
    if object_size is None or (isinstance(object_size, str) and object_size == "auto"):
        return object_size
    if isinstance(object_size, bool) or not isinstance(object_size, (numbers.Real, str)):
        raise ValueError(f'object_size= expects a diameter in pixels or "auto"; got {object_size!r}.')
    try:
        value = float(object_size)
    except ValueError:
        raise ValueError(f'object_size= expects a diameter in pixels or "auto"; got {object_size!r}.') from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"object_size= must be a positive diameter in pixels (e.g. object_size=30); got {object_size}.")
    if image_shape is not None and value > max(image_shape[-2:]):
        raise ValueError(
            f"object_size={value:g} is larger than the image ({' x '.join(map(str, image_shape[-2:]))} px): give "
            "the typical object diameter in pixels of the input, or leave object_size out."
        )
    return value


def model_object_size(extra: dict | None) -> float | None:
    """The training object diameter a model file records (``extra["object_size"]``), or None."""
    value = (extra or {}).get("object_size")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def model_min_confidence(extra: dict | None) -> float:
    """The smallest mean object probability a model file asks its objects to have
    (``extra["calibration"]["min_confidence"]``, chosen on validation images by
    :func:`fastunet.default_model.calibrate`), or 0 (keep every object)."""
    value = ((extra or {}).get("calibration") or {}).get("min_confidence", 0.0)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return 0.0
    return value if 0 <= value < 1 else 0.0


def scale_for(object_size: float, model_size: float) -> float:
    """The factor by which an image with objects of ``object_size`` px is resampled so that
    they measure ``model_size`` px (> 1 enlarges)."""
    return float(model_size) / float(object_size)


def check_min_size(min_size):
    """``min_size`` checked: ``"auto"`` or a number of voxels >= 0 (an int)."""
    if isinstance(min_size, str) and min_size == "auto":
        return min_size
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f'min_size= expects a number of voxels >= 0 (0 keeps every object) or "auto"; '
                         f"got {min_size!r}.")
    return int(min_size)


def typical_size(sizes) -> float | None:
    """The typical size (voxels) of objects of the given sizes; None for fewer than :data:`MIN_OBJECTS`.

    The median size of the population of objects that holds the most foreground: of every
    band of sizes from 1/4 to 4 times one object's size that holds at least
    :data:`MIN_OBJECTS` objects, the band with the largest summed size (a band spans a factor
    16, so specks under 1/16 of the objects' size, those ``min_size="auto"`` removes, never
    share one with them). Many specks hold
    little of the foreground, and a few merged clumps are not a population, so neither
    moves it far from the size of the objects that make up the image.
    """
    sizes = np.sort(np.asarray(sizes, np.float64).ravel())
    sizes = sizes[sizes > 0]
    if sizes.size < MIN_OBJECTS:
        return None
    cumulative = np.concatenate([[0.0], np.cumsum(sizes)])
    low = np.searchsorted(sizes, sizes / _BAND, side="left")
    high = np.searchsorted(sizes, sizes * _BAND, side="right")
    held = np.where(high - low >= MIN_OBJECTS, cumulative[high] - cumulative[low], -1.0)
    best = int(np.argmax(held))
    if held[best] < 0:  # no five objects within a factor 16 of each other
        return float(np.median(sizes))
    return float(np.median(sizes[low[best]:high[best]]))


def auto_min_size(sizes, diameter: float | None = None, *, ndim: int = 2) -> int:
    """``min_size="auto"``: :data:`AUTO_MIN_FRACTION` of the objects' :func:`typical_size`
    (rounded up), or of a disc (``ndim=2``) or ball of ``diameter`` px when there are too few
    objects to say; 0 when neither is known."""
    typical = typical_size(sizes)
    if typical is None and diameter is not None:
        typical = math.pi * diameter**2 / 4 if ndim == 2 else math.pi * diameter**3 / 6
    return 0 if typical is None else int(math.ceil(AUTO_MIN_FRACTION * typical))
