"""Outputs that the bioimage tools accept (issue 14): OME-Zarr images and label images written
from inputs made by ome-zarr-py's own writer (NGFF 0.4 and 0.5, a 3-level pyramid, physical
scale), read back with ome-zarr-py's Reader and validated with ome-zarr-models; a label image
in the input's own labels group; ImageJ and OME-TIFF outputs with the input's pixel size.
"""

import hashlib
import os

import numpy as np
import pytest
import tifffile
import torch
import zarr

pytest.importorskip("ome_zarr")
ome_zarr_models = pytest.importorskip("ome_zarr_models")

from ome_zarr.format import FormatV04, FormatV05  # noqa: E402
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Reader  # noqa: E402
from ome_zarr.writer import write_image  # noqa: E402

from fastunet import Normalization, ReferenceUNet, UNetConfig, save_model, segment  # noqa: E402
from fastunet.cli import main  # noqa: E402
from fastunet.errors import UserError  # noqa: E402
from fastunet.io import open_volume, pixel_size  # noqa: E402

SCALE = {"z": 2.0, "y": 0.5, "x": 0.5}


def _rng():
    return np.random.default_rng(torch.initial_seed())


@pytest.fixture
def model(tmp_path):
    net = ReferenceUNet(UNetConfig(base_channels=4, depth=2))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.bias.normal_(0.0, 0.1)
        x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 92, 92)).astype(np.float32))
        scores = net(x)
        net.head.bias[1] -= float(torch.median(scores[:, 1] - scores[:, 0]))  # about half foreground
    return str(save_model(tmp_path / "m.safetensors", net, Normalization(mode="meanstd")))


def _ome_zarr_py_input(path, version):
    """A (z, y, x) image written by ome-zarr-py: 3 levels (2x in Y/X), physical scale in µm."""
    fmt = FormatV04() if version == "0.4" else FormatV05()
    img = _rng().normal(size=(2, 64, 48)).astype(np.float32)
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_image(img, group, scale_factors=(2, 4), fmt=fmt, axes="zyx", scale=SCALE,
                axes_units={a: "micrometer" for a in "zyx"}, storage_options={"chunks": (1, 16, 16)})
    return img


def _files(path):
    """sha256 of every file under ``path`` (relative name -> digest)."""
    out = {}
    for folder, _, names in os.walk(path):
        for name in names:
            full = os.path.join(folder, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _nodes(path):
    return {node.zarr.basename(): node for node in Reader(parse_url(str(path)))()}


def _check_label_levels(label: zarr.Group, ms: dict, version_levels: list):
    """Each level is level 0 sampled at the level's factor; shapes and transforms follow the input."""
    level0 = label[ms["datasets"][0]["path"]][:]
    assert len(ms["datasets"]) == len(version_levels) == 3
    for ds, (shape, scale) in zip(ms["datasets"], version_levels):
        arr = label[ds["path"]][:]
        assert arr.shape == shape
        assert ds["coordinateTransformations"][0]["scale"] == scale
        f = level0.shape[1] // shape[1]
        np.testing.assert_array_equal(arr, level0[:, ::f, ::f][:, : shape[1], : shape[2]])


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("kinds", ["instances", "instances,labels,probs"])
def test_output_of_an_ome_zarr_py_image_opens_in_reader_and_validates(tmp_path, model, version, kinds):
    inp, out = tmp_path / "img.ome.zarr", tmp_path / "seg.zarr"
    _ome_zarr_py_input(inp, version)
    result = segment(str(inp), model, out, tile=60, output_kind=kinds, block=(1, 32, 16), progress=False)
    ids = result if kinds == "instances" else result[0]
    root = zarr.open_group(str(out), mode="r")
    assert root.metadata.zarr_format == (2 if version == "0.4" else 3)  # the input's format by default
    image = ome_zarr_models.open_ome_zarr(root, version=version)
    assert type(image).__name__ == "Image"
    label = ome_zarr_models.open_ome_zarr(root["labels/segmentation"], version=version)
    assert type(label).__name__ == "ImageLabel"
    meta = root["labels/segmentation"].attrs.asdict()
    meta = meta if version == "0.4" else meta["ome"]
    assert meta["image-label"].get("version", meta.get("version")) == version
    assert meta["image-label"]["colors"][0] == {"label-value": 0, "rgba": [0, 0, 0, 0]}
    levels = [((2, 64, 48), [2.0, 0.5, 0.5]), ((2, 32, 24), [2.0, 1.0, 1.0]), ((2, 16, 12), [2.0, 2.0, 2.0])]
    (ms,) = meta["multiscales"]
    assert [a.get("unit") for a in ms["axes"]] == ["micrometer"] * 3
    _check_label_levels(root["labels/segmentation"], ms, levels)
    np.testing.assert_array_equal(root["labels/segmentation/0"][:], ids[:])
    nodes = _nodes(out)
    assert [d.shape for d in nodes["segmentation"].data] == [shape for shape, _ in levels]
    root_image = nodes[out.name]
    if "probs" in kinds:
        assert root_image.data[0].shape == (2, 2, 64, 48) and root_image.metadata["name"] == "probabilities"
        classes = root["labels/segmentation_classes/0"][:]
        assert set(np.unique(classes)) <= {0, 1} and "segmentation_classes" in nodes
    else:  # the root image is the label image's own arrays
        np.testing.assert_array_equal(np.asarray(root_image.data[0]), root["labels/segmentation/0"][:])
    if version == "0.4":  # nested chunk keys, as NGFF stores them
        assert (out / "labels" / "segmentation" / "0" / "0" / "0" / "0").is_file()


def test_into_the_inputs_labels_group_touches_nothing_else(tmp_path, model, capsys, monkeypatch):
    inp = tmp_path / "img.ome.zarr"
    _ome_zarr_py_input(inp, "0.4")
    before = _files(inp)
    target = inp / "labels" / "nuclei"
    argv = ["segment", str(inp), "-o", str(target), "--model", model, "--tile", "60", "--block", "1,32,16", "--quiet"]
    with monkeypatch.context() as m:  # an interrupted run, then resumed
        from fastunet.engine import scheduling

        real, calls = scheduling.run_block, []

        def run_block(job, block):
            calls.append(block.name)
            if len(calls) > 7:
                raise RuntimeError("injected failure")
            return real(job, block)

        m.setattr(scheduling, "run_block", run_block)
        with pytest.raises(RuntimeError, match="injected"):
            main(argv)
    assert main([*argv, "--resume"]) == 0, capsys.readouterr().err
    after = _files(inp)
    assert {k: v for k, v in after.items() if not k.startswith("labels")} == before  # the image is untouched
    labels = zarr.open_group(str(inp / "labels"), mode="r")
    assert labels.attrs["labels"] == ["nuclei"] and labels.metadata.zarr_format == 2
    label = ome_zarr_models.open_ome_zarr(zarr.open_group(str(target), mode="r"), version="0.4")
    assert type(label).__name__ == "ImageLabel"
    assert type(ome_zarr_models.open_ome_zarr(zarr.open_group(str(inp), mode="r"), version="0.4")).__name__ == "Image"
    meta = zarr.open_group(str(target), mode="r").attrs.asdict()
    assert meta["image-label"]["source"]["image"] == "../../"
    ref = segment(str(inp), model, tmp_path / "ref.zarr", tile=60, block=(1, 32, 16), progress=False)
    _check_label_levels(zarr.open_group(str(target), mode="r"), meta["multiscales"][0],
                        [((2, 64, 48), [2.0, 0.5, 0.5]), ((2, 32, 24), [2.0, 1.0, 1.0]), ((2, 16, 12), [2.0, 2.0, 2.0])])
    np.testing.assert_array_equal(zarr.open_array(str(target / "0"), mode="r")[:], ref[:])
    nodes = _nodes(inp)
    assert "nuclei" in nodes and len(nodes["nuclei"].data) == 3
    # anything else inside the input stays refused; so do probabilities in its labels group
    code = main(["segment", str(inp), "-o", str(inp / "s0" / "x.zarr"), "--model", model])
    assert code == 2 and "the input is never written" in capsys.readouterr().err
    code = main(["segment", str(inp), "-o", str(inp / "labels" / "p"), "--model", model, "--kind", "probs"])
    assert code == 2 and "probabilities are no label image" in capsys.readouterr().err
    with pytest.raises(UserError, match="already exists"):
        segment(str(inp), model, None, into_input=True, label_name="nuclei", tile=60)
    segment(str(inp), model, None, into_input=True, label_name="nuclei", tile=60, overwrite=True,
            block=(1, 32, 16), progress=False)
    assert _files(inp).keys() == after.keys()


def test_tiff_input_to_an_ome_zarr_name_writes_ome_zarr_with_its_pixel_size(tmp_path, model):
    img = (_rng().normal(size=(2, 40, 36)) * 100 + 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", img, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})
    px = pixel_size(open_volume(tmp_path / "in.tif"))
    assert px.size == (1.5, 0.25, 0.25) and px.unit == ("micrometer",) * 3
    ids = segment(str(tmp_path / "in.tif"), model, tmp_path / "seg.ome.zarr", tile=60, progress=False)
    root = zarr.open_group(str(tmp_path / "seg.ome.zarr"), mode="r")
    assert type(ome_zarr_models.open_ome_zarr(root, version="0.5")).__name__ == "Image"
    (ms,) = root["labels/segmentation"].attrs["ome"]["multiscales"]
    assert ms["datasets"][0]["coordinateTransformations"] == [{"type": "scale", "scale": [1.5, 0.25, 0.25]}]
    assert [a["unit"] for a in ms["axes"]] == ["micrometer"] * 3
    np.testing.assert_array_equal(root["labels/segmentation/0"][:], ids[:])
    plain = segment(str(tmp_path / "in.tif"), model, tmp_path / "plain.zarr", tile=60, progress=False)
    assert "ome" not in zarr.open_group(str(tmp_path / "plain.zarr"), mode="r").attrs  # plain zarr stays plain
    np.testing.assert_array_equal(plain[:], ids[:])


def test_tiff_outputs_carry_the_pixel_size(tmp_path, model):
    img = (_rng().normal(size=(2, 40, 36)) * 100 + 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})
    ids, probs = segment(str(tmp_path / "ij.tif"), model, tmp_path / "out.tif", tile=60,
                         output_kind="instances,probs", progress=False)
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.is_imagej and tif.imagej_metadata["spacing"] == 1.5 and tif.imagej_metadata["unit"] == "um"
        num, den = tif.pages.first.tags["XResolution"].value
        assert num / den == pytest.approx(4.0)
        assert tif.pages.first.dtype == np.uint16  # ids that fit: ImageJ's 16-bit integers
        np.testing.assert_array_equal(tif.asarray(), ids)
    assert pixel_size(open_volume(tmp_path / "out.tif")).size == pytest.approx((1.5, 0.5, 0.25))
    with tifffile.TiffFile(tmp_path / "out_probs.tif") as tif:
        assert tif.pages.first.dtype == np.float32  # ImageJ opens no float16
        assert tif.is_imagej and tif.series[0].axes == "ZCYX" and tif.imagej_metadata["spacing"] == 1.5  # a hyperstack
        np.testing.assert_array_equal(np.moveaxis(tif.asarray(), 1, 0), probs)
    # OME-TIFF in, OME-TIFF out
    tifffile.imwrite(tmp_path / "in.ome.tif", img, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 2.0})
    ids = segment(str(tmp_path / "in.ome.tif"), model, tmp_path / "seg.ome.tif", tile=60, progress=False)
    with tifffile.TiffFile(tmp_path / "seg.ome.tif") as tif:
        assert tif.is_ome and 'PhysicalSizeX="0.3"' in tif.ome_metadata and 'PhysicalSizeZ="2.0"' in tif.ome_metadata
        np.testing.assert_array_equal(tif.asarray(), ids)
    assert pixel_size(open_volume(tmp_path / "seg.ome.tif")).size == pytest.approx((2.0, 0.3, 0.3))
