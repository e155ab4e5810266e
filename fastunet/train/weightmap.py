"""Training targets and the weight map of the U-Net paper.

Ronneberger et al. (2015), eq. (2), weight every pixel ``x`` of a training image by::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

with ``w_c`` the class-balance weight of the pixel's class, ``d1`` and ``d2`` the distances to
the border of the nearest and the second-nearest cell, ``w0 = 10`` and ``sigma = 5`` pixels.
The border term is added on background pixels, where it forces the network to learn the thin
background gaps between touching cells (the paper's figure 3).

The input is an *instance* label image: integers, ``0`` background, ``k > 0`` object ``k``;
2D ``(H, W)``, or a 3D volume ``(Z, H, W)`` for a 3D network. From it come

- :func:`touching_borders`: object pixels that touch a different object (8-neighbourhood;
  26 in 3D);
- :func:`semantic_target`: the two-class target, 1 on objects minus their touching borders,
  so touching objects are separated by a 2-pixel background gap (one pixel of each object);
- :func:`class_weights` and :func:`weight_map`;
- :func:`prepare`: target and weight map at once, computed once per training image.

:func:`fastunet.figures.weight_map_figure` draws them like the paper's figure 3.

Distances and their truncation
------------------------------
``d_k(x)`` is the Euclidean distance (between pixel centres) from ``x`` to the nearest pixel of
object ``k`` as annotated in the instance image, i.e. ``distance_transform_edt`` of the object's
complement; a touching-border pixel of object ``k`` thus has ``d_k = 0`` and the neighbouring
object at ``d = 1`` or ``sqrt(2)``.

The border term is below ``tol * w0`` once ``d1 + d2 > R = sigma * sqrt(2 ln(1/tol))``
(``R = 5.26 sigma`` for the default ``tol = 1e-6``). Since ``d2 >= d1``, only pixels with
``d2 <= R`` can carry a larger term, so each object's distance transform is computed only on its
bounding box grown by ``margin = ceil(R)`` pixels (distances outside that window count as
infinite). Inside the window the distance is exact (the window holds the whole object), and a
pixel whose true ``d2`` exceeds the margin gets a term below ``w0 * exp(-margin**2 / (2
sigma**2)) <= tol * w0`` either way. Hence ``|weight_map - exact| <= tol * w0`` everywhere and
equality (to rounding) wherever the exact term exceeds that bound. The cost is one small
distance transform per object, so images with hundreds of objects take well under a second.

Anisotropic volumes
-------------------
A 3D volume whose Z step differs from its pixel passes ``spacing=(z, y, x)``: distances are
then measured in physical units, expressed in in-plane pixels (the spacing divided by its X
entry), so ``sigma`` keeps its meaning in pixels of the plane and a gap of one slice counts
as wide as it is (``distance_transform_edt(sampling=...)``); the window margin along each
axis is ``R`` over that axis's voxel edge.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from ..instances import relabel_sequential

__all__ = [
    "TargetAndWeights",
    "border_margin",
    "class_weights",
    "prepare",
    "semantic_target",
    "touching_borders",
    "weight_map",
    "compact_instances",
]

# 8-neighbourhood (26 in 3D): diagonally touching objects are separated too.
_FOOTPRINT = np.ones((3, 3), dtype=bool)


class TargetAndWeights(NamedTuple):
    """A training image's two-class target (uint8, H x W) and weight map (float32, H x W)."""

    target: np.ndarray
    weight: np.ndarray


def _check_instances(instances: np.ndarray) -> np.ndarray:
    instances = np.asarray(instances)
    if instances.dtype == bool:
        instances = instances.astype(np.int32)
    if not np.issubdtype(instances.dtype, np.integer):
        raise TypeError(
            f"Expected an integer instance label image (0 = background, k > 0 = object k); got dtype {instances.dtype}."
        )
    if instances.ndim not in (2, 3):
        raise ValueError(f"Expected a 2D instance label image (H, W) or a volume (Z, H, W); got shape {instances.shape}.")
    if instances.size and instances.min() < 0:
        raise ValueError(f"Instance labels must be >= 0 (0 = background); got minimum {instances.min()}.")
    return instances


def touching_borders(instances: np.ndarray) -> np.ndarray:
    """Object pixels that touch a different object.

    Parameters
    ----------
    instances : ndarray (H, W), integer
        Instance labels, 0 background, ``k > 0`` object ``k``.

    Returns
    -------
    ndarray (H, W), bool
        True on pixels of an object that have a pixel of another object among their
        8 neighbours (diagonal contact counts). Both sides of a contact are marked, so the
        gap between two touching objects is two pixels wide.
    """
    instances = _check_instances(instances)
    if instances.size == 0:
        return np.zeros(instances.shape, dtype=bool)
    # Background (0) is the smallest label, so the neighbourhood maximum is a different object
    # exactly when it exceeds the pixel's label; for the minimum, background is first lifted to
    # the largest label. mode="nearest" only repeats pixels already in the 3x3 neighbourhood of
    # an edge pixel, so it invents no contacts (and needs no out-of-range sentinel value).
    footprint = _FOOTPRINT if instances.ndim == 2 else np.ones((3, 3, 3), dtype=bool)
    highest = ndimage.maximum_filter(instances, footprint=footprint, mode="nearest")
    lifted = np.where(instances > 0, instances, instances.max())
    lowest = ndimage.minimum_filter(lifted, footprint=footprint, mode="nearest")
    return (instances > 0) & ((highest != instances) | (lowest != instances))


def semantic_target(instances: np.ndarray) -> np.ndarray:
    """The two-class training target: 1 on objects, 0 on background and touching borders.

    Parameters
    ----------
    instances : ndarray (H, W), integer
        Instance labels, 0 background.

    Returns
    -------
    ndarray (H, W), uint8
    """
    instances = _check_instances(instances)
    return ((instances > 0) & ~touching_borders(instances)).astype(np.uint8)


def class_weights(target: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """Weights that balance the class frequencies of a target.

    Convention: ``w_c = total / (n_present * count_c)`` for every class present, so each present
    class carries the same weighted pixel count (``w_c * count_c = total / n_present``) and the
    mean weight over the image is exactly 1. Classes absent from the target get weight 1 (no
    division by zero); an image with a single class gets all weights 1.

    Parameters
    ----------
    target : ndarray, integer
        Class per pixel, values in ``[0, num_classes)``.
    num_classes : int
        Number of classes.

    Returns
    -------
    ndarray (num_classes,), float32
    """
    target = np.asarray(target)
    if not np.issubdtype(target.dtype, np.integer) and target.dtype != bool:
        raise TypeError(f"Expected an integer class target; got dtype {target.dtype}.")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1; got {num_classes!r}.")
    flat = target.ravel().astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        raise ValueError(
            f"Expected class values in [0, {num_classes}); got values in [{flat.min()}, {flat.max()}]."
            " Pass the right num_classes."
        )
    counts = np.bincount(flat, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes, dtype=np.float64)
    if present.any():
        weights[present] = flat.size / (present.sum() * counts[present])
    return weights.astype(np.float32)


def border_margin(sigma: float, tol: float = 1e-6) -> int:
    """Window margin (pixels) beyond which the border term is below ``tol * w0``.

    ``ceil(sigma * sqrt(2 ln(1/tol)))``: 27 for ``sigma = 5`` and ``tol = 1e-6``.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0; got {sigma!r}.")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1); got {tol!r}.")
    return math.ceil(sigma * math.sqrt(2.0 * math.log(1.0 / tol)))


def _sequential(instances: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n when the ids are sparse, so ``find_objects`` stays small."""
    top = int(instances.max()) if instances.size else 0
    if top <= 2 * instances.size:
        return instances
    return relabel_sequential(instances)


def compact_instances(instances: np.ndarray) -> np.ndarray:
    """A checked 2D instance label image, its ids renumbered ``1..n`` when they are sparse.

    Parameters
    ----------
    instances : ndarray (H, W), integer or bool
        Instance labels, 0 background.

    Returns
    -------
    ndarray (H, W)
        ``instances`` itself when its largest id is at most twice its pixel count, else the
        ids renumbered by :func:`fastunet.instances.relabel_sequential`.
    """
    return _sequential(_check_instances(instances))


def _relative_spacing(spacing, ndim: int) -> tuple[float, ...] | None:
    """Voxel edges in in-plane pixels (the spacing over its last entry), None when isotropic."""
    if spacing is None:
        return None
    edges = tuple(float(s) for s in spacing)
    if len(edges) != ndim or not all(e > 0 and math.isfinite(e) for e in edges):
        raise ValueError(f"Expected a spacing of {ndim} positive numbers (one per axis); got {spacing!r}.")
    rel = tuple(e / edges[-1] for e in edges)
    return None if all(r == 1.0 for r in rel) else rel


def _two_nearest(instances: np.ndarray, margin: int, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest object, each within ``margin`` (in-plane
    pixels) of its box; ``spacing``: the voxel edges in in-plane pixels (None: 1)."""
    d1 = np.full(instances.shape, np.inf)
    d2 = np.full(instances.shape, np.inf)
    steps = [max(1, math.ceil(margin / e)) for e in spacing] if spacing is not None else [margin] * instances.ndim
    for label, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        window = tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(box, steps, instances.shape))
        if spacing is None:
            dist = ndimage.distance_transform_edt(instances[window] != label)
        else:
            dist = ndimage.distance_transform_edt(instances[window] != label, sampling=spacing)
        near, second = d1[window], d2[window]  # views: updated in place
        np.minimum(second, np.maximum(near, dist), out=second)
        np.minimum(near, dist, out=near)
    return d1, d2


def _weight_map(instances, target, w0, sigma, balance, tol, spacing=None) -> np.ndarray:
    if not w0 >= 0:
        raise ValueError(f"w0 must be >= 0; got {w0!r}.")
    base = class_weights(target)[target] if balance else np.ones(target.shape, dtype=np.float32)
    weight = base.astype(np.float64)
    if w0 > 0 and instances.size:
        rel = _relative_spacing(spacing, instances.ndim)
        d1, d2 = _two_nearest(_sequential(instances), border_margin(sigma, tol), rel)
        where = (target == 0) & np.isfinite(d2)
        weight[where] += w0 * np.exp(-((d1[where] + d2[where]) ** 2) / (2.0 * sigma**2))
    return weight.astype(np.float32)


def weight_map(
    instances: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    balance: bool = True,
    tol: float = 1e-6,
    spacing=None,
) -> np.ndarray:
    """The paper's weight map, eq. (2), for an instance label image.

    Parameters
    ----------
    instances : ndarray (H, W), integer
        Instance labels, 0 background, ``k > 0`` object ``k`` (ids need not be consecutive).
    w0 : float
        Amplitude of the border term (10 in the paper); 0 disables it.
    sigma : float
        Width of the border term in pixels (5 in the paper).
    balance : bool
        Add the class-balance weight :func:`class_weights` of the target's class at each pixel;
        otherwise the base weight is 1.
    tol : float
        Truncation: border terms below ``tol * w0`` may be dropped (see the module docstring);
        the result is within ``tol * w0`` of the exact map everywhere.
    spacing : sequence of float, optional
        The voxel edges ``(z, y, x)`` of a 3D volume (any unit): distances in physical units,
        in in-plane pixels (see the module docstring). None: every voxel edge is a pixel.

    Returns
    -------
    ndarray (H, W), float32
        ``w_c`` of the pixel's class in :func:`semantic_target`, plus, on background pixels
        (including the touching borders) that have two objects within range,
        ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``.
    """
    instances = _check_instances(instances)
    return _weight_map(instances, semantic_target(instances), w0, sigma, balance, tol, spacing)


def prepare(
    instances: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    balance: bool = True,
    tol: float = 1e-6,
    spacing=None,
) -> TargetAndWeights:
    """Target and weight map of one training image (computed once, before training).

    Parameters are those of :func:`weight_map`. Returns ``TargetAndWeights(target, weight)``,
    which unpacks as ``target, weight = prepare(instances)``.
    """
    instances = _check_instances(instances)
    target = semantic_target(instances)
    return TargetAndWeights(target, _weight_map(instances, target, w0, sigma, balance, tol, spacing))
