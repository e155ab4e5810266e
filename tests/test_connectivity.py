"""``label_runs`` (a class map's pieces, by runs) against scipy.ndimage.label, class by class."""

import numpy as np
import pytest
from scipy import ndimage

from fastunet.engine.connectivity import label_runs


def _scipy_pieces(classes: np.ndarray, lo: int, hi: int, link_z: bool):
    """scipy.ndimage.label of each class's mask in turn (face connectivity, no Z links unless
    ``link_z``), numbered after the classes before it; each id's first voxel, size and class."""
    structure = ndimage.generate_binary_structure(3, 1)
    if not link_z:
        structure[0] = structure[2] = False
    ids, n, cls = np.zeros(classes.shape, np.uint32), 0, []
    for c in range(lo, hi):
        local, count = ndimage.label(classes == c, structure=structure)
        ids[classes == c] = local[classes == c] + n
        cls += [c] * count
        n += count
    values, first = np.unique(ids.ravel(), return_index=True)
    first = first[values > 0]
    return ids, first, np.bincount(ids.ravel(), minlength=n + 1)[1:], np.array(cls, np.uint8)


def _blobs(rng, shape) -> np.ndarray:
    """A class map like a network's: smoothed noise thresholded into blobs, holes and borders."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(0, 3, 3))
    classes = (field > 0.05).astype(np.uint8)
    classes[(field > 0.0) & (field <= 0.05)] = 2  # a thin third class between them
    return classes


@pytest.mark.parametrize("link_z", [False, True])
@pytest.mark.parametrize("lo", [0, 1])
def test_label_runs_is_scipy_label_class_by_class(lo, link_z):
    """ids, first voxels, sizes and classes equal scipy's, numbering included, on random maps of
    2-4 classes with axes of one voxel, stacks labelled slice by slice or in 3-D, and blobs;
    the sums of weights (uint8: exact, float) over each piece equal a sum by the ids."""
    rng = np.random.default_rng(7 + lo + 2 * link_z)
    maps = [rng.integers(0, k, size=tuple(int(n) for n in rng.integers(1, 9, size=3))).astype(np.uint8)
            for k in (2, 3, 4) for _ in range(25)]
    maps += [_blobs(rng, (1, 97, 131)), _blobs(rng, (3, 64, 50)), np.zeros((2, 5, 7), np.uint8),
             np.ones((1, 1, 9), np.uint8)]
    for classes in maps:
        hi = max(2, int(classes.max()) + 1)
        ids, first, size, cls = _scipy_pieces(classes, lo, hi, link_z)
        got = label_runs(classes, classes_from=lo, classes_to=hi, link_z=link_z)
        assert got.ids.dtype == np.uint32 and np.array_equal(got.ids, ids)
        assert np.array_equal(got.first, first) and np.array_equal(got.size, size)
        assert np.array_equal(got.cls, cls) and got.adj is None and got.sums is None
        for weights in (rng.integers(0, 256, classes.shape).astype(np.uint8), rng.random(classes.shape)):
            sums = label_runs(classes, classes_from=lo, classes_to=hi, link_z=link_z, weights=weights).sums
            want = np.bincount(ids.ravel(), weights=weights.ravel(), minlength=cls.size + 1)[1:]
            if weights.dtype == np.uint8:
                assert np.array_equal(sums, want)
            else:
                np.testing.assert_allclose(sums, want, rtol=1e-12, atol=1e-12)


def test_label_runs_of_nothing():
    """An empty map has no pieces (and an empty adjacency)."""
    got = label_runs(np.zeros((1, 0, 4), np.uint8), classes_from=0, classes_to=2, adjacency=True,
                     weights=np.zeros((1, 0, 4), np.uint8))
    assert got.ids.shape == (1, 0, 4) and got.first.size == got.size.size == got.cls.size == got.sums.size == 0
    assert got.adj.shape == (0, 2)
