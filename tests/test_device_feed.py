"""Feeding the device: tiles in their stored dtype, normalized on the device, padded batches.

On CUDA the engine hands :class:`DeviceRunner` raw tiles (uint8, uint16, ... float64) with
each tile's normalization constants; the runner stages them in pinned memory, copies them on
a side stream and normalizes them there with :meth:`Normalization.apply` on tensors. What can
be checked without a GPU is checked here on the CPU: the torch normalization against numpy bit
for bit (every supported dtype, NaN/Inf, slice scope, large offsets), the block task's raw
path against its numpy path (the network gets the same bits), the runner's batching, padding,
buffer reuse, interrupt and out-of-memory handling with a fake predictor. The ``gpu`` tests
check the CUDA path end to end and that the fused network's CUDA graph is captured once per
shape.
"""

import threading
import time

import numpy as np
import pytest
import torch

from fastunet import Normalization, ReferenceUNet, UNetConfig, geometry
from fastunet.engine import DeviceRunner, Job, LoadedNetwork, ModelHandle, compute_block, make_predictor, plan_layout
from fastunet.engine.oom import OOMBackoff
from fastunet.engine.predictor import Prediction, as_numpy
from fastunet.engine.runtime import PredictionCancelled, cancel_predictions
from fastunet.io import open_volume
from fastunet.modelfile import ModelBundle
from fastunet.normalization import is_wide, normalization_stats

DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float16", "float32", "float64")


def _rng():
    return np.random.default_rng(torch.initial_seed())


def _values(dtype, shape, rng):
    """Values over the dtype's whole range, its extremes included; NaN, +-Inf and the
    largest value for floats."""
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        x = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
        x.flat[:2] = [info.min, info.max]
    else:
        x = (rng.normal(size=shape) * 300).astype(dt)
        x.flat[:4] = [np.nan, np.inf, -np.inf, np.finfo(dt).max]
    return x


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """float32 arrays equal bit for bit, NaNs (whatever their payload) where NaNs are."""
    nan = np.isnan(a)
    return bool((nan == np.isnan(b)).all() and (a.view(np.uint32)[~nan] == b.view(np.uint32)[~nan]).all())


def _old_numpy_path(x, offset, scale):
    """The block task's normalization before this change (commit 9705069): apply, then
    NaN/Inf -> 0 for float inputs."""
    wide = x.dtype == np.float64 or (x.dtype.kind in "iu" and x.dtype.itemsize > 2)
    work = np.float64 if wide else np.float32
    out = (np.asarray(x, dtype=work) - np.asarray(offset, dtype=work)) / np.asarray(scale, dtype=work)
    if wide:
        limit = np.finfo(np.float32).max
        np.clip(out, -limit, limit, out=out)
    out = out.astype(np.float32, copy=False)
    if x.dtype.kind == "f":
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out


# ------------------------------------------------------------------ the normalization
@pytest.mark.parametrize("scope", ["volume", "slice"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_normalization_matches_numpy_bit_for_bit(dtype, scope):
    vol = _values(dtype, (2, 3, 9, 11), _rng())  # (C, Z, Y, X)
    stats = normalization_stats(open_volume(vol, axes="CZYX"), Normalization(mode="meanstd", scope=scope))
    offset, scale = stats.for_slices(0, 3)
    assert offset.shape == ((2, 3, 1, 1) if scope == "slice" else (2, 1, 1, 1))
    before = vol.copy()
    for zero in (False, True):
        want = Normalization.apply(vol, offset, scale, zero_nonfinite=zero)
        # int64 offsets beyond 2**44 are extended precision (numpy.longdouble), which torch has
        # not: they reach the tensor path as numpy arrays (split into two float64 parts there)
        t_offset = offset if offset.dtype == np.longdouble else torch.from_numpy(offset)
        got = Normalization.apply(torch.from_numpy(vol), t_offset, torch.from_numpy(scale), zero_nonfinite=zero)
        assert got.dtype == torch.float32 and want.dtype == np.float32
        assert _bits_equal(got.numpy(), want), dtype
        assert zero is False or np.isfinite(want).all()
        # constants as numbers or numpy arrays give the same bits as tensors
        got = Normalization.apply(torch.from_numpy(vol), offset, scale, zero_nonfinite=zero)
        assert _bits_equal(got.numpy(), want)
    np.testing.assert_array_equal(vol, before)  # the input is never written


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_numpy_path_gives_the_values_it_gave(dtype):
    """Bit for bit the old block-task values, except float64 +-Inf: now 0 (as NaN, and as
    +-Inf in every other float dtype), where it used to be +-3.4e38."""
    vol = _values(dtype, (1, 2, 16, 16), _rng())
    offset = np.array([[[[7.25]], [[-3.5]]]])
    scale = np.array([[[[0.3]], [[1e5]]]])
    with np.errstate(over="ignore"):  # the largest float32 over 0.3: +Inf, then 0, before and now
        new = Normalization.apply(vol, offset, scale, zero_nonfinite=np.dtype(dtype).kind == "f")
        old = _old_numpy_path(vol, offset, scale)
    changed = np.isinf(vol) if dtype == "float64" else np.zeros(vol.shape, bool)
    assert _bits_equal(new[~changed], old[~changed])
    assert (new[changed] == 0).all() and (np.abs(old[changed]) == np.finfo(np.float32).max).all()


@pytest.mark.parametrize("dtype, shift", [("int64", 2**40), ("uint32", 2**31), ("int32", 2**30),
                                          ("float64", 1e12), ("float64", 1e300)])
def test_large_offsets_keep_their_contrast_in_torch(dtype, shift):
    rng = _rng()
    small = rng.integers(0, 1000, size=(1, 1, 20, 20))
    vol = (small * (1.0 if dtype != "float64" or shift < 1e100 else 1e297)).astype(dtype) + np.array(shift, dtype)
    stats = normalization_stats(open_volume(vol[0, 0], axes="YX"), Normalization(mode="percentile"))
    offset, scale = stats.for_slices(0, 1)
    assert is_wide(vol.dtype) and is_wide(torch.from_numpy(vol).dtype)
    want = Normalization.apply(vol, offset, scale, zero_nonfinite=True)
    got = Normalization.apply(torch.from_numpy(vol), torch.from_numpy(offset), torch.from_numpy(scale),
                              zero_nonfinite=True).numpy()
    assert _bits_equal(got, want)
    assert np.corrcoef(got.ravel(), small.ravel())[0, 1] > 0.999  # the contrast survives the offset


def test_which_dtypes_are_wide():
    wide = {d for d in DTYPES if is_wide(np.dtype(d))}
    assert wide == {"uint32", "int32", "int64", "float64"}
    assert wide == {d for d in DTYPES if is_wide(torch.from_numpy(np.zeros(1, d)).dtype)}
    assert not is_wide(torch.bfloat16) and not is_wide(torch.bool)


# ----------------------------------------------------------------------- a fake network
class _PerTile:
    """A fake predictor that computes every tile on its own (so results do not depend on the
    batch): labels = (sum of the channels > 0) on the output tile, probabilities its sigmoid.
    Records every batch it gets."""

    backend, dtype = "fake", "fp32"

    def __init__(self, config, device="cpu"):
        self.config, self.device = config, torch.device(device)
        self.calls = []

    def predict(self, tiles, output="labels"):
        self.calls.append(tiles.clone())
        c = geometry.context(self.config.depth)
        core = tiles.float().sum(1)[:, c:tiles.shape[-2] - c, c:tiles.shape[-1] - c]
        p = torch.sigmoid(core)
        return Prediction(probs=torch.stack([1 - p, p], 1).half() if output in ("probs", "both") else None,
                          labels=(core > 0).to(torch.uint8) if output in ("labels", "both") else None)


def _handle(in_channels=1):
    net = ReferenceUNet(UNetConfig(in_channels=in_channels, num_classes=2, base_channels=4, depth=2))
    return ModelHandle.from_module(ModelBundle(net.eval(), Normalization(mode="meanstd", scope="slice")))


def _network(handle, fake, *, runner: bool, batch_size=3):
    """A LoadedNetwork on the CPU whose predictor is ``fake``: called directly, or through a
    DeviceRunner that pads its batches (as on CUDA)."""
    net = LoadedNetwork(handle, device="cpu", backend="torch", dtype="fp32", batch_size=batch_size,
                        use_runner=runner)
    net.predictor = fake
    if runner:
        net.runner.close()
        net.runner = DeviceRunner(fake, batch_size=batch_size, pad=True)
        net.raw_tiles = True  # as on CUDA: the runner normalizes (on the CPU the block task does)
    return net


def _jobs(vol, axes, handle, scope):
    """The same block task with the numpy path and with the raw-tile (runner) path."""
    src = open_volume(vol, axes=axes)
    stats = normalization_stats(src, Normalization(mode="meanstd", scope=scope))
    spatial = src.spatial_shape
    layout = plan_layout(spatial, 2, source_chunks=spatial, tile=52, chunks=(1,) * (len(spatial) - 2) + (16, 24),
                         block=(2,) * (len(spatial) - 2) + (32, 24))
    fakes = _PerTile(handle.config), _PerTile(handle.config)
    jobs = [Job(source=src, model=handle, layout=layout, stats=stats, output_kind="both", store=None, device="cpu",
                backend="torch", dtype="fp32", batch_size=3, use_runner=runner,
                network=_network(handle, fake, runner=runner)) for fake, runner in zip(fakes, (False, True))]
    return jobs, fakes, layout


@pytest.mark.parametrize("dtype, axes, shape, scope", [
    ("uint8", "YX", (45, 50), "volume"),
    ("uint16", "ZYX", (3, 40, 37), "slice"),
    ("int64", "ZYX", (2, 33, 30), "slice"),
    ("float32", "CYX", (2, 41, 35), "volume"),
    ("float64", "ZYX", (3, 30, 29), "slice"),
    ("float16", "CZYX", (2, 2, 30, 26), "slice"),
])
def test_raw_tiles_reach_the_network_as_the_numpy_path_normalizes_them(dtype, axes, shape, scope):
    """compute_block with a runner (tiles in their dtype, normalized by torch in the runner,
    padded batches) and without (normalized by numpy here): the network gets the same bits,
    and the block the same labels, probabilities and NaN/Inf count."""
    rng = _rng()
    vol = _values(dtype, shape, rng)
    if dtype == "int64":
        vol = rng.integers(0, 4000, size=shape) + 2**40
    elif np.dtype(dtype).kind == "f":
        vol = (rng.normal(size=shape) * 50 + 100).astype(dtype)
        vol.flat[rng.choice(vol.size, 5, replace=False)] = [np.nan, np.inf, -np.inf, np.nan, np.inf]
    if axes.startswith("Z"):  # slices of very different intensity: wrong per-slice constants show
        vol = vol * np.arange(1, shape[0] + 1).reshape(-1, *([1] * (len(shape) - 1))).astype(vol.dtype)
    handle = _handle(in_channels=2 if "C" in axes else 1)
    (plain, fed), (fake_plain, fake_fed), layout = _jobs(vol, axes, handle, scope)
    assert not plain.network.takes_raw_tiles and fed.network.takes_raw_tiles
    try:
        for block in layout.blocks():
            fake_plain.calls.clear()
            fake_fed.calls.clear()
            want, got = compute_block(plain, block), compute_block(fed, block)
            n = sum(len(t) for t in fake_plain.calls)
            assert all(len(t) == 3 for t in fake_fed.calls)  # padded: one shape
            sent = torch.cat(fake_fed.calls)[:n]  # the padding rows are at the end of the last batch
            assert torch.equal(sent.view(torch.int32), torch.cat(fake_plain.calls).view(torch.int32))
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
            assert got[2] == want[2]
    finally:
        fed.network.close()


# ------------------------------------------------------------------------- the runner
def test_runner_pads_batches_keeps_requests_apart_and_reuses_its_buffers():
    handle = _handle()
    fake = _PerTile(handle.config)
    runner = DeviceRunner(fake, batch_size=4, pad=True)
    rng = _rng()
    requests = []
    for n, dtype, edge in ((1, "uint16", 52), (5, "uint16", 52), (2, "uint8", 52), (7, "uint16", 60),
                           (3, "float32", 52), (4, "uint16", 52)):
        tiles = _values(dtype, (n, 1, edge, edge), rng)
        norm = None if dtype == "float32" else (rng.normal(size=(n, 1)) * 100, rng.uniform(1, 50, size=(n, 1)))
        if norm is None:
            tiles = np.nan_to_num(tiles, nan=0.0, posinf=0.0, neginf=0.0)  # already normalized
        requests.append((tiles, norm))
    results = [None] * len(requests)

    def work(i):
        results[i] = runner.submit(requests[i][0], "both", norm=requests[i][1]).result()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(call.shape[0] == 4 for call in fake.calls)  # every batch padded to batch_size
    assert sum(1 for _ in fake.calls) >= 6  # 22 tiles of 4 keys in batches of at most 4
    for (tiles, norm), (labels, probs) in zip(requests, results):
        x = tiles if norm is None else Normalization.apply(tiles, norm[0][:, :, None, None], norm[1][:, :, None, None],
                                                           zero_nonfinite=tiles.dtype.kind == "f")
        want = _PerTile(handle.config).predict(torch.from_numpy(x), "both")
        assert labels.dtype == np.uint8 and probs.dtype == np.float16
        np.testing.assert_array_equal(labels, want.labels.numpy())
        np.testing.assert_array_equal(probs, want.probs.numpy())
    # one dtype and shape for a while: the two staging buffers are reused, not reallocated
    # (after two batches, one per slot, have given both slots this dtype and shape)
    for _ in range(2):
        runner.submit(_values("uint16", (4, 1, 52, 52), rng), "labels", norm=(np.zeros((4, 1)), np.ones((4, 1)))).result()
    pointers = set()
    for _ in range(6):
        tiles = _values("uint16", (4, 1, 52, 52), rng)
        runner.submit(tiles, "labels", norm=(np.zeros((4, 1)), np.ones((4, 1)))).result()
        pointers |= {as_numpy(slot.tiles).ctypes.data for slot in runner._slots}
    runner.close()
    assert len(pointers) == 2


def test_runner_refuses_constants_of_the_wrong_shape():
    runner = DeviceRunner(_PerTile(_handle().config), batch_size=2)
    with pytest.raises(ValueError, match=r"constants of shape \(3, 1\)"):
        runner.submit(np.zeros((3, 1, 52, 52), np.uint8), "labels", norm=(np.zeros(3), np.ones(3)))


@pytest.mark.parametrize("gives_up", [True, False])
def test_a_block_waiting_for_the_runner_on_ctrl_c(gives_up):
    """On CUDA (``gives_up_on_interrupt``) a block waiting for the runner gives up at once;
    on the CPU (the default here) it waits for its tiles, so that it goes on to be recorded."""
    handle = _handle()
    entered, release = threading.Event(), threading.Event()

    class Stuck(_PerTile):
        def predict(self, tiles, output="labels"):
            entered.set()
            release.wait(60)
            return super().predict(tiles, output)

    net = _network(handle, Stuck(handle.config), runner=True, batch_size=2)
    assert not net.gives_up_on_interrupt  # a CPU network
    net.gives_up_on_interrupt = gives_up
    outcome = []

    def block():
        try:
            labels, _ = net.predict_raw(np.zeros((2, 1, 52, 52), np.uint16), "labels", np.zeros((2, 1)),
                                        np.ones((2, 1)))
            outcome.append(labels.shape)
        except PredictionCancelled:
            outcome.append("cancelled")

    thread = threading.Thread(target=block)
    try:
        thread.start()
        assert entered.wait(30)
        cancel_predictions.set()  # what the scheduler does on Ctrl-C
        if gives_up:
            thread.join(30)
            assert outcome == ["cancelled"]  # while the forward is still stuck
        release.set()
        thread.join(30)
        assert outcome == (["cancelled"] if gives_up else [(2, 12, 12)])
    finally:
        cancel_predictions.clear()
        release.set()
        thread.join(30)


def test_out_of_memory_back_off_with_raw_tiles_on_the_runner(caplog):
    handle = _handle()

    class OOMAbove(_PerTile):
        def predict(self, tiles, output="labels"):
            if tiles.shape[0] > 1:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return super().predict(tiles, output)

    fake = OOMAbove(handle.config)
    net = _network(handle, fake, runner=True, batch_size=4)
    net.runner.predictor = OOMBackoff(fake, depth=2)
    rng = _rng()
    tiles = rng.integers(0, 60000, size=(6, 1, 52, 52), dtype=np.uint16)
    offset, scale = rng.normal(size=(6, 1)) * 1e4 + 3e4, rng.uniform(1e3, 1e4, size=(6, 1))
    with caplog.at_level("WARNING", logger="fastunet.engine"):
        labels, probs = net.predict_raw(tiles, "both", offset, scale)
    net.close()
    assert "with 4 tiles per call; going on with 2" in caplog.text and "going on with 1" in caplog.text
    x = Normalization.apply(tiles, offset[:, :, None, None], scale[:, :, None, None])
    want = _PerTile(handle.config).predict(torch.from_numpy(x), "both")
    np.testing.assert_array_equal(labels, want.labels.numpy())
    np.testing.assert_array_equal(probs, want.probs.numpy())


def test_predict_raw_without_a_runner_normalizes_here():
    handle = _handle()
    fake = _PerTile(handle.config)
    net = _network(handle, fake, runner=False, batch_size=2)
    tiles = _values("float32", (3, 1, 52, 52), _rng())
    offset, scale = np.full((3, 1), 2.0), np.full((3, 1), 4.0)
    labels, _ = net.predict_raw(tiles, "labels", offset, scale)
    want = Normalization.apply(tiles, 2.0, 4.0, zero_nonfinite=True)
    assert torch.equal(torch.cat(fake.calls), torch.from_numpy(want))
    assert labels.shape == (3, geometry.output_size(52, 2), geometry.output_size(52, 2))


def test_cuda_graph_is_asked_for_the_fused_network_only_on_cuda():
    model = ReferenceUNet(UNetConfig(base_channels=4, depth=2)).eval()
    assert make_predictor(model, "torch", "cpu", cuda_graph=True).backend == "torch"
    fused = make_predictor(model, "triton", "cpu", cuda_graph=True)
    assert fused.net.cuda_graph is False and fused.net.captures == 0  # no graphs under the interpreter


# -------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_normalization_matches_numpy_gpu(dtype):
    vol = _values(dtype, (2, 3, 33, 35), _rng())
    stats = normalization_stats(open_volume(vol, axes="CZYX"), Normalization(mode="meanstd", scope="slice"))
    offset, scale = stats.for_slices(0, 3)
    for zero in (False, True):
        want = Normalization.apply(vol, offset, scale, zero_nonfinite=zero)
        got = Normalization.apply(torch.from_numpy(vol).cuda(), torch.from_numpy(offset).cuda(),
                                  torch.from_numpy(scale).cuda(), zero_nonfinite=zero)
        assert got.is_cuda and _bits_equal(got.cpu().numpy(), want), dtype
        # the runner's form: constants per tile and channel, (N, C, 1, 1)
        tiles = np.ascontiguousarray(vol.transpose(1, 0, 2, 3))  # (Z, C, Y, X): one tile per slice
        per_tile = [torch.from_numpy(np.ascontiguousarray(v[:, :, 0, 0].T))[:, :, None, None].cuda()
                    for v in (offset, scale)]
        got = Normalization.apply(torch.from_numpy(tiles).cuda(), *per_tile, zero_nonfinite=zero)
        assert _bits_equal(got.cpu().numpy(), np.ascontiguousarray(want.transpose(1, 0, 2, 3)))


def _gpu_networks(handle, **kw):
    fed = LoadedNetwork(handle, device="cuda", backend="triton", dtype="bf16", batch_size=4, use_runner=True, **kw)
    plain = LoadedNetwork(handle, device="cuda", backend="triton", dtype="bf16", batch_size=4, use_runner=False, **kw)
    return fed, plain


@pytest.mark.gpu
@pytest.mark.timeout(600)  # the first call compiles the kernels
def test_cuda_feed_matches_the_cpu_normalized_path_and_captures_once_gpu():
    """Raw tiles through the runner (pinned staging, side-stream copy, normalized on the GPU,
    padded batches, the fused network as a CUDA graph) against the same fused network on
    tiles normalized by numpy (no runner, no graph): identical labels and probabilities (the
    same kernels and configs, each pixel summed in the same order, the same input bits);
    against the fp32 PyTorch reference on the CPU: identical labels wherever the reference's
    margin is clear of bf16's error. The graph is captured once per shape and output kind."""
    model = ReferenceUNet(UNetConfig(base_channels=16, depth=2)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.bias.normal_(0.0, 0.1)
    handle = ModelHandle.from_module(ModelBundle(model, Normalization()))
    fed, plain = _gpu_networks(handle)
    fused = fed.predictor.predictor.net
    assert fed.takes_raw_tiles and fused.cuda_graph
    rng = _rng()
    try:
        for dtype in ("uint16", "uint8", "float32", "int64", "float64"):
            for n in (7, 1, 5):
                tiles = _values(dtype, (n, 1, 92, 92), rng)
                if dtype == "int64":
                    tiles = rng.integers(0, 5000, size=tiles.shape) + 2**40
                offset = np.array([[float(np.nanmedian(tiles[i][np.isfinite(tiles[i])]))] for i in range(n)])
                scale = np.full((n, 1), float(np.nanstd(tiles[np.isfinite(tiles)].astype(np.float64))) or 1.0)
                got = fed.predict_raw(tiles, "both", offset, scale)
                want = plain.predict_raw(tiles, "both", offset, scale)
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_array_equal(got[1], want[1])
                x = torch.from_numpy(Normalization.apply(tiles, offset[:, :, None, None], scale[:, :, None, None],
                                                         zero_nonfinite=tiles.dtype.kind == "f"))
                with torch.no_grad():
                    ref = model(x)
                top2 = ref.topk(2, dim=1).values
                clear = (top2[:, 0] - top2[:, 1]) > 0.05
                assert clear.float().mean() > 0.8
                assert (torch.from_numpy(got[0]).long() == ref.argmax(1))[clear].all()
        assert fused.captures == 1  # one shape (4 padded tiles of 92), one output kind
        fed.predict_raw(tiles, "labels", offset, scale)
        assert fused.captures == 2  # another output kind: another graph
        assert all(slot.tiles.is_pinned() for slot in fed.runner._slots)
    finally:
        fed.close()


@pytest.mark.gpu
@pytest.mark.timeout(600)
def test_segment_on_cuda_matches_the_cpu_path_gpu():
    """End to end: a uint16 ZYX volume with slice-scope statistics segmented on CUDA (raw
    feed, fused bf16) and on the CPU (numpy normalization, PyTorch fp32): the labels agree
    except near ties; the slices differ 1x-100x in brightness, so wrong per-slice constants
    would show."""
    from fastunet.segmentation import Segmenter

    model = ReferenceUNet(UNetConfig(base_channels=16, depth=2)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.bias.normal_(0.0, 0.1)
    bundle = ModelBundle(model, Normalization(mode="percentile", scope="slice"))
    rng = _rng()
    vol = (rng.integers(0, 600, size=(3, 150, 170)) * np.array([1, 10, 100])[:, None, None]).astype(np.uint16)
    with Segmenter(bundle, device="cuda", backend="triton", dtype="bf16", tile=92, batch_size=4) as seg:
        gpu = np.asarray(seg.segment(vol, None, axes="ZYX", output_kind="labels", progress=False))
        assert seg.network.takes_raw_tiles and seg.network.predictor.predictor.net.captures == 1
    with Segmenter(bundle, device="cpu", backend="torch", dtype="fp32", tile=92) as seg:
        cpu = np.asarray(seg.segment(vol, None, axes="ZYX", output_kind="labels", progress=False))
    for z in range(3):
        assert (gpu[z] == cpu[z]).mean() > 0.98, z


class _AsyncCalls:
    """A CPU predictor whose calls run asynchronously, as OpenVINO's: :meth:`start` queues a
    call and returns it; the test ends each call (``finish``). Labels: each tile's first value."""

    device = "cpu"
    takes_numpy = True

    def __init__(self):
        self.started: list = []
        self.lock = threading.Lock()
        self.closing = False  # calls end as they start (the test's clean-up)

    def start(self, tiles, output):
        call = _AsyncCall(np.asarray(tiles).copy())
        with self.lock:
            self.started.append(call)
            if self.closing:
                call.ended.set()
        return call

    def end_all(self) -> None:
        with self.lock:
            self.closing = True
            for call in self.started:
                call.ended.set()


class _AsyncCall:
    def __init__(self, tiles):
        self.tiles = tiles
        self.ended = threading.Event()

    def query(self) -> bool:
        return self.ended.is_set()

    def result(self):
        self.ended.wait()
        return Prediction(probs=None, labels=self.tiles[:, 0, :1, :1].astype(np.uint8))


def _wait_for(condition, seconds: float = 10.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.002)
    return False


def test_runner_queues_tiles_behind_an_asynchronous_call_without_filling_a_batch():
    """With an asynchronous CPU predictor (OpenVINO) a tile that comes while a call runs is
    queued at once, in a call of its own, not held back until the batch fills (with one tile a
    block, a stream then idled); the results reach their requests."""
    fake = _AsyncCalls()
    runner = DeviceRunner(fake, batch_size=4)
    try:
        first = runner.submit(np.full((1, 1, 4, 4), 1, np.float32), "labels")
        assert _wait_for(lambda: len(fake.started) == 1)
        second = runner.submit(np.full((1, 1, 4, 4), 2, np.float32), "labels")  # the first call still runs
        assert _wait_for(lambda: len(fake.started) == 2), "the second tile waited for a full batch"
        assert not first.done() and len(fake.started[1].tiles) == 1
        fake.end_all()
        assert first.result(timeout=10)[0][0, 0, 0] == 1 and second.result(timeout=10)[0][0, 0, 0] == 2
    finally:
        fake.end_all()
        runner.close()
