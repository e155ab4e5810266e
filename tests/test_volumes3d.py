"""The 3D network through the engine (CPU, torch backend, tiny models): volumes segmented as
volumes, against one pass of the reference network over the whole mirrored volume.

The reference is independent of the engine: normalize with numpy, pad the whole volume with
``np.pad(mode="reflect")`` by each axis's context (plus extra at the far side so the padded
size is valid along every axis), run :class:`ReferenceUNet` once, crop. "Identical" is
asserted as in tests/test_engine.py: labels equal wherever the reference's top-2 logit margin
exceeds ``MARGIN`` (the exempt voxels must be a small minority).
"""

import numpy as np
import pytest
import torch
import zarr
from scipy import ndimage

from fastunet import Normalization, ReferenceUNet, UNetConfig, geometry, read_model, save_model
from fastunet.engine.tiling import Layout
from fastunet.errors import UserError
from fastunet.model import count_parameters, parameter_count
from fastunet.modelfile import ModelBundle
from fastunet.segmentation import segment

MARGIN = 2e-5  # as tests/test_engine.py
POOLS = ((1, 2, 2), (2, 2, 2))  # Z kept at the first level: the anisotropic case
SHAPE = (9, 29, 23)  # odd along every axis, not a multiple of any tile step


def _rng():
    return np.random.default_rng(torch.initial_seed())


def net3d(pools=POOLS, seed=0) -> ModelBundle:
    """A tiny 3D network (base 2, depth 2) with fixed weights (not the test's seed), random
    biases, and a head bias that makes about half of a noise volume foreground."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ReferenceUNet(UNetConfig(base_channels=2, depth=2, spatial_dims=3, pools=pools)).eval()
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
                    m.bias.normal_(0.0, 0.1)
            tile = [geometry.input_size_for_output(8, p) for p in net.config.axis_pools]
            x = torch.from_numpy(np.random.default_rng(0).normal(size=tile).astype(np.float32))[None, None]
            scores = net(x)
            net.head.bias[1] -= float(torch.median(scores[:, 1] - scores[:, 0]))
    return ModelBundle(net, Normalization(mode="fixed", offset=0.25, scale=1.5))


def reference_logits(bundle, volume):
    """Whole-volume inference: (K, Z, Y, X) float32 logits."""
    config = bundle.config
    x = (volume.astype(np.float32) - np.float32(0.25)) / np.float32(1.5)
    pads = []
    for n, p in zip(volume.shape, config.axis_pools):
        c = geometry.context(p)
        t = geometry.input_size_for_output(max(n, geometry.grid_step(p)), p)
        pads.append((c, t - n - c))
    padded = np.pad(x, pads, mode="reflect")
    with torch.no_grad():
        out = bundle.module(torch.from_numpy(np.ascontiguousarray(padded))[None, None])[0]
    return out[(slice(None), *(slice(0, n) for n in volume.shape))].numpy()


def assert_labels_match(labels, logits, margin=MARGIN):
    top2 = np.sort(logits, axis=0)[-2:]
    exempt = (top2[1] - top2[0]) < margin
    assert exempt.mean() < 0.1, f"{exempt.sum()} near-tie voxels"
    bad = (np.asarray(labels) != logits.argmax(0)) & ~exempt
    assert not bad.any(), f"{bad.sum()} labels differ from whole-volume inference"


def _zarr(path, data, chunks):
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[:] = data
    return str(path)


# ------------------------------------------------------------------------- the configuration
def test_3d_config_model_file_and_layer_table(tmp_path):
    bundle = net3d()
    config = bundle.config
    assert config.axis_pools == ((1, 2), 2, 2) and config.grid == (2, 4, 4)
    assert config.to_dict()["spatial_dims"] == 3 and config.to_dict()["pools"] == [[1, 2, 2], [2, 2, 2]]
    assert UNetConfig.from_dict(config.to_dict()) == config
    assert set(UNetConfig().to_dict()) == {"in_channels", "num_classes", "base_channels", "depth", "dropout"}
    assert UNetConfig(spatial_dims=3, depth=2, pools=((2, 2, 2),) * 2) == UNetConfig(spatial_dims=3, depth=2)
    assert count_parameters(bundle.module) == parameter_count(config)
    tile = (28, 48, 52)
    layers = geometry.layer_shapes(config, tile)
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:])))
             for m in bundle.module.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    with torch.no_grad():
        out = bundle.module(torch.zeros(1, 1, *tile))
    for h in hooks:
        h.remove()
    convs = [ly for ly in layers if ly.kind != "pool"]
    assert sorted(seen) == sorted(ly.out_size for ly in convs)
    assert tuple(out.shape[2:]) == layers[-1].out_size == tuple(
        geometry.output_size(t, p) for t, p in zip(tile, config.axis_pools))
    path = save_model(tmp_path / "m3.safetensors", bundle)
    back = read_model(path)
    assert back.config == config
    x = torch.randn(1, 1, *tile)
    with torch.no_grad():
        torch.testing.assert_close(back.module(x), bundle.module(x), rtol=0, atol=0)
    assert read_model(tmp_path / "m3.safetensors").config.spatial_dims == 3
    with pytest.raises(ValueError, match="pools must give"):
        UNetConfig(spatial_dims=3, depth=2, pools=((2, 2),))
    with pytest.raises(ValueError, match="3D networks"):
        UNetConfig(depth=1, pools=((2, 2, 2),))


def test_3d_geometry_per_axis():
    for factors in [(1, 2, 2), (2, 1), (1, 1), (2, 2, 2)]:
        sizes = geometry.valid_input_sizes(factors, max_size=200)
        assert sizes == [t for t in range(1, 201) if geometry.is_valid_size(t, factors)]
        for t in sizes[:4]:
            assert t - geometry.output_size(t, factors) == 2 * geometry.context(factors)
    assert geometry.context((2, 2, 2)) == geometry.context(3) == 44
    assert geometry.grid_step((1, 2, 2)) == 4 and geometry.context((1, 2, 2)) == 24
    assert geometry.pools_for_spacing((1.0, 0.5, 0.5), 3) == ((1, 2, 2), (2, 2, 2), (2, 2, 2))
    assert geometry.pools_for_spacing((1, 1, 1), 2) == ((2, 2, 2), (2, 2, 2))
    assert geometry.pools_for_spacing((5, 1, 1), 3) == ((1, 2, 2), (1, 2, 2), (2, 2, 2))
    with pytest.raises(ValueError, match="Nearest valid"):
        geometry.check_tile_size(27, (1, 2))


def test_3d_layout_covers_each_voxel_once_on_the_3d_grid():
    pools = ((1, 2), 2, 2)
    layout = Layout(shape=SHAPE, depth=2, tile=(30, 52, 48), chunks=(2, 5, 7), block=(4, 10, 14), pools=pools)
    grid, ctx = layout.grid_steps, layout.contexts
    assert grid == (2, 4, 4) and ctx == (12, 20, 20) and layout.out == (6, 12, 8)
    covered = np.zeros(SHAPE, np.int32)
    for block in layout.blocks():
        box = layout.input_box(block)
        seen = np.zeros(block.shape, np.int32)
        for origin, src, dst in layout.block_tiles(block):
            for a in range(3):
                g = box[a][0] + origin[a] + ctx[a]  # the tile's global output origin
                assert g % grid[a] == 0 and origin[a] + layout.tile[a] <= box[a][1] - box[a][0]
                assert g + src[a].start == block.box[a][0] + dst[a].start
            seen[dst] += 1
        assert (seen == 1).all()
        covered[block.slices] += 1
    assert (covered == 1).all()


# -------------------------------------------------------------------------------- the engine
def test_three_3d_tile_sizes_give_identical_labels_on_an_odd_volume(tmp_path):
    bundle = net3d()
    vol = _rng().random(SHAPE).astype(np.float32)
    logits = reference_logits(bundle, vol)
    assert 0.2 < logits.argmax(0).mean() < 0.8
    src = _zarr(tmp_path / "in.zarr", vol, (3, 8, 8))
    results = []
    for tile, block in [((30, 52, 56), (3, 16, 8)), ((28, 56, 48), (6, 8, 16)), (None, None)]:
        labels = segment(src, bundle, None, axes="ZYX", tile=tile, chunks=(3, 8, 8), block=block,
                         output_kind="labels", progress=False, dtype="fp32")
        assert_labels_match(labels, logits)
        results.append(np.asarray(labels))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


@pytest.mark.openvino
def test_3d_network_on_openvino_matches_the_whole_volume_reference(tmp_path):
    """The 3D network under OpenVINO (what ``backend="auto"`` runs on the CPU where openvino is
    installed), in fp32, at three tile shapes from one conversion: the labels of one pass of the
    reference network, the probabilities within 1e-4 of PyTorch's engine; int8 is refused
    (its calibration is 2D). In a child process, as tests/test_cpu_path.py's OpenVINO checks."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from pathlib import Path; import numpy as np; sys.path.insert(0, sys.argv[1]); "
            "from test_volumes3d import openvino_check; "
            "openvino_check(Path(sys.argv[2]), np.random.default_rng(int(sys.argv[3])))")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path),
                           str(int(_rng().integers(2**31)))], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def openvino_check(tmp_path, rng):
    """:func:`test_3d_network_on_openvino_matches_the_whole_volume_reference` (in its child process)."""
    from fastunet.engine import make_predictor
    from fastunet.engine.openvino_backend import OpenVINOPredictor

    bundle = net3d()
    vol = rng.random(SHAPE).astype(np.float32)
    logits = reference_logits(bundle, vol)
    src = _zarr(tmp_path / "in.zarr", vol, (3, 8, 8))
    for tile, block in [((30, 52, 56), (3, 16, 8)), ((28, 56, 48), (6, 8, 16)), (None, None)]:
        labels, probs = segment(src, bundle, None, axes="ZYX", tile=tile, chunks=(3, 8, 8), block=block,
                                output_kind="labels,probs", progress=False, dtype="fp32", backend="openvino")
        assert_labels_match(labels, logits, margin=1e-4)
        torch_probs = segment(src, bundle, None, axes="ZYX", tile=tile, chunks=(3, 8, 8), block=block,
                              output_kind="probs", progress=False, dtype="fp32", backend="torch")
        np.testing.assert_allclose(np.asarray(probs, np.float32), np.asarray(torch_probs, np.float32), atol=1e-3)
    predictor = make_predictor(bundle.module, "openvino", "cpu", "fp32")
    assert isinstance(predictor, OpenVINOPredictor)
    x = torch.from_numpy(rng.normal(size=(2, 1, 28, 56, 48)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(predictor.logits(x), bundle.module(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(UserError, match='dtype="int8" is calibrated on 2D images'):
        make_predictor(bundle.module, "openvino", "cpu", "int8")


def test_3d_instance_ids_equal_scipy_label_of_the_whole_volume(tmp_path):
    bundle = net3d()
    vol = _rng().random(SHAPE).astype(np.float32)
    logits = reference_logits(bundle, vol)
    src = _zarr(tmp_path / "in.zarr", vol, (3, 8, 8))
    raw = dict(min_size=0, fill_holes=False)  # the class map's components as they are (no clean-up)
    ids, labels = segment(src, bundle, tmp_path / "o.zarr", axes="ZYX", tile=(30, 52, 56), chunks=(3, 8, 8),
                          block=(3, 8, 8), output_kind="instances,labels", progress=False, dtype="fp32", **raw)
    assert_labels_match(labels, logits)
    expected, n = ndimage.label(labels[:] == 1)  # 3D face connectivity, the whole volume at once
    assert n > 5 and 27 > 1  # several objects, merged over 3 x 4 x 3 blocks
    np.testing.assert_array_equal(ids[:], expected)
    crossing = [k for k, box in enumerate(ndimage.find_objects(expected), 1) if box[0].stop - box[0].start > 3]
    assert crossing, "no object spans two blocks along Z"
    lazy = segment(vol, bundle, None, axes="ZYX", tile=(28, 56, 48), chunks=(3, 8, 8), block=(6, 8, 16),
                   dtype="fp32", **raw)
    np.testing.assert_array_equal(np.asarray(lazy), expected)


def test_3d_interrupted_run_resumes_identically(tmp_path, monkeypatch):
    from fastunet.engine import scheduling

    bundle = net3d()
    model = str(save_model(tmp_path / "m.safetensors", bundle))
    vol = _rng().random(SHAPE).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", vol, (3, 8, 8))
    kw = dict(axes="ZYX", tile=(30, 52, 56), chunks=(3, 8, 8), block=(3, 16, 16), progress=False, threads=1)
    reference = segment(src, model, tmp_path / "ref.zarr", **kw)[:]
    real, calls = scheduling.run_block, []

    def run_block(job, block):  # the run stops after 3 blocks, as a kill would stop it
        calls.append(block.name)
        if len(calls) > 3:
            raise RuntimeError("killed")
        return real(job, block)

    out = tmp_path / "o.zarr"
    with monkeypatch.context() as m:
        m.setattr(scheduling, "run_block", run_block)
        with pytest.raises(RuntimeError, match="killed"):
            segment(src, model, out, **kw)
    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(scheduling, "run_block", lambda job, block: (calls.append(block.name), real(job, block))[1])
        resumed = segment(src, model, out, resume=True, **kw)
    blocks = 3 * 2 * 2
    assert len([c for c in calls if not c.startswith("relabel")]) <= 2 * blocks - 3  # predict: 9 left, relabel: 12
    np.testing.assert_array_equal(resumed[:], reference)


def test_3d_model_refuses_a_2d_image_and_object_size():
    bundle = net3d()
    with pytest.raises(UserError, match="3D network.*2D image"):
        segment(np.zeros((40, 40), np.float32), bundle, None)
    with pytest.raises(UserError, match="object_size"):
        segment(np.zeros((4, 40, 40), np.float32), bundle, None, axes="ZYX", object_size=20)
    with pytest.raises(UserError, match="tile depth|tile Z edge"):
        segment(np.zeros((4, 40, 40), np.float32), bundle, None, axes="ZYX", tile=(27, 52, 52))


def test_cli_segments_a_stack_with_the_bundled_3d_model(tmp_path, capsys):
    import tifffile

    from fastunet.cli.main import main
    from fastunet.synthetic3d import synthetic_nuclei_3d

    image, truth = synthetic_nuclei_3d((6, 40, 36), seed=5, n_objects=6, dtype="uint16")
    tifffile.imwrite(tmp_path / "stack.tif", image, imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
    assert main(["segment", str(tmp_path / "stack.tif"), "-o", str(tmp_path / "ids.tif"), "--model", "3d",
                 "--quiet"]) == 0
    ids = tifffile.imread(tmp_path / "ids.tif")
    assert ids.shape == image.shape and ids.max() >= 1
    assert main(["segment", str(tmp_path / "stack.tif"), "-o", str(tmp_path / "z.tif"), "--model", "3d", "--quiet",
                 "--tile", "30,52,56"]) == 0  # a tile per axis: the same objects (seamless)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "z.tif"), ids)
    assert main(["info", "3d"]) == 0
    assert "3D U-Net, depth 2, base 16, pools 1x2x2, 2x2x2" in capsys.readouterr().out
