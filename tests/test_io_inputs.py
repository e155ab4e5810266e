"""Reading input volumes (fastunet/io/inputs.py, axes.py, ome.py): every reader is checked
against plain numpy slicing of the array that was written, region by region, in canonical
axes order; bad inputs get one clear UserError; inputs are never written.
"""

import hashlib
import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr
from io_samples import ome_input

from fastunet.errors import UserError
from fastunet.io import VolumeSource, check_output, create_output, open_volume
from fastunet.io.channels import pick_channels


@pytest.fixture
def rng():
    return np.random.default_rng(torch.initial_seed())


def _regions(shape, rng, n=6):
    """Random boxes (including the whole volume and a single voxel) in ``shape``."""
    out = [tuple(slice(0, s) for s in shape), tuple(slice(s - 1, s) for s in shape)]
    for _ in range(n):
        box = []
        for s in shape:
            a = int(rng.integers(0, s))
            b = int(rng.integers(a + 1, s + 1))
            box.append(slice(a, b))
        out.append(tuple(box))
    return out


def _check_reads(src: VolumeSource, expected: np.ndarray, rng):
    assert src.shape == expected.shape
    for box in _regions(expected.shape, rng):
        got = src.read(box)
        assert got.dtype == expected.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected[box])


def _snapshot(path):
    """(relative path -> (sha256, mtime_ns)) for every file under ``path`` (or the file)."""
    files = [path] if os.path.isfile(path) else [
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
    ]
    snap = {}
    for f in files:
        with open(f, "rb") as fh:
            snap[os.path.relpath(f, path)] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(f).st_mtime_ns)
    return snap


# ------------------------------------------------------------------------------ reading inputs


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_array_round_trip(tmp_path, rng, zarr_format):
    data = rng.integers(0, 60000, size=(5, 2, 13, 17), dtype=np.uint16)  # Z C Y X on disk
    path = tmp_path / "a.zarr"
    zarr.create_array(str(path), data=data, chunks=(2, 1, 8, 8), zarr_format=zarr_format)
    with pytest.raises(UserError, match="axes="):
        open_volume(path)  # 4-D without metadata is ambiguous
    src = open_volume(path, axes="zcyx")
    assert (src.kind, src.axes, src.key, src.chunks) == ("zarr", "CZYX", None, (1, 2, 8, 8))
    assert src.spatial_shape == (5, 13, 17) and src.channels == 2 and src.dtype == "uint16"
    _check_reads(src, data.transpose(1, 0, 2, 3), rng)


class _Counting:
    """A zarr array that counts its reads (the chunk cache's decodes)."""

    def __init__(self, array):
        self.array, self.chunks, self.shape, self.dtype, self.reads = array, array.chunks, array.shape, array.dtype, 0

    def __getitem__(self, index):
        self.reads += 1
        return self.array[index]


def test_chunk_cache_reads_each_chunk_once_while_it_is_kept(tmp_path, rng):
    from concurrent.futures import ThreadPoolExecutor

    from fastunet.io.chunk_cache import ChunkCache

    data = rng.integers(0, 60000, size=(3, 20, 22), dtype=np.uint16)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), data=data, chunks=(1, 8, 8))
    counting = _Counting(arr)
    cache = ChunkCache(counting, max_bytes=36 * 8 * 8 * 2)  # every chunk (3 x 3 x 3 = 27) fits
    boxes = [b for _ in range(6) for b in _regions(data.shape, rng)] + [(1, slice(3, 17), 5)]
    with ThreadPoolExecutor(4) as pool:  # threads asking for the same chunks: each read once
        for box, got in zip(boxes, pool.map(cache.read, boxes)):
            np.testing.assert_array_equal(got, data[box])
    assert counting.reads == 27
    small = ChunkCache(_Counting(arr), max_bytes=4 * 8 * 8 * 2)  # four chunks kept: older ones read again
    for box in boxes:
        np.testing.assert_array_equal(small.read(box), data[box])
    assert small.array.reads > 27 and small._bytes <= small.max_bytes


def test_zarr_dimension_names_and_array_dimensions(tmp_path, rng):
    data = rng.standard_normal((3, 9, 11)).astype(np.float32)
    v3 = tmp_path / "v3.zarr"
    zarr.create_array(str(v3), data=data, chunks=(1, 9, 11), dimension_names=["y", "x", "c"])
    src = open_volume(v3)
    assert src.axes == "CYX"
    _check_reads(src, data.transpose(2, 0, 1), rng)
    v2 = tmp_path / "v2.zarr"
    a = zarr.create_array(str(v2), data=data, zarr_format=2)
    a.attrs["_ARRAY_DIMENSIONS"] = ["z", "y", "x"]  # the xarray convention
    src = open_volume(v2)
    assert src.axes == "ZYX"
    _check_reads(src, data, rng)
    assert open_volume(v2, axes="CYX").axes == "CYX"  # axes= overrides metadata
    zarr.create_array(str(tmp_path / "two.zarr"), data=data[0])
    assert open_volume(tmp_path / "two.zarr").axes == "YX"  # 2-D needs no axes


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_reads_level0_with_its_axes(tmp_path, rng, zarr_format):
    data = rng.integers(0, 255, size=(1, 2, 4, 16, 12), dtype=np.uint8)
    path = tmp_path / "img.ome.zarr"
    ome_input(path, data, zarr_format)
    src = open_volume(path)
    assert (src.kind, src.key, src.axes, src.native_axes) == ("ome-zarr", "0", "CZYX", "1CZYX")
    assert src.ome["version"] == ("0.4" if zarr_format == 2 else "0.5")
    assert [a["name"] for a in src.ome["axes"]] == list("tczyx")
    _check_reads(src, data[0], rng)
    assert open_volume(path, axes="TCZYX").axes == "CZYX"
    with pytest.raises(UserError, match="disagrees"):
        open_volume(path, axes="TZCYX")


def test_bioformats2raw_layout_opens_image_0(tmp_path, rng):
    data = rng.integers(0, 255, size=(1, 1, 3, 8, 8), dtype=np.uint8)
    root = zarr.open_group(str(tmp_path / "b.zarr"), mode="w", zarr_format=2,
                           attributes={"bioformats2raw.layout": 3})
    ome_input(tmp_path / "b.zarr" / "0", data, 2)
    assert root.attrs["bioformats2raw.layout"] == 3
    src = open_volume(tmp_path / "b.zarr")
    assert src.kind == "ome-zarr" and src.path.endswith("0") and src.axes == "ZYX"
    _check_reads(src, data[0, 0], rng)


def test_plain_group_with_one_array_is_accepted(tmp_path, rng):
    data = rng.integers(0, 9, size=(7, 9), dtype=np.int16)
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("raw", data=data)
    src = open_volume(tmp_path / "g.zarr")
    assert src.key == "raw"
    _check_reads(src, data, rng)


def test_tiff_plain_multipage_is_z(tmp_path, rng):
    data = rng.integers(0, 4000, size=(9, 10, 12), dtype=np.uint16)
    generic = tmp_path / "pages.tif"
    with tifffile.TiffWriter(generic) as w:
        for page in data:
            w.write(page, metadata=None)  # a plain page sequence: tifffile says "IYX"
    shaped = tmp_path / "shaped.tif"
    tifffile.imwrite(shaped, data)  # tifffile's shaped series: "QYX"
    for path, letters in ((generic, "IYX"), (shaped, "QYX")):
        with tifffile.TiffFile(path) as tif:
            assert tif.series[0].axes == letters
        src = open_volume(path)
        assert (src.kind, src.axes, src.chunks) == ("tiff", "ZYX", (1, 10, 12))
        _check_reads(src, data, rng)
    src = open_volume(generic, axes="CYX")  # axes= overrides the TIFF's letters
    assert src.axes == "CYX"
    _check_reads(src, data, rng)


def test_tiff_imagej_hyperstack_with_channels(tmp_path, rng):
    data = rng.integers(0, 255, size=(1, 4, 3, 10, 11), dtype=np.uint8)  # TZCYX
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"})
    src = open_volume(path)
    assert src.axes == "CZYX" and src.shape == (3, 4, 10, 11)
    _check_reads(src, data[0].transpose(1, 0, 2, 3), rng)


def test_ome_tiff(tmp_path, rng):
    data = rng.standard_normal((1, 2, 3, 12, 10)).astype(np.float32)  # TCZYX
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TCZYX"})
    src = open_volume(path)
    assert src.axes == "CZYX"
    _check_reads(src, data[0], rng)


def test_tiff_rgb_samples_become_channels(tmp_path, rng):
    data = rng.integers(0, 255, size=(10, 11, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, data, photometric="rgb")
    src = open_volume(path)
    assert src.axes == "CYX" and src.channels == 3
    _check_reads(src, data.transpose(2, 0, 1), rng)


def test_tiff_tiled_and_compressed(tmp_path, rng):
    data = rng.integers(0, 60000, size=(3, 70, 50), dtype=np.uint16)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, data, tile=(32, 32), compression="zlib", photometric="minisblack",
                     metadata={"axes": "ZYX"})
    src = open_volume(path)
    assert src.chunks == (1, 32, 32)
    _check_reads(src, data, rng)


def test_tiff_region_read_touches_only_its_pages(tmp_path, rng, monkeypatch):
    """Reading a few slices of a 40-page compressed TIFF reads only those pages' bytes from the
    file (an uncompressed one is memory-mapped: the next test)."""
    data = rng.integers(0, 255, size=(40, 32, 48), dtype=np.uint8)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, rowsperstrip=8, compression="zlib")  # 4 strips per page
    with tifffile.TiffFile(path) as tif:
        page_bytes = {
            i: {(o, n) for o, n in zip(p.dataoffsets, p.databytecounts)}
            for i, p in enumerate(tif.pages)
        }
    src = open_volume(path)
    reads = []
    original = tifffile.tifffile.FileCache.read

    def counting(self, filehandle, offset, bytecount, whence=0):
        reads.append((offset, bytecount))
        return original(self, filehandle, offset, bytecount, whence)

    monkeypatch.setattr(tifffile.tifffile.FileCache, "read", counting)
    box = (slice(11, 13), slice(0, 32), slice(5, 40))
    np.testing.assert_array_equal(src.read(box), data[box])
    assert reads, "the TIFF reader no longer goes through FileCache.read; update this test"
    assert set(reads) == page_bytes[11] | page_bytes[12]  # 2 of 40 pages
    assert src.mapped() is None


def test_uncompressed_tiff_is_read_through_a_memory_map(tmp_path, rng):
    """An uncompressed contiguous TIFF (tifffile's, ImageJ's) is read through tifffile.memmap:
    the same values as zarr over tifffile's store, as copies (writeable, not views of the
    file), the map left out of pickles; compressed, tiled and shuffled-channel reads go
    through zarr."""
    data = rng.integers(0, 60000, size=(3, 70, 50), dtype=np.uint16)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, data)  # one strip a page: zarr over tifffile's store decodes whole pages
    src = open_volume(path)
    assert isinstance(src.mapped(), np.memmap) and src.mapped().shape == data.shape
    _check_reads(src, data, rng)
    block = src.read((slice(1, 3), slice(5, 60), slice(7, 41)))
    np.testing.assert_array_equal(block, data[1:3, 5:60, 7:41])
    assert type(block) is np.ndarray and block.flags.writeable and not np.shares_memory(block, src.mapped())
    np.testing.assert_array_equal(block, np.asarray(src.stored()[1:3, 5:60, 7:41]))
    assert "_mapped" not in pickle.loads(pickle.dumps(src)).__dict__
    ij = tmp_path / "ij.tif"
    stack = rng.integers(0, 255, size=(4, 3, 10, 11), dtype=np.uint8)  # ZCYX
    tifffile.imwrite(ij, stack, imagej=True, metadata={"axes": "ZCYX"})
    hyper = open_volume(ij)
    assert hyper.mapped() is not None
    _check_reads(hyper, stack.transpose(1, 0, 2, 3), rng)
    _check_reads(pick_channels(hyper, [2, 0]), stack.transpose(1, 0, 2, 3)[[2, 0]], rng)  # a list: zarr
    _check_reads(pick_channels(hyper, 1), stack[:, 1], rng)  # an int: the map
    tiled = tmp_path / "tiled.tif"
    tifffile.imwrite(tiled, data, tile=(32, 32), photometric="minisblack", metadata={"axes": "ZYX"})
    assert open_volume(tiled).mapped() is None


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr-memory", "zarr-local"])
def test_array_objects(tmp_path, rng, kind):
    data = rng.standard_normal((2, 9, 13)).astype(np.float64)
    if kind == "numpy":
        arr = data
    elif kind == "dask":
        arr = da.from_array(data, chunks=(1, 4, 5))
    elif kind == "zarr-memory":
        arr = zarr.create_array(zarr.storage.MemoryStore(), data=data, chunks=(1, 4, 5))
    else:
        arr = zarr.create_array(str(tmp_path / "x.zarr"), data=data, chunks=(1, 4, 5))
    with pytest.raises(UserError, match='axes="ZYX"'):
        open_volume(arr)
    src = open_volume(arr, axes="CYX")
    assert src.kind == ("zarr" if kind == "zarr-local" else "array")
    assert (src.array is None) == (kind == "zarr-local")
    if kind in ("dask", "zarr-memory", "zarr-local"):
        assert src.chunks == (1, 4, 5)
    _check_reads(src, data, rng)
    out = src.read((slice(0, 1), slice(0, 2), slice(0, 2)))
    out[...] = 7.0  # a new array, never a view of the input
    assert not np.any(data == 7.0) and not np.any(np.asarray(arr[:]) == 7.0)


def test_transposed_user_axes_on_numpy(rng):
    data = rng.integers(-100, 100, size=(4, 3, 6, 5), dtype=np.int32)  # Z C Y X
    src = open_volume(data, axes="ZCYX")
    assert src.axes == "CZYX"
    _check_reads(src, data.transpose(1, 0, 2, 3), rng)
    src = open_volume(data[:, :1], axes="ZCYX")  # C of length 1 is dropped
    assert src.axes == "ZYX" and src.channels == 1
    _check_reads(src, data[:, 0], rng)
    src = open_volume(data[None], axes="TZCYX")  # T of length 1 is dropped
    assert src.axes == "CZYX"


def test_read_rejects_bad_regions(rng):
    src = open_volume(np.zeros((4, 5), np.float32))
    for bad in [(slice(0, 2),), (slice(0, 5), slice(0, 2)), (slice(0, 2, 2), slice(0, 2)), (0, slice(0, 2))]:
        with pytest.raises(ValueError):
            src.read(bad)


# --------------------------------------------------------------------------- validation errors


def test_error_missing_path(tmp_path):
    with pytest.raises(UserError, match="not found.*does not exist"):
        open_volume(tmp_path / "nope.zarr")


def test_error_not_an_array(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a zarr array or group"):
        open_volume(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="neither a TIFF file nor a zarr store"):
        open_volume(tmp_path / "notes.txt")
    (tmp_path / "fake.tif").write_text("not a tiff")
    with pytest.raises(UserError, match="neither a TIFF"):
        open_volume(tmp_path / "fake.tif")


def test_error_group_without_or_with_several_arrays(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_group("sub")
    with pytest.raises(UserError, match=r"group without arrays \(it holds the groups sub\).*arrayname"):
        open_volume(tmp_path / "g.zarr")
    g.create_array("raw", shape=(4, 4), dtype="u1")
    g.create_array("mask", shape=(4, 4), dtype="u1")
    with pytest.raises(UserError, match=r"several arrays \(mask, raw\).*g.zarr/mask"):
        open_volume(tmp_path / "g.zarr")
    assert open_volume(tmp_path / "g.zarr" / "raw").axes == "YX"  # pointing at one works


@pytest.mark.parametrize(
    "shape, axes, message",
    [
        ((4, 5), "ZYX", "name 3 axes but .* has 2"),
        ((4, 5, 6), "ZQX", "contain 'Q'"),
        ((4, 5, 6), "ZZX", "repeat 'Z'"),
        ((4, 5, 6), "CZY", "lack Y and X"),
        ((4, 5, 6), None, 'no axes metadata.*axes="ZYX"'),
        ((7,), None, "1 axes.*pass an image"),
        ((2, 2, 2, 2, 2, 2, 2), None, "7 axes"),
        ((3, 4, 5, 6), "TZYX", "time series.*select one time point"),
        ((2, 3, 5, 6), "CSYX", "both channels .* and RGB samples"),
        ((0, 5, 6), "ZYX", "empty .*length 0"),
        ((5, 0), None, "empty"),
    ],
)
def test_error_axes_and_shapes(shape, axes, message):
    with pytest.raises(UserError, match=message):
        open_volume(np.zeros(shape, np.float32), axes=axes)


@pytest.mark.parametrize("dtype", [bool, np.complex64, object, "U3", "S2", np.uint64])
def test_error_unsupported_dtypes(tmp_path, dtype):
    with pytest.raises(UserError, match="unsupported data type.*convert it"):
        open_volume(np.zeros((4, 5), dtype=dtype))
    if dtype in (bool, np.complex64, np.uint64):
        zarr.create_array(str(tmp_path / "a.zarr"), shape=(4, 5), dtype=dtype)
        with pytest.raises(UserError, match="unsupported data type"):
            open_volume(tmp_path / "a.zarr")


def test_error_tiff_time_series_and_unknown_axis(tmp_path):
    path = tmp_path / "t.ome.tif"
    tifffile.imwrite(path, np.zeros((3, 1, 2, 8, 8), np.uint8), ome=True, metadata={"axes": "TCZYX"})
    with pytest.raises(UserError, match=r"time series \(T=3\)"):
        open_volume(path)
    path = tmp_path / "e.tif"
    tifffile.imwrite(path, np.zeros((4, 8, 8), np.uint8), photometric="minisblack", metadata={"axes": "EYX"})
    with pytest.raises(UserError, match="'E' .*wavelength.*axes="):
        open_volume(path)
    assert open_volume(path, axes="CYX").axes == "CYX"


def test_input_files_are_never_written(tmp_path, rng):
    data = rng.integers(0, 255, size=(1, 1, 4, 16, 16), dtype=np.uint8)
    inputs = {"ome": tmp_path / "img.zarr", "tif": tmp_path / "img.tif", "v2": tmp_path / "v2.zarr"}
    ome_input(inputs["ome"], data, 3)
    tifffile.imwrite(inputs["tif"], data[0, 0], photometric="minisblack", metadata={"axes": "ZYX"})
    zarr.create_array(str(inputs["v2"]), data=data[0, 0], zarr_format=2, chunks=(2, 8, 8))
    before = {k: _snapshot(p) for k, p in inputs.items()}
    for k, p in inputs.items():
        src = open_volume(p, axes="ZYX" if k == "v2" else None)
        for box in _regions(src.shape, rng):
            src.read(box)
        pickle.loads(pickle.dumps(src)).read(tuple(slice(0, 2) for _ in src.shape))
        out = check_output(tmp_path / f"out_{k}.zarr", source=src, overwrite=False, resume=False)
        create_output(out, source=src, num_classes=3, output="both", chunks=(2, 8, 8))
    assert {k: _snapshot(p) for k, p in inputs.items()} == before


# ------------------------------------------------------------------------------------ pickling


_CHILD = textwrap.dedent(
    """
    import pickle, sys
    import numpy as np
    for name in sys.argv[1:]:
        with open(name + ".pkl", "rb") as f:
            src = pickle.load(f)
        assert "_handle" not in vars(src)
        np.save(name + ".npy", src.read((slice(1, 3), slice(2, 9), slice(0, 5))))
    """
)


def test_pickled_source_carries_no_data_and_reads_in_a_fresh_process(tmp_path, rng):
    data = rng.integers(0, 60000, size=(6, 40, 40), dtype=np.uint16)
    zarr.create_array(str(tmp_path / "a.zarr"), data=data, chunks=(1, 20, 20), dimension_names=list("zyx"))
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="minisblack", metadata={"axes": "ZYX"})
    names = []
    for fmt in ("zarr", "tif"):
        src = open_volume(tmp_path / f"a.{fmt}")
        before = pickle.dumps(src)
        src.read((slice(0, 6), slice(0, 40), slice(0, 40)))  # opens and caches the handle
        assert "_handle" in vars(src)
        blob = pickle.dumps(src)
        assert blob == before and len(blob) < 2000 < data.nbytes
        names.append(str(tmp_path / fmt))
        (tmp_path / f"{fmt}.pkl").write_bytes(blob)
    # a fresh interpreter (other working directory): reopens from the path alone
    subprocess.run([sys.executable, "-c", _CHILD, *names], check=True, cwd="/")
    for name in names:
        np.testing.assert_array_equal(np.load(name + ".npy"), data[1:3, 2:9, 0:5])


def test_source_reopens_in_a_forked_child(tmp_path, rng):
    """A forked child inherits the parent's open TIFF handle (and its file offset) in memory;
    it must open its own instead of sharing it."""
    data = rng.integers(0, 255, size=(8, 16, 16), dtype=np.uint8)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "ZYX"})
    src = open_volume(path)
    src.read((slice(0, 1), slice(0, 1), slice(0, 1)))  # the parent's handle
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_read_inherited, args=(src, z, queue)) for z in range(0, 8, 2)]
    for child in children:
        child.start()
    results = dict(queue.get(timeout=60) for _ in children)
    for child in children:
        child.join()
    for z in range(0, 8, 2):
        own_handle, got = results[z]
        assert own_handle
        np.testing.assert_array_equal(got, data[z : z + 2])


def _read_inherited(src, z, queue):
    got = src.read((slice(z, z + 2), slice(0, 16), slice(0, 16)))  # src inherited, not pickled
    queue.put((z, (vars(src)["_handle"][0] == os.getpid(), got)))


# ------------------------------------------------------------------------------ read errors


def test_damaged_zarr_chunk_is_a_user_error_naming_file_and_region(tmp_path, rng):
    data = rng.normal(size=(2, 32, 32)).astype(np.float32)
    path = tmp_path / "in.zarr"
    arr = zarr.create_array(str(path), shape=data.shape, chunks=(1, 16, 16), dtype="float32",
                            dimension_names=list("zyx"))
    arr[:] = data
    bad = path / "c" / "1" / "0" / "1"
    bad.write_bytes(rng.integers(0, 256, size=50, dtype=np.uint8).tobytes())
    src = open_volume(path)
    np.testing.assert_array_equal(src.read((slice(0, 1), slice(0, 32), slice(0, 32))), data[:1])
    with pytest.raises(UserError) as exc:
        src.read((slice(1, 2), slice(4, 20), slice(0, 32)))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"Cannot read the zarr array {str(path)!r} at Z 1:2, Y 4:20, X 0:32 (")
    assert f"the damaged chunk is the file {str(bad)!r}" in msg and "restore it" in msg


def test_damaged_tiff_strip_is_a_user_error(tmp_path, rng):
    path = tmp_path / "in.tif"
    tifffile.imwrite(path, rng.integers(0, 255, size=(3, 64, 64), dtype=np.uint8), compression="zlib",
                     photometric="minisblack")
    src = open_volume(path)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[2].dataoffsets[0], tif.pages[2].databytecounts[0]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * count)
    src.read((slice(0, 2), slice(0, 64), slice(0, 64)))
    with pytest.raises(UserError, match=f"Cannot read the TIFF file {str(path)!r} at Z 2:3, Y 0:64, X 0:64"):
        src.read((slice(2, 3), slice(0, 64), slice(0, 64)))


def test_rgb_guess_offers_z_axes(tmp_path, rng):
    img = rng.integers(0, 4000, size=(3, 20, 20), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb.tif", img, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True, metadata={"axes": "CYX"})
    assert open_volume(tmp_path / "rgb.tif").alt_axes == "ZYX"
    assert open_volume(tmp_path / "ij.tif").alt_axes == ""
    assert open_volume(tmp_path / "rgb.tif", axes="CYX").alt_axes == ""
