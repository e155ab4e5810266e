import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from fastunet import metrics
from fastunet.metrics import as_instances, foreground_iou, instance_f1, iou_matrix


def _rng() -> np.random.Generator:
    return np.random.default_rng(torch.initial_seed() % 2**32)


def _random_instances(rng, shape=(20, 22), n=7) -> np.ndarray:
    """Overlapping random rectangles, the later painted over the earlier (ids may repeat
    a region's neighbour, be missing, or be split into pieces)."""
    labels = np.zeros(shape, np.int64)
    for k in range(1, n + 1):
        y, x = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
        h, w = rng.integers(2, 9, 2)
        labels[y : y + h, x : x + w] = k
    return labels


def _perturb(rng, labels) -> np.ndarray:
    """A prediction: shifted, partly erased, with its ids shuffled and spread out."""
    pred = np.roll(labels, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
    pred[rng.random(pred.shape) < 0.1] = 0
    perm = np.concatenate([[0], rng.permutation(np.arange(1, pred.max() + 1)) * 3 + 5])
    return perm[pred]


def _brute_force(pred, true, threshold):
    """Objects as the masks of each id, IoU pair by pair, matching by exhaustive search."""
    t_ids = [i for i in np.unique(true) if i]
    p_ids = [i for i in np.unique(pred) if i]
    iou = np.zeros((len(t_ids), len(p_ids)))
    for a, ti in enumerate(t_ids):
        for b, pi in enumerate(p_ids):
            tm, pm = true == ti, pred == pi
            iou[a, b] = (tm & pm).sum() / (tm | pm).sum()
    best = 0
    small, large = (t_ids, p_ids) if len(t_ids) <= len(p_ids) else (p_ids, t_ids)
    for perm in itertools.permutations(range(len(large)), len(small)):
        pairs = [(i, j) if small is t_ids else (j, i) for i, j in enumerate(perm)]
        best = max(best, sum(iou[i, j] > threshold for i, j in pairs))
    return iou, best, len(t_ids), len(p_ids)


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.3])
def test_instance_f1_matches_brute_force(threshold):
    rng = _rng()
    for _ in range(15):
        true = _random_instances(rng, n=int(rng.integers(1, 6)))
        pred = _perturb(rng, true)
        ref_iou, tp, n_true, n_pred = _brute_force(pred, true, threshold)
        np.testing.assert_allclose(iou_matrix(as_instances(true), as_instances(pred)), ref_iou, rtol=1e-12)
        s = instance_f1(pred, true, iou_threshold=threshold)
        assert (s.tp, s.n_true, s.n_pred) == (tp, n_true, n_pred)
        assert (s.fp, s.fn) == (n_pred - tp, n_true - tp)
        assert s.f1 == pytest.approx(2 * tp / (n_true + n_pred) if n_true + n_pred else 1.0)
        assert s.precision == pytest.approx(tp / n_pred if n_pred else 1.0)
        assert s.recall == pytest.approx(tp / n_true if n_true else 1.0)


def test_sparse_contingency_path_matches_dense(monkeypatch):
    rng = _rng()
    true = _random_instances(rng, shape=(40, 40), n=12)
    pred = _perturb(rng, true)
    dense = iou_matrix(as_instances(true), as_instances(pred))
    monkeypatch.setattr(metrics, "_DENSE_LIMIT", 0)
    np.testing.assert_array_equal(iou_matrix(as_instances(true), as_instances(pred)), dense)


def test_foreground_prediction_uses_connected_components():
    # Two touching squares of equal size predicted as one blob: each IoU is exactly 0.5,
    # not above it, so nothing matches: 1 FP, 2 FN.
    true = np.zeros((10, 12), np.int32)
    true[2:6, 2:6] = 1
    true[2:6, 6:10] = 2
    blob = true > 0
    s = instance_f1(blob, true)
    assert (s.tp, s.fp, s.fn, s.n_pred, s.n_true) == (0, 1, 2, 1, 2)
    assert s.f1 == 0.0
    # A large and a small object merged: the blob still matches the large one (IoU 32/36).
    true[2:6, 6:10] = 1
    true[2:6, 10:11] = 2
    s = instance_f1(true > 0, true)
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)
    assert s.mean_iou == pytest.approx(32 / 36)
    # Separated by a background column (the large one loses 4 px), both are found.
    pred = true > 0
    pred[:, 9] = False
    s = instance_f1(pred, true)
    assert (s.tp, s.fp, s.fn) == (2, 0, 0)
    assert s.mean_iou == pytest.approx((28 / 32 + 1.0) / 2)
    assert instance_f1(true, true).f1 == 1.0


def test_as_instances_and_edge_cases():
    rng = _rng()
    mask = rng.random((15, 15)) < 0.4
    np.testing.assert_array_equal(as_instances(mask), ndi.label(mask)[0])
    np.testing.assert_array_equal(as_instances(mask.astype(np.uint8)), ndi.label(mask)[0])
    sparse_ids = np.array([[0, 7, 7], [9, 0, 3]])
    np.testing.assert_array_equal(as_instances(sparse_ids), [[0, 2, 2], [3, 0, 1]])
    empty = np.zeros((5, 5), np.int32)
    s = instance_f1(empty, empty)
    assert (s.f1, s.precision, s.recall, s.tp) == (1.0, 1.0, 1.0, 0)
    truth = empty.copy()
    truth[1:3, 1:3] = 4
    s = instance_f1(empty, truth)
    assert s.f1 == 0.0 and s.recall == 0.0 and s.precision == 1.0
    with pytest.raises(ValueError, match="same shape"):
        instance_f1(empty, np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match=">= 0"):
        as_instances(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="iou_threshold"):
        instance_f1(empty, empty, iou_threshold=1.0)


def test_foreground_iou():
    rng = _rng()
    a, b = rng.random((2, 31, 17)) < 0.5
    assert foreground_iou(a, b) == pytest.approx(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())
    assert foreground_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert foreground_iou(np.ones((3, 3)), np.zeros((3, 3))) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        foreground_iou(a, b[:3])
