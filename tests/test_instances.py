"""relabel_sequential: the one renumbering to 1..n (synthetic data, weight maps, metrics)."""

import numpy as np
import pytest
import torch

from fastunet.instances import relabel_sequential


def _rng() -> np.random.Generator:
    return np.random.default_rng(torch.initial_seed())


def _by_unique(labels: np.ndarray, min_size: int = 1) -> np.ndarray:
    """The definition, written plainly: ids that occur at least min_size times, in order, to 1..n."""
    ids, counts = np.unique(labels, return_counts=True)
    kept = [i for i, c in zip(ids, counts) if i != 0 and c >= min_size]
    out = np.zeros(labels.shape, np.int64)
    for new, old in enumerate(kept, start=1):
        out[labels == old] = new
    return out


@pytest.mark.parametrize("top", [5, 40, 10**9])  # dense ids, many gaps, sparse (hash-like) ids
@pytest.mark.parametrize("background", [True, False])
def test_matches_the_definition(top, background):
    rng = _rng()
    labels = rng.integers(0 if background else 1, top, size=(17, 23)).astype(np.int64)
    for min_size in (1, 2, 5):
        out = relabel_sequential(labels, min_size=min_size)
        np.testing.assert_array_equal(out, _by_unique(labels, min_size))
        assert out.dtype == np.int64


def test_dtype_shapes_and_errors():
    labels = np.array([[0, 7, 7], [3, 0, 9]], np.uint16)
    out = relabel_sequential(labels, dtype=np.int32)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[0, 2, 2], [1, 0, 3]])
    np.testing.assert_array_equal(relabel_sequential(labels[None]), out[None])  # any number of dimensions
    assert relabel_sequential(np.zeros((0, 4), np.int32)).shape == (0, 4)
    big = np.array([0, np.iinfo(np.uint64).max], np.uint64)
    np.testing.assert_array_equal(relabel_sequential(big), [0, 1])
    with pytest.raises(ValueError, match=">= 0"):
        relabel_sequential(np.array([0, -1]))
    with pytest.raises(TypeError, match="integer"):
        relabel_sequential(np.array([0.5]))


@pytest.mark.parametrize("fill_holes", [False, True])
def test_block_records_hold_each_class_components_and_their_tables(fill_holes):
    """label_block's ids are the connected components of each class (scipy's, face
    connectivity), numbered class by class in order of their first voxel, and its tables
    agree with them: ``first`` is each id's first voxel (global C order), ``size`` its voxels,
    ``cls`` its class."""
    from scipy import ndimage

    from fastunet.engine import instances

    rng = _rng()
    opts = instances.InstanceOptions(fill_holes=fill_holes)
    shape, origin = (3, 19, 23), (1, 0, 0)
    for k in (2, 3, 4):
        for _ in range(8):
            m = rng.integers(0, k, size=(1, 19, 23)).astype(np.uint8)
            got = instances.label_block(m, origin, shape, k, opts)
            ids = got.ids[0]
            n = 0
            for c in range(0 if fill_holes else 1, k):
                want, count = ndimage.label(m[0] == c)
                part = ids[m[0] == c]
                assert np.array_equal(part - n, want[m[0] == c]) and count == len(np.unique(part))
                n += count
            assert not fill_holes or ids.min() > 0
            assert got.n == n and ids.max() == n
            flat = ids.ravel()
            values, index = np.unique(flat, return_index=True)
            index = index[values > 0]
            assert np.array_equal(got.first, np.ravel_multi_index((np.full(n, 1), *np.unravel_index(index, ids.shape)),
                                                                  shape))
            assert np.array_equal(got.size, np.bincount(flat, minlength=n + 1)[1:])
            assert np.array_equal(got.cls, m[0].ravel()[index])




def _touching_pairs_plainly(ids: np.ndarray, links: tuple) -> np.ndarray:
    """Every pair of different ids that are neighbours along a linked axis, sorted, ``i < j``."""
    pairs = set()
    for axis, link in enumerate(links):
        if link and ids.shape[axis] > 1:
            a = np.moveaxis(ids, axis, 0)
            pairs |= {(min(x, y), max(x, y)) for x, y in zip(a[:-1].ravel(), a[1:].ravel()) if x != y}
    return np.array(sorted(pairs), np.uint32).reshape(-1, 2)


@pytest.mark.parametrize("connect_z", [False, True])
def test_touching_pieces_by_runs_and_by_id_are_the_plain_neighbours(connect_z):
    """The pieces' adjacency (the holes' merge input), found on the runs (``label_runs``) and
    on the ids (``_touching``, the split blocks'), equals the neighbour pairs listed one by
    one, on shapes with axes of one voxel too."""
    from scipy import ndimage

    from fastunet.engine import instances
    from fastunet.engine.connectivity import label_runs

    rng = _rng()
    structure = instances._structure(3, connect_z)
    links = (structure[0, 1, 1], structure[1, 0, 1], structure[1, 1, 0])
    for _ in range(40):
        shape = tuple(int(n) for n in rng.integers(1, 8, size=3))
        k = int(rng.integers(2, 4))
        classes = rng.integers(0, k, size=shape).astype(np.uint8)
        ids, n = np.zeros(shape, np.uint32), 0
        for c in range(k):
            local, count = ndimage.label(classes == c, structure=structure)
            ids[classes == c] = local[classes == c] + n
            n += count
        want = _touching_pairs_plainly(ids, links)
        assert np.array_equal(instances._touching(ids, structure), want)
        got = label_runs(classes, classes_from=0, classes_to=k, link_z=connect_z, adjacency=True)
        assert np.array_equal(got.ids, ids) and np.array_equal(got.adj, want)
