import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from fastunet.figures import save_preview
from fastunet.synthetic import synthetic_nuclei, synthetic_volume, touching_pairs


def _seed() -> int:
    return int(torch.initial_seed() % 2**32)


def _check_instances(labels: np.ndarray) -> None:
    """Consecutive ids 1..n, each non-empty and one 4-connected piece."""
    ids = np.unique(labels)
    assert ids[0] == 0
    np.testing.assert_array_equal(ids[1:], np.arange(1, len(ids)))
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        assert box is not None, f"label {index} is empty"
        _, pieces = ndi.label(labels[box] == index)
        assert pieces == 1, f"label {index} has {pieces} pieces"


def _touching_brute_force(labels: np.ndarray) -> set:
    pairs = set()
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            a = labels[y, x]
            for yy, xx in ((y + 1, x), (y, x + 1)):
                if yy < h and xx < w:
                    b = labels[yy, xx]
                    if a and b and a != b:
                        pairs.add((min(a, b), max(a, b)))
    return pairs


def test_nuclei_shape_dtype_labels_and_touching():
    image, labels = synthetic_nuclei((300, 260), seed=_seed())
    assert image.shape == labels.shape == (300, 260)
    assert image.dtype == np.float32 and labels.dtype == np.int32
    assert labels.max() >= 20
    _check_instances(labels)
    pairs = touching_pairs(labels)
    touching = len(np.unique(pairs)) / labels.max()
    assert touching >= 0.3, f"only {touching:.0%} of the objects touch another"
    # Brighter inside objects than outside, on average (by a clear margin).
    assert image[labels > 0].mean() > 1.5 * image[labels == 0].mean()
    # Object sizes in the requested range: the equivalent radius of unclipped objects.
    areas = np.bincount(labels.ravel())[1:]
    assert np.median(np.sqrt(areas / np.pi)) > 5


def test_touching_pairs_matches_brute_force():
    rng = np.random.default_rng(_seed())
    labels = rng.integers(0, 4, (17, 13)).astype(np.int32)
    got = {tuple(p) for p in touching_pairs(labels).tolist()}
    assert got == _touching_brute_force(labels)


def test_nuclei_reproducible_and_seed_dependent():
    seed = _seed()
    a = synthetic_nuclei((128, 128), seed=seed, dtype="uint16")
    b = synthetic_nuclei((128, 128), rng=np.random.default_rng(seed), dtype="uint16")
    c = synthetic_nuclei((128, 128), seed=seed + 1, dtype="uint16")
    assert a[0].dtype == np.uint16
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_nuclei_object_count():
    none = synthetic_nuclei((64, 64), seed=_seed(), n_objects=0)
    assert none[1].max() == 0
    _, labels = synthetic_nuclei((200, 200), seed=_seed(), n_objects=40, touching=0.0)
    assert 10 <= labels.max() <= 40
    _check_instances(labels)


def test_nuclei_rejects_bad_options():
    with pytest.raises(ValueError, match="radius"):
        synthetic_nuclei((64, 64), radius=(10, 5))
    with pytest.raises(ValueError, match="touching"):
        synthetic_nuclei((64, 64), touching=1.5)
    with pytest.raises(ValueError, match="shape"):
        synthetic_nuclei((64,))
    with pytest.raises(TypeError, match="seed or rng"):
        synthetic_nuclei((64, 64), seed=1, rng=np.random.default_rng(1))
    with pytest.raises(ValueError, match="dtype"):
        synthetic_nuclei((64, 64), dtype="int8")


def test_volume_slices_are_valid_and_vary_slowly():
    image, labels = synthetic_volume((5, 160, 160), seed=_seed())
    assert image.shape == labels.shape == (5, 160, 160)
    assert image.dtype == np.float32 and labels.dtype == np.int32
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(len(ids)))
    for plane in labels:
        for index, box in enumerate(ndi.find_objects(plane), start=1):
            if box is not None:
                assert ndi.label(plane[box] == index)[1] == 1
    # Neighbouring planes share most of their foreground (ellipsoids, not independent slices).
    fg = labels > 0
    overlap = (fg[1:] & fg[:-1]).sum() / np.maximum((fg[1:] | fg[:-1]).sum(), 1)
    assert overlap.mean() > 0.5
    assert image[fg].mean() > image[~fg].mean()


def test_save_preview(tmp_path):
    image, labels = synthetic_nuclei((96, 96), seed=_seed())
    save_preview(tmp_path / "p.png", image, labels)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="same shape"):
        save_preview(tmp_path / "q.png", image, labels[:10])


def test_styles_are_reproducible_and_draw_their_own_ranges():
    from fastunet.synthetic_styles import STYLES, style_image, style_names

    assert style_names(held_out=True) and style_names(held_out=False)
    assert set(style_names(held_out=True)).isdisjoint(style_names(held_out=False))
    seed = _seed()
    for name in ("small", "mitotic", "large", "tiny"):
        a, b = style_image(name, (128, 128), seed=seed), style_image(name, (128, 128), seed=seed)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.options["dtype"] in STYLES[name].dtypes
        (lo, hi), spread = STYLES[name].diameter, STYLES[name].spread
        # radii within 1 +- spread of the image's typical diameter, itself within the range
        assert lo / 2 * (1 - spread) - 1e-9 <= a.options["radius"][0] <= a.options["radius"][1]
        assert a.options["radius"][1] <= hi / 2 * (1 + spread) + 1e-9
        assert a.options["radius"][1] / a.options["radius"][0] == pytest.approx((1 + spread) / (1 - spread))
        if a.labels.max() >= 5:
            assert 0.4 * lo <= a.object_size <= 1.3 * hi, (name, a.object_size)
    classic = style_image("classic", (96, 96), seed=seed)
    np.testing.assert_array_equal(classic.image, synthetic_nuclei((96, 96), seed=seed, dtype="uint16")[0])


def test_bit_depths_and_new_features():
    seed = _seed()
    for dtype, top in (("uint8", 255), ("uint12", 4095), ("uint16", 65535)):
        image, _ = synthetic_nuclei((96, 96), seed=seed, dtype=dtype, photons=20000.0)
        assert image.dtype == (np.uint8 if dtype == "uint8" else np.uint16) and 0 < image.max() <= top
    assert synthetic_nuclei((96, 96), seed=seed, dtype="uint12", photons=20000.0)[0].max() == 4095  # saturates
    # Irregular outlines: objects fill their ellipse less well than ellipses do.
    plain = synthetic_nuclei((200, 200), seed=seed, n_objects=20, touching=0.0, radius=(15, 20))[1]
    bumpy = synthetic_nuclei((200, 200), seed=seed, n_objects=20, touching=0.0, radius=(15, 20), irregularity=0.3)[1]
    _check_instances(bumpy)

    def solidity(labels):
        from scipy.spatial import ConvexHull

        out = []
        for index, box in enumerate(ndi.find_objects(labels), start=1):
            points = np.argwhere(labels[box] == index)
            if len(points) > 50:
                out.append(len(points) / ConvexHull(points).volume)
        return np.median(out)

    assert solidity(bumpy) < solidity(plain) - 0.02
    # Bright bodies: small objects, brighter than the nuclei.
    image, labels = synthetic_nuclei((256, 256), seed=seed, n_objects=30, bodies=0.5, radius=(10, 14),
                                     body_radius=(2.0, 3.0), min_area=6, touching=0.0)
    areas = np.bincount(labels.ravel())[1:]
    small = np.flatnonzero(areas < 60) + 1
    assert len(small) >= 5
    means = ndi.mean(image, labels, np.arange(1, labels.max() + 1))
    assert np.median(means[small - 1]) > np.median(means[areas >= 200])
    with pytest.raises(ValueError, match="irregularity"):
        synthetic_nuclei((64, 64), irregularity=0.5)
    with pytest.raises(ValueError, match="aspect"):
        synthetic_nuclei((64, 64), aspect=(0.5, 1.0))


def test_what_real_images_hold_besides_nuclei_is_light_without_labels():
    """Debris, fibers, specks, ghosts, autofluorescence and the camera's defects change the image,
    never the labels; each effect does what it says."""
    seed = _seed()
    base = dict(n_objects=25, radius=(8.0, 12.0), touching=0.2, photons=500.0, dtype="float32")
    plain, labels = synthetic_nuclei((160, 170), seed=seed, **base)
    clutter = dict(debris=2.0, fibers=0.5, specks=3.0, ghosts=0.8, autofluorescence=0.2, cytoplasm=0.2,
                   pattern_noise=2.0, hot_pixels=2e-3)
    busy, same = synthetic_nuclei((160, 170), seed=seed, **base, **clutter)
    np.testing.assert_array_equal(same, labels)
    background = labels == 0
    assert busy[background].std() > 1.5 * plain[background].std()  # textured, cluttered background
    assert np.median(busy[background]) > np.median(plain[background])  # autofluorescence
    hot = synthetic_nuclei((160, 170), seed=seed, **base, hot_pixels=5e-3)[0]
    brightest_nucleus = ndi.maximum(plain, labels, np.arange(1, labels.max() + 1)).max()
    assert 0.002 < (hot > 1.5 * brightest_nucleus).mean() < 0.008  # single pixels above any nucleus
    saturated, _ = synthetic_nuclei((160, 170), seed=seed, **base, saturation=0.3)
    peaks = ndi.maximum(saturated, labels, np.arange(1, labels.max() + 1))
    assert 0.2 < (peaks >= saturated.max()).mean() < 0.45  # about 30 % of the nuclei clipped at one ceiling
    with pytest.raises(ValueError, match="saturation"):
        synthetic_nuclei((64, 64), saturation=1.0)
    with pytest.raises(ValueError, match="hot_pixels"):
        synthetic_nuclei((64, 64), hot_pixels=0.5)


def test_mitoses_fragments_and_defocus_are_objects():
    seed = _seed()
    base = dict(n_objects=20, radius=(10.0, 14.0), touching=0.0, min_area=6)
    _, plain = synthetic_nuclei((220, 220), seed=seed, **base)
    _check_instances(plain)
    image, labels = synthetic_nuclei((220, 220), seed=seed, **base, mitoses=0.5, fragments=0.25)
    _check_instances(labels)
    assert labels.max() >= plain.max() + 8  # bars and pieces, each an object
    areas = np.bincount(labels.ravel())[1:]
    small = np.flatnonzero(areas < 0.4 * np.median(np.bincount(plain.ravel())[1:])) + 1
    assert len(small) >= 6
    means = ndi.mean(image, labels, np.arange(1, labels.max() + 1))
    assert np.median(means[small - 1]) > np.median(means[areas >= 200])  # condensed: brighter
    from fastunet.synthetic import synthetic_image

    drawn = synthetic_image((220, 220), seed=seed, **base, mitoses=0.5, fragments=0.25)  # which are nuclei
    np.testing.assert_array_equal(drawn.image, image)
    np.testing.assert_array_equal(drawn.labels, labels)
    assert 0.7 * plain.max() <= drawn.nuclei <= plain.max() + 3 < labels.max()
    assert np.median(areas[: drawn.nuclei]) > 2 * np.median(areas[drawn.nuclei:])
    sharp = synthetic_nuclei((160, 160), seed=seed, **base)
    soft = synthetic_nuclei((160, 160), seed=seed, **base, defocus=1.0)
    np.testing.assert_array_equal(sharp[1], soft[1])
    edges = [np.abs(np.diff(im, axis=1))[(lab[:, 1:] > 0) != (lab[:, :-1] > 0)].mean() for im, lab in (sharp, soft)]
    assert edges[1] < 0.8 * edges[0]  # out of focus: softer edges


def test_the_new_styles_draw_their_effects_and_older_styles_keep_their_images():
    from fastunet.default_model import TRAIN_STYLES
    from fastunet.synthetic_styles import STYLES, style_image, style_names

    seed = _seed()
    assert set(TRAIN_STYLES) == set(style_names(held_out=False))
    for name, effect in (("debris", "debris"), ("autofluorescent", "cytoplasm"), ("saturated", "saturation"),
                         ("dividing", "mitoses"), ("dim", "photons")):
        drawn = style_image(name, (96, 96), seed=seed)
        lo, hi = getattr(STYLES[name], effect)
        assert lo <= drawn.options[effect] <= hi and drawn.options[effect] > 0
        np.testing.assert_array_equal(drawn.image, style_image(name, (96, 96), seed=seed).image)
    # the styles that existed before draw none of the new options
    assert "debris" not in style_image("small", (64, 64), seed=seed).options


def test_a_glow_adds_the_objects_own_light_around_them():
    """glow(): strength x the light above the low level, spread by a Gaussian of the width:
    the added light sums to strength x the object's, and it reaches past the object's edge."""
    from fastunet.synthetic_styles import glow

    image = np.full((128, 128), 10.0, np.float32)
    yy, xx = np.mgrid[:128, :128]
    disk = (yy - 64) ** 2 + (xx - 64) ** 2 <= 8**2
    image[disk] = 110.0
    out = glow(image, 1.5, 6.0, low=10.0)
    assert out.dtype == np.float32 and out.shape == image.shape
    added = out.astype(np.float64) - image
    assert added.sum() == pytest.approx(1.5 * 100.0 * disk.sum(), rel=1e-3)
    ring = ((yy - 64) ** 2 + (xx - 64) ** 2 > 10**2) & ((yy - 64) ** 2 + (xx - 64) ** 2 <= 14**2)
    assert added[ring].min() > 5.0 and added[0, 0] < 1e-3  # a halo near the object, nothing far away
