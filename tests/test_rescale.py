"""object_size=: segmenting on a rescaled grid inside the block tasks (fastunet.engine.rescale).

The reference is independent of the engine: smooth the whole image (``np.pad`` reflect, then
``scipy.ndimage.gaussian_filter``), sample it at the rescaled pixels with
``scipy.ndimage.map_coordinates`` (order 1), run the network once on the whole rescaled image
(test_engine's ``reference_logits``), interpolate the probabilities linearly at the input
pixels and take their argmax. The engine's probabilities are float16 on the rescaled grid, so
labels must agree wherever the two classes are further apart than that rounding.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from test_engine import _net, _normalize, reference_logits

from fastunet.engine.rescale import Rescale, RescaledSource
from fastunet.errors import UserError
from fastunet.io import open_volume
from fastunet.modelfile import ModelBundle
from fastunet.objectsize import check_object_size, median_diameter
from fastunet.segmentation import Segmenter, segment
from fastunet.segmentation.scaling import estimate_object_size

MODEL_SIZE = 20.0


def _rng():
    return np.random.default_rng(torch.initial_seed())


def _sized_net(**kwargs):
    """A tiny network whose file would record a training object size of MODEL_SIZE px."""
    net = _net(**kwargs)
    return ModelBundle(net.module, net.normalization, {"object_size": MODEL_SIZE})


def _rescaled_reference(image, factor):
    """The whole image smoothed (when shrinking) and sampled at the rescaled pixel centres."""
    shape = image.shape
    new = tuple(max(1, round(n * factor)) for n in shape)
    steps = [n / m for n, m in zip(shape, new)]
    sigmas = [max(0.0, (s - 1) / 2) for s in steps]
    pad = max(int(4 * s + 0.5) for s in sigmas) + 2
    smooth = ndi.gaussian_filter(np.pad(image.astype(np.float32), pad, mode="reflect"), sigmas)
    axes = [(np.arange(m) + 0.5) * s - 0.5 + pad for m, s in zip(new, steps)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    return ndi.map_coordinates(smooth, coords, order=1).astype(np.float32)


def _back(values, n, axis):
    """Linear maps (index pair, weight) from n input pixels to the rescaled axis."""
    m = values.shape[axis]
    t = (np.arange(n) + 0.5) * (m / n) - 0.5
    j0 = np.floor(t)
    return np.clip(j0, 0, m - 1).astype(int), np.clip(j0 + 1, 0, m - 1).astype(int), t - j0


def _assert_like_reference(labels, probs, image, net, factor):
    """Probabilities within fp16 rounding of the interpolated reference; labels their argmax
    wherever the two classes are not within that rounding of a tie."""
    rescaled = _rescaled_reference(image, factor)
    logits = reference_logits(net, _normalize(rescaled, net)[None])  # (K, h, w) on the rescaled grid
    (y0, y1, wy), (x0, x1, wx) = (_back(logits[0], n, a) for a, n in enumerate(image.shape))
    ref = torch.softmax(torch.from_numpy(logits), 0).numpy()
    ref = ref[:, y0] * (1 - wy)[:, None] + ref[:, y1] * wy[:, None]
    ref = ref[..., x0] * (1 - wx) + ref[..., x1] * wx
    assert np.abs(np.asarray(probs).astype(np.float32) - ref).max() < 2e-3
    top2 = np.sort(ref, axis=0)[-2:]
    exempt = (top2[1] - top2[0]) < 2e-3
    assert exempt.mean() < 0.1
    assert not ((np.asarray(labels) != ref.argmax(0)) & ~exempt).any(), "labels differ from the rescaled reference"


@pytest.mark.parametrize("object_size, block", [(34.0, (16, 24)), (34.0, None), (11.0, (16, 24)), (13.0, (40, 8))])
def test_rescaled_blocks_equal_the_whole_image_reference(object_size, block):
    """Shrinking (34 px objects -> 20) and enlarging (11 -> 20), blocks that cut everything."""
    net = _sized_net()
    image = ndi.gaussian_filter(_rng().normal(0.5, 1.0, size=(45, 61)), 1.0).astype(np.float32)
    labels, probs = segment(image, net, None, object_size=object_size, output_kind="both", tile=52,
                            chunks=None if block is None else (8, 8), block=block, dtype="fp32")
    labels, probs = np.asarray(labels), np.asarray(probs)
    assert labels.shape == image.shape and probs.shape == (2, *image.shape)
    _assert_like_reference(labels, probs, image, net, MODEL_SIZE / object_size)


def test_rescaled_result_is_seamless_across_block_sizes():
    net = _sized_net()
    image = ndi.gaussian_filter(_rng().normal(0.5, 1.0, size=(70, 50)), 1.5).astype(np.float32)
    runs = [segment(image, net, None, object_size=29.0, output_kind="both", tile=tile, chunks=chunks, block=block)
            for tile, chunks, block in ((52, (10, 10), (10, 20)), (64, (7, 9), (21, 9)), (None, None, None))]
    runs = [(np.asarray(a), np.asarray(b)) for a, b in runs]
    for labels, probs in runs[1:]:
        assert (labels != runs[0][0]).mean() < 0.01  # only near-ties may differ (other conv algorithms)
        assert np.abs(probs.astype(np.float32) - runs[0][1].astype(np.float32)).max() < 2e-3


def test_scale_one_is_bit_identical_to_no_object_size():
    net = _sized_net()
    image = _rng().normal(0.5, 1.0, size=(40, 52)).astype(np.float32)
    plain = segment(image, net, None, output_kind="both", tile=52)
    same = segment(image, net, None, output_kind="both", tile=52, object_size=MODEL_SIZE)
    for a, b in zip(plain, same):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_rescaled_reads_are_the_same_pixels_whichever_block_reads_them():
    image = _rng().normal(100.0, 20.0, size=(2, 37, 53)).astype(np.float32)
    vol = open_volume(image, axes="ZYX")
    for factor in (0.45, 1.8):
        source = RescaledSource(vol, Rescale.make((37, 53), factor, (52, 52)))
        whole = source.read((slice(0, 2), slice(0, source.shape[1]), slice(0, source.shape[2])))
        for z in range(2):
            np.testing.assert_allclose(whole[z], _rescaled_reference(image[z], factor), rtol=1e-5, atol=1e-4)
        part = source.read((slice(1, 2), slice(3, 11), slice(5, source.shape[2] - 2)))
        np.testing.assert_array_equal(part, whole[1:2, 3:11, 5:-2])


def test_zarr_output_records_the_object_size_and_resume_checks_it(tmp_path):
    net = _sized_net()
    image = _rng().normal(0.5, 1.0, size=(30, 40)).astype(np.float32)
    out = tmp_path / "o.zarr"
    with Segmenter(net) as seg:
        seg.segment(image, str(out), object_size=25, output_kind="labels", progress=False)
        assert seg.last_summary["object_size"] == 25 and seg.last_summary["scale"] == 0.8
        lazy = np.asarray(seg.segment(image, None, object_size=25, output_kind="labels"))
        import zarr

        np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["labels"][:], lazy)
        with pytest.raises(UserError, match="object_size=25.0, this run has object_size=None"):
            seg.segment(image, str(out), resume=True, output_kind="labels", progress=False)


def test_object_ids_at_another_object_size_are_the_components_of_its_class_map(tmp_path):
    """Instances at object_size=: labelled on the input grid from the class map sampled back
    (and cleaned up there), identical whatever the block, in a file and lazily."""
    from cleanup_reference import clean_reference
    from test_engine_instances import _model

    from fastunet.modelfile import read_model

    plain = read_model(_model(tmp_path / "m.safetensors"))  # its foreground: about half of a noise image
    net = ModelBundle(plain.module, plain.normalization, {"object_size": MODEL_SIZE})
    image = _rng().normal(size=(70, 90)).astype(np.float32)
    ids, labels = segment(image, net, str(tmp_path / "o.zarr"), object_size=31, output_kind="instances,labels",
                          tile=52, chunks=(16, 16), block=(32, 32), progress=False)
    ids, labels = ids[:], labels[:]
    lazy = np.asarray(segment(image, net, None, object_size=31, output_kind="instances", tile=52))
    expected = clean_reference(labels, min_size="auto", fill_holes=True, diameter=31)
    assert expected.max() > 5 and ids.max() == expected.max()
    np.testing.assert_array_equal(ids, expected)  # both number objects by their first voxel
    np.testing.assert_array_equal(lazy, expected)


@pytest.mark.parametrize("size, message", [
    (0, "positive diameter"), (-3, "positive diameter"), (float("nan"), "positive diameter"),
    (500, "larger than the image"), ("big", 'diameter in pixels or "auto"'), (True, 'diameter in pixels or "auto"'),
])
def test_bad_object_sizes_are_one_line_errors(size, message):
    image = np.zeros((30, 40), np.float32)
    with pytest.raises(UserError, match=message) as info:
        segment(image, _sized_net(), None, object_size=size)
    assert "\n" not in str(info.value)


def test_a_model_without_a_training_object_size_refuses_object_size():
    with pytest.raises(UserError, match="records no training object size"):
        segment(np.zeros((30, 40), np.float32), _net(), None, object_size=12)
    assert check_object_size("auto") == "auto" and check_object_size(12) == 12.0


def _sure_of(truth, specks=None, *, sure=0.97, unsure=0.6):
    """A stand-in network: the objects of ``truth`` with foreground probability ``sure``, and
    ``specks`` (a mask) as objects it is unsure of."""
    def segment_crop(crop, size):
        segment_crop.calls.append(size)
        classes = (truth > 0).astype(np.uint8)
        prob = np.where(truth > 0, sure, 0.02)
        if specks is not None:
            classes[specks] = 1
            prob = np.where(specks, unsure, prob)
        return classes, prob
    segment_crop.calls = []
    return segment_crop


def test_estimate_measures_the_objects_the_network_is_sure_of():
    """Specks the network is unsure of do not count; a first measure far from the model's size
    is checked at that size (the stand-in finds the same objects: the rounds agree)."""
    from fastunet.synthetic import synthetic_nuclei

    image, truth = synthetic_nuclei((240, 260), seed=int(torch.initial_seed() % 2**31), n_objects=70, touching=0.0,
                                    radius=(7.0, 11.0))
    truth = ndi.label(truth > 0)[0]
    rng = _rng()
    specks = np.zeros(truth.shape, bool)  # 400 specks of 3 x 3 px (more specks than objects)
    for y, x in zip(rng.integers(1, 239, 400), rng.integers(1, 259, 400)):
        specks[y - 1:y + 2, x - 1:x + 2] = True
    specks &= ndi.distance_transform_edt(truth == 0) > 2
    vol = open_volume(image, axes="YX")
    crop = _sure_of(truth, specks)
    measure = estimate_object_size(crop, vol, MODEL_SIZE)
    assert measure.size == pytest.approx(median_diameter(truth), rel=0.05)
    assert crop.calls[0] is None and (len(crop.calls) == 1) == (1 / 1.15 <= measure.size / MODEL_SIZE <= 1.15)
    for model_size in (measure.size, 2 * measure.size):  # the model's own size: one round; else two
        crop = _sure_of(truth, specks)
        assert estimate_object_size(crop, vol, model_size).size == measure.size
        assert crop.calls == ([None] if model_size == measure.size else [None, measure.size])


def test_an_unsure_estimate_runs_at_the_input_scale_and_says_why(caplog):
    from fastunet.segmentation import scaling
    from fastunet.synthetic import synthetic_nuclei

    image, truth = synthetic_nuclei((240, 260), seed=int(torch.initial_seed() % 2**31), n_objects=70, touching=0.0,
                                    radius=(7.0, 11.0))
    vol = open_volume(image, axes="YX")
    unsure = estimate_object_size(_sure_of(truth, sure=0.7), vol, MODEL_SIZE)
    assert unsure.size is None and "sure of 0 objects" in unsure.reason
    empty = estimate_object_size(lambda crop, s: (np.zeros(crop.shape, np.uint8), np.zeros(crop.shape)), vol,
                                 MODEL_SIZE)
    assert empty.size is None and "finds no objects" in empty.reason

    def drifting(crop, size):  # each round finds objects 0.7 times as large as the last
        drifting.calls += 1
        scale = 0.7 ** (drifting.calls - 1)
        shrunk = ndi.zoom(truth, scale, order=0)[: crop.shape[0], : crop.shape[1]]
        out = np.zeros(crop.shape, truth.dtype)
        out[: shrunk.shape[0], : shrunk.shape[1]] = shrunk
        return out > 0, np.where(out > 0, 0.99, 0.0)

    drifting.calls = 0
    drift = estimate_object_size(drifting, vol, 2 * median_diameter(truth))
    assert drift.size is None and "do not agree" in drift.reason and len(drift.rounds) == 3
    far = estimate_object_size(_sure_of(truth), vol, 5 * median_diameter(truth))
    assert far.size is None and "more than 4 times" in far.reason and len(far.rounds) == 1
    with caplog.at_level("WARNING", logger="fastunet.segmentation"):
        assert scaling.resolve(_sure_of(truth, sure=0.7), vol, "auto", MODEL_SIZE) is None
    assert 'object_size="auto" is unsure (the network is sure of 0 objects' in caplog.text


@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_blur_sigma_measures_a_known_gaussian_blur(sigma):
    """blur_sigma on disks of 24 px blurred by a known Gaussian: within 15 % of its sigma."""
    from fastunet.segmentation.scaling import blur_sigma

    yy, xx = np.mgrid[:200, :200]
    sharp = np.zeros((200, 200))
    for cy, cx in ((50, 50), (50, 140), (140, 60), (140, 150)):
        sharp[(yy - cy) ** 2 + (xx - cx) ** 2 <= 12**2] = 1.0
    objects, n = ndi.label(sharp > 0)
    image = 100 + 900 * ndi.gaussian_filter(sharp, sigma)
    assert blur_sigma(image, objects, np.arange(1, n + 1)) == pytest.approx(sigma, rel=0.15)


def test_an_estimate_refuses_objects_barely_larger_than_the_blur():
    """Objects of ~8 px blurred by 2 px: the estimate says their size cannot be told (and
    measures objects of ~18 px blurred as much)."""
    from fastunet.synthetic import synthetic_nuclei

    for radius, refused in (((3.5, 4.5), True), ((8.0, 10.0), False)):
        image, truth = synthetic_nuclei((240, 260), seed=5, n_objects=60, touching=0.0, radius=radius)
        blurred = ndi.gaussian_filter(image.astype(np.float64), 2.0)
        measure = estimate_object_size(_sure_of(truth), open_volume(blurred, axes="YX"), MODEL_SIZE)
        assert (measure.size is None) == refused, measure
        if refused:
            assert "barely larger than the image's blur" in measure.reason


def test_cli_segment_object_size(tmp_path, capsys):
    import tifffile
    import zarr

    from fastunet import save_model
    from fastunet.cli import main

    net = _sized_net()
    model = tmp_path / "m.safetensors"
    save_model(model, net.module, normalization=net.normalization, extra={"object_size": MODEL_SIZE})
    image = (_rng().random((48, 56)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img.tif", image)
    args = ["segment", str(tmp_path / "img.tif"), "-o", str(tmp_path / "out.zarr"), "--model", str(model),
            "--device", "cpu", "--quiet"]
    assert main([*args, "--object-size", "30"]) == 0
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["instances"].shape == (48, 56)
    assert main([*args[:-1], "--object-size", "25", "--overwrite"]) == 0
    assert "object size 25.0 px, rescaled by 0.8" in capsys.readouterr().out
    for bad, message in (("0", "--object-size must be a positive diameter"), ("900", "larger than the image"),
                         ("wide", 'expects a diameter in pixels or "auto"')):
        assert main([*args, "--object-size", bad, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_auto_runs_at_the_size_it_estimates(tmp_path, monkeypatch):
    """object_size="auto": the estimate (recorded in the summary) is then used as if it had been
    given; the estimate sees the middle plane's central crop through the segmenter (its class
    map and foreground probability)."""
    from fastunet.segmentation import scaling

    seen = []

    def estimate(segment_crop, vol, model_size):
        crop = scaling._crop(vol)
        classes, foreground = segment_crop(crop, None)
        seen.append((crop.shape, classes.shape, foreground.shape, model_size))
        assert ((foreground > 0.5) == (classes == 1)).mean() > 0.99
        return scaling.Measure(27.5)

    monkeypatch.setattr(scaling, "estimate_object_size", estimate)
    net = _sized_net()
    image = _rng().normal(0.5, 1.0, size=(3, 40, 52)).astype(np.float32)
    with Segmenter(net) as seg:
        auto = seg.segment(image, str(tmp_path / "a.zarr"), axes="ZYX", object_size="auto", progress=False)[:]
        summary = seg.last_summary
        given = np.asarray(seg.segment(image, None, axes="ZYX", object_size=27.5))
    assert summary["object_size_estimated"] is True and summary["object_size"] == 27.5
    assert seen == [((40, 52), (40, 52), (40, 52), MODEL_SIZE)]
    np.testing.assert_array_equal(auto, given)


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("output", ["labels", "both", "confidence"])
def test_sampling_back_gives_what_the_job_asks_the_network_for(output, classes):
    """The rescaled probabilities interpolated onto a block come back as the network's output
    would (the argmax labels; the probabilities; or, for "confidence", the object probability
    in uint8 steps of 1/255 as OpenVINO's compact graph gives it): two classes through one
    interpolated channel, more through all of them, alike."""
    from types import SimpleNamespace

    from fastunet.engine.predictor import CONFIDENCE_SCALE
    from fastunet.engine.rescale import _sample_back

    rs = Rescale.make((6, 8), 0.5, (44, 44))  # (3, 4) rescaled
    scores = _rng().random((classes, 1, 3, 4))
    probs = (scores / scores.sum(axis=0)).astype(np.float32)  # (K, bz, 3, 4)
    block = SimpleNamespace(box=((0, 1), (0, 6), (0, 8)))
    labels, got = _sample_back(SimpleNamespace(rescale=rs, output_kind=output), block, ((0, 3), (0, 4)), probs)
    _, full = _sample_back(SimpleNamespace(rescale=rs, output_kind="probs"), block, ((0, 3), (0, 4)), probs)
    assert full.shape == (classes, 1, 6, 8)
    # the reference: each class's probability interpolated in float64, then the argmax
    (y0, y1, wy), (x0, x1, wx) = rs.linear(0, 0, 6), rs.linear(1, 0, 8)
    ref = probs.astype(np.float64)[:, :, y0] * (1 - wy)[:, None] + probs.astype(np.float64)[:, :, y1] * wy[:, None]
    ref = ref[..., x0] * (1 - wx) + ref[..., x1] * wx
    np.testing.assert_allclose(full, ref, atol=1e-6)
    assert labels.dtype == np.uint8 and labels.shape == (1, 6, 8)
    np.testing.assert_array_equal(labels, ref.argmax(axis=0))
    if output == "labels":
        assert got is None
    elif output == "both":
        np.testing.assert_array_equal(got, full)
    else:
        assert got.dtype == np.uint8 and got.shape == (1, 1, 6, 8)
        assert np.abs(got - (1 - ref[:1]) * CONFIDENCE_SCALE).max() <= 0.5 + 1e-4


def test_a_rescaled_run_s_blocks_span_tile_steps_of_the_rescaled_grid():
    """rescaled_block: a block computes every rescaled tile its pixels sample, so blocks of a
    fraction of a tile step computed each tile several times; they now span
    RESCALED_BLOCK_STEPS steps (whole chunks, within the volume and RESCALED_BLOCK_VOXELS of
    the rescaled grid, never below the layout's own block)."""
    from fastunet.engine.rescale import rescaled_size
    from fastunet.engine.tiling import Block, plan_layout
    from fastunet.segmentation.scaling import RESCALED_BLOCK_INPUT_VOXELS, RESCALED_BLOCK_VOXELS, rescaled_block

    def tiles_computed(layout, rs):
        inner = rs.layout(layout)
        return sum(len(inner.block_tiles(Block(index=b.index, box=tuple(rs.needed(a, *b.box[a]) for a in (0, 1)))))
                   for b in layout.blocks())

    layout = plan_layout((2300, 2300), 3, source_chunks=(2300, 2300), max_step=1024, max_block_voxels=1 << 20,
                         side_by_side=2)  # as `fastunet segment` plans it on 2 cores
    rs = Rescale.make((2300, 2300), 0.635, (828, 828))  # 1460 x 1460: 2 x 2 tiles of step 736
    assert rs.rescaled == (rescaled_size(2300, 0.635),) * 2 and tiles_computed(layout, rs) == 20
    grown = dataclasses.replace(layout, block=rescaled_block(layout, rs))
    assert grown.block == (2304, 2304) and tiles_computed(grown, rs) == 4  # one block: each tile once
    big = plan_layout((20000, 20000), 3, source_chunks=(1024, 1024), max_step=1024, max_block_voxels=1 << 20)
    far = Rescale.make((20000, 20000), 0.5, (1116, 1116))
    capped = rescaled_block(big, far)
    assert big.block == (1024, 1024) and capped[0] % 1024 == 0 and capped[1] % 1024 == 0
    # shrunk: within both caps, the input's binding (48 Mpx of input are 12 of the rescaled grid)
    assert 1024 < min(capped) and RESCALED_BLOCK_INPUT_VOXELS - 1024**2 < math.prod(capped) <= RESCALED_BLOCK_INPUT_VOXELS
    assert math.prod(capped) * 0.25 <= RESCALED_BLOCK_VOXELS
    capped_layout = dataclasses.replace(big, block=capped)
    assert tiles_computed(capped_layout, far) < tiles_computed(big, far) / 2
    whole = plan_layout((6000, 6000), 3, source_chunks=(1000, 1000), max_step=1024, max_block_voxels=1 << 20)
    shrunk = Rescale.make((6000, 6000), 0.635, (1116, 1116))  # 3810 x 3810: 4 x 4 tiles of step 1024
    one = dataclasses.replace(whole, block=rescaled_block(whole, shrunk))
    assert one.block == (6000, 6000) and tiles_computed(one, shrunk) == 16  # 14.5 Mpx rescaled: one block
    near = Rescale.make((20000, 20000), 2.0, (1116, 1116))  # enlarged: the cap counts rescaled voxels
    enlarged = rescaled_block(big, near)
    assert 1024 < max(enlarged) and 4 * math.prod(enlarged) <= RESCALED_BLOCK_VOXELS
