"""Augmentation against plain crops, np.pad, torch.rot90 and a numpy bicubic reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastunet.train.augment import AugmentConfig, augment_batch, elastic_field, random_center, sample_tile

GEOMETRY_ONLY = AugmentConfig(gamma=(1.0, 1.0), contrast=(1.0, 1.0), brightness=(0.0, 0.0), noise_std=0.0)


def _rng() -> np.random.Generator:
    return np.random.default_rng(torch.initial_seed())


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(torch.initial_seed())


def _data(channels=2, height=37, width=45, classes=5):
    """A uint8 target, as the trainer gives (other tests use int64 targets)."""
    image = torch.rand(channels, height, width)
    target = torch.randint(0, classes, (height, width), dtype=torch.uint8)
    weight = torch.rand(height, width) * 10
    return image, target, weight


def _centre(origin_y, origin_x, in_size):
    """The centre that puts the input tile's top-left corner at (origin_y, origin_x)."""
    return origin_y + (in_size - 1) / 2, origin_x + (in_size - 1) / 2


def test_identity_is_the_crop_inside_the_image():
    image, target, weight = _data()
    in_size, out_size = 20, 12
    oy, ox = int(torch.randint(0, 37 - in_size + 1, ())), int(torch.randint(0, 45 - in_size + 1, ()))
    tile, target_tile, weight_tile = sample_tile(
        image, target, weight, center=_centre(oy, ox, in_size), in_size=in_size, out_size=out_size,
        config=AugmentConfig.none(),
    )
    assert tile.shape == (2, in_size, in_size) and tile.dtype == torch.float32
    assert target_tile.shape == (out_size, out_size) and target_tile.dtype == torch.uint8
    assert weight_tile.shape == (out_size, out_size) and weight_tile.dtype == torch.float32
    torch.testing.assert_close(tile, image[:, oy : oy + in_size, ox : ox + in_size], rtol=0, atol=1e-5)
    o = (in_size - out_size) // 2
    inner = (slice(oy + o, oy + o + out_size), slice(ox + o, ox + o + out_size))
    torch.testing.assert_close(target_tile, target[inner], rtol=0, atol=0)
    torch.testing.assert_close(weight_tile, weight[inner], rtol=0, atol=1e-4)


@pytest.mark.parametrize("origin", [(-9, -5), (30, 40), (-3, 38), (-30, 10)])
def test_identity_mirrors_like_numpy_reflect_beyond_the_border(origin):
    image, target, weight = _data(height=23, width=29)
    in_size, out_size = 24, 10
    oy, ox = origin
    tile, target_tile, weight_tile = sample_tile(
        image, target, weight, center=_centre(oy, ox, in_size), in_size=in_size, out_size=out_size,
        config=AugmentConfig.none(),
    )
    pad = 40  # > one image height: (-30, 10) is reflected twice
    ref_image = np.pad(image.numpy(), ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    ref_target = np.pad(target.numpy(), pad, mode="reflect")
    ref_weight = np.pad(weight.numpy(), pad, mode="reflect")
    y, x = oy + pad, ox + pad
    np.testing.assert_allclose(tile.numpy(), ref_image[:, y : y + in_size, x : x + in_size], rtol=0, atol=1e-5)
    o = (in_size - out_size) // 2
    y, x = y + o, x + o
    np.testing.assert_array_equal(target_tile.numpy(), ref_target[y : y + out_size, x : x + out_size])
    np.testing.assert_allclose(weight_tile.numpy(), ref_weight[y : y + out_size, x : x + out_size], rtol=0, atol=1e-4)


@pytest.mark.parametrize("degrees, k", [(90.0, 1), (-90.0, -1), (180.0, 2), (270.0, 3)])
def test_quarter_rotations_equal_rot90(degrees, k):
    image, target, weight = _data(channels=1, height=40, width=40)
    in_size, out_size = 22, 14
    oy, ox = 7, 11
    config = AugmentConfig(**{**AugmentConfig.none().to_dict(), "rotation": (degrees, degrees)})
    tile, target_tile, weight_tile = sample_tile(
        image, target, weight, center=_centre(oy, ox, in_size), in_size=in_size, out_size=out_size, config=config
    )
    crop = image[:, oy : oy + in_size, ox : ox + in_size]
    torch.testing.assert_close(tile, torch.rot90(crop, k, dims=(-2, -1)), rtol=0, atol=1e-5)
    o = (in_size - out_size) // 2
    inner = (slice(oy + o, oy + o + out_size), slice(ox + o, ox + o + out_size))
    torch.testing.assert_close(target_tile, torch.rot90(target[inner], k, dims=(-2, -1)), rtol=0, atol=0)
    torch.testing.assert_close(weight_tile, torch.rot90(weight[inner], k, dims=(-2, -1)), rtol=0, atol=1e-4)


def test_flips_give_the_four_mirrorings():
    image, target, weight = _data(channels=1, height=30, width=30)
    in_size = out_size = 16
    config = AugmentConfig(**{**AugmentConfig.none().to_dict(), "flip": True})
    crop = image[:, 6 : 6 + in_size, 8 : 8 + in_size]
    variants = [crop, crop.flip(-1), crop.flip(-2), crop.flip(-1, -2)]
    generator = _generator()
    seen = set()
    for _ in range(32):
        tile, target_tile, _ = sample_tile(
            image, target, weight, center=_centre(6, 8, in_size), in_size=in_size, out_size=out_size,
            config=config, generator=generator,
        )
        matches = [i for i, v in enumerate(variants) if torch.allclose(tile, v, rtol=0, atol=1e-5)]
        assert len(matches) == 1
        t = target[6 : 6 + in_size, 8 : 8 + in_size]
        t = [t, t.flip(-1), t.flip(-2), t.flip(-1, -2)][matches[0]]
        assert torch.equal(target_tile, t)  # labels mirrored with the image
        seen.add(matches[0])
    assert len(seen) >= 3  # P(<= 2 of 4 in 32 fair draws) ~ 1e-9


def _keys_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Bicubic (Keys, a = -0.75) upsampling matrix, align_corners=True, clamped borders."""
    a = -0.75

    def kernel(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        if t < 2:
            return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
        return 0.0

    matrix = np.zeros((n_out, n_in))
    for o in range(n_out):
        x = o * (n_in - 1) / (n_out - 1)
        i = int(np.floor(x))
        for tap in range(i - 1, i + 3):
            matrix[o, min(max(tap, 0), n_in - 1)] += kernel(x - tap)
    return matrix


def test_elastic_field_is_the_bicubic_upsampling_of_the_lattice():
    seed = torch.initial_seed()
    size, grid, sigma = (41, 57), 3, 10.0
    field = elastic_field(size, grid=grid, sigma=sigma, generator=torch.Generator().manual_seed(seed))
    assert field.shape == (2, *size) and field.dtype == torch.float32
    nodes = torch.randn((1, 2, grid, grid), generator=torch.Generator().manual_seed(seed))[0].double().numpy() * sigma
    ref = np.einsum("yi,cij,xj->cyx", _keys_matrix(grid, size[0]), nodes, _keys_matrix(grid, size[1]))
    np.testing.assert_allclose(field.numpy(), ref, rtol=1e-5, atol=1e-4)
    # Smooth: neighbouring pixels differ by a small fraction of the field's range.
    spread = float(field.amax() - field.amin())
    assert float(field.diff(dim=1).abs().max()) < 0.2 * spread
    assert float(field.diff(dim=2).abs().max()) < 0.2 * spread


def test_elastic_field_has_the_requested_std_on_the_lattice():
    generator = _generator()
    size, grid, sigma = 41, 3, 10.0
    nodes = [0, (size - 1) // 2, size - 1]  # the lattice nodes lie on these pixels
    fields = [elastic_field((size, size), grid=grid, sigma=sigma, generator=generator) for _ in range(400)]
    samples = torch.stack([f[:, nodes][:, :, nodes] for f in fields])
    assert samples.numel() == 400 * 2 * 9
    assert abs(float(samples.std()) - sigma) < 0.05 * sigma
    assert abs(float(samples.mean())) < 0.5


def test_deformed_labels_keep_their_values_and_stay_aligned_with_the_image():
    rng = _rng()
    labels = np.array([0, 3, 7, 200])
    blocks = rng.choice(labels, size=(6, 7))
    target = torch.from_numpy(np.kron(blocks, np.ones((16, 16), dtype=np.int64)))  # 96 x 112, 16 px blocks
    image = target[None].float()
    weight = target.float()
    in_size, out_size = 60, 40
    o = (in_size - out_size) // 2
    generator = _generator()
    values = set()
    counts = {0: [0, 0], 3: [0, 0]}  # shift -> [pixels where the image is a clean label, of them equal to target]
    for _ in range(8):
        center = random_center(tuple(target.shape), out_size, generator=generator)
        tile, target_tile, weight_tile = sample_tile(
            image, target, weight, center=center, in_size=in_size, out_size=out_size, config=GEOMETRY_ONLY,
            generator=generator,
        )
        assert target_tile.dtype == torch.uint8  # an int64 target with labels up to 200
        values |= set(target_tile.unique().tolist())
        inner = tile[0, o : o + out_size, o : o + out_size]
        # Where the bicubic image equals a label value, all its taps lie inside one block, so the
        # nearest-neighbour target must carry that label; a misaligned target would not.
        for shift, tally in counts.items():
            a, t = inner[shift:], target_tile[: out_size - shift]
            clean = torch.zeros_like(a, dtype=torch.bool)
            for value in labels:
                clean |= (a - float(value)).abs() < 1e-3
            tally[0] += int(clean.sum())
            tally[1] += int((t[clean] == a[clean].round()).sum())
        # The bilinear weight map follows the same grid (it differs from the labels only at edges).
        assert float(((weight_tile - target_tile).abs() < 0.5).float().mean()) > 0.7
    assert values <= set(labels.tolist())
    assert len(values) >= 2  # the tiles really cover several blocks
    aligned, shifted = (counts[s][1] / counts[s][0] for s in (0, 3))
    assert counts[0][0] > 0.5 * 8 * out_size**2
    assert aligned > 0.999 and shifted < 0.97, (aligned, shifted)


def test_constant_image_stays_constant_under_any_geometry():
    height, width = 50, 70
    levels = torch.rand(3, 1, 1)
    image = levels.expand(3, height, width).contiguous()
    target = torch.zeros(height, width, dtype=torch.int64)
    weight = torch.full((height, width), 2.5)
    config = AugmentConfig(
        elastic_sigma=15.0, gamma=(1.0, 1.0), contrast=(1.0, 1.0), brightness=(0.0, 0.0), noise_std=0.0
    )
    generator = _generator()
    for _ in range(4):
        center = (float(torch.rand(()) * height), float(torch.rand(()) * width))  # sub-pixel, may leave the image
        tile, target_tile, weight_tile = sample_tile(
            image, target, weight, center=center, in_size=44, out_size=20, config=config, generator=generator
        )
        torch.testing.assert_close(tile, levels.expand_as(tile), rtol=0, atol=1e-5)
        assert target_tile.dtype == torch.uint8 and not target_tile.any()
        torch.testing.assert_close(weight_tile, torch.full_like(weight_tile, 2.5), rtol=0, atol=1e-5)


def test_gray_value_variations_follow_their_formulas():
    image, target, weight = _data(channels=2, height=30, width=30)
    gamma, contrast, brightness = 1.7, 1.3, -0.2
    config = AugmentConfig(
        **{**AugmentConfig.none().to_dict(), "gamma": (gamma, gamma), "contrast": (contrast, contrast),
           "brightness": (brightness, brightness)}
    )
    tile, target_tile, weight_tile = sample_tile(
        image, target, weight, center=_centre(4, 5, 20), in_size=20, out_size=20, config=config
    )
    x = image[:, 4:24, 5:25].double().numpy()
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    x = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma
    mean = x.mean(axis=(1, 2), keepdims=True)
    x = mean + contrast * (x - mean) + brightness
    np.testing.assert_allclose(tile.numpy(), x, rtol=0, atol=2e-5)
    assert torch.equal(target_tile, target[4:24, 5:25])  # labels untouched
    torch.testing.assert_close(weight_tile, weight[4:24, 5:25], rtol=0, atol=1e-4)


def test_noise_has_the_requested_std():
    image = torch.full((1, 150, 150), 0.5)
    target = torch.zeros(150, 150, dtype=torch.int64)
    config = AugmentConfig(**{**AugmentConfig.none().to_dict(), "noise_std": 0.1})
    tile, _, _ = sample_tile(
        image, target, target.float(), center=(74.5, 74.5), in_size=128, out_size=64, config=config,
        generator=_generator(),
    )
    noise = tile - 0.5
    assert abs(float(noise.std()) - 0.1) < 0.005
    assert abs(float(noise.mean())) < 0.005


def test_reproducible_with_a_seed():
    image, target, weight = _data(height=60, width=64)
    seed = torch.initial_seed()
    runs = []
    for s in (seed, seed, seed + 1):
        runs.append(
            augment_batch([(image, target, weight)], 3, in_size=32, out_size=16, config=AugmentConfig(),
                          generator=torch.Generator().manual_seed(s))
        )
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0][0], runs[2][0])


def test_augment_batch_picks_images_by_area():
    small = (torch.zeros(1, 20, 20), torch.zeros(20, 20, dtype=torch.int64), torch.zeros(20, 20))
    large = (torch.ones(1, 40, 30), torch.ones(40, 30, dtype=torch.int64), torch.ones(40, 30))  # 3x the area
    images, targets, weights = augment_batch(
        [small, large], 1000, in_size=12, out_size=4, config=AugmentConfig.none(), generator=_generator()
    )
    assert images.shape == (1000, 1, 12, 12) and images.dtype == torch.float32
    assert targets.shape == (1000, 4, 4) and targets.dtype == torch.uint8  # from int64 targets
    assert weights.shape == (1000, 4, 4) and weights.dtype == torch.float32
    from_large = targets[:, 0, 0].float().mean().item()
    assert abs(from_large - 0.75) < 0.06  # 4.4 standard deviations of a 1000-draw mean
    torch.testing.assert_close(images[:, 0, 0, 0], targets[:, 0, 0].float(), rtol=0, atol=1e-5)


def test_targets_become_uint8_and_labels_must_fit():
    """Target tiles are uint8 whatever the integer dtype given; labels outside 0..255 (such as
    an ignore label of -100) are refused rather than wrapped; float targets are refused."""
    image, target, weight = _data(classes=5)
    kwargs = dict(center=(18.0, 22.0), in_size=20, out_size=12, config=AugmentConfig.none())
    expected = sample_tile(image, target, weight, **kwargs)[1]
    for dtype in (torch.int64, torch.int32, torch.int16):
        tile = sample_tile(image, target.to(dtype), weight, **kwargs)[1]
        assert tile.dtype == torch.uint8 and torch.equal(tile, expected)
    tile = sample_tile(image, target > 2, weight, **kwargs)[1]
    assert tile.dtype == torch.uint8 and torch.equal(tile, (expected > 2).to(torch.uint8))
    wide = target.long()
    wide[5:32, 5:40] = 255  # the largest label that fits (e.g. an ignore label)
    assert int(sample_tile(image, wide, weight, **kwargs)[1].max()) == 255
    for bad in (-100, 256):
        wide[5:32, 5:40] = bad
        with pytest.raises(ValueError, match="0..255.*ignore_index=255"):
            sample_tile(image, wide, weight, **kwargs)
    with pytest.raises(ValueError, match="integer classes"):
        sample_tile(image, target.float(), weight, **kwargs)


def test_random_center_keeps_the_output_tile_inside():
    generator = _generator()
    for _ in range(50):
        cy, cx = random_center((37, 50), 16, generator=generator)
        for c, size in ((cy, 37), (cx, 50)):
            origin = c - 7.5
            assert origin == int(origin) and 0 <= origin <= size - 16
    assert random_center((10, 50), 16, generator=generator)[0] == 4.5  # centred when too small


def test_rejects_bad_arguments():
    image, target, weight = _data()
    kwargs = dict(center=(18.0, 22.0), config=AugmentConfig.none())
    with pytest.raises(ValueError, match="even"):
        sample_tile(image, target, weight, in_size=20, out_size=11, **kwargs)
    with pytest.raises(ValueError, match="in_size >= out_size"):
        sample_tile(image, target, weight, in_size=10, out_size=12, **kwargs)
    with pytest.raises(ValueError, match="target"):
        sample_tile(image, target[:-1], weight, in_size=20, out_size=12, **kwargs)
    with pytest.raises(ValueError, match="C, H, W"):
        sample_tile(image[0], target, weight, in_size=20, out_size=12, **kwargs)
    with pytest.raises(ValueError, match="low <= high"):
        AugmentConfig(rotation=(10.0, -10.0))
    with pytest.raises(ValueError, match="gamma"):
        AugmentConfig(gamma=(0.0, 1.0))
    with pytest.raises(ValueError, match="elastic_grid"):
        AugmentConfig(elastic_grid=1)
    with pytest.raises(ValueError, match="empty"):
        augment_batch([], 1, in_size=20, out_size=12, config=AugmentConfig.none())


@pytest.mark.gpu
def test_cuda_matches_cpu():
    image, target, weight = _data(height=90, width=100)
    seed = torch.initial_seed()
    args = dict(in_size=60, out_size=36, config=AugmentConfig())
    cpu = augment_batch([(image, target, weight)], 4, generator=torch.Generator().manual_seed(seed), **args)
    cuda_data = [(image.cuda(), target.cuda(), weight.cuda())]
    gpu = augment_batch(cuda_data, 4, generator=torch.Generator().manual_seed(seed), **args)
    assert all(t.device.type == "cuda" for t in gpu) and gpu[1].dtype == torch.uint8
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=0, atol=1e-4)
    assert float((gpu[1].cpu() != cpu[1]).float().mean()) < 1e-3  # rounding ties may differ
    torch.testing.assert_close(gpu[2].cpu(), cpu[2], rtol=0, atol=1e-4)


def test_config_round_trips_through_json():
    import json

    config = AugmentConfig(rotation=(-30, 45), gamma=[0.9, 1.1], noise_std=0.05)
    assert config.rotation == (-30.0, 45.0) and config.gamma == (0.9, 1.1)
    assert AugmentConfig(**json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("zoom", [2.0, 0.5])
def test_scale_zooms_the_tile_about_its_centre_with_mirrored_borders(zoom):
    """scale=(z, z): the tile samples the source every 1/z pixels around the centre; on a
    ramp image (bilinear weights exact) that is the ramp at those coordinates, reflected like
    np.pad beyond the border; the target takes the nearest source pixel."""
    height, width = 40, 50
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    image = torch.from_numpy(np.stack([yy, xx]))
    target = torch.from_numpy((xx.astype(np.int64) % 7).astype(np.uint8))
    weight = torch.from_numpy(yy.copy())
    in_size, out_size, center = 24, 10, (20.0, 26.5)
    config = AugmentConfig(**{**AugmentConfig.none().to_dict(), "scale": (zoom, zoom)})
    tile, target_tile, weight_tile = sample_tile(image, target, weight, center=center, in_size=in_size,
                                                 out_size=out_size, config=config)
    u = (np.arange(in_size) - (in_size - 1) / 2) / zoom

    def reflect(p, n):  # numpy "reflect" for real coordinates
        period = 2 * (n - 1)
        p = np.mod(p, period)
        return np.where(p > n - 1, period - p, p)

    ys, xs = reflect(center[0] + u, height), reflect(center[1] + u, width)
    # PyTorch's bicubic kernel (a = -0.75) follows a ramp to within 0.05 px 2 px or more from the
    # mirror's kinks; the bilinear weight map and the nearest-neighbour target are exact.
    iy, ix = (np.abs(p - np.clip(p, 2, n - 3)) == 0 for p, n in ((center[0] + u, height), (center[1] + u, width)))
    assert iy.sum() >= 10 and ix.sum() >= 10 and (not iy.all() or zoom > 1)
    np.testing.assert_allclose(tile[0].numpy()[iy, 0], ys[iy], atol=0.06)
    np.testing.assert_allclose(tile[1].numpy()[0, ix], xs[ix], atol=0.06)
    o = (in_size - out_size) // 2
    cols = reflect(np.round(center[1] + u[o:o + out_size]), width).astype(int)
    np.testing.assert_array_equal(target_tile.numpy(), np.broadcast_to(cols % 7, (out_size, out_size)))
    np.testing.assert_allclose(weight_tile.numpy()[:, 0], ys[o:o + out_size], atol=1e-3)


def test_scale_range_is_drawn_log_uniformly_and_only_when_asked():
    image, target, weight = _data(height=64, width=64)
    base = AugmentConfig.none().to_dict()
    zooms = []
    for k in range(200):
        config = AugmentConfig(**{**base, "scale": (0.5, 2.0)})
        tile = sample_tile(image, target, weight, center=(32.0, 32.0), in_size=9, out_size=9, config=config,
                           generator=torch.Generator().manual_seed(k))[0]
        ramp = sample_tile(torch.arange(64.0).expand(1, 64, 64).contiguous(), target, weight, center=(32.0, 32.0),
                           in_size=9, out_size=9, config=config, generator=torch.Generator().manual_seed(k))[0]
        assert tile.shape == (2, 9, 9)
        zooms.append(1.0 / float(ramp[0, 0, 5] - ramp[0, 0, 4]))
    logs = np.log(zooms)
    assert logs.min() >= np.log(0.5) - 1e-3 and logs.max() <= np.log(2.0) + 1e-3
    assert abs(np.mean(logs)) < 0.15 and np.std(logs) > 0.3  # log-uniform: mean 0, std 0.40
    # The default draws nothing: the random stream is that of a config without scale.
    default = AugmentConfig()
    a = augment_batch([(image, target, weight)], 2, in_size=20, out_size=12, config=default, generator=_generator())
    b = augment_batch([(image, target, weight)], 2, in_size=20, out_size=12,
                      config=AugmentConfig(**{**default.to_dict(), "scale": (1.0, 1.0)}), generator=_generator())
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and default.scale == (1.0, 1.0)
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(0.0, 1.0))
