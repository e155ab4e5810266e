"""Weight maps of the U-Net paper against a brute-force numpy/scipy computation."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy import ndimage

from fastunet.figures import weight_map_figure
from fastunet.train.weightmap import (
    border_margin,
    class_weights,
    prepare,
    semantic_target,
    touching_borders,
    weight_map,
)


def _rng() -> np.random.Generator:
    return np.random.default_rng(torch.initial_seed())


def random_instances(rng, shape, count, radius=(3, 9), sparse_ids=False) -> np.ndarray:
    """Random discs and rectangles; later ones overwrite earlier ones, so many touch."""
    height, width = shape
    instances = np.zeros(shape, dtype=np.int64)
    ids = rng.choice(10**7, size=count, replace=False) + 1 if sparse_ids else np.arange(1, count + 1)
    yy, xx = np.mgrid[:height, :width]
    for label in ids:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(*radius)
        if rng.random() < 0.5:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= rng.uniform(0.5, 1.5) * r)
        instances[mask] = label
    return instances


def brute_force(instances, *, w0, sigma, balance):
    """Eq. (2) with every object's full distance transform, no windows."""
    height, width = instances.shape
    padded = np.pad(instances, 1)
    border = np.zeros(instances.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            neighbour = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
            border |= (instances > 0) & (neighbour > 0) & (neighbour != instances)
    target = ((instances > 0) & ~border).astype(np.int64)
    weight = np.ones(instances.shape)
    if balance:
        counts = np.array([(target == c).sum() for c in (0, 1)], dtype=np.float64)
        present = counts > 0
        wc = np.ones(2)
        wc[present] = target.size / (present.sum() * counts[present])
        weight = wc[target]
    labels = [k for k in np.unique(instances) if k != 0]
    term = np.zeros(instances.shape)
    if len(labels) >= 2:
        dists = np.sort(np.stack([ndimage.distance_transform_edt(instances != k) for k in labels]), axis=0)
        term = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
        term[target != 0] = 0
    return target, weight + term, term


@pytest.mark.parametrize("sigma", [2.0, 5.0])
@pytest.mark.parametrize("sparse_ids", [False, True])
def test_weight_map_matches_brute_force(sigma, sparse_ids):
    rng = _rng()
    shape = (int(rng.integers(70, 110)), int(rng.integers(70, 110)))
    instances = random_instances(rng, shape, 14, sparse_ids=sparse_ids)
    w0, tol = 10.0, 1e-6
    target, weight = prepare(instances, w0=w0, sigma=sigma, balance=True, tol=tol)
    ref_target, ref_weight, ref_term = brute_force(instances, w0=w0, sigma=sigma, balance=True)
    assert target.dtype == np.uint8 and weight.dtype == np.float32
    np.testing.assert_array_equal(target, ref_target)
    np.testing.assert_array_equal(weight, weight_map(instances, w0=w0, sigma=sigma, tol=tol))
    error = np.abs(weight.astype(np.float64) - ref_weight)
    # Where the exact border term exceeds the truncation bound: fp32-exact.
    big = ref_term > w0 * tol
    assert big.any()
    assert (error[big] <= 1e-5 * ref_weight[big]).all(), error[big].max()
    # Elsewhere the windowed map may drop the term, but by no more than the bound.
    assert (error <= w0 * tol + 1e-5 * ref_weight).all(), error.max()


def test_truncation_bound_holds_for_a_coarse_tolerance():
    rng = _rng()
    instances = random_instances(rng, (96, 96), 20, radius=(2, 5))
    w0, sigma, tol = 10.0, 5.0, 1e-2
    assert border_margin(sigma, tol) == 16
    weight = weight_map(instances, w0=w0, sigma=sigma, balance=False, tol=tol)
    _, ref_weight, _ = brute_force(instances, w0=w0, sigma=sigma, balance=False)
    error = np.abs(weight - ref_weight)
    assert error.max() <= w0 * tol
    assert error.max() > 0  # the windows really cut off terms at this tolerance


def test_touching_objects_get_a_background_gap():
    instances = np.zeros((30, 40), dtype=np.int32)
    instances[10:20, 5:15] = 1
    instances[10:20, 15:25] = 2  # shares an edge with object 1
    instances[0:3, 30:33] = 5
    instances[3:6, 33:36] = 6  # touches object 5 only diagonally, at (2, 32)-(3, 33)
    border = touching_borders(instances)
    expected = np.zeros_like(border)
    expected[10:20, 14:16] = True
    expected[2, 32] = expected[3, 33] = True
    np.testing.assert_array_equal(border, expected)
    target = semantic_target(instances)
    np.testing.assert_array_equal(target, ((instances > 0) & ~expected).astype(np.uint8))
    _, count = ndimage.label(target, structure=np.ones((3, 3)))
    assert count == 4  # the touching pairs are separated even under 8-connectivity


def test_separated_objects_keep_their_full_extent():
    rng = _rng()
    instances = np.zeros((40, 40), dtype=np.int32)
    instances[5:15, 5:15] = 1
    instances[5:15, 16:30] = 2  # one background column between
    instances[16:30, 5:15] = 3  # one background row between
    instances[16:40, 16:40] = 4  # touches the image border, one diagonal pixel from 1 and 2's corners
    instances[instances > 0] = instances[instances > 0] * int(rng.integers(1, 1000))
    assert not touching_borders(instances).any()
    np.testing.assert_array_equal(semantic_target(instances), (instances > 0).astype(np.uint8))


def test_class_weights_balance_frequencies():
    rng = _rng()
    target = (rng.random((50, 70)) < rng.uniform(0.05, 0.4)).astype(np.uint8) * 2  # classes 0 and 2, 1 absent
    weights = class_weights(target, num_classes=3)
    assert weights.dtype == np.float32 and np.isfinite(weights).all()
    counts = np.bincount(target.ravel(), minlength=3)
    assert weights[1] == 1.0
    np.testing.assert_allclose(weights[0] * counts[0], weights[2] * counts[2], rtol=1e-6)
    np.testing.assert_allclose(weights[target].mean(), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(class_weights(np.zeros((4, 5), np.uint8)), [1.0, 1.0])
    with pytest.raises(ValueError, match="num_classes"):
        class_weights(target, num_classes=2)


def test_pixel_between_close_objects_outweighs_a_far_pixel():
    instances = np.zeros((100, 100), dtype=np.int32)
    instances[20:40, 10:30] = 1
    instances[20:40, 33:53] = 2  # gap: columns 30, 31, 32
    target, weight = prepare(instances)
    wc = class_weights(target)
    middle, far = weight[30, 31], weight[90, 90]
    assert far == pytest.approx(wc[0], rel=1e-6)  # > 60 px from both: no border term
    assert middle == pytest.approx(wc[0] + 10.0 * np.exp(-((2 + 2) ** 2) / (2 * 5.0**2)), rel=1e-6)
    assert middle > far + 5.0


def test_zero_and_one_object():
    empty = np.zeros((20, 30), dtype=np.uint16)
    np.testing.assert_array_equal(weight_map(empty), np.ones((20, 30), np.float32))
    single = empty.copy()
    single[5:12, 4:20] = 9
    target, weight = prepare(single)
    np.testing.assert_array_equal(weight, class_weights(target)[target])
    np.testing.assert_array_equal(weight_map(single, balance=False), np.ones((20, 30), np.float32))


def test_rejects_bad_label_images():
    with pytest.raises(TypeError, match="integer"):
        weight_map(np.zeros((5, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="2D"):
        weight_map(np.zeros((2, 2, 5, 5), dtype=np.int32))  # 2D or a 3D volume
    with pytest.raises(ValueError, match=">= 0"):
        weight_map(-np.ones((5, 5), dtype=np.int32))
    with pytest.raises(ValueError, match="sigma"):
        weight_map(np.zeros((5, 5), dtype=np.int32), sigma=0.0)


def test_large_image_with_hundreds_of_objects_is_fast():
    rng = _rng()
    instances = np.zeros((1024, 1024), dtype=np.int32)
    for label in range(1, 301):
        cy, cx = rng.integers(0, 1024, size=2)
        r = int(rng.integers(6, 20))
        y0, x0 = max(cy - r, 0), max(cx - r, 0)
        yy, xx = np.mgrid[y0 : min(cy + r + 1, 1024), x0 : min(cx + r + 1, 1024)]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        instances[yy[disc], xx[disc]] = label
    start = time.perf_counter()
    target, weight = prepare(instances)
    elapsed = time.perf_counter() - start
    print(f"prepare: 1024x1024, {len(np.unique(instances)) - 1} objects: {elapsed:.2f} s")
    assert elapsed < 30.0
    assert weight.shape == (1024, 1024) and np.isfinite(weight).all()
    assert weight.max() > 5.0  # touching discs produce border terms


@pytest.mark.parametrize("with_instances", [False, True])
def test_figure_is_a_png(tmp_path, with_instances):
    import matplotlib.image

    rng = _rng()
    instances = random_instances(rng, (64, 80), 10)
    image = rng.random((1, 64, 80)).astype(np.float32)
    target, weight = prepare(instances)
    path = weight_map_figure(
        tmp_path / "fig.png", image, target, weight, instances=instances if with_instances else None
    )
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 2 * pixels.shape[0]
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
