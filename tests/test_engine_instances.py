"""Instance output through the engine (fastunet/engine/instances.py, instance_tasks.py):
object ids equal scipy.ndimage.label of the whole foreground (cleaned up: the whole-image
reference of tests/cleanup_reference.py) for any block and tile size, resume after a failure in
either stage, a dask.distributed run, the options and bad input.
"""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from cleanup_reference import clean_reference
from fault_helpers import balanced_net
from scipy import ndimage

from fastunet import Normalization, save_model, segment
from fastunet.cli import main
from fastunet.engine.instances import (
    InstanceOptions,
    face_planes,
    instance_dtype,
    label_block,
    merge,
    merge_tables,
)
from fastunet.engine.predictor import CONFIDENCE_SCALE
from fastunet.errors import UserError


def _rng():
    return np.random.default_rng(torch.initial_seed())


def _structure(ndim, connect_z):
    s = ndimage.generate_binary_structure(ndim, 1)
    if ndim == 3 and not connect_z:
        s[0] = s[2] = False
    return s


def _blockwise(classes, block, options, num_classes=2, probs=None):
    """label_block + merge over a block grid of ``block``, assembled (the engine's algorithm
    without the network); ``probs`` ``(K, (Z,) Y, X)`` for ``min_confidence``."""
    shape, nd = classes.shape, classes.ndim
    grid = tuple(-(-n // b) for n, b in zip(shape, block))
    records, boxes = [], []
    keys = merge_tables(options)
    for index in np.ndindex(*grid):
        box = tuple((i * b, min((i + 1) * b, n)) for i, b, n in zip(index, block, shape))
        part = classes[tuple(slice(*x) for x in box)]
        part_probs = None if probs is None else probs[(slice(None), *(slice(*x) for x in box))]
        if part_probs is not None and nd == 2:
            part_probs = part_probs[:, None]
        found = label_block(part if nd == 3 else part[None], tuple(x[0] for x in box), shape, num_classes, options,
                            part_probs)
        records.append(found.arrays(face_planes(found.ids, box, shape, options.connect_z)))
        boxes.append(tuple(slice(*x) for x in box))
    result = merge(grid, lambda b: tuple(records[b][k] for k in keys), lambda b, k: records[b][k], ndim=nd,
                   options=options)
    out = np.zeros(shape, result.lut.dtype)
    for b, box in enumerate(boxes):
        ids = result.block_lut(b)[records[b]["ids"]]
        out[box] = ids if nd == 3 else ids[0]
    return out, result


@pytest.mark.parametrize("connect_z", [False, True])
def test_blockwise_ids_equal_scipy_label_of_the_whole_volume(connect_z):
    rng = _rng()
    for _ in range(2):
        classes = (rng.random((4, 29, 33)) < 0.55).astype(np.uint8)
        expected, _ = ndimage.label(classes, structure=_structure(3, connect_z))
        for block in [(1, 5, 7), (2, 8, 8), (4, 29, 33), (3, 1, 4), (1, 16, 11)]:
            got, _ = _blockwise(classes, block, InstanceOptions(connect_z=connect_z))
            np.testing.assert_array_equal(got, expected, err_msg=str(block))  # the same numbering, not only up to it
        plane = classes[0]
        for block in [(5, 7), (8, 8), (1, 33), (29, 1)]:
            np.testing.assert_array_equal(_blockwise(plane, block, InstanceOptions())[0], ndimage.label(plane)[0])


def test_several_classes_are_labelled_each_on_its_own_and_min_size_removes_small_objects():
    rng = _rng()
    classes = rng.integers(0, 3, size=(30, 31)).astype(np.uint8)
    got, _ = _blockwise(classes, (7, 9), InstanceOptions(), num_classes=3)
    whole, _ = _blockwise(classes, (30, 31), InstanceOptions(), num_classes=3)
    np.testing.assert_array_equal(got, whole)
    for c in (1, 2):  # within a class, the objects are scipy's components
        ref, n = ndimage.label(classes == c)
        assert len(np.unique(got[classes == c])) == n
        pairs = np.unique(np.stack([ref[classes == c], got[classes == c]]), axis=1)
        assert pairs.shape[1] == n  # a bijection between scipy's components and the ids
    assert not np.isin(got[classes == 1], got[classes == 2]).any()
    sizes = np.bincount(ndimage.label(classes == 1)[0].ravel())[1:]
    big, _ = _blockwise(classes, (7, 9), InstanceOptions(min_size=3), num_classes=3)
    kept = [i for i in np.unique(big) if i]
    assert kept == list(range(1, len(kept) + 1))  # numbered 1..n without gaps
    assert np.bincount(big.ravel())[1:].min() >= 3 and (sizes >= 3).sum() <= len(kept)
    with pytest.raises(UserError, match=r"min_size=10000 removes every object: the largest has \d+ voxels"):
        _blockwise(classes, (7, 9), InstanceOptions(min_size=10000), num_classes=3)


def test_empty_volume_gives_an_empty_label_image_and_dtypes():
    empty, result = _blockwise(np.zeros((3, 10, 10), np.uint8), (1, 4, 4), InstanceOptions(min_size=5))
    assert result.count == 0 and not empty.any() and empty.dtype == np.uint32
    assert instance_dtype(2**32 - 1) == np.uint32 and instance_dtype(2**32) == np.uint64
    with pytest.raises(UserError, match="min_size= expects a number of voxels >= 0"):
        InstanceOptions(min_size=-1)
    with pytest.raises(UserError, match='split= expects None or "watershed"'):
        InstanceOptions(split="cellpose")


def test_watershed_split_separates_two_touching_discs():
    yy, xx = np.mgrid[:40, :60]
    discs = ((yy - 20) ** 2 + (xx - 18) ** 2 < 12**2) | ((yy - 20) ** 2 + (xx - 41) ** 2 < 12**2)
    classes = discs.astype(np.uint8)
    joined, _ = _blockwise(classes, (40, 60), InstanceOptions())
    split, _ = _blockwise(classes, (40, 60), InstanceOptions(split="watershed"))
    assert joined.max() == 1 and split.max() == 2
    assert split[20, 18] != split[20, 41] and (split > 0).sum() == discs.sum()


def _blobs(rng, shape, sigma):
    """A class map of smooth random blobs (objects of many sizes), with a ring (a hole) and
    three specks of one pixel drawn in each plane."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    classes = (field > rng.uniform(-0.3, 0.3) * field.std()).astype(np.uint8)
    for plane in classes.reshape(-1, *shape[-2:]):
        cy, cx = rng.integers(7, np.array(shape[-2:]) - 7)
        r = np.hypot(*np.ogrid[-cy:shape[-2] - cy, -cx:shape[-1] - cx])
        plane[r < 6] = 0
        plane[(r >= 3) & (r < 5)] = 1
        for y, x in zip(rng.integers(1, shape[-2] - 1, 3), rng.integers(1, shape[-1] - 1, 3)):
            plane[y - 1:y + 2, x - 1:x + 2] = 0
            plane[y, x] = 1
    return classes


@pytest.mark.parametrize("min_size", [0, 4, "auto"])
def test_blockwise_cleanup_equals_the_whole_image_reference(min_size):
    rng = _rng()
    filled = removed = 0
    for _ in range(3):  # 2-D images: any block shape, the same ids as the whole-image reference
        plane = _blobs(rng, tuple(rng.integers(24, 48, 2)), rng.uniform(1.0, 2.5))
        expected = clean_reference(plane, min_size=min_size, fill_holes=True)
        for block in [plane.shape, (7, 9), (1, plane.shape[1]), (plane.shape[0], 1), (16, 5)]:
            got, result = _blockwise(plane, block, InstanceOptions(min_size=min_size, fill_holes=True))
            np.testing.assert_array_equal(got, expected, err_msg=str(block))
        filled, removed = filled + result.holes, removed + result.removed
        assert result.count == expected.max()
    assert filled > 0 and (removed > 0 or min_size == 0)
    stack = _blobs(rng, (3, 30, 34), (0.6, 1.5, 1.5))
    for connect_z in (False, True):  # stacks: holes per slice, or in 3-D
        expected = clean_reference(stack, min_size=min_size, fill_holes=True, connect_z=connect_z)
        for block in [(1, 8, 9), (2, 30, 5), (3, 13, 34)]:
            got, _ = _blockwise(stack, block, InstanceOptions(min_size=min_size, fill_holes=True, connect_z=connect_z))
            np.testing.assert_array_equal(got, expected, err_msg=str((connect_z, block)))
    classes = rng.integers(0, 3, size=(26, 29)).astype(np.uint8)  # three classes, objects touching objects
    classes[ndimage.gaussian_filter(rng.standard_normal(classes.shape), 2.0) > 0.3] = 1
    expected = clean_reference(classes, min_size=min_size, fill_holes=True, num_classes=3)
    got, _ = _blockwise(classes, (6, 11), InstanceOptions(min_size=min_size, fill_holes=True), num_classes=3)
    np.testing.assert_array_equal(got, expected)


def test_min_confidence_judges_whole_objects_across_blocks():
    """An object's mean object probability is over all its voxels, whatever the blocks: the
    block-wise clean-up equals the whole-image reference, and a per-block rule would not
    (an object half in a sure block, half in an unsure one). The probabilities come as the
    classes' (float16) or as the compact "confidence" output (uint8 object probabilities in
    steps of 1/255, OpenVINO's), with the same result for the same values."""
    rng = _rng()
    unsure = kept = 0
    for _ in range(3):
        plane = _blobs(rng, tuple(rng.integers(24, 48, 2)), rng.uniform(1.0, 2.5))
        p0 = rng.uniform(0.0, 0.6, plane.shape) * rng.uniform(0.7, 1.0)  # background probability
        steps = np.rint((1 - p0) * CONFIDENCE_SCALE).astype(np.uint8)
        forms = [(np.stack([p0, 1 - p0]).astype(np.float16),) * 2,
                 (steps[None], np.stack([1 - steps / CONFIDENCE_SCALE, steps / CONFIDENCE_SCALE]))]
        for tau in (0.6, 0.72, 0.85):
            options = InstanceOptions(min_size="auto", fill_holes=True, min_confidence=tau)
            for probs, values in forms:
                expected = clean_reference(plane, min_size="auto", fill_holes=True, probs=values, min_confidence=tau)
                for block in [plane.shape, (7, 9), (1, plane.shape[1]), (16, 5)]:
                    got, result = _blockwise(plane, block, options, probs=probs)
                    np.testing.assert_array_equal(got, expected, err_msg=str((tau, block, probs.dtype)))
                unsure, kept = unsure + result.unsure, kept + result.count
    assert unsure > 0 and kept > 0  # the rule removed objects and kept others
    # one object across two blocks: mean 0.7 over the whole, 0.9 in one block and 0.5 in the other
    plane = np.zeros((4, 8), np.uint8)
    plane[1:3, 1:7] = 1
    p0 = np.where(np.arange(8) < 4, 0.1, 0.5)[None].repeat(4, 0)
    probs = np.stack([p0, 1 - p0]).astype(np.float32)
    for tau, count in ((0.65, 1), (0.75, 0)):
        got, result = _blockwise(plane, (4, 4), InstanceOptions(min_confidence=tau), probs=probs)
        assert result.count == count and got.max() == count and result.unsure == 1 - count
    assert InstanceOptions(min_confidence=0).confidence is False
    for bad in (1.0, -0.1, "high", True):
        with pytest.raises(UserError, match=r"min_confidence= expects a mean object probability in \[0, 1\)"):
            InstanceOptions(min_confidence=bad)


def test_auto_min_size_is_a_sixteenth_of_the_typical_object():
    from fastunet.objectsize import auto_min_size, typical_size

    rng = _rng()
    nuclei = rng.normal(450, 60, 125)
    specks = rng.integers(1, 12, 1000)  # many specks hold little of the foreground
    assert typical_size(np.r_[nuclei, specks]) == pytest.approx(np.median(nuclei), rel=0.05)
    assert typical_size(np.r_[nuclei, [40000, 60000]]) == pytest.approx(np.median(nuclei), rel=0.05)  # merged clumps
    assert auto_min_size(np.r_[nuclei, specks]) == int(np.ceil(typical_size(np.r_[nuclei, specks]) / 16))
    assert typical_size([5, 400, 9000]) is None  # too few objects: the model's training size decides
    assert auto_min_size([5, 400], 20.0) == int(np.ceil(np.pi * 100 / 16)) and auto_min_size([5, 400]) == 0
    with pytest.raises(UserError, match='min_size= expects a number of voxels >= 0.*or "auto"'):
        InstanceOptions(min_size="big")


# ----------------------------------------------------------------------------- the engine
def _model(path, num_classes=2):
    """A small network whose foreground covers about half of a noise image (many objects);
    its weights are fixed (not drawn from the test's seed), the inputs vary."""
    return str(save_model(path, balanced_net(num_classes=num_classes), Normalization(mode="meanstd")))


@pytest.fixture
def model(tmp_path):
    return _model(tmp_path / "m.safetensors")


def _zarr(path, data, chunks):
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[:] = data
    return str(path)


def test_engine_instances_equal_scipy_label_for_block_and_tile_sizes(tmp_path, model):
    vol = _rng().normal(size=(2, 40, 44)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", vol, (1, 8, 8))
    labels = np.asarray(segment(src, model, None, axes="ZYX", tile=52, output_kind="labels"))
    assert 0.2 < labels.mean() < 0.8
    raw = dict(min_size=0, fill_holes=False)
    changed = []
    for connect_z in (False, True):
        expected, n = ndimage.label(labels == 1, structure=_structure(3, connect_z))
        cleaned = clean_reference(labels, min_size="auto", fill_holes=True, connect_z=connect_z)
        assert n > 10 and cleaned.max() > 10
        changed.append(not np.array_equal(cleaned > 0, expected > 0))
        cases = [(52, (1, 16, 8)), (60, (2, 16, 24))] if connect_z else [(44, (2, 40, 48)), (52, (1, 8, 16))]
        for i, (tile, block) in enumerate(cases):  # the default: cleaned up
            out = segment(src, model, tmp_path / f"o{connect_z}{i}.zarr", axes="ZYX", tile=tile, chunks=(1, 8, 8),
                          block=block, connect_z=connect_z, progress=False)
            np.testing.assert_array_equal(out[:], cleaned)
        lazy = segment(src, model, None, axes="ZYX", tile=60, chunks=(1, 8, 8), block=(2, 16, 24), connect_z=connect_z,
                       **raw)
        np.testing.assert_array_equal(np.asarray(lazy), expected)
    assert any(changed)  # the clean-up removed or filled something
    plane = vol[0]
    both = segment(plane, model, tmp_path / "p.tif", tile=52, chunks=(8, 8), block=(8, 16),
                   output_kind="instances,labels", progress=False, **raw)
    np.testing.assert_array_equal(both[0], ndimage.label(both[1] == 1)[0])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "p.tif"), both[0])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "p_labels.tif"), both[1])


def test_engine_min_confidence_equals_the_whole_image_reference(tmp_path, model):
    """segment's min_confidence removes the objects whose mean object probability (from the
    probabilities segment writes) is lower, as the whole-image reference does, in a file
    output of many blocks and lazily; "auto" takes the model file's value (0 without one)."""
    min_confidence_check(tmp_path, model, _rng())


@pytest.mark.openvino
def test_engine_min_confidence_on_openvino(tmp_path, model):
    """The same on OpenVINO (fp32), whose blocks take the object probability from its compact
    graph (the "confidence" output, uint8 steps of 1/255), in a child process (see
    test_cpu_path's OpenVINO checks)."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; import numpy as np; sys.path.insert(0, sys.argv[1]); "
            "from test_engine_instances import min_confidence_check; "
            "min_confidence_check(Path(sys.argv[2]), sys.argv[3], np.random.default_rng(int(sys.argv[4])), "
            "backend='openvino', dtype='fp32')")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path), str(model),
                           str(int(_rng().integers(2**31)))], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def min_confidence_check(tmp_path, model, rng, **backend):
    """:func:`test_engine_min_confidence_equals_the_whole_image_reference` on ``backend``
    (``segment``'s backend and dtype)."""
    from cleanup_reference import structure

    vol = rng.normal(size=(2, 40, 44)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", vol, (1, 8, 8))
    labels, probs = (np.asarray(a) for a in segment(src, model, None, axes="ZYX", tile=52,
                                                    output_kind="labels,probs", **backend))
    ids = np.stack([ndimage.label(plane == 1, structure=structure(2))[0] + 1000 * z for z, plane in enumerate(labels)])
    ids[labels != 1] = 0
    _, inverse, sizes = np.unique(ids, return_inverse=True, return_counts=True)
    means = np.bincount(inverse.ravel(), weights=1 - probs[0].astype(np.float64).ravel())[1:] / sizes[1:]
    means = np.sort(means[sizes[1:] >= 4])
    gaps = np.diff(means[len(means) // 4: 3 * len(means) // 4])  # a threshold in the largest gap of the middle half
    tau = float(means[len(means) // 4 + np.argmax(gaps)] + gaps.max() / 2)
    expected = clean_reference(labels, min_size="auto", fill_holes=True, probs=probs, min_confidence=tau)
    auto = clean_reference(labels, min_size="auto", fill_holes=True)
    assert 0 < expected.max() < auto.max()  # the rule removed some objects and kept others
    out = segment(src, model, tmp_path / "o.zarr", axes="ZYX", tile=52, chunks=(1, 8, 8), block=(1, 16, 24),
                  min_confidence=tau, progress=False, **backend)
    np.testing.assert_array_equal(out[:], expected)
    lazy = segment(src, model, None, axes="ZYX", tile=52, chunks=(1, 8, 8), block=(2, 16, 24), min_confidence=tau,
                   **backend)
    np.testing.assert_array_equal(np.asarray(lazy), expected)
    np.testing.assert_array_equal(np.asarray(segment(src, model, None, axes="ZYX", tile=52, **backend)),
                                  auto)  # "auto": 0
    from fastunet.modelfile import read_model

    bundle = read_model(model)
    sure = save_model(tmp_path / "sure.safetensors", bundle.module, bundle.normalization,
                      extra={"calibration": {"shift": 0.0, "min_confidence": tau}})
    np.testing.assert_array_equal(np.asarray(segment(src, sure, None, axes="ZYX", tile=52, **backend)), expected)
    with pytest.raises(UserError, match=r"Cannot resume .*min_confidence=.*this run has min_confidence=0.0"):
        segment(src, model, tmp_path / "o.zarr", axes="ZYX", tile=52, chunks=(1, 8, 8), block=(1, 16, 24),
                min_confidence=0.0, resume=True, progress=False, **backend)


def _fail_after(monkeypatch, n):
    """The (n+1)-th block task raises (predict or relabel stage), as a kill would stop the run."""
    from fastunet.engine import scheduling

    real, calls = scheduling.run_block, []

    def run_block(job, block):
        calls.append((job.stage, block.name))
        if len(calls) > n:
            raise RuntimeError("injected failure")
        return real(job, block)

    monkeypatch.setattr(scheduling, "run_block", run_block)
    return calls


@pytest.mark.parametrize("fail_at", [5, 18 + 7])  # in the predict stage; in the relabel pass
def test_resume_after_a_failure_gives_identical_ids(tmp_path, model, monkeypatch, fail_at):
    vol = _rng().normal(size=(2, 48, 48)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", vol, (1, 16, 16))
    kw = dict(axes="ZYX", tile=52, block=(1, 16, 16), progress=False, threads=1, min_size=2)
    reference = segment(src, model, tmp_path / "ref.zarr", **kw)[:]
    out = tmp_path / "o.zarr"
    with monkeypatch.context() as m:
        calls = _fail_after(m, fail_at)
        with pytest.raises(RuntimeError, match="injected"):
            segment(src, model, out, **kw)
    assert calls[-1][0] == ("predict" if fail_at < 18 else "relabel")
    assert not zarr.open_group(str(out)).attrs["fastunet"]["complete"]
    with pytest.raises(UserError, match="already exists"):
        segment(src, model, out, **kw)
    with monkeypatch.context() as m:
        calls = _fail_after(m, 10**6)
        resumed = segment(src, model, out, resume=True, **kw)
    predicted = [name for stage, name in calls if stage == "predict"]
    assert len(predicted) == max(0, 18 - fail_at)  # recorded blocks are not computed again
    np.testing.assert_array_equal(resumed[:], reference)
    assert not (out / "_fastunet_instances").exists() and not (out / "_fastunet_done").exists()
    again = segment(src, model, out, resume=True, **kw)  # complete: nothing to do
    np.testing.assert_array_equal(again[:], reference)


def test_min_size_that_removes_everything_keeps_the_network_results(tmp_path, model):
    vol = _rng().normal(size=(2, 32, 32)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", vol, (1, 16, 16))
    kw = dict(axes="ZYX", tile=52, block=(1, 16, 16), progress=False)
    with pytest.raises(UserError, match=r"min_size=100000 removes every object.*resume=True"):
        segment(src, model, tmp_path / "o.zarr", min_size=100000, **kw)
    fixed = segment(src, model, tmp_path / "o.zarr", min_size=3, resume=True, **kw)
    np.testing.assert_array_equal(fixed[:], segment(src, model, tmp_path / "r.zarr", min_size=3, **kw)[:])
    with pytest.raises(UserError, match="completed with min_size=3"):
        segment(src, model, tmp_path / "o.zarr", min_size=4, resume=True, **kw)
    empty = np.asarray(segment(np.zeros((20, 20), np.float32), model, None, tile=52, min_size=5))
    assert empty.dtype == np.uint32 and empty.shape == (20, 20)


def test_one_class_model_asked_for_instances_is_one_line(tmp_path, capsys):
    one = _model(tmp_path / "one.safetensors", num_classes=1)
    src = _zarr(tmp_path / "in.zarr", np.zeros((20, 20), np.float32), (10, 10))
    code = main(["segment", src, "-o", str(tmp_path / "o.zarr"), "--model", one, "--kind", "instances"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs a model with at least two classes" in err, err
    out = np.asarray(segment(src, one, None))  # the default for a one-class model: the class map
    assert out.dtype == np.uint8


def test_distributed_cluster_gives_identical_ids(tmp_path, model):
    from distributed import LocalCluster

    vol = _rng().normal(size=(2, 32, 40)).astype(np.float32)
    src = _zarr(tmp_path / "in.zarr", vol, (1, 16, 8))
    kw = dict(axes="ZYX", tile=52, block=(1, 16, 16), progress=False, connect_z=True)
    threaded = segment(src, model, tmp_path / "a.zarr", **kw)[:]
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        dist = segment(src, model, tmp_path / "b.zarr", scheduler=cluster.scheduler_address, **kw)[:]
    np.testing.assert_array_equal(dist, threaded)
    assert threaded.max() > 1


def test_cli_two_class_model_writes_instances_by_default(tmp_path, model, capsys):
    img = (_rng().normal(size=(40, 44)) * 100 + 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", img)
    code = main(["segment", str(tmp_path / "x.tif"), "-o", str(tmp_path / "out.zarr"), "--model", model, "--quiet"])
    assert code == 0, capsys.readouterr().err
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert root.attrs["fastunet"]["output"] == "instances" and "labels" not in root
    ids = root["instances"][:]
    labels = np.asarray(segment(str(tmp_path / "x.tif"), model, None, output_kind="labels"))
    assert ids.dtype == np.uint32 and ids.max() > 1
    np.testing.assert_array_equal(ids, clean_reference(labels, min_size="auto", fill_holes=True))


def test_cli_cleanup_flags_and_the_summary_line(tmp_path, model, capsys):
    img = (_rng().normal(size=(40, 44)) * 100 + 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", img)
    labels, probs = (np.asarray(a) for a in segment(str(tmp_path / "x.tif"), model, None, output_kind="labels,probs"))
    base = ["segment", str(tmp_path / "x.tif"), "--model", model]
    cases = {"raw": (["--no-cleanup"], dict(min_size=0, fill_holes=False)),
             "three": (["--min-size", "3", "--keep-holes"], dict(min_size=3, fill_holes=False)),
             "auto": ([], dict(min_size="auto", fill_holes=True)),
             "sure": (["--min-confidence", "0.8"], dict(min_size="auto", fill_holes=True, probs=probs,
                                                         min_confidence=0.8))}
    for name, (flags, options) in cases.items():
        assert main([*base, "-o", str(tmp_path / f"{name}.tif"), *flags]) == 0
        np.testing.assert_array_equal(tifffile.imread(tmp_path / f"{name}.tif"), clean_reference(labels, **options))
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert f"; {clean_reference(labels, **options).max()} objects" in line, line
        assert ("removed" in line) == (name != "raw"), line  # the clean-up is shown
        assert ("of a mean probability under 0.80 removed" in line) == (name == "sure"), line
    assert clean_reference(labels, **cases["sure"][1]).max() < clean_reference(labels, **cases["auto"][1]).max()
    for flag, value, message in (("--min-size", "big", "expected auto or a number of voxels >= 0"),
                                 ("--min-confidence", "1.5", "expected auto or a mean probability in [0, 1)")):
        with pytest.raises(SystemExit) as exit_code:
            main([*base, "-o", str(tmp_path / "bad.tif"), flag, value])
        assert exit_code.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: {message}" in err.strip().splitlines()[-1]


def test_records_kept_in_memory_match_the_files(tmp_path):
    """InstanceRecords keeps what it recorded (read-only, up to memory_bytes, the oldest
    dropped first); the files hold the same, and a copy for another process reads them."""
    import pickle

    from fastunet.io import InstanceRecords

    records = InstanceRecords(str(tmp_path / "out.zarr"), memory_bytes=3000)
    rng = np.random.default_rng(0)
    blocks = {f"b{i}": {"ids": rng.integers(0, 300, (30, 30)).astype(np.uint32), "size": np.arange(5)} for i in range(3)}
    for name, arrays in blocks.items():
        records.put(name, arrays)
    fresh = pickle.loads(pickle.dumps(records))
    assert not fresh._kept and list(records._kept) == ["b2"]  # 1800 B of uint16 ids + sizes a block
    for name, arrays in blocks.items():
        kept, read = records.get(name, "ids", "size", "absent"), fresh.get(name, "ids", "size", "absent")
        for a, b, want in zip(kept, read, (arrays["ids"], arrays["size"], np.zeros((0, 0)))):
            assert a.dtype == b.dtype and np.array_equal(a, want) and np.array_equal(b, want)
        assert kept[0].dtype == np.uint16
    assert not records.get("b2", "ids")[0].flags.writeable  # kept: read-only
    assert blocks["b2"]["ids"].flags.writeable  # the caller's array is untouched
    records.remove()
    assert not records._kept and not (tmp_path / "out.zarr" / "_fastunet_instances").exists()


def test_the_recorded_merge_read_from_memory_matches_the_files(tmp_path):
    """After put_merge the object answers merge_info and block_lut from memory, exactly as
    the files answer a copy for another process; drop_merge forgets it, a new merge replaces it."""
    import pickle

    from fastunet.engine.instances import Merge
    from fastunet.io import InstanceRecords

    records = InstanceRecords(str(tmp_path / "out.zarr"))
    rng = np.random.default_rng(0)
    for generation in ("g1", "g2"):
        lut = rng.integers(0, 50, 40).astype(np.uint32)
        merged = Merge(lut=lut, offsets=np.array([0, 10, 25, 40]), count=50, largest=99, min_size="auto")
        records.put_merge(merged, generation=generation)
        fresh = pickle.loads(pickle.dumps(records))
        assert records.merge_info() == fresh.merge_info() and records.merge_info()["generation"] == generation
        for b in range(3):
            a, c = records.block_lut(b), fresh.block_lut(b)
            assert a.dtype == c.dtype and np.array_equal(a, c) and np.array_equal(a[1:], lut[[0, 10, 25][b]:[10, 25, 40][b]])
    records.drop_merge()
    assert records.merge_info() is None


@pytest.mark.parametrize("n,m", [(1, 0), (7, 0), (50, 30), (400, 380), (2000, 5000)])
def test_components_number_them_as_scipy_does(n, m):
    """The merge's union-find gives scipy's connected components, numbering included (random
    graphs with repeated edges and self-loops, and a long chain in shuffled order)."""
    from scipy import sparse
    from scipy.sparse import csgraph

    from fastunet.engine.connectivity import components

    rng = np.random.default_rng(n + m)
    graphs = [rng.integers(0, n, (m, 2))]
    if n > 1:
        chain = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)
        graphs.append(chain[rng.permutation(n - 1)][:, ::-1] if m else chain[:0])
    for pairs in graphs:
        graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        want = csgraph.connected_components(graph, directed=False)
        got = components(pairs, n)
        assert got[0] == want[0] and np.array_equal(got[1], want[1])


def test_records_of_the_earlier_format_still_read(tmp_path):
    """A block record written before the records were zstd frames (deflated ``.npy`` entries,
    ``np.savez_compressed``'s layout) is read as it was: a resumed output of an earlier version
    relabels from it."""
    import zipfile

    from fastunet.io import InstanceRecords

    rng = np.random.default_rng(3)
    arrays = {"ids": rng.integers(0, 300, (1, 40, 30)).astype(np.uint16), "first": np.arange(7, dtype=np.int64)}
    folder = tmp_path / "out.zarr" / "_fastunet_instances"
    folder.mkdir(parents=True)
    np.savez_compressed(folder / "old.npz", **arrays)
    with zipfile.ZipFile(folder / "old.npz") as z:
        assert sorted(z.namelist()) == ["first.npy", "ids.npy"]
    ids, first, absent = InstanceRecords(str(tmp_path / "out.zarr")).get("old", "ids", "first", "lo1")
    assert np.array_equal(ids, arrays["ids"]) and ids.dtype == np.uint16
    assert np.array_equal(first, arrays["first"]) and absent.shape == (0, 0)
    records = InstanceRecords(str(tmp_path / "out.zarr"))
    records.put("new", arrays)
    with zipfile.ZipFile(folder / "new.npz") as z:
        assert sorted(z.namelist()) == ["first.npy.zst", "ids.npy.zst"]
