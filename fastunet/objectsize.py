"""Object size: the typical diameter of the objects in an image, and the scale it implies.

A model trained on objects of diameter ``D`` (recorded in its file, ``extra["object_size"]``)
segments an image whose objects measure ``d`` best when the image is first rescaled by
``D / d`` (cellpose's "diameter"). This module holds the pieces that do not need the engine:

* :func:`median_diameter` the typical size of labelled objects (median equivalent diameter);
* :func:`check_object_size` the user's ``object_size=`` (a number, ``"auto"`` or None);
* :func:`model_object_size` the training object size a model records, if any;
* :func:`scale_for` the rescaling factor.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import ndimage as ndi

__all__ = ["median_diameter", "check_object_size", "model_object_size", "scale_for", "MIN_OBJECTS"]

MIN_OBJECTS = 5  # fewer objects than this give no size estimate


def _diameters(labels: np.ndarray, *, exclude_border: bool) -> np.ndarray:
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


def scale_for(object_size: float, model_size: float) -> float:
    """The factor by which an image with objects of ``object_size`` px is resampled so that
    they measure ``model_size`` px (> 1 enlarges)."""
    return float(model_size) / float(object_size)
