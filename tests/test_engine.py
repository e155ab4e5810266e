"""The overlap-tile engine against whole-image inference (CPU, torch backend, tiny models).

The reference is independent of the engine: normalize with numpy, pad the whole image with
``np.pad(mode="reflect")`` by the context (plus extra at the bottom/right so the padded size
is a valid input), run :class:`ReferenceUNet` once, crop.

How "identical" is asserted: the same network on different tile sizes may pick other conv
algorithms, so fp32 logits can differ in the last bits (measured over 60 random nets and
tile sizes 52, 64 and 108: at most 5.2e-6). Labels must be identical wherever the
reference's top-2 logit margin exceeds ``MARGIN``; the exempt pixels must be a small minority
(< 10%, so the comparison is never vacuous: a random tiny net can put a few percent of the
pixels of a small image within 2e-5 of a tie; 60 runs had 0 label differences at all). Probabilities are float16 (the output format):
within one fp16 ulp of the fp32 reference, plus 1e-5.
"""

import threading

import numpy as np
import pytest
import tifffile
import torch
import zarr

from fastunet import Normalization, ReferenceUNet, UNetConfig, geometry, save_model
from fastunet.engine import LoadedNetwork, ModelHandle
from fastunet.io import open_volume
from fastunet.modelfile import ModelBundle
from fastunet.normalization import normalization_stats, sample_indices
from fastunet.segmentation import NonFiniteWarning, Segmenter, segment

MARGIN = 2e-5  # about 4x the largest fp32 logit difference measured between tile sizes


def _rng():
    return np.random.default_rng(torch.initial_seed())


def _net(in_channels=1, num_classes=2, depth=2, normalization=None):
    """A tiny random network with its normalization (a ModelBundle)."""
    net = ReferenceUNet(UNetConfig(in_channels=in_channels, num_classes=num_classes, base_channels=4, depth=depth))
    with torch.no_grad():  # random biases: no dead ReLUs that make every logit tie at 0
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.bias.normal_(0.0, 0.1)
    return ModelBundle(net.eval(), normalization or Normalization(mode="fixed", offset=0.25, scale=1.5))


def _normalize(x, net):
    n = net.normalization
    return (x.astype(np.float32) - np.float32(n.offset)) / np.float32(n.scale)


def reference_logits(net, image):
    """Whole-image inference on a normalized (C, H, W) image: (K, H, W) float32 logits."""
    depth = net.config.depth
    c = geometry.context(depth)
    _, h, w = image.shape
    th, tw = (geometry.input_size_for_output(max(n, 2**depth), depth) for n in (h, w))
    padded = np.pad(image, ((0, 0), (c, th - h - c), (c, tw - w - c)), mode="reflect")
    with torch.no_grad():
        out = net.module(torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None])[0]
    return out[:, :h, :w].numpy()


def assert_seamless(labels, probs, logits):
    """labels (H, W) / probs (K, H, W) of the engine against reference logits (K, H, W)."""
    top2 = np.sort(logits, axis=0)[-2:]
    exempt = (top2[1] - top2[0]) < MARGIN
    assert exempt.mean() < 0.1, f"{exempt.sum()} near-tie pixels"
    if labels is not None:
        want = logits.argmax(0)
        bad = (np.asarray(labels) != want) & ~exempt
        assert not bad.any(), f"{bad.sum()} labels differ from whole-image inference"
    if probs is not None:
        ref = torch.softmax(torch.from_numpy(logits), 0).numpy()
        got = np.asarray(probs).astype(np.float32)
        tol = 2.0**-10 * np.abs(ref) + 1e-5
        assert (np.abs(got - ref) <= tol).all(), f"max prob error {np.abs(got - ref).max()}"


def test_misaligned_tiles_would_show_seams():
    """The comparison is sharp enough to see a tile origin off the 2**depth grid."""
    net = _net()
    img = _normalize(_rng().random((1, 40, 40)), net)
    logits = reference_logits(net, img)
    c = geometry.context(2)
    padded = np.pad(img, ((0, 0), (c, 40), (c, 40)), mode="reflect")
    for shift, seamless in ((4, True), (2, False)):  # shift = tile origin, depth 2 -> grid of 4
        tile = padded[:, shift:shift + 64, shift:shift + 64]
        with torch.no_grad():
            out = net.module(torch.from_numpy(np.ascontiguousarray(tile))[None])[0].numpy()
        diff = np.abs(out - logits[:, shift:shift + 24, shift:shift + 24]).max()  # 64 -> 24 pixels
        assert (diff < 1e-4) == seamless, (shift, diff)


@pytest.mark.parametrize(
    "shape,tile,chunks,block",
    [
        ((45, 61), 52, (7, 9), (14, 27)),  # chunks not multiples of 2**depth, blocks not dividing
        ((45, 61), 64, (16, 16), (32, 16)),
        ((45, 61), None, None, None),  # defaults
        ((45, 61), 108, (10, 10), (20, 30)),  # one tile bigger than the image
        ((6, 9), None, (4, 4), (4, 8)),  # smaller than the context (20)
        ((1, 1), 48, None, None),
    ],
)
def test_seamless_2d_against_whole_image(shape, tile, chunks, block):
    net = _net()
    img = _rng().normal(0.5, 1.0, size=shape).astype(np.float32)
    labels, probs = segment(img, net, None, tile=tile, chunks=chunks, block=block, output_kind="both", dtype="fp32")
    labels, probs = np.asarray(labels), np.asarray(probs)
    assert labels.shape == shape and labels.dtype == np.uint8
    assert probs.shape == (2, *shape) and probs.dtype == np.float16
    assert_seamless(labels, probs, reference_logits(net, _normalize(img, net)[None]))


def test_zyx_runs_the_2d_network_slice_by_slice():
    net = _net(num_classes=3, normalization=Normalization(mode="fixed", offset=128.0, scale=64.0))
    vol = _rng().integers(0, 255, size=(3, 30, 41)).astype(np.uint8)
    labels = np.asarray(segment(vol, net, None, axes="ZYX", tile=56, chunks=(2, 9, 16), block=(2, 18, 16),
                                dtype="fp32"))
    for z in range(3):
        assert_seamless(labels[z], None, reference_logits(net, _normalize(vol[z], net)[None]))


@pytest.mark.parametrize("axes,shape", [("CYX", (2, 27, 33)), ("CZYX", (2, 2, 27, 33)), ("ZCYX", (2, 2, 27, 33))])
def test_channel_inputs(axes, shape):
    net = _net(in_channels=2)
    data = _rng().normal(size=shape).astype(np.float32)
    labels, probs = segment(data, net, None, axes=axes, tile=52, chunks=(8, 8) if len(shape) == 3 else (1, 8, 8),
                            output_kind="both", dtype="fp32")
    labels, probs = np.asarray(labels), np.asarray(probs)
    canon = np.moveaxis(data, 1, 0) if axes == "ZCYX" else data  # -> C first
    if canon.ndim == 3:
        assert_seamless(labels, probs, reference_logits(net, _normalize(canon, net)))
    else:
        for z in range(canon.shape[1]):
            assert_seamless(labels[z], probs[:, z], reference_logits(net, _normalize(canon[:, z], net)))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_round_trip_equals_lazy(tmp_path, zarr_format):
    net = _net()
    vol = _rng().normal(size=(3, 33, 40)).astype(np.float32)
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=vol.shape, chunks=(2, 16, 16), dtype="float32",
                            zarr_format=zarr_format)
    src[:] = vol
    path = save_model(tmp_path / "m.safetensors", net)
    out = tmp_path / "out.zarr"
    labels, probs = segment(str(tmp_path / "in.zarr"), path, out, axes="ZYX", tile=52, output_kind="both",
                            zarr_format=zarr_format, progress=False, dtype="fp32")
    lazy_labels, lazy_probs = segment(str(tmp_path / "in.zarr"), path, None, axes="ZYX", tile=52, output_kind="both",
                                      dtype="fp32")
    root = zarr.open_group(str(out), mode="r")
    assert root.metadata.zarr_format == zarr_format
    meta = root.attrs["fastunet"]
    assert meta["complete"] and meta["summary"]["blocks"] == meta["summary"]["computed"]
    assert labels.chunks == (2, 16, 16)  # along the input's chunking
    np.testing.assert_array_equal(labels[:], np.asarray(lazy_labels))
    np.testing.assert_array_equal(probs[:], np.asarray(lazy_probs))
    for z in range(3):
        assert_seamless(labels[z], probs[:, z], reference_logits(net, _normalize(vol[z], net)[None]))


def test_tiff_in_tiff_out(tmp_path):
    net = _net(normalization=Normalization(mode="fixed", offset=2000.0, scale=1000.0))
    vol = _rng().integers(0, 4000, size=(2, 30, 35)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", vol)
    labels, probs = segment(str(tmp_path / "in.tif"), net, tmp_path / "out.tif", tile=52, output_kind="both",
                            progress=False, dtype="fp32")
    back = tifffile.imread(tmp_path / "out.tif")
    back_probs = np.moveaxis(tifffile.imread(tmp_path / "out_probs.tif"), 1, 0)  # an ImageJ hyperstack: ZCYX
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_array_equal(back_probs, probs)
    for z in range(2):
        assert_seamless(back[z], back_probs[:, z], reference_logits(net, _normalize(vol[z], net)[None]))


def test_tiff_output_refused_when_too_large(tmp_path):
    from fastunet.errors import UserError

    seg = Segmenter(_net(), tile=52)
    with pytest.raises(UserError, match="too large for a TIFF output.*zarr"):
        seg.segment(np.zeros((40, 40), np.float32), tmp_path / "big.tif", max_tiff_bytes=1000)
    assert not (tmp_path / "big.tif").exists()


def _ome_input(path, data):
    axes = [{"name": "z", "type": "space", "unit": "micrometer"}, {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"}]
    ms = {"name": "img", "axes": axes,
          "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}]}]}
    g = zarr.open_group(str(path), mode="w", zarr_format=3, attributes={"ome": {"version": "0.5", "multiscales": [ms]}})
    g.create_array("0", data=data, chunks=(1, 16, 16), dimension_names=list("zyx"))


def test_ome_zarr_input_gives_image_label_output(tmp_path):
    net = _net()
    vol = _rng().normal(size=(2, 24, 30)).astype(np.float32)
    _ome_input(tmp_path / "img.ome.zarr", vol)
    labels = segment(str(tmp_path / "img.ome.zarr"), net, tmp_path / "seg.ome.zarr", tile=52, progress=False,
                     output_kind="labels", dtype="fp32")
    group = zarr.open_group(str(tmp_path / "seg.ome.zarr" / "labels"), mode="r")
    assert group.attrs["ome"]["labels"] == ["segmentation"]
    image = zarr.open_group(str(tmp_path / "seg.ome.zarr" / "labels" / "segmentation"), mode="r")
    ome = image.attrs["ome"]
    assert "image-label" in ome
    (ms,) = ome["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.5]
    np.testing.assert_array_equal(image["0"][:], labels[:])
    for z in range(2):
        assert_seamless(labels[z], None, reference_logits(net, _normalize(vol[z], net)[None]))


@pytest.mark.slow
def test_local_cluster_with_two_worker_processes_matches_threads(tmp_path):
    net = _net()
    vol = _rng().normal(size=(2, 40, 40)).astype(np.float32)
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=vol.shape, chunks=(1, 20, 20), dtype="float32")
    src[:] = vol
    path = save_model(tmp_path / "m.safetensors", net)
    kw = dict(axes="ZYX", block=(1, 20, 40), progress=False, output_kind="both")
    threaded = segment(str(tmp_path / "in.zarr"), path, tmp_path / "a.zarr", tile=60, **kw)
    seg = Segmenter(path, tile=60)
    # Same torch thread count in the workers as here: oneDNN's fp32 results depend on it in
    # the last bits (measured: up to 1e-6 between 1 and 2 threads), which can flip a float16
    # rounding; with equal threads the arithmetic, and so the output, must be identical.
    dist = seg.segment(str(tmp_path / "in.zarr"), tmp_path / "b.zarr", workers=2, threads=torch.get_num_threads(), **kw)
    assert seg.last_summary["scheduler"] == "2 local workers" and seg.last_summary["computed"] == 4
    assert seg._network is None  # the model ran in the workers, not here
    np.testing.assert_array_equal(dist[0][:], threaded[0][:])
    np.testing.assert_array_equal(dist[1][:], threaded[1][:])


def test_segmenter_keeps_the_model_loaded(tmp_path):
    net = _net()
    path = save_model(tmp_path / "m.safetensors", net)
    rng = _rng()
    with Segmenter(path, tile=52, batch_size=3, dtype="fp32") as seg:
        a = rng.normal(size=(30, 30)).astype(np.float32)
        b = rng.normal(size=(2, 25, 41)).astype(np.float32)
        la = np.asarray(seg.segment(a, None, output_kind="labels"))
        network = seg.network
        lb = seg.segment(b, tmp_path / "b.zarr", axes="ZYX", progress=False, output_kind="labels")
        assert seg.network is network and seg.last_summary["computed"] >= 1
    assert_seamless(la, None, reference_logits(net, _normalize(a, net)[None]))
    for z in range(2):
        assert_seamless(lb[z], None, reference_logits(net, _normalize(b[z], net)[None]))


def test_percentile_statistics_once_per_volume():
    norm = Normalization(mode="percentile", low=2.0, high=98.0)
    net = _net(normalization=norm)
    vol = _rng().gamma(2.0, 100.0, size=(2, 36, 44)).astype(np.float32)
    labels = np.asarray(segment(vol, net, None, axes="ZYX", tile=56, chunks=(1, 12, 12), output_kind="labels",
                                dtype="fp32"))
    lo, hi = np.percentile(vol.astype(np.float64), [2.0, 98.0])  # small volume: all voxels
    for z in range(2):
        image = ((vol[z] - np.float32(lo)) / np.float32(hi - lo))[None].astype(np.float32)
        assert_seamless(labels[z], None, reference_logits(net, image))


def test_statistics_sample_is_independent_of_chunking(tmp_path):
    rng = _rng()
    vol = rng.gamma(2.0, 50.0, size=(40, 64, 80)).astype(np.float32)
    norm = Normalization(mode="percentile", low=1.0, high=99.0)
    stats = []
    for i, chunks in enumerate([(1, 64, 80), (7, 13, 11)]):
        arr = zarr.create_array(str(tmp_path / f"v{i}.zarr"), shape=vol.shape, chunks=chunks, dtype="float32")
        arr[:] = vol
        src = open_volume(str(tmp_path / f"v{i}.zarr"), axes="ZYX")
        stats.append(normalization_stats(src, norm, max_samples=5000, max_planes=8, band_voxels=300))
    np.testing.assert_array_equal(stats[0].offset, stats[1].offset)
    np.testing.assert_array_equal(stats[0].scale, stats[1].scale)
    zs, ys, xs = sample_indices(vol.shape, max_samples=5000, max_planes=8)
    assert len(zs) == 8 and len(zs) * len(ys) * len(xs) <= 5000 * 1.2
    lattice = vol[np.ix_(zs, ys, xs)].astype(np.float64)
    lo, hi = np.percentile(lattice, [1.0, 99.0])
    assert stats[0].offset[0] == pytest.approx(lo, rel=1e-12) and stats[0].scale[0] == pytest.approx(hi - lo, rel=1e-12)
    assert stats[0].sampled == lattice.size


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int8", "int16", "bool"])
def test_percentiles_of_small_integers_from_a_histogram_are_numpys(dtype, tmp_path):
    """Integers of at most 16 bits take their percentiles from a histogram of every value
    (no float64 copy, no partition): bit for bit what ``np.percentile`` gives on the float64
    values, through the whole statistics path (zarr, the lattice, slice scope) too."""
    rng = _rng()
    for _ in range(40):
        n = int(rng.integers(1, 3000))
        if dtype == "bool":
            values = rng.random(n) < rng.random()
        else:
            info = np.iinfo(dtype)
            lo = int(rng.integers(info.min, info.max))
            values = rng.integers(lo, int(rng.integers(lo, info.max + 1)) + 1, n).astype(dtype)
        low, high = sorted(rng.choice([0.0, 0.5, 1.0, 2.5, 50.0, 99.0, 99.8, 100.0, rng.random() * 100], 2,
                                      replace=False))
        wide = values.astype(np.float64)
        want_lo, want_hi = np.percentile(wide, [low, high])
        offset, scale = Normalization(low=low, high=high).stats(values)
        assert offset == want_lo
        assert scale == (want_hi - want_lo if want_hi - want_lo > 64 * np.spacing(np.abs(wide).max() or 1.0) else 1.0)
    vol = rng.integers(0, 200, size=(3, 40, 52)).astype("uint8" if dtype == "bool" else dtype)
    arr = zarr.create_array(str(tmp_path / "v.zarr"), shape=vol.shape, chunks=(1, 16, 16), dtype=vol.dtype)
    arr[:] = vol
    for scope in ("volume", "slice"):
        norm = Normalization(low=1.0, high=99.8, scope=scope)
        stats = normalization_stats(open_volume(str(tmp_path / "v.zarr"), axes="ZYX"), norm, max_samples=1500)
        zs, ys, xs = sample_indices(vol.shape, max_samples=1500)
        lattice = vol[np.ix_(zs, ys, xs)].astype(np.float64)
        if scope == "volume":
            assert stats.offset[0] == np.percentile(lattice, 1.0)
        else:
            ys, xs = sample_indices(vol.shape[1:], max_samples=1500 // 4)
            want = [np.percentile(vol[z][np.ix_(ys, xs)].astype(np.float64), 1.0) for z in range(3)]
            assert list(stats.offset[0]) == want


def test_slice_scope_statistics_per_z():
    norm = Normalization(mode="meanstd", scope="slice")
    vol = _rng().normal(size=(3, 20, 24)).astype(np.float32) * np.array([1.0, 5.0, 20.0])[:, None, None]
    stats = normalization_stats(open_volume(vol, axes="ZYX"), norm)
    np.testing.assert_allclose(stats.offset[0], vol.astype(np.float64).mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(stats.scale[0], vol.astype(np.float64).std(axis=(1, 2)), rtol=1e-12)


def test_nan_and_inf_are_ignored_then_zeroed_and_reported(tmp_path):
    norm = Normalization(mode="meanstd")
    net = _net(normalization=norm)
    img = _rng().normal(3.0, 2.0, size=(30, 37)).astype(np.float32)
    img[3, 4] = np.nan
    img[20:22, 30] = np.inf
    img[10, 0] = -np.inf
    finite = img[np.isfinite(img)].astype(np.float64)
    with pytest.warns(NonFiniteWarning, match="4 NaN/Inf values in the input"):
        seg = Segmenter(net, tile=52)
        labels = seg.segment(img, tmp_path / "o.zarr", progress=False, output_kind="labels")
    assert seg.last_summary["nonfinite"] == 4
    image = (img - np.float32(finite.mean())) / np.float32(finite.std())
    image[~np.isfinite(img)] = 0.0
    assert_seamless(labels[:], None, reference_logits(net, image[None].astype(np.float32)))


def test_device_runner_batches_tiles_of_many_blocks():
    """The CUDA path's runner, exercised on the CPU: requests of several blocks are split
    and merged into batches of at most batch_size tiles; each gets its own rows back."""
    net = _net(num_classes=3)
    handle = ModelHandle.from_module(net)
    runner_net = LoadedNetwork(handle, device="cpu", backend="torch", dtype="fp32", batch_size=3, use_runner=True)
    sizes = []
    predict = runner_net.predictor.predict
    runner_net.predictor.predict = lambda tiles, output: (sizes.append(tiles.shape[0]), predict(tiles, output))[1]
    rng = _rng()
    requests = [rng.normal(size=(n, 1, 48, 48)).astype(np.float32) for n in (1, 5, 2, 7, 4)]
    results = [None] * len(requests)

    def work(i):
        results[i] = runner_net.predict(requests[i], "both")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runner_net.close()
    assert max(sizes) <= 3 and sum(sizes) == 19
    for tiles, (labels, probs) in zip(requests, results):
        with torch.no_grad():
            logits = net.module(torch.from_numpy(tiles))
        np.testing.assert_array_equal(labels, logits.argmax(1).numpy())
        np.testing.assert_allclose(probs.astype(np.float32), torch.softmax(logits, 1).numpy(), atol=1e-3)


def test_model_handle_travels_as_bytes_without_pickling_the_module():
    import pickle

    net = _net()
    handle = ModelHandle.from_module(net)
    clone = pickle.loads(pickle.dumps(handle))
    assert clone.module is None and clone.key == handle.key
    again = clone.load()
    for a, b in zip(net.module.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert clone.normalization == net.normalization



def test_activation_estimate_counts_every_layer_output():
    """The CUDA default tile comes from this estimate: check its trace against forward hooks."""
    from fastunet.segmentation import activation_bytes

    net = _net(num_classes=3, depth=3)
    tile = geometry.input_size_for_output(40, 3)
    counted = {"layers": 0, "concat": 0}

    def hook(module, inputs, output):
        counted["layers"] += output.numel()
        if isinstance(module, torch.nn.ConvTranspose2d):
            counted["concat"] += 2 * output.numel()  # torch.cat([skip, up]) follows each up-conv

    kinds = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.MaxPool2d)
    hooks = [m.register_forward_hook(hook) for m in net.module.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        out = net.module(torch.zeros(1, 1, tile, tile))
    for h in hooks:
        h.remove()
    # input + every layer output + concatenations + softmax and argmax beside the scores
    expected = tile * tile + counted["layers"] + counted["concat"] + 2 * out.numel()
    assert activation_bytes(net.config, tile, dtype="fp32") == 4 * expected
    assert activation_bytes(net.config, tile, dtype="bf16") == 2 * expected


@pytest.mark.parametrize("free_mib", [1, 40, 300, 5000, 10**6])
def test_default_step_is_the_largest_that_fits(monkeypatch, free_mib):
    """default_max_step searches from the top down: the same step as trying every step from
    the grid step up (the memory grows with the step); up to 1024 for a 2D network under
    OpenVINO."""
    from fastunet.segmentation import memory

    monkeypatch.setattr(memory, "available_bytes", lambda device: free_mib << 20)
    for config, device in ((UNetConfig(base_channels=16, depth=3), "cpu"), (UNetConfig(base_channels=8, depth=4), "cuda"),
                           (UNetConfig(base_channels=4, depth=2, spatial_dims=3), "cuda")):
        q = max(memory._grid(config))
        for backend in ("torch", "openvino"):
            top = (256 if config.spatial_dims == 3 else 2048) if device == "cuda" else (
                1024 if backend == "openvino" and config.spatial_dims == 2 else 512)
            fits = [s for s in range(q, top + 1, q) if 2 * memory.activation_bytes(
                config, memory.tile_for_step(config, s), dtype="fp32") <= (free_mib << 20) // 2]
            expected = fits[-1] if fits else q
            assert memory.default_max_step(config, torch.device(device), dtype="fp32", batch_size=2,
                                           backend=backend) == expected


@pytest.mark.parametrize("scope", ["volume", "slice"])
def test_statistics_refuse_an_input_without_finite_values(scope):
    from fastunet.errors import UserError

    vol = np.full((3, 20, 24), np.nan, np.float32)
    vol[1, ::2] = np.inf
    with pytest.raises(UserError, match="No finite value in the input"):
        normalization_stats(open_volume(vol, axes="ZYX"), Normalization(mode="meanstd", scope=scope))
    vol[2, 5, 7] = _rng().normal()  # one finite value is enough for statistics
    normalization_stats(open_volume(vol, axes="ZYX"), Normalization(mode="percentile", scope="volume"))


def test_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys, monkeypatch):
    import time

    from fastunet.engine import scheduling as engine

    real = engine.run_block

    def slow_block(job, block):
        time.sleep(0.03)
        return real(job, block)

    monkeypatch.setattr(engine, "run_block", slow_block)
    vol = _rng().normal(size=(4, 32, 32)).astype(np.float32)
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=vol.shape, chunks=(1, 16, 16), dtype="float32")
    z[:] = vol
    seg = Segmenter(_net(), tile=52)
    seg.segment(str(tmp_path / "in.zarr"), tmp_path / "a.zarr", axes="ZYX", block=(1, 16, 16), progress=True,
                progress_interval=0.02)
    err = capsys.readouterr().err  # pytest's stderr is not a TTY
    lines = [line for line in err.splitlines() if line.startswith("segment: ")]
    assert lines, err
    assert all(" blocks, " in line and " Mpx/s, " in line and " ETA " in line for line in lines), lines
    assert lines[-1].split()[1].endswith("/16")
    seg.segment(str(tmp_path / "in.zarr"), tmp_path / "b.zarr", axes="ZYX", block=(1, 16, 16), progress=False,
                progress_interval=0.02)
    assert capsys.readouterr().err == ""


def test_threaded_run_stops_every_block_before_raising(tmp_path, monkeypatch):
    """A failing block: the blocks already running finish and are recorded; nothing is still
    writing once segment() has raised."""
    import time

    from fastunet.engine import scheduling as engine

    real, running, calls = engine.run_block, [], []

    def run_block(job, block):
        calls.append(block.name)
        if len(calls) == 3:
            time.sleep(0.05)  # the 4th block has started by now
            raise RuntimeError("boom")
        running.append(block.name)
        time.sleep(0.2)
        try:
            return real(job, block)
        finally:
            running.remove(block.name)

    monkeypatch.setattr(engine, "run_block", run_block)
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=(4, 32, 32), chunks=(1, 16, 16), dtype="float32")
    z[:] = _rng().normal(size=(4, 32, 32)).astype(np.float32)
    with pytest.raises(RuntimeError, match="boom"):
        segment(str(tmp_path / "in.zarr"), _net(), tmp_path / "o.zarr", axes="ZYX", tile=52, block=(1, 16, 16),
                progress=False, threads=2)
    assert running == []
    from fastunet.io import SegmentationStore

    assert len(SegmentationStore(tmp_path / "o.zarr").done()) >= 2
