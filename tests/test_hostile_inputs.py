"""The inputs of issue 15 that crashed or lost data: each now gets one clear line, a warning, or
the right result. (Faults during a run: tests/test_faults.py; object stores: test_remote.py.)"""

import json
import resource
import warnings

import numpy as np
import pytest
import tifffile
import torch
import zarr
from fault_helpers import balanced_net, small_net
from safetensors.torch import save_file

from fastunet import Normalization, UNetConfig, load_model, save_model, segment
from fastunet.cli import main
from fastunet.errors import ModelFileError, UserError
from fastunet.synthetic import synthetic_nuclei
from fastunet.train import TrainConfig, train


def _rng():
    return np.random.default_rng(torch.initial_seed())


def _net(depth=2):
    return small_net(depth)


@pytest.fixture
def model(tmp_path):
    return str(save_model(tmp_path / "m.safetensors", _net(), Normalization(mode="meanstd")))


def _one_line(capsys, argv, code=2):
    got = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert got == code and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------- broken stores
def test_broken_zarr_metadata_and_unsafe_codecs_are_one_line(tmp_path, model, capsys):
    arr = zarr.create_array(str(tmp_path / "bad.zarr"), shape=(8, 8), chunks=(4, 4), dtype="uint8")
    arr[:] = 1
    (tmp_path / "bad.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array", ')
    err = _one_line(capsys, ["segment", tmp_path / "bad.zarr", "-o", tmp_path / "o.zarr", "--model", model])
    assert "not valid JSON" in err and "damaged" in err
    pickled = tmp_path / "pickle.zarr"
    pickled.mkdir()
    (pickled / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [4, 4], "chunks": [2, 2], "dtype": "|O", "compressor": None, "fill_value": 0,
        "filters": [{"id": "pickle", "protocol": 4}], "order": "C"}))
    err = _one_line(capsys, ["segment", pickled, "-o", tmp_path / "o.zarr", "--model", model])
    assert "cannot be opened as zarr" in err and "pickle codecs are refused" in err
    for multiscales in ({"datasets": [{"path": "0"}]}, "0", [5]):
        group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
        group.create_array("0", shape=(8, 8), dtype="uint8")
        group.attrs["multiscales"] = multiscales
        err = _one_line(capsys, ["segment", tmp_path / "ome.zarr", "-o", tmp_path / "o.zarr", "--model", model])
        assert "'multiscales' metadata is a" in err and "not a list of images" in err
    assert not (tmp_path / "o.zarr").exists()


# ------------------------------------------------------------------------- model files
def test_a_model_header_claiming_a_huge_network_allocates_nothing(tmp_path):
    tensors = {k: v.contiguous() for k, v in _net().state_dict().items()}  # a small file
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for config, match in ((dict(base_channels=2**20, depth=2), "base_channels 1048576 .at most 1024"),
                          (dict(base_channels=4, depth=40), "depth 40 .at most 8"),
                          (dict(base_channels=1024, depth=4), "shapes do not match its config")):
        path = tmp_path / "huge.safetensors"
        save_file(tensors, str(path), metadata={"format": "fastunet", "format_version": "1",
                                                "config": json.dumps({**UNetConfig().to_dict(), **config})})
        with pytest.raises(ModelFileError, match=match):
            load_model(path)
    # base 1024, depth 4 would be ~10 GB of weights: nothing near that was allocated
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500 * 1024


def test_nan_weights_are_refused_at_load_and_in_memory(tmp_path):
    net = _net()
    with torch.no_grad():
        net.head.weight[0, 0] = float("nan")
    path = save_model(tmp_path / "nan.safetensors", net)
    with pytest.raises(ModelFileError, match="hold NaN or Inf values"):
        load_model(path)
    with pytest.raises(UserError, match="hold NaN or Inf values"):
        segment(np.zeros((40, 40), np.float32), net, None)


def test_wrong_model_and_output_types_are_clear_type_errors(tmp_path):
    img = np.zeros((40, 40), np.float32)
    with pytest.raises(TypeError, match=r"model= expects a fastunet model file path.*got torch\.nn\..*Linear"):
        segment(img, torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model= expects .* got builtins.int"):
        segment(img, 123)
    with pytest.raises(TypeError, match="output= expects a path or a URL .* got int"):
        segment(img, _net(), 123)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on CPU machines")
def test_load_model_on_a_missing_gpu_is_one_clear_error(tmp_path):
    path = save_model(tmp_path / "m.safetensors", _net())
    with pytest.raises(UserError, match='CUDA was asked for .device="cuda". but no CUDA device is visible'):
        load_model(path, device="cuda")


# ------------------------------------------------------------------------------ outputs
def test_unknown_extensions_and_device_files_are_refused(tmp_path, model, capsys):
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=(40, 40), chunks=(40, 40), dtype="float32")
    src[:] = _rng().normal(size=(40, 40))
    err = _one_line(capsys, ["segment", tmp_path / "in.zarr", "-o", tmp_path / "out.png", "--model", model])
    assert "extension '.png', which fastunet does not write" in err and "out.zarr" in err and "out.tif" in err
    assert not (tmp_path / "out.png").exists()
    err = _one_line(capsys, ["segment", tmp_path / "in.zarr", "-o", "/dev/null", "--overwrite", "--model", model])
    assert "The output '/dev/null' is a device file, not a file fastunet writes" in err


# ------------------------------------------------------------------------ intensities
@pytest.mark.parametrize("dtype, offset", [("int64", 2**40), ("float64", 1e12), ("uint32", 2**31)])
def test_a_large_offset_keeps_the_contrast(dtype, offset):
    image, _ = synthetic_nuclei((96, 96), seed=int(torch.initial_seed() % 2**31), dtype="uint16")
    net = balanced_net(image)  # neither empty nor full on this image
    reference = np.asarray(segment(image, net, None, tile=52))
    assert reference.any() and not reference.all()
    shifted = image.astype(dtype) + np.array(offset, dtype)
    np.testing.assert_array_equal(np.asarray(segment(shifted, net, None, tile=52)), reference)


def test_float64_beyond_the_float32_range_without_overflow(tmp_path):
    image, _ = synthetic_nuclei((96, 96), seed=int(torch.initial_seed() % 2**31), dtype="uint16")
    net = balanced_net(image)  # neither empty nor full on this image
    reference = np.asarray(segment(image, net, None, tile=52))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow RuntimeWarning
        for normalization in ("percentile", "meanstd"):
            bundle_net = save_model(tmp_path / f"{normalization}.safetensors", net, Normalization(mode=normalization))
            want = np.asarray(segment(image, bundle_net, None, tile=52, output_kind="probs"))
            got = np.asarray(segment(image.astype(np.float64) * 1e300, bundle_net, None, tile=52, output_kind="probs"))
            # the same to rounding (the scaled image's constants differ in the last bits, which
            # can flip a pixel whose two classes tie)
            np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3, rtol=0)
    assert reference.any()


def test_an_in_place_edit_of_a_tiff_off_the_sample_lattice_is_refused_on_resume(tmp_path, model, capsys):
    img = _rng().integers(0, 255, size=(8, 40, 36), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", img)  # uncompressed: an edit keeps the file's size
    out = tmp_path / "o.zarr"
    argv = ["segment", tmp_path / "in.tif", "-o", out, "--model", model, "--tile", "52", "--block", "1,40,36",
            "--quiet"]
    from fastunet.engine import scheduling

    real, calls = scheduling.run_block, []

    def run_block(job, block):
        calls.append(block.name)
        if len(calls) > 1:
            raise KeyboardInterrupt  # killed after one block
        return real(job, block)

    scheduling.run_block = run_block
    try:
        assert main([str(a) for a in argv]) == 130
    finally:
        scheduling.run_block = real
    capsys.readouterr()
    img[0, 1, 1] ^= 0xFF  # a page off the sample lattice (planes 1, 3, 5, 7), same file size
    tifffile.imwrite(tmp_path / "in.tif", img)
    err = _one_line(capsys, [*argv, "--resume"])
    assert "contents changed since it was started (its SHA-256 differs)" in err


# ---------------------------------------------------------------------------- training
def _tiny(**changes):
    options = dict(base_channels=4, depth=2, tile=92, optimizer="adam", lr=3e-3, val_every=10, checkpoint_every=1,
                   iterations=2, val_fraction=0.0)
    options.update(changes)
    return TrainConfig(**options)


def test_training_output_paths_are_checked_before_any_work(tmp_path, capsys, deny_output_writes):
    image, labels = synthetic_nuclei((96, 96), seed=1)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    base = ["train", tmp_path / "img.tif", tmp_path / "lab.tif", "-o", tmp_path / "m.safetensors",
            "--iterations", "1", "--base-channels", "4", "--depth", "2", "--tile", "92", "--quiet"]
    err = _one_line(capsys, base)  # the folder refuses writes (deny_output_writes)
    assert "Cannot write to" in err and "(Permission denied); choose a writable place for the model file" in err


def test_training_refuses_bad_figure_and_curve_paths(tmp_path, capsys):
    image, labels = synthetic_nuclei((96, 96), seed=2)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    (tmp_path / "folder").mkdir()
    base = ["train", tmp_path / "img.tif", tmp_path / "lab.tif", "-o", tmp_path / "m.safetensors",
            "--iterations", "1", "--base-channels", "4", "--depth", "2", "--tile", "92", "--quiet"]
    cases = [
        (["--curve", tmp_path / "folder"], "The --curve '.*folder' is a folder"),
        (["--curve", tmp_path / "missing" / "c.png"], "The folder of the --curve, .*missing', does not exist"),
        (["--weight-figure", tmp_path / "m.safetensors"], "should end in .png"),
        (["--weight-figure", tmp_path / "m.png", "--curve", tmp_path / "m.png"], "is also the curve"),
        (["--weight-figure", tmp_path / "img.tif"], "img.tif' is the input .*; the input is never written"),
        (["--base-channels", "100000"], r"needs about [\d,.]+ GiB .*use a smaller --base-channels"),
    ]
    import re

    for extra, pattern in cases:
        argv = [*base, *extra]
        if extra[0] == "--base-channels":
            argv = [a for a in base if a not in ("--base-channels", "4")] + extra
        err = _one_line(capsys, argv)
        assert re.search(pattern, err), (extra, err)
    assert not (tmp_path / "m.safetensors").exists()
    png = tmp_path / "input.png"  # an input that is a PNG-named file: never written
    png.write_bytes(b"not a figure")
    from fastunet.paths import check_output_file

    with pytest.raises(UserError, match="is the input"):
        check_output_file(png, what="weight_figure=", suffixes=(".png",), inputs=([str(png)], None))
    assert png.read_bytes() == b"not a figure"


def test_training_never_restarts_over_a_checkpoint_and_resume_checks_the_contents(tmp_path):
    image, labels = synthetic_nuclei((96, 96), seed=3)
    out = tmp_path / "m.safetensors"
    from fastunet.train import checkpoint_path

    train(image, labels, out, config=_tiny(), progress=False)
    out.unlink()  # as after a kill: the checkpoint is there, the model not yet
    with pytest.raises(UserError, match="holds the checkpoint of an earlier run; pass resume=True .* overwrite=True"):
        train(image, labels, out, config=_tiny(iterations=3), progress=False)
    before = checkpoint_path(out).read_bytes()
    other = labels.copy()
    other[other == other.max()] = 0  # same names and shapes, other contents
    with pytest.raises(UserError, match="other training data .same names and shapes, other contents"):
        train(image, other, out, config=_tiny(iterations=3), resume=True, progress=False)
    assert checkpoint_path(out).read_bytes() == before
    assert train(image, labels, out, config=_tiny(iterations=3), resume=True, progress=False).steps == 3
    assert train(image, labels, out, config=_tiny(iterations=1), overwrite=True, progress=False).steps == 1


def test_evaluate_checks_json_and_preview_before_scoring(tmp_path, capsys):
    from fastunet.modelfile import ModelBundle

    model = tmp_path / "m.safetensors"
    save_model(model, ModelBundle(_net(), Normalization()))
    image, labels = synthetic_nuclei((64, 64), seed=4)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    (tmp_path / "folder.json").mkdir()
    base = ["evaluate", tmp_path / "img.tif", tmp_path / "lab.tif", "--model", model, "--device", "cpu"]
    for extra, pattern in ((["--json", tmp_path / "folder.json"], "is a folder"),
                           (["--json", tmp_path / "img.tif"], "is the input"),
                           (["--json", tmp_path / "s.txt"], "should end in .json"),
                           (["--preview", tmp_path / "missing" / "p.png"], "does not exist"),
                           (["--preview", tmp_path / "s.json", "--json", tmp_path / "s.json"], "is also the --json file")):
        err = _one_line(capsys, [*base, *extra])
        assert pattern in err and "foreground IoU" not in err, err
    (tmp_path / "s.json").write_text("{}")
    err = _one_line(capsys, [*base, "--json", tmp_path / "s.json"])
    assert "already exists; pass --overwrite" in err
    assert main([str(a) for a in [*base, "--json", tmp_path / "s.json", "--overwrite"]]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["images"] == 1
