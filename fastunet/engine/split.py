"""Splitting touching objects (``split="watershed"``): a seeded watershed on the distance
transform of the foreground, with scikit-image.

Seeds are the h-maxima of the Euclidean distance to the background (:func:`skimage.morphology.h_maxima`,
``h = SPLIT_H`` pixels): two nuclei that touch through a neck narrower than their bodies by
more than ``h`` get a seed each, and :func:`skimage.segmentation.watershed` grows them inside
the foreground. An object without a seed of its own keeps its connected component.

The split is computed per block: an object cut by a block border is split from the part in
each block (the two parts are then joined by the merge where they touch), so results near
block borders can depend on the block size; choose blocks larger than the objects (the
default blocks are).
"""

from __future__ import annotations

import numpy as np

__all__ = ["split_objects", "SPLIT_H"]

SPLIT_H = 2.0  # pixels: how much deeper than the neck between them two seeds must be


def _split_volume(mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    try:
        from skimage.morphology import h_maxima
        from skimage.segmentation import watershed
    except ImportError:
        from ..errors import UserError

        raise UserError('split="watershed" needs scikit-image: pip install scikit-image (or fastunet[split]).') from None

    dist = ndimage.distance_transform_edt(mask)
    seeds, n = ndimage.label(h_maxima(dist, SPLIT_H), structure=np.ones((3,) * mask.ndim, bool))
    if n == 0:
        return ndimage.label(mask, structure=structure, output=np.uint32)
    grown = watershed(-dist, seeds, mask=mask, connectivity=structure).astype(np.uint32)
    # objects that no seed reached keep their connected component
    rest, m = ndimage.label(mask & (grown == 0), structure=structure, output=np.uint32)
    grown[rest > 0] = rest[rest > 0] + np.uint32(n)
    return grown, n + m


def split_objects(mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    """Objects of ``mask`` ``(bz, by, bx)`` split at their necks; ``(ids uint32, n)``.

    ``structure`` is the connectivity of :func:`fastunet.engine.instances.label_block`: without
    Z links each slice is split on its own (2-D distances).
    """
    if structure[0].any():  # 3-D connectivity: one 3-D split
        return _split_volume(mask, structure)
    out = np.zeros(mask.shape, np.uint32)
    count = 0
    for z in range(mask.shape[0]):
        ids, n = _split_volume(mask[z], structure[1])
        if n:
            out[z] = np.where(ids > 0, ids + np.uint32(count), 0)
            count += n
    return out, count
