"""bioimage.io: the packaged architecture equals the reference, an exported package passes
bioimageio.core's test_model, and --model PACKAGE runs it through the engine."""

import io
import zipfile

import numpy as np
import pytest
import tifffile
import torch
import zarr

from fastunet import Normalization, ReferenceUNet, UNetConfig, read_model, save_model, segment
from fastunet.bioimageio import read_package
from fastunet.bioimageio.architecture import FastUNetSameSize, context
from fastunet.cli import main
from fastunet.errors import ModelFileError


def _rng():
    return np.random.default_rng(torch.initial_seed())


def _net(depth=2, in_channels=1):
    net = ReferenceUNet(UNetConfig(in_channels=in_channels, base_channels=4, depth=depth))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.bias.normal_(0.0, 0.1)
    return net.eval()


@pytest.fixture
def model_file(tmp_path):
    return save_model(tmp_path / "nuclei.safetensors", _net(), Normalization(mode="percentile"),
                      extra={"trained": "in a test"})


@pytest.mark.parametrize("shape", [(37, 50), (1, 6), (64, 64)])
def test_same_size_wrapper_is_the_reference_on_the_mirrored_image(shape):
    net = _net(depth=2, in_channels=2)
    wrapper = FastUNetSameSize(**net.config.to_dict())
    assert wrapper.load_state_dict(net.state_dict()) is not None  # same parameter names
    x = torch.from_numpy(_rng().normal(size=(2, 2, *shape)).astype(np.float32))
    with torch.no_grad():
        got = wrapper.eval()(x)
        c = context(2)
        # the reference on the image mirrored (numpy's reflect) up to a valid size
        from fastunet import geometry

        pads = [(c, geometry.input_size_for_output(n, 2) - n - c) for n in shape]
        big = np.pad(x.numpy(), [(0, 0), (0, 0), *pads], mode="reflect")
        want = torch.softmax(net(torch.from_numpy(big)), dim=1)[..., : shape[0], : shape[1]]
    assert got.shape == (2, 2, *shape)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_same_size_wrapper_matches_the_engine(model_file):
    """One pass of the wrapper = the overlap-tile engine's probabilities (float16 there)."""
    bundle = read_model(model_file)
    image = _rng().normal(size=(45, 70)).astype(np.float32)
    probs = np.asarray(segment(image, model_file, None, output_kind="probs", tile=44, dtype="fp32"))
    norm = bundle.normalization
    offset, scale = norm.stats(image)
    wrapper = FastUNetSameSize(**bundle.config.to_dict())
    wrapper.load_state_dict(bundle.module.state_dict())
    with torch.no_grad():
        got = wrapper.eval()(torch.from_numpy(norm.apply(image, offset, scale))[None, None])[0].numpy()
    np.testing.assert_allclose(got, probs.astype(np.float32), atol=2e-3)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_halo_covers_what_an_output_pixel_depends_on(depth):
    """A consumer pads the input by the halo (reflect) and crops the outputs: on off-grid
    sizes that must give the wrapper's own whole-image result (a halo of the context rounded
    up to the grid left up to 0.013 at the last row and column)."""
    from fastunet.bioimageio.description import halo_size

    net = ReferenceUNet(UNetConfig(base_channels=2, depth=depth)).eval()
    wrapper = FastUNetSameSize(**net.config.to_dict()).eval()
    wrapper.load_state_dict(net.state_dict())
    h = halo_size(depth)
    assert h % 2**depth == 0 and h >= context(depth) + 2**depth - 1
    for shape in [(45, 47), (50, 61), (57, 70)]:
        x = _rng().normal(size=(1, 1, *shape)).astype(np.float32)
        padded = np.pad(x, ((0, 0), (0, 0), (h, h), (h, h)), mode="reflect")
        with torch.no_grad():
            whole = wrapper(torch.from_numpy(x))
            cropped = wrapper(torch.from_numpy(padded))[..., h:-h, h:-h]
        torch.testing.assert_close(cropped, whole, atol=1e-5, rtol=0)


def test_packaged_sizes_are_geometrys():
    """The package's file cannot import fastunet: its closed-form sizes equal geometry's."""
    from fastunet import geometry
    from fastunet.bioimageio.architecture import valid_size

    for depth in range(7):
        assert context(depth) == geometry.context(depth)
        for output in range(1, 300):
            assert valid_size(output, depth) == geometry.input_size_for_output(output, depth), (output, depth)


@pytest.mark.parametrize("depth", [1, 3])
def test_packaged_network_scripts_and_runs_at_every_size(depth):
    """torch.jit.script compiles FastUNetSameSize (a trace would freeze the mirror widths and
    the crop offsets to one size): the scripted network is the eager one on sizes off the
    max-pool grid, one pixel wide, batches of 2."""
    net = _net(depth=depth, in_channels=2)
    wrapper = FastUNetSameSize(**net.config.to_dict())
    wrapper.load_state_dict(net.state_dict())
    scripted = torch.jit.script(wrapper.eval())
    for shape in [(1, 1), (1, 6), (37, 50), (64, 64), (97, 31)]:
        x = torch.from_numpy(_rng().normal(size=(2, 2, *shape)).astype(np.float32))
        with torch.no_grad():
            got, want = scripted(x), wrapper(x)
        assert got.shape == (2, 2, *shape)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_onnx_and_torchscript_weights_give_the_engines_probabilities(tmp_path, model_file):
    """The exported files, run as consumers run them (onnxruntime, torch.jit.load), give the
    eager network's probabilities at every size (fp32: 1e-5), and on one image the overlap-tile
    engine's (stored as float16: half a float16 step below 1 is 2.4e-4)."""
    pytest.importorskip("onnx", reason="needs the fastunet[bioimageio] extra")
    pytest.importorskip("onnxruntime", reason="needs the fastunet[bioimageio] extra")
    from fastunet.bioimageio.export import same_size_network
    from fastunet.bioimageio.weights import predict_with, write_weights

    bundle = read_model(model_file)
    net = same_size_network(bundle)
    paths = write_weights(net, tmp_path, ["torchscript", "onnx"], torch.zeros(1, 1, 40, 40))
    assert sorted(paths) == ["onnx", "pytorch_state_dict", "torchscript"]
    for shape in [(2, 1, 1, 6), (1, 1, 37, 50), (3, 1, 64, 64), (1, 1, 97, 31)]:
        x = _rng().normal(size=shape).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        for fmt in ("onnx", "torchscript"):
            got = predict_with(fmt, paths[fmt], x)
            assert got.shape == (shape[0], 2, *shape[2:])
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0, err_msg=f"{fmt} {shape}")
    image = _rng().normal(size=(45, 70)).astype(np.float32)
    engine = segment(image, model_file, None, output_kind="probs", tile=44, dtype="fp32").astype(np.float32)
    offset, scale = bundle.normalization.stats(image)
    onnx = predict_with("onnx", paths["onnx"], bundle.normalization.apply(image, offset, scale)[None, None])[0]
    assert np.isfinite(engine).all() and onnx.shape == engine.shape == (2, 45, 70)
    np.testing.assert_allclose(onnx, engine, atol=2.5e-4, rtol=0)


def test_export_passes_test_model_and_runs_through_the_engine(tmp_path, model_file, capsys):
    """The package's three weight formats pass bioimageio.core's test_model (run by the export
    on the written zip), without the FAIR warnings, and a consumer's prediction is fastunet's."""
    pytest.importorskip("bioimageio.core", reason="needs the fastunet[bioimageio] extra")
    from fastunet.bioimageio import export_package

    package = tmp_path / "nuclei.bmz.zip"
    result = export_package(model_file, package, test_shape=(96, 80))
    summary = result.test_summary
    assert result.tested and summary.status == "passed", summary.format()
    assert result.weight_formats == ("pytorch_state_dict", "torchscript", "onnx")
    assert sorted(result.max_abs_diff) == ["onnx", "torchscript"] and max(result.max_abs_diff.values()) < 1e-5
    for fmt in result.weight_formats:
        tests = [d for d in summary.details if d.name.endswith(f"({fmt})") or f" {fmt} inference" in d.name]
        assert len(tests) == 7 and all(d.status == "passed" for d in tests), fmt  # reproduce + 3 sizes x 2 batches
    warned = " ".join(w.msg for d in summary.details for w in d.warnings)
    assert "Validation" not in warned and "FAIR" not in warned, warned  # the FAIR warnings are gone
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "weights.onnx", "fastunet_unet.py",
                "model.safetensors", "test_input.npy", "test_output.npy", "sample_input.tif", "sample_output.tif",
                "cover.png", "README.md"} <= names
        assert "\n## Validation\n" in zf.read("README.md").decode()
        state = torch.load(io.BytesIO(zf.read("weights.pt")), weights_only=True)
        assert np.load(io.BytesIO(zf.read("test_input.npy"))).shape == (1, 1, 96, 80)
        assert np.load(io.BytesIO(zf.read("test_output.npy"))).shape == (1, 2, 96, 80)
        rdf, readme = zf.read("rdf.yaml").decode(), zf.read("README.md").decode()
        assert "postprocessing:" in rdf and "fill_holes: true" in rdf and "min_size: auto" in rdf
        assert "## Post-processing" in readme  # the clean-up fastunet applies, which the format cannot express
    bundle = read_model(model_file)
    assert state.keys() == bundle.module.state_dict().keys()
    # A consumer's prediction has the input's size (off the size grid too) and fastunet's values:
    # to the engine's float16 rounding with fixed normalization constants; with percentiles
    # nearly (bioimageio.core takes them over the input mirrored by the halo).
    from bioimageio.core import Tensor, load_model_description, predict

    image = _rng().integers(0, 4000, size=(50, 61)).astype(np.uint16)
    fixed = save_model(tmp_path / "fixed.safetensors", _net(), Normalization(mode="fixed", offset=100.0, scale=3000.0))
    assert main(["export", str(fixed), "-o", str(tmp_path / "fixed.bmz.zip"), "--no-test", "--weights",
                 "pytorch_state_dict"]) == 0
    assert "pytorch_state_dict weights): not tested" in capsys.readouterr().out
    for path, model, atol in ((tmp_path / "fixed.bmz.zip", fixed, 5e-4), (package, model_file, 5e-3)):
        got = predict(model=load_model_description(str(path)), inputs={"raw": Tensor.from_numpy(
            image[None, None].astype(np.float32), dims=("batch", "channel", "y", "x"))})
        got = np.asarray(got.members["probabilities"].data)[0]
        want = np.asarray(segment(image, model, None, output_kind="probs", dtype="fp32")).astype(np.float32)
        assert got.shape == want.shape == (2, 50, 61)
        np.testing.assert_allclose(got, want, atol=atol, rtol=0)
    # --model PACKAGE: the same labels as the model file.
    tifffile.imwrite(tmp_path / "in.tif", image)
    for name, model in (("a", model_file), ("b", package)):
        assert main(["segment", str(tmp_path / "in.tif"), "-o", str(tmp_path / f"{name}.zarr"), "--model", str(model),
                     "--quiet"]) == 0
    a, b = (zarr.open_group(str(tmp_path / f"{n}.zarr"))["instances"][:] for n in "ab")
    np.testing.assert_array_equal(a, b)
    # Refused without --overwrite; an unknown weight format is named.
    assert main(["export", str(model_file), "-o", str(package), "--no-test"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(model_file), "-o", str(tmp_path / "x.zip"), "--weights", "keras"]) == 2
    assert "among pytorch_state_dict, torchscript, onnx" in capsys.readouterr().err


def test_read_package_without_bioimageio_and_its_fallback(tmp_path, model_file):
    """A package is read from its model.safetensors; without it, from weights.pt through
    torch.load(weights_only=True) and the description's config."""
    from fastunet.bioimageio.export import _write_files

    bundle = read_model(model_file)
    files, _ = _write_files(tmp_path, model_file, bundle, (44, 44), ["pytorch_state_dict"])
    rdf = {"type": "model", "config": {"fastunet": {"config": bundle.config.to_dict(),
                                                    "normalization": bundle.normalization.to_dict()}},
           "weights": {"pytorch_state_dict": {"source": "weights.pt"}}}
    import json

    for name, members in (("full", ("model.safetensors", "weights.pt")), ("fallback", ("weights.pt",))):
        with zipfile.ZipFile(tmp_path / f"{name}.zip", "w") as zf:
            zf.writestr("rdf.yaml", json.dumps(rdf))
            for member in members:
                zf.write(files[member], member)
        got = read_package(tmp_path / f"{name}.zip")
        assert got.config == bundle.config and got.normalization == bundle.normalization
        for key, value in bundle.module.state_dict().items():
            torch.testing.assert_close(got.module.state_dict()[key], value, rtol=0, atol=0)
    (tmp_path / "plain.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    (tmp_path / "text.zip").write_text("hello")
    for path, message in ((tmp_path / "plain.zip", "no bioimage.io package"),
                          (tmp_path / "text.zip", "not a readable zip file"),
                          (tmp_path / "none.zip", "does not exist")):
        with pytest.raises(ModelFileError, match=message):
            read_package(path)
