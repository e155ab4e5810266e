"""Input fingerprints (fastunet/io/fingerprint.py): what they tell apart, and the refusal of
a resume on another (or a changed) input.
"""

import os
import pickle

import numpy as np
import pytest
import tifffile
import torch
import zarr

from fastunet.errors import UserError
from fastunet.io import InputMovedWarning, check_output, create_output, input_fingerprint, open_output, open_volume


@pytest.fixture
def rng():
    return np.random.default_rng(torch.initial_seed())


def _lasting(fp: dict) -> dict:
    """A fingerprint without the chunk files' modification times (which any write changes)."""
    return {k: v for k, v in fp.items() if k != "chunk_times"}


def test_input_fingerprint_tells_inputs_apart(tmp_path, rng):
    data = rng.normal(size=(3, 40, 36)).astype(np.float32)
    path = tmp_path / "in.zarr"
    arr = zarr.create_array(str(path), shape=data.shape, chunks=(1, 8, 8), dtype="float32")
    arr[:] = data
    fp = input_fingerprint(open_volume(path, axes="ZYX"))
    assert fp["path"] == str(path.resolve()) and fp["shape"] == [3, 40, 36] and fp["dtype"] == "float32"
    assert input_fingerprint(pickle.loads(pickle.dumps(open_volume(path, axes="ZYX")))) == fp
    # the same values elsewhere: only the path differs
    copy = zarr.create_array(str(tmp_path / "copy.zarr"), shape=data.shape, chunks=(1, 8, 8), dtype="float32")
    copy[:] = data
    other = input_fingerprint(open_volume(tmp_path / "copy.zarr", axes="ZYX"))
    assert {k for k in fp if fp[k] != other[k]} <= {"path", "chunk_times"}  # its files are newer
    # one value on the sample lattice changed in place: the sample differs
    z, y, x = 3 * 1 // 6, 40 * 3 // 8, 36 * 5 // 8  # lattice points (2i + 1) * n // (2k), k = min(4, n)
    arr[z, y, x] = data[z, y, x] + 1
    assert input_fingerprint(open_volume(path, axes="ZYX"))["sample"] != fp["sample"]
    arr[z, y, x] = data[z, y, x]
    again = input_fingerprint(open_volume(path, axes="ZYX"))  # the values are back; the chunk file was written
    assert _lasting(again) == _lasting(fp) and again["chunk_times"] != fp["chunk_times"]
    # a block edited away from the lattice, inside a chunk that holds a lattice point (y 15, x 13): the
    # content hash of the sampled chunks tells (O(1) requests: the store is never listed)
    arr[:, 8:12, 8:12] = 5.0
    edited = input_fingerprint(open_volume(path, axes="ZYX"))
    assert edited["sample"] == fp["sample"] and edited["chunks"] != fp["chunks"]
    arr[:] = data
    assert _lasting(input_fingerprint(open_volume(path, axes="ZYX"))) == _lasting(fp)
    arr.attrs["note"] = "edited"  # the metadata document changed
    assert input_fingerprint(open_volume(path, axes="ZYX"))["metadata"] != fp["metadata"]
    # in memory: values decide
    mem = input_fingerprint(open_volume(data, axes="ZYX"))
    assert mem["path"] is None and input_fingerprint(open_volume(data.copy(), axes="ZYX")) == mem
    assert input_fingerprint(open_volume(data[::-1].copy(), axes="ZYX"))["sample"] != mem["sample"]


def test_in_memory_zarr_fingerprint(rng):
    """A zarr array in a memory store has no path and no chunk files: metadata and values decide."""
    data = rng.normal(size=(3, 16, 16)).astype(np.float32)
    arr = zarr.create_array(zarr.storage.MemoryStore(), data=data, chunks=(1, 8, 8))
    fp = input_fingerprint(open_volume(arr, axes="ZYX"))
    assert fp["path"] is None and "chunk_files" not in fp and "metadata" in fp and "chunks" in fp
    same = zarr.create_array(zarr.storage.MemoryStore(), data=data, chunks=(1, 8, 8))
    assert input_fingerprint(open_volume(same, axes="ZYX")) == fp
    other = zarr.create_array(zarr.storage.MemoryStore(), data=data[::-1].copy(), chunks=(1, 8, 8))
    assert input_fingerprint(open_volume(other, axes="ZYX"))["sample"] != fp["sample"]


def test_tiff_fingerprint_is_size_and_sample_not_mtime(tmp_path, rng):
    path = tmp_path / "in.tif"
    data = rng.integers(0, 255, size=(20, 30), dtype=np.uint8)
    tifffile.imwrite(path, data)
    fp = input_fingerprint(open_volume(path))
    st = os.stat(path)
    assert fp["size"] == st.st_size and "mtime_ns" not in fp and "sample" in fp
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched or copied: still the same
    assert input_fingerprint(open_volume(path)) == fp
    data[20 // 8, 30 // 8] ^= 1  # a lattice point, same file size (uncompressed)
    tifffile.imwrite(path, data)
    assert input_fingerprint(open_volume(path))["sample"] != fp["sample"]


def test_resume_of_another_input_is_refused(tmp_path, rng):
    a = open_volume(rng.normal(size=(4, 16, 16)).astype(np.float32), axes="ZYX")
    b = open_volume(rng.normal(size=(4, 16, 16)).astype(np.float32), axes="ZYX")
    store = create_output(tmp_path / "o.zarr", source=a, num_classes=2, output="labels", chunks=(2, 8, 8))
    assert store.attrs["input_id"] == input_fingerprint(a)
    check_output(store.path, source=a, overwrite=False, resume=True, expect={"input_id": input_fingerprint(a)})
    open_output(store.path, expect={"input_id": input_fingerprint(a)})
    for call in (lambda e: check_output(store.path, source=b, overwrite=False, resume=True, expect=e),
                 lambda e: open_output(store.path, expect=e)):
        with pytest.raises(UserError, match="values differ.*mix two inputs.*overwrite=True"):
            call({"input_id": input_fingerprint(b)})
    # the same input moved elsewhere: a warning, not a refusal
    moved = input_fingerprint(a) | {"path": "/elsewhere/in.zarr"}
    with pytest.warns(InputMovedWarning, match="moved or copied"):
        open_output(store.path, expect={"input_id": moved})
    meta = dict(store.attrs)
    del meta["input_id"]  # an output of an older fastunet
    zarr.open_group(str(store.path), mode="r+").attrs["fastunet"] = meta
    with pytest.raises(UserError, match="does not record which input"):
        open_output(store.path, expect={"input_id": input_fingerprint(a)})
    meta["complete"] = True  # finished by it: resuming writes nothing, so it is accepted
    zarr.open_group(str(store.path), mode="r+").attrs["fastunet"] = meta
    open_output(store.path, expect={"input_id": input_fingerprint(a)})


def test_outputs_of_an_older_fastunet_still_resume(tmp_path, rng):
    """An older fastunet recorded the chunk files' names and sizes (a walk of the store) and no
    content hash; its outputs resume, checked on what both record."""
    data = rng.normal(size=(3, 16, 16)).astype(np.float32)
    path = tmp_path / "in.zarr"
    zarr.create_array(str(path), data=data, chunks=(1, 8, 8))
    vol = open_volume(path, axes="ZYX")
    store = create_output(tmp_path / "o.zarr", source=vol, num_classes=2, output="labels", chunks=(1, 8, 8))
    store.mark_done("z0-1_y0-16_x0-16")
    meta = dict(store.attrs)
    old = {k: v for k, v in meta["input_id"].items() if k != "chunks"} | {"chunk_files": "0123456789abcdef"}
    zarr.open_group(str(store.path), mode="r+").attrs["fastunet"] = meta | {"input_id": old}
    (store.path / "_fastunet_done" / ".tmp-123-abc").write_bytes(b"")  # a rename the old writer never made
    resumed = open_output(store.path, expect={"input_id": input_fingerprint(vol)})
    assert resumed.done() == {"z0-1_y0-16_x0-16"}
    arr = zarr.open_array(str(path), mode="r+")
    arr[1, 2, 6] = data[1, 2, 6] + 1  # on the lattice: still refused
    with pytest.raises(UserError, match="values differ"):
        open_output(store.path, expect={"input_id": input_fingerprint(open_volume(path, axes="ZYX"))})


@pytest.mark.parametrize("shape, chunks, axes", [((2, 70, 90), (1, 32, 40), "ZYX"), ((3, 9, 50, 41), (2, 4, 16, 16), "CZYX"),
                                                 ((130, 99), (128, 7), "YX")])
def test_fingerprint_reads_through_the_chunk_cache_the_same_values(tmp_path, rng, shape, chunks, axes):
    """The fingerprint's chunks come box by box through the input's chunk cache (shared with
    the statistics and the blocks): the same values as zarr's orthogonal selection, whole
    chunks or windows, so the same digests as before."""
    from fastunet.io import fingerprint

    path = tmp_path / "in.zarr"
    zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16")[...] = rng.integers(0, 60000, shape)
    source = open_volume(str(path), axes=axes)
    stored = source.stored()
    for half in (None, 3, 0):
        index = {i: fingerprint._windows(stored.shape[i], stored.chunks[i], half)
                 for i, a in enumerate(axes) if a != "C"}
        selection = tuple(index.get(i, slice(None)) for i in range(len(axes)))
        got = fingerprint._read_runs(source, stored, selection)
        assert np.array_equal(got, stored.get_orthogonal_selection(selection))
