"""Segmentation outputs (fastunet/io/outputs.py, tiff.py): checking, creating and reopening
zarr outputs (plain and OME-Zarr image-labels), their resume records, and TIFF outputs; read
back with zarr/tifffile directly.
"""

import multiprocessing
import os
import pickle

import numpy as np
import pytest
import tifffile
import torch
import zarr
from io_samples import ome_input

from fastunet.errors import UserError
from fastunet.io import (
    DONE_DIR,
    SegmentationStore,
    check_output,
    create_output,
    open_output,
    open_volume,
    write_tiff,
)


@pytest.fixture
def rng():
    return np.random.default_rng(torch.initial_seed())


def _src(shape=(4, 16, 16), axes="ZYX"):
    return open_volume(np.zeros(shape, np.float32), axes=axes)


def test_check_output_cases(tmp_path):
    inp = tmp_path / "in.zarr"
    zarr.create_array(str(inp), shape=(4, 16, 16), dtype="u1", dimension_names=list("zyx"))
    src = open_volume(inp)
    ok = check_output(tmp_path / "out.zarr", source=src, overwrite=False, resume=False)
    assert ok == (tmp_path / "out.zarr").resolve() and not ok.exists()
    with pytest.raises(UserError, match="is the input"):
        check_output(inp, source=src, overwrite=True, resume=False)
    with pytest.raises(UserError, match="inside the input"):
        check_output(inp / "seg.zarr", source=src, overwrite=False, resume=False)
    with pytest.raises(UserError, match="contains the input"):
        check_output(tmp_path, source=src, overwrite=True, resume=False)
    with pytest.raises(UserError, match="contradict"):
        check_output(tmp_path / "o.zarr", source=src, overwrite=True, resume=True)
    with pytest.raises(UserError, match="does not exist; create it"):
        check_output(tmp_path / "no" / "out.zarr", source=src, overwrite=False, resume=False)
    (tmp_path / "somefile.txt").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        check_output(tmp_path / "somefile.txt" / "out.zarr", source=src, overwrite=False, resume=False)
    with pytest.raises(UserError, match="resume=True needs a zarr output"):
        check_output(tmp_path / "out.tif", source=src, overwrite=False, resume=True)

    # an existing output: flags, and what overwrite=True may replace
    user = tmp_path / "user.zarr"
    user.mkdir()
    (user / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="already exists; pass overwrite=True .* or resume=True"):
        check_output(user, source=src, overwrite=False, resume=False)
    with pytest.raises(UserError, match="not a fastunet output.*precious.txt.*never other data"):
        check_output(user, source=src, overwrite=True, resume=False)
    with pytest.raises(UserError, match="Cannot resume.*not a fastunet output"):
        check_output(user, source=src, overwrite=False, resume=True)
    with pytest.raises(UserError, match="not a fastunet output"):
        create_output(user, source=src, num_classes=2, output="labels", chunks=(2, 8, 8), overwrite=True)
    assert (user / "precious.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", source=src, overwrite=True, resume=False).is_dir()
    create_output(tmp_path / "empty", source=src, num_classes=2, output="labels", chunks=(2, 8, 8), overwrite=True)

    done = create_output(tmp_path / "prev.zarr", source=src, num_classes=2, output="labels", chunks=(2, 8, 8))
    done.labels[:] = 1
    check_output(done.path, source=src, overwrite=True, resume=False)
    check_output(done.path, source=src, overwrite=False, resume=True, expect={"num_classes": 2})
    with pytest.raises(UserError, match="num_classes=2.*num_classes=3.*overwrite=True"):
        check_output(done.path, source=src, overwrite=False, resume=True, expect={"num_classes": 3})
    again = create_output(done.path, source=src, num_classes=3, output="probs", chunks=(2, 8, 8), overwrite=True)
    assert again.labels is None and again.probs.shape == (3, 4, 16, 16)
    assert np.isnan(again.probs[:]).all()  # nothing of the previous run is left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_output_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UserError, match="Cannot write to"):
            check_output(ro / "out.zarr", source=_src(), overwrite=False, resume=False)
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("output", ["labels", "probs", "both"])
def test_create_output_plain(tmp_path, rng, zarr_format, output):
    src = _src((5, 20, 24))
    store = create_output(tmp_path / "o.zarr", source=src, num_classes=3, output=output,
                          chunks=(2, 8, 16), zarr_format=zarr_format, attrs={"model": "m.safetensors"})
    root = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert root.metadata.zarr_format == zarr_format
    meta = root.attrs["fastunet"]
    assert meta["complete"] is False and meta["model"] == "m.safetensors" and meta["output"] == output
    assert meta["shape"] == [5, 20, 24] and meta["chunks"] == [2, 8, 16] and meta["num_classes"] == 3
    if output in ("labels", "both"):
        lab = root["labels"]
        assert (lab.dtype, lab.shape, lab.chunks) == (np.uint8, (5, 20, 24), (2, 8, 16))
        if zarr_format == 3:
            assert lab.metadata.dimension_names == ("z", "y", "x")
        values = rng.integers(0, 3, size=lab.shape, dtype=np.uint8)
        store.labels[:] = values
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "o.zarr" / "labels"), mode="r")[:], values)
    else:
        assert store.labels is None and "labels" not in root
    if output in ("probs", "both"):
        pr = root["probs"]
        assert (pr.dtype, pr.shape, pr.chunks) == (np.float16, (3, 5, 20, 24), (1, 2, 8, 16))
    else:
        assert store.probs is None


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_output_is_an_image_label(tmp_path, rng, zarr_format):
    data = rng.integers(0, 255, size=(1, 2, 4, 16, 12), dtype=np.uint8)
    inp = tmp_path / "img.ome.zarr"
    ome_input(inp, data, 3 if zarr_format == 2 else 2)  # input version independent of output's
    src = open_volume(inp)
    out = tmp_path / "out" / "seg.zarr"
    out.parent.mkdir()
    store = create_output(out, source=src, num_classes=3, output="both", chunks=(2, 8, 8),
                          zarr_format=zarr_format)
    values = rng.integers(0, 3, size=(4, 16, 12), dtype=np.uint8)
    store.labels[:] = values

    def ome(attrs):
        if zarr_format == 2:
            return attrs
        assert attrs["ome"]["version"] == "0.5"
        return attrs["ome"]

    root = zarr.open_group(str(out), mode="r")
    assert root.metadata.zarr_format == zarr_format
    labels_group = root["labels"]
    names = ome(labels_group.attrs.asdict())["labels"]
    assert names == ["segmentation"]
    label = labels_group[names[0]]
    meta = ome(label.attrs.asdict())
    il = meta["image-label"]
    assert ("version" in il) == (zarr_format == 2)
    assert [c["label-value"] for c in il["colors"]] == [0, 1, 2]
    assert all(len(c["rgba"]) == 4 and all(0 <= v <= 255 for v in c["rgba"]) for c in il["colors"])
    assert os.path.normpath(os.path.join(out / "labels" / "segmentation", il["source"]["image"])) == str(inp)
    (ms,) = meta["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert all(a["type"] == "space" and a["unit"] == "micrometer" for a in ms["axes"])
    ds, ds1 = ms["datasets"]  # as many levels as the input image
    # level 1 is level 0 sampled at [::1, ::2, ::2]: its scale doubles in y and x, the translation is level 0's
    assert ds1["coordinateTransformations"] == [
        {"type": "scale", "scale": [0.5, 0.5, 0.5]}, {"type": "translation", "translation": [1.0, 2.0, 3.0]}]
    assert label[ds1["path"]].shape == (4, 8, 6)
    assert ds["coordinateTransformations"] == [
        {"type": "scale", "scale": [0.5, 0.25, 0.25]}, {"type": "translation", "translation": [1.0, 2.0, 3.0]}]
    arr = label[ds["path"]]  # found through the metadata path
    np.testing.assert_array_equal(arr[:], values)
    if zarr_format == 3:
        assert arr.metadata.dimension_names == ("z", "y", "x")
    (img,) = ome(root.attrs.asdict())["multiscales"]  # the probabilities as the root image
    assert [a["name"] for a in img["axes"]] == ["c", "z", "y", "x"] and img["axes"][0]["type"] == "channel"
    assert img["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.5, 0.25, 0.25]
    probs = root[img["datasets"][0]["path"]]
    assert probs.shape == (3, 4, 16, 12) and probs.dtype == np.float16
    assert root.attrs["fastunet"]["arrays"] == {"labels": "labels/segmentation/0", "probs": "probs/0"}


def test_ome_output_labels_only_root_image_is_the_labels(tmp_path, rng):
    """Without probabilities the root image is the label image's own arrays (no copy): the
    output is still an OME-Zarr image (issue 14: it had no multiscales at the root)."""
    inp = tmp_path / "img.zarr"
    ome_input(inp, rng.integers(0, 9, size=(1, 1, 2, 8, 8), dtype=np.uint8), 3)
    store = create_output(tmp_path / "o.zarr", source=open_volume(inp), num_classes=2, output="labels",
                          chunks=(1, 8, 8))
    root = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert store.probs is None and store.labels.shape == (2, 8, 8)
    (ms,) = root.attrs["ome"]["multiscales"]
    assert [d["path"] for d in ms["datasets"]] == ["labels/segmentation/0", "labels/segmentation/1"]


def _mark_many(args):
    path, worker, n = args
    store = SegmentationStore(path)
    for i in range(n):
        store.mark_done(f"{worker}/{i},z=0")  # names with characters that are not file-safe
    return len(store.done())


def test_mark_done_from_several_processes_loses_nothing(tmp_path):
    store = create_output(tmp_path / "o.zarr", source=_src(), num_classes=2, output="labels", chunks=(2, 8, 8))
    assert store.done() == set()
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_mark_many, [(str(store.path), w, 60) for w in range(8)])
    assert store.done() == {f"{w}/{i},z=0" for w in range(8) for i in range(60)}
    assert not [f for f in os.listdir(store.path / DONE_DIR) if f.startswith(".tmp")]
    store.mark_done("0/0,z=0")  # recording a block twice is harmless
    assert len(store.done()) == 480


def test_mark_complete_and_resume(tmp_path):
    src = _src()
    store = create_output(tmp_path / "o.zarr", source=src, num_classes=2, output="both", chunks=(2, 8, 8))
    store.mark_done("a")
    again = open_output(tmp_path / "o.zarr", expect={"shape": (4, 16, 16), "output": "both", "num_classes": 2,
                                                      "chunks": (2, 8, 8)})
    assert again.done() == {"a"} and not again.complete
    assert again.labels.shape == (4, 16, 16) and again.probs.shape == (2, 4, 16, 16)
    with pytest.raises(UserError, match="chunks=.*rerun with the original settings"):
        open_output(tmp_path / "o.zarr", expect={"chunks": (4, 8, 8)})
    with pytest.raises(UserError, match="does not record 'tile'"):
        open_output(tmp_path / "o.zarr", expect={"tile": 92})
    with pytest.raises(UserError, match="does not exist"):
        open_output(tmp_path / "missing.zarr", expect={})
    copy = pickle.loads(pickle.dumps(store))  # a worker reopens it by path
    assert copy.path == store.path and copy.done() == {"a"}
    store.mark_complete({"seconds": np.float64(1.5), "blocks": 4})
    assert store.complete and copy.complete and store.done() == set()
    assert not (store.path / DONE_DIR).exists()
    meta = zarr.open_group(str(store.path), mode="r").attrs["fastunet"]
    assert meta["complete"] is True and meta["summary"] == {"seconds": 1.5, "blocks": 4}


def test_write_tiff(tmp_path, rng):
    labels = rng.integers(0, 3, size=(3, 10, 12), dtype=np.uint8)
    probs = rng.random((3, 3, 10, 12)).astype(np.float16)
    path = tmp_path / "seg.tif"
    written = write_tiff(path, labels=labels, probs=probs, axes="ZYX")
    assert written == [path, tmp_path / "seg_probs.tif"]
    np.testing.assert_array_equal(tifffile.imread(path), labels)
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "ZYX" and len(tif.pages) == 3  # pages, not RGB planes
    with tifffile.TiffFile(written[1]) as tif:
        assert tif.series[0].axes == "ZCYX" and len(tif.pages) == 9 and tif.is_imagej  # classes as channels
        np.testing.assert_array_equal(np.moveaxis(tif.asarray(), 1, 0), probs)
    assert open_volume(path).axes == "ZYX"  # it reads back through fastunet too
    with pytest.raises(UserError, match="already exists; pass overwrite=True"):
        write_tiff(path, labels=labels, probs=None, axes="ZYX")
    write_tiff(path, labels=labels[:1], probs=None, axes="ZYX", overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(path), labels[:1])
    assert sorted(os.listdir(tmp_path)) == ["seg.tif", "seg_probs.tif"]  # no temporary files left
    foreign = tmp_path / "photo.tif"
    tifffile.imwrite(foreign, labels, photometric="minisblack")
    with pytest.raises(UserError, match="not a fastunet output"):
        write_tiff(foreign, labels=labels, probs=None, axes="ZYX", overwrite=True)
    assert check_output(path, source=None, overwrite=True, resume=False) == path.resolve()
    with pytest.raises(UserError, match="not a fastunet output"):
        check_output(foreign, source=None, overwrite=True, resume=False)
    with pytest.raises(ValueError):
        write_tiff(path, labels=labels.astype(np.int32), probs=None, axes="ZYX", overwrite=True)


def test_check_output_tiff_both_checks_the_probs_file(tmp_path):
    src = _src()
    out = tmp_path / "seg.tif"
    check_output(out, source=src, overwrite=False, resume=False, output_kind="both")
    (tmp_path / "seg_probs.tif").write_bytes(b"not ours")
    check_output(out, source=src, overwrite=False, resume=False, output_kind="labels")  # not written then
    with pytest.raises(UserError, match="seg_probs.tif.*already exists; pass overwrite=True"):
        check_output(out, source=src, overwrite=False, resume=False, output_kind="both")
    with pytest.raises(UserError, match="not a fastunet output"):
        check_output(out, source=src, overwrite=True, resume=False, output_kind="both")
    (tmp_path / "seg_probs.tif").unlink()
    write_tiff(out, labels=np.zeros((4, 4), np.uint8), probs=np.zeros((2, 4, 4), np.float16), axes="YX")
    check_output(out, source=src, overwrite=True, resume=False, output_kind="both")  # ours: replaceable


def test_check_output_unwritable_folder_without_root_dependence(tmp_path, deny_output_writes):
    """Root writes into read-only folders; a failing write is simulated instead."""
    with pytest.raises(UserError, match=r"^Cannot write to .* \(Permission denied\); choose a writable"):
        check_output(tmp_path / "out.zarr", source=_src(), overwrite=False, resume=False)


def test_output_stub_without_its_array_is_a_user_error(tmp_path):
    """A run killed while creating the output leaves attrs but no array: say so, no KeyError."""
    import shutil

    src = open_volume(np.zeros((4, 16, 16), np.float32), axes="ZYX")
    store = create_output(tmp_path / "o.zarr", source=src, num_classes=2, output="labels", chunks=(2, 8, 8))
    shutil.rmtree(store.path / "labels")
    with pytest.raises(UserError, match="unfinished fastunet output without its array 'labels'.*overwrite=True"):
        SegmentationStore(store.path)
    check_output(store.path, source=src, overwrite=True, resume=False)  # overwrite=True may replace it


def test_outputs_of_the_previous_layout_still_open_and_newer_ones_are_refused(tmp_path, rng):
    """Layout 1 (no "layout"/"levels" records, arrays at the root) keeps resuming; a newer
    layout than this fastunet knows is one clear line."""
    src = _src()
    store = create_output(tmp_path / "o.zarr", source=src, num_classes=2, output="both", chunks=(2, 8, 8))
    root = zarr.open_group(str(store.path), mode="r+")
    meta = dict(root.attrs["fastunet"])
    assert meta["layout"] == 2 and meta["arrays"] == {"labels": "labels", "probs": "probs"}
    old = {k: v for k, v in meta.items() if k not in ("layout", "levels", "mode")}
    root.attrs["fastunet"] = old
    again = open_output(store.path, expect={"output": "both", "num_classes": 2})
    values = rng.integers(0, 2, size=(2, 8, 8), dtype=np.uint8)
    again.write("labels", (slice(0, 2), slice(0, 8), slice(8, 16)), values)
    np.testing.assert_array_equal(again.labels[0:2, 0:8, 8:16], values)
    root.attrs["fastunet"] = {**old, "layout": 99}
    with pytest.raises(UserError, match="written by a newer fastunet"):
        SegmentationStore(store.path)


def test_instance_arrays_become_uint64_when_needed(tmp_path):
    from fastunet.io.output_layout import retype_instances

    inp = tmp_path / "img.zarr"
    ome_input(inp, np.zeros((1, 1, 2, 16, 12), np.uint8), 2)
    store = create_output(tmp_path / "o.zarr", source=open_volume(inp), num_classes=2, output="instances",
                          chunks=(1, 8, 8))
    assert store.instances.dtype == np.uint32 and len(store.levels["instances"]) == 1
    retype_instances(zarr.open_group(str(store.path), mode="r+"), store.attrs, "uint64")
    again = SegmentationStore(store.path)
    assert again.instances.dtype == np.uint64 and again.levels["instances"][0][0].dtype == np.uint64
    again.write("instances", (slice(0, 2), slice(0, 16), slice(0, 12)), np.full((2, 16, 12), 2**40, np.uint64))
    assert int(again.levels["instances"][0][0][0, 0, 0]) == 2**40
    assert (tmp_path / "o.zarr" / "labels" / "segmentation" / "0" / ".zarray").is_file()  # the input's v2


def test_blocks_written_without_zarrs_fill_check_read_back_the_same(tmp_path):
    """``write_values`` skips zarr's per-chunk comparison with the fill value for integer
    blocks that hold a nonzero value (checked in one pass); an all-zero block still goes
    through zarr, which stores none of its chunks; probabilities (float) are untouched."""
    from fastunet.io.pyramid import write_values

    ids = zarr.create_array(str(tmp_path / "ids.zarr"), shape=(2, 8, 12), chunks=(1, 4, 6), dtype="uint32", fill_value=0)
    block = np.zeros((1, 8, 12), np.uint32)
    block[0, 1, 2] = 7  # one chunk of four holds a value
    write_values(ids, (slice(0, 1), slice(0, 8), slice(0, 12)), block)
    write_values(ids, (slice(1, 2), slice(0, 8), slice(0, 12)), np.zeros((1, 8, 12), np.uint32))
    assert np.array_equal(ids[:1], block) and not ids[1:].any()
    stored = sorted(str(p.relative_to(tmp_path / "ids.zarr" / "c")) for p in (tmp_path / "ids.zarr" / "c").rglob("*")
                    if p.is_file())
    assert stored == ["0/0/0", "0/0/1", "0/1/0", "0/1/1"]  # the all-zero block: nothing stored
    probs = zarr.create_array(str(tmp_path / "p.zarr"), shape=(4, 6), chunks=(4, 6), dtype="float32",
                              fill_value=float("nan"))
    write_values(probs, (slice(0, 4), slice(0, 6)), np.full((4, 6), np.nan, np.float32))
    assert not (tmp_path / "p.zarr" / "c").exists()
