"""The clean-up of the objects (min_size, fill_holes) computed on the whole image at once, the
plain way: the reference that the engine's block-wise clean-up (fastunet/engine/instances.py)
must equal, ids included."""

import numpy as np
from scipy import ndimage

from fastunet.objectsize import auto_min_size


def structure(ndim, connect_z=False):
    s = ndimage.generate_binary_structure(ndim, 1)
    if ndim == 3 and not connect_z:
        s[0] = s[2] = False
    return s


def clean_reference(classes, *, min_size=0, fill_holes=False, connect_z=False, num_classes=2, diameter=None,
                    probs=None, min_confidence=0.0):
    """Objects of the class map ``classes`` ((Z,) Y, X): each class labelled on its own, objects
    under ``min_size`` ("auto": :func:`auto_min_size` of all the objects' sizes) removed, those
    whose mean of ``1 - probs[0]`` is under ``min_confidence`` removed, then
    every region of the rest's background that touches no border of the image (in each slice
    of a stack unless ``connect_z``) and one object only given to that object; numbered by first
    voxel in C order."""
    s = structure(classes.ndim, connect_z)
    ids = np.zeros(classes.shape, np.int64)
    count = 0
    for c in range(1, num_classes):
        lab, k = ndimage.label(classes == c, structure=s)
        ids[lab > 0] = lab[lab > 0] + count
        count += k
    sizes = np.bincount(ids.ravel(), minlength=count + 1)[1:]
    if min_size == "auto":
        min_size = auto_min_size(sizes, diameter, ndim=3 if connect_z else 2)
    ids[np.concatenate([[False], sizes < max(min_size, 1)])[ids]] = 0
    if min_confidence:
        sums = np.bincount(ids.ravel(), weights=1.0 - probs[0].astype(np.float64).ravel(), minlength=count + 1)[1:]
        mean = sums / np.maximum(sizes, 1)
        ids[np.concatenate([[False], mean < min_confidence])[ids]] = 0
    if fill_holes:
        void, regions = ndimage.label(ids == 0, structure=s)
        border = np.zeros(regions + 1, bool)
        axes = range(classes.ndim) if classes.ndim == 2 or connect_z else (1, 2)
        for axis in axes:
            for end in (0, classes.shape[axis] - 1):
                border[np.unique(np.take(void, end, axis=axis))] = True
        for r in np.flatnonzero(~border):
            region = void == r
            ring = ndimage.binary_dilation(region, structure=s) & ~region
            around = np.unique(ids[ring])
            around = around[around > 0]
            if len(around) == 1:
                ids[region] = around[0]
    flat = ids.ravel()
    values, first = np.unique(flat, return_index=True)
    keep = values > 0
    order = values[keep][np.argsort(first[keep])]
    lut = np.zeros(int(flat.max(initial=0)) + 1, np.int64)
    lut[order] = np.arange(1, len(order) + 1)
    return lut[ids]
