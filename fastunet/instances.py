"""Instance label images: ``0`` background, ``k > 0`` object ``k``.

:func:`relabel_sequential` is the one renumbering of object ids to ``1..n`` used by the
synthetic data (:mod:`fastunet.synthetic`), the weight map (:mod:`fastunet.train.weightmap`)
and the scores (:mod:`fastunet.metrics`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["relabel_sequential"]


def relabel_sequential(labels: np.ndarray, *, min_size: int = 1, dtype=np.int64) -> np.ndarray:
    """Object ids renumbered ``1..n`` in increasing order of the old ids; 0 stays background.

    Parameters
    ----------
    labels : ndarray, integer
        Instance labels, ``0`` background, ``k > 0`` object ``k`` (ids need not be consecutive;
        an image without a 0 pixel is all objects).
    min_size : int
        Objects of fewer pixels become background before the renumbering.
    dtype : numpy dtype
        Type of the result.

    Returns
    -------
    ndarray
        Same shape as ``labels``; the object with the ``i``-th smallest id (of those kept) is ``i``.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"Expected integer instance labels; got {labels.dtype}.")
    if labels.size == 0:
        return np.zeros(labels.shape, dtype)
    if labels.min() < 0:
        raise ValueError("Instance labels must be >= 0 (0 = background).")
    if int(labels.max()) <= 2 * labels.size:  # dense ids: count them directly
        flat = labels.ravel().astype(np.intp, copy=False)
        counts = np.bincount(flat)
        ids, inverse = np.arange(len(counts)), flat
    else:  # sparse ids (e.g. hashes): only those that occur
        ids, inverse, counts = np.unique(labels.ravel(), return_inverse=True, return_counts=True)
    keep = (ids != 0) & (counts >= min_size)
    lut = np.zeros(len(ids), dtype)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[inverse].reshape(labels.shape)
