"""3D training: the weight map in physical units against a brute-force one, the 3D
augmentation's identity against plain mirrored crops, the fused loss on 3D logits, synthetic
3D volumes, and a 3D run through ``fastunet.train`` (tiny shapes)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from fastunet import geometry, read_model
from fastunet.synthetic3d import STYLES_3D, style_volume, synthetic_nuclei_3d
from fastunet.train import TrainConfig, train
from fastunet.train.augment import AugmentConfig
from fastunet.train.augment3d import augment_batch_3d, sample_tile_3d
from fastunet.train.loss import weighted_cross_entropy, weighted_cross_entropy_reference
from fastunet.train.weightmap import class_weights, prepare, semantic_target


def _rng():
    return np.random.default_rng(torch.initial_seed())


def _blobs(shape=(7, 24, 26), n=6):
    """Touching boxes of random sizes: an instance volume."""
    rng = _rng()
    labels = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        lo = [int(rng.integers(0, s - 3)) for s in shape]
        size = [int(rng.integers(2, 6)), int(rng.integers(3, 9)), int(rng.integers(3, 9))]
        labels[tuple(slice(a, a + b) for a, b in zip(lo, size))] = k
    return labels


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.5, 0.5)])
def test_3d_weight_map_equals_brute_force_in_physical_units(spacing):
    labels = _blobs()
    target, weight = prepare(labels, w0=10.0, sigma=3.0, spacing=spacing)
    assert np.array_equal(target, semantic_target(labels))
    rel = [s / spacing[-1] for s in spacing]  # distances in in-plane pixels
    ids = [k for k in np.unique(labels) if k]
    dist = np.stack([ndimage.distance_transform_edt(labels != k, sampling=rel) for k in ids])
    dist.sort(axis=0)
    exact = class_weights(target)[target].astype(np.float64)
    border = 10.0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * 3.0**2))
    exact[target == 0] += border[target == 0]
    assert np.abs(weight - exact).max() <= 1e-5 * 10 + 1e-5
    assert border[target == 0].max() > 1.0  # the border term is there


def test_3d_augmentation_identity_is_a_mirrored_crop():
    rng = _rng()
    image = torch.from_numpy(rng.normal(size=(2, 6, 11, 9)).astype(np.float32))
    target = torch.from_numpy(rng.integers(0, 3, size=(6, 11, 9)).astype(np.uint8))
    weight = torch.from_numpy(rng.random((6, 11, 9)).astype(np.float32))
    in_size, out_size = (8, 15, 13), (4, 5, 7)
    corner = (-2, -3, 1)  # the tile reaches beyond the volume on every side but one
    center = tuple(c + (t - 1) / 2 for c, t in zip(corner, in_size))
    tile, tt, wt = sample_tile_3d(image, target, weight, center=center, in_size=in_size, out_size=out_size,
                                  config=AugmentConfig.none(), spacing=(2.0, 1.0, 1.0))
    pads = [(max(0, -c), max(0, c + t - n)) for c, t, n in zip(corner, in_size, image.shape[1:])]
    window = tuple(slice(c + p[0], c + p[0] + t) for c, p, t in zip(corner, pads, in_size))
    padded = np.pad(image.numpy(), [(0, 0), *pads], mode="reflect")
    np.testing.assert_allclose(tile.numpy(), padded[(slice(None), *window)], atol=1e-5)
    inner = tuple(slice(w.start + (t - o) // 2, w.start + (t - o) // 2 + o) for w, t, o in zip(window, in_size, out_size))
    np.testing.assert_array_equal(tt.numpy(), np.pad(target.numpy(), pads, mode="reflect")[inner])
    np.testing.assert_allclose(wt.numpy(), np.pad(weight.numpy(), pads, mode="reflect")[inner], atol=1e-6)
    x, t, w = augment_batch_3d([(image, target, weight)], 2, in_size=in_size, out_size=out_size,
                               config=AugmentConfig(), spacing=(2.0, 1.0, 1.0), generator=torch.Generator())
    assert x.shape == (2, 2, *in_size) and t.shape == w.shape == (2, *out_size) and t.dtype == torch.uint8


def test_fused_loss_takes_3d_logits_unchanged():
    rng = _rng()
    logits = torch.from_numpy(rng.normal(size=(2, 2, 3, 5, 4)).astype(np.float32)).requires_grad_()
    target = torch.from_numpy(rng.integers(0, 2, size=(2, 3, 5, 4)).astype(np.uint8))
    weight = torch.from_numpy(rng.random((2, 3, 5, 4)).astype(np.float32))
    fused = weighted_cross_entropy(logits, target, weight, backend="triton")  # the interpreter on a CPU
    (grad,) = torch.autograd.grad(fused, logits)
    ref = weighted_cross_entropy_reference(logits, target.long(), weight)
    (grad_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-7)


def test_synthetic_3d_volumes_have_touching_ellipsoids_with_truth():
    image, labels = synthetic_nuclei_3d((10, 48, 40), seed=int(torch.initial_seed()) % 2**31, touching=0.8,
                                        attenuation=0.5, dtype="uint16")
    assert image.shape == labels.shape == (10, 48, 40) and image.dtype == np.uint16
    n = int(labels.max())
    assert n >= 3 and np.array_equal(np.unique(labels), np.arange(n + 1))
    assert all(ndimage.label(labels == k)[1] == 1 for k in range(1, n + 1))  # one 6-connected piece each
    across = set()
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)
        edge = (a[:-1] != a[1:]) & (a[:-1] > 0) & (a[1:] > 0)
        across |= set(zip(a[:-1][edge].tolist(), a[1:][edge].tolist()))
    assert across, "no two nuclei touch"
    assert set(STYLES_3D) >= {"confocal", "lightsheet", "widefield", "deep"} and STYLES_3D["deep"].held_out
    deep, _, z_step = style_volume("deep", (12, 32, 32), seed=3)
    assert z_step == 2.0 and deep.dtype == np.uint16


def test_3d_training_run_writes_a_3d_model(tmp_path):
    images, labels = [], []
    for seed in range(2):
        image, truth = synthetic_nuclei_3d((8, 40, 40), seed=seed, z_step=2.0, dtype="float32")
        images.append(image)
        labels.append(truth)
    config = TrainConfig(spatial_dims=3, spacing=(2.0, 1.0, 1.0), base_channels=2, depth=1, tile=36, tile_z=22,
                         iterations=2, val_every=2, checkpoint_every=2, device="cpu")
    assert config.unet_config().pools == ((1, 2, 2),) and config.out_shape == (10, 20, 20)
    assert config.tile_shape[0] == 22 and geometry.is_valid_size(22, (1,))
    result = train(images, labels, tmp_path / "m3.safetensors", config=config, progress=False)
    assert result.steps == 2 and result.val is not None
    assert any("training volume" in note for note in result.notes)
    bundle = read_model(result.output)
    assert bundle.config.spatial_dims == 3 and bundle.extra["training_config"]["spacing"] == [2.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="3D training"):
        TrainConfig(tile_z=30)


def test_cli_fine_tunes_the_3d_default_model_at_the_stacks_voxel_size(tmp_path, capsys):
    """--init 3d: the pools follow the voxel size, read from the stack's metadata as with
    --dims 3 (the bundled 3D model's 2,1,1 gives its pools); another voxel size is refused."""
    import tifffile

    from fastunet.cli import main

    image, truth = synthetic_nuclei_3d((8, 40, 40), seed=0, z_step=2.0, dtype="uint16")
    for name, z in (("anisotropic", 2.0), ("isotropic", 1.0)):
        folder = tmp_path / name
        (folder / "images").mkdir(parents=True)
        (folder / "labels").mkdir()
        tifffile.imwrite(folder / "images" / "s.tif", image, imagej=True, metadata={"axes": "ZYX", "spacing": z})
        tifffile.imwrite(folder / "labels" / "s.tif", truth.astype(np.uint16), imagej=True, metadata={"axes": "ZYX"})
    args = ["--init", "3d", "--tile", "76", "--tile-z", "42", "--iterations", "1", "--val-fraction", "0", "--quiet"]
    ok = tmp_path / "anisotropic"
    assert main(["train", str(ok / "images"), str(ok / "labels"), "-o", str(tmp_path / "a.safetensors"), *args]) == 0
    from fastunet.modelfile import DEFAULT_MODEL_3D

    assert read_model(tmp_path / "a.safetensors").config.pools == read_model(DEFAULT_MODEL_3D).config.pools
    iso = tmp_path / "isotropic"
    args[args.index("--tile-z") + 1] = "44"  # valid for the isotropic pools: the pools themselves are refused
    assert main(["train", str(iso / "images"), str(iso / "labels"), "-o", str(tmp_path / "b.safetensors"), *args]) == 2
    assert "differs from the init model 'default3d.safetensors' in pools" in capsys.readouterr().err
