"""Where users already work (issue 23): a channel picked by name from a 2-channel OME-Zarr into
its own labels group, a T=3 series resumed per time point, an HCS plate of two wells field by
field, TIFF in -> TIFF out with the pixel size (ImageJ, OME-TIFF checked with ome_types),
probabilities as an ImageJ hyperstack, multi-series TIFF and PNG inputs, and an API that
returns what it was given (numpy, dask, xarray). OME-Zarr outputs are validated with
ome-zarr-models and read back with ome-zarr-py's Reader."""

import numpy as np
import pytest
import tifffile
import torch
import zarr
from fault_helpers import balanced_net

pytest.importorskip("ome_zarr")
ome_zarr_models = pytest.importorskip("ome_zarr_models")

from ome_zarr.format import FormatV04, FormatV05  # noqa: E402
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Reader  # noqa: E402
from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata  # noqa: E402

from fastunet import Normalization, Segmenter, save_model, segment  # noqa: E402
from fastunet.cli import main  # noqa: E402
from fastunet.errors import UserError  # noqa: E402

TILE = 52


def _rng():
    return np.random.default_rng(torch.initial_seed())


@pytest.fixture
def model(tmp_path):
    return str(save_model(tmp_path / "m.safetensors", balanced_net(), Normalization(mode="meanstd")))


def _fmt(version):
    return FormatV04() if version == "0.4" else FormatV05()


def _nodes(path):
    return {node.zarr.basename(): node for node in Reader(parse_url(str(path)))()}


def _alone(image, model, **kw):
    """The segmentation of one plane or stack on its own (numpy in, numpy out)."""
    return segment(image, model, None, tile=TILE, axes="ZYX" if image.ndim == 3 else "YX", progress=False, **kw)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_two_channel_ome_zarr_segmented_on_its_second_channel_into_its_labels_group(tmp_path, model, version):
    inp = tmp_path / "cells.ome.zarr"
    data = _rng().normal(size=(2, 2, 40, 36)).astype(np.float32)  # c, z, y, x
    data[0] = 0.0  # channel 0 is empty: a run on it would find nothing
    group = zarr.open_group(str(inp), mode="w", zarr_format=_fmt(version).zarr_format)
    write_image(data, group, scale_factors=(2,), fmt=_fmt(version), axes="czyx",
                scale={"c": 1.0, "z": 2.0, "y": 0.5, "x": 0.5}, axes_units={a: "micrometer" for a in "zyx"},
                storage_options={"chunks": (1, 1, 16, 16)},
                omero={"channels": [{"label": name, "color": color, "active": True,
                                     "window": {"start": -3.0, "end": 3.0, "min": -3.0, "max": 3.0}}
                                    for name, color in (("actin", "FF0000"), ("DAPI", "0000FF"))]})
    with pytest.raises(UserError, match=r"input has 2 .*channels= by index or name \(actin, DAPI\)"):
        segment(str(inp), model, None, tile=TILE)
    ids = segment(str(inp), model, into_input=True, channels="dapi", label_name="nuclei", tile=TILE, progress=False,
                  lazy=False)
    expected = _alone(data[1], model)
    assert expected.max() > 1  # objects found
    np.testing.assert_array_equal(ids, expected)
    root = zarr.open_group(str(inp), mode="r")
    np.testing.assert_array_equal(root["labels/nuclei/0"][:], expected)
    assert type(ome_zarr_models.open_ome_zarr(root, version=version)).__name__ == "Image"
    assert type(ome_zarr_models.open_ome_zarr(root["labels/nuclei"], version=version)).__name__ == "ImageLabel"
    assert [d.shape for d in _nodes(inp)["nuclei"].data] == [(2, 40, 36), (2, 20, 18)]
    # by index, to a separate OME-Zarr: the same objects
    again = segment(str(inp), model, tmp_path / "seg.zarr", channels=1, tile=TILE, progress=False)
    np.testing.assert_array_equal(again[:], expected)


def test_a_t3_series_is_segmented_time_point_by_time_point_and_resumed_per_time_point(tmp_path, model, monkeypatch):
    from fastunet.engine import scheduling

    inp, out = tmp_path / "movie.ome.zarr", tmp_path / "seg.zarr"
    data = _rng().normal(size=(3, 40, 44)).astype(np.float32)  # t, y, x
    data[1] *= 3.0  # each time point is normalized on its own
    group = zarr.open_group(str(inp), mode="w", zarr_format=3)
    write_image(data, group, scale_factors=(2,), fmt=FormatV05(), axes="tyx",
                scale={"t": 60.0, "y": 0.5, "x": 0.5}, axes_units={"t": "second", "y": "micrometer", "x": "micrometer"},
                storage_options={"chunks": (1, 16, 16)})
    real = scheduling.run_block

    def stop_at_time_point_1(job, block, *args, **kwargs):
        if job.store is not None and job.store.time == 1 and block.box[0][0] > 0:  # rows below the first
            raise RuntimeError("the machine went away")
        return real(job, block, *args, **kwargs)

    seg = Segmenter(model, tile=TILE)
    with monkeypatch.context() as m:
        m.setattr(scheduling, "run_block", stop_at_time_point_1)
        with pytest.raises(RuntimeError, match="went away"):
            seg.segment(str(inp), out, block=(16, 16), progress=False)
    meta = zarr.open_group(str(out), mode="r").attrs["fastunet"]
    assert meta["time_points"]["0"]["complete"] and not meta["complete"]
    ids = seg.segment(str(inp), out, block=(16, 16), progress=False, resume=True)
    summary = seg.last_summary
    assert summary["timepoints"] == 3 and 0 < summary["computed"] < summary["blocks"]  # time point 0 not redone
    assert ids.shape == (3, 40, 44)
    for t in range(3):
        np.testing.assert_array_equal(ids[t], _alone(data[t], model))
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["fastunet"]["complete"]
    label = ome_zarr_models.open_ome_zarr(root["labels/segmentation"], version="0.5")
    assert type(label).__name__ == "ImageLabel"
    (ms,) = root["labels/segmentation"].attrs["ome"]["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["t", "y", "x"] and ms["axes"][0]["unit"] == "second"
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [60.0, 1.0, 1.0]
    assert [d.shape for d in _nodes(out)["segmentation"].data] == [(3, 40, 44), (3, 20, 22)]
    # the same series in memory: numpy in, numpy out, a leading time axis; and as ImageJ frames in a TIFF
    np.testing.assert_array_equal(segment(data, model, None, axes="TYX", tile=TILE, progress=False), ids[:])
    segment(data, model, tmp_path / "movie.tif", axes="TYX", tile=TILE, progress=False)
    with tifffile.TiffFile(tmp_path / "movie.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "TYX" and tif.imagej_metadata["frames"] == 3
        np.testing.assert_array_equal(tif.asarray(), ids[:])


def test_a_plate_with_two_wells_is_segmented_field_by_field_into_each_labels_group(tmp_path, model):
    plate = tmp_path / "plate.ome.zarr"
    fmt = FormatV04()
    root = zarr.open_group(str(plate), mode="w", zarr_format=2)
    write_plate_metadata(root, ["A"], ["1", "2"], ["A/1", "A/2"], fmt=fmt)
    images = {}
    for col in ("1", "2"):
        well = root.require_group("A").require_group(col)
        write_well_metadata(well, ["0"], fmt=fmt)
        images[f"A/{col}/0"] = _rng().normal(size=(36, 40)).astype(np.float32)
        write_image(images[f"A/{col}/0"], well.require_group("0"), scale_factors=(), fmt=fmt, axes="yx")
    with pytest.raises(UserError, match="HCS plate .* 2 field images.*into_input=True"):
        segment(str(plate), model, tmp_path / "out.zarr", tile=TILE)
    results = segment(str(plate), model, str(plate / "labels" / "nuclei"), tile=TILE, progress=False)
    assert sorted(results) == ["A/1/0", "A/2/0"]
    for field, image in images.items():
        expected = _alone(image, model)
        np.testing.assert_array_equal(results[field][:], expected)
        label = zarr.open_group(str(plate / field / "labels" / "nuclei"), mode="r")
        assert type(ome_zarr_models.open_ome_zarr(label, version="0.4")).__name__ == "ImageLabel"
        assert "nuclei" in _nodes(plate / field)
    assert type(ome_zarr_models.open_ome_zarr(root, version="0.4")).__name__ == "HCS"


def test_tiff_in_tiff_out_keeps_the_pixel_size_and_the_format(tmp_path, model, capsys):
    ome_types = pytest.importorskip("ome_types")
    images = tmp_path / "images"
    images.mkdir()
    stack = (_rng().normal(size=(3, 40, 36)) * 300 + 1000).astype(np.uint16)
    tifffile.imwrite(images / "a.tif", stack, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})
    tifffile.imwrite(images / "b.ome.tif", stack[0], metadata={"axes": "YX", "PhysicalSizeX": 0.3,
                                                               "PhysicalSizeY": 0.3})
    from PIL import Image

    Image.fromarray((stack[1] // 16).astype(np.uint8)).save(images / "c.png")
    out = tmp_path / "out"
    assert main(["segment", str(images), "--output-dir", str(out), "--kind", "instances,probs", "--quiet",
                 "--tile", str(TILE), "--model", model]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_seg.tif", "a_seg_probs.tif", "b_seg.ome.tif",
                                                     "b_seg_probs.ome.tif", "c_seg.tif", "c_seg_probs.tif"]
    with tifffile.TiffFile(out / "a_seg.tif") as tif:  # ImageJ in, ImageJ out
        assert tif.is_imagej and tif.imagej_metadata["spacing"] == 1.5 and tif.imagej_metadata["unit"] == "um"
        num, den = tif.pages.first.tags["XResolution"].value
        assert den / num == pytest.approx(0.25)
        np.testing.assert_array_equal(tif.asarray(), _alone(stack, model))
    with tifffile.TiffFile(out / "a_seg_probs.tif") as tif:  # a hyperstack: classes as channels, Z spacing kept
        meta = tif.imagej_metadata
        assert tif.series[0].axes == "ZCYX" and meta["channels"] == 2 and meta["slices"] == 3
        assert meta["spacing"] == 1.5
    with tifffile.TiffFile(out / "b_seg.ome.tif") as tif:  # OME-TIFF in, OME-TIFF out, valid OME-XML
        pixels = ome_types.from_xml(tif.ome_metadata).images[0].pixels
        assert pixels.physical_size_x == pytest.approx(0.3) and pixels.physical_size_y == pytest.approx(0.3)
        np.testing.assert_array_equal(tif.asarray(), _alone(stack[0], model))
    np.testing.assert_array_equal(tifffile.imread(out / "c_seg.tif"), _alone((stack[1] // 16).astype(np.uint8), model))
    # a zarr output of a TIFF records the pixel size; a multi-series TIFF's series is picked with --series
    with tifffile.TiffWriter(tmp_path / "multi.ome.tif") as w:
        w.write(np.zeros((8, 8), np.uint8), metadata={"axes": "YX"})
        w.write(stack[:, None], metadata={"axes": "ZCYX", "PhysicalSizeZ": 2.0, "PhysicalSizeX": 0.2,
                                          "PhysicalSizeY": 0.2, "Channel": {"Name": ["DAPI"]}})
    assert main(["segment", str(tmp_path / "multi.ome.tif"), "--series", "1", "--channel", "DAPI", "-o",
                 str(tmp_path / "m.zarr"), "--quiet", "--tile", str(TILE), "--model", model]) == 0
    meta = zarr.open_group(str(tmp_path / "m.zarr"), mode="r").attrs["fastunet"]
    assert meta["pixel_size"] == {"axes": "ZYX", "size": [2.0, 0.2, 0.2], "unit": ["micrometer"] * 3}
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "m.zarr"))["instances"][:], _alone(stack, model))
    capsys.readouterr()
    assert main(["segment", str(tmp_path / "multi.ome.tif"), "--series", "2", "-o", str(tmp_path / "x.zarr"),
                 "--model", model]) == 2
    err = capsys.readouterr().err
    assert "holds 2 image series" in err and "--series" in err


def test_the_api_returns_what_it_was_given(model):
    import dask.array as da
    import xarray as xr

    image = _rng().normal(size=(2, 40, 36)).astype(np.float32)  # c, y, x
    ids = segment(image[1], model, None, tile=TILE, progress=False)
    assert isinstance(ids, np.ndarray) and ids.shape == (40, 36) and ids.max() > 1
    lazy = segment(image[1], model, None, tile=TILE, progress=False, lazy=True)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), ids)
    from_dask = segment(da.from_array(image[1], chunks=(20, 36)), model, None, tile=TILE, progress=False)
    assert isinstance(from_dask, da.Array)
    np.testing.assert_array_equal(from_dask.compute(), ids)
    assert isinstance(segment(da.from_array(image[1]), model, None, tile=TILE, lazy=False), np.ndarray)

    arr = xr.DataArray(image, dims=("c", "y", "x"), name="cells", attrs={"source": "microscope 3"},
                       coords={"c": ["actin", "DAPI"], "y": np.arange(40) * 0.5, "x": np.arange(36) * 0.5})
    got, probs = segment(arr, model, None, channels="DAPI", output_kind="instances,probs", tile=TILE, progress=False)
    assert isinstance(got, xr.DataArray) and got.dims == ("y", "x") and got.name == "instances"
    np.testing.assert_array_equal(got.values, ids)
    np.testing.assert_array_equal(got.coords["y"].values, arr.coords["y"].values)
    assert got.attrs == {"source": "microscope 3"}
    assert probs.dims == ("class", "y", "x") and probs.shape == (2, 40, 36)
    lazy_x = segment(arr.chunk({"y": 20}), model, None, channels=1, tile=TILE, progress=False)
    assert isinstance(lazy_x, xr.DataArray) and isinstance(lazy_x.data, da.Array)
    np.testing.assert_array_equal(lazy_x.values, ids)


def test_the_public_functions_are_fully_annotated():
    """Every parameter and return of the public API carries a type (mypy checks them in CI:
    [tool.mypy] in pyproject.toml, tests/typing_api.py)."""
    import inspect

    import fastunet
    from fastunet import io

    functions = {n: getattr(fastunet, n) for n in fastunet.__all__ if inspect.isfunction(getattr(fastunet, n))}
    for cls in (getattr(fastunet, n) for n in fastunet.__all__ if inspect.isclass(getattr(fastunet, n))):
        functions.update({f"{cls.__name__}.{m}": f for m, f in vars(cls).items()
                          if inspect.isfunction(f) and (not m.startswith("_") or m == "__init__")})
    functions.update({n: getattr(io, n) for n in ("open_volume", "pixel_size", "plate_fields")})
    assert "segment" in functions and "Segmenter.segment" in functions
    untyped = {name: [p for p, v in inspect.signature(f).parameters.items()
                      if p not in ("self", "cls") and v.annotation is inspect.Parameter.empty]
               + (["return"] if inspect.signature(f).return_annotation is inspect.Signature.empty else [])
               for name, f in functions.items()}
    assert {name: missing for name, missing in untyped.items() if missing} == {}
