"""The CPU path: the auto dtype policy (capability detection forced both ways), the PyTorch
predictor's CPU layout, the OpenVINO backend (with the openvino package only), bf16 against
fp32 on a small image, and the parts of P7 that are not timings."""

import json
import os
import sys
import types

import numpy as np
import pytest
import torch
import zarr

from fastunet import devices, save_model
from fastunet.bench import cpu as p7
from fastunet.bench.dtypes import TOLERANCES, compare_dtypes
from fastunet.engine import backends, openvino_backend
from fastunet.engine.predictor import TorchPredictor, class_labels
from fastunet.errors import UserError
from fastunet.model import ReferenceUNet, UNetConfig
from fastunet.normalization import Normalization


def _rng():
    return np.random.default_rng(torch.initial_seed())


@pytest.fixture
def cpu_features(monkeypatch):
    """Set what the CPU reports (``cpu_features({"avx512_bf16": True})``); the cache is cleared
    before and after."""
    devices.cpu_bf16_units.cache_clear()

    def set_features(caps, *, mkldnn=True):
        devices.cpu_bf16_units.cache_clear()
        monkeypatch.setattr(devices, "_cpu_capabilities", lambda: dict(caps))
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: mkldnn)

    yield set_features
    devices.cpu_bf16_units.cache_clear()


# ------------------------------------------------------------------------- the dtype policy
@pytest.mark.parametrize("caps,units,dtype", [
    ({"amx_bf16": True, "avx512_bf16": True}, "AMX-BF16", "bf16"),
    ({"amx_bf16": False, "avx512_bf16": True}, "AVX512-BF16", "bf16"),
    ({"avx512_f": True, "avx2": True}, None, "fp32"),  # AVX-512 without BF16: emulated, slower than fp32
    ({}, None, "fp32"),  # a CPU torch says nothing about (e.g. an ARM one)
])
def test_auto_dtype_follows_the_cpus_bf16_units(cpu_features, caps, units, dtype):
    cpu_features(caps)
    assert devices.cpu_bf16_units() == units
    assert devices.resolve_dtype("auto", "cpu") == devices.resolve_dtype(None, "cpu") == dtype
    assert devices.resolve_dtype("fp32", "cpu") == "fp32" and devices.resolve_dtype("bf16", "cpu") == "bf16"
    reason = devices.describe_dtype("auto", dtype, "cpu")
    assert reason.startswith(f"{dtype} (auto: ") and (units or "no bf16 matrix units") in reason
    assert devices.describe_dtype("fp32", "fp32", "cpu") == "fp32 (asked for)"
    assert devices.resolve_dtype(None, "cuda") == "bf16"  # CUDA: bf16 whatever the CPU


def test_no_bf16_on_pytorch_without_onednn(cpu_features):
    """The CPU's units are the hardware's; PyTorch without oneDNN would emulate bf16 on them
    (fp32 then), OpenVINO's CPU plugin always runs it."""
    cpu_features({"amx_bf16": True}, mkldnn=False)
    assert devices.cpu_bf16_units() == "AMX-BF16"
    assert devices.default_dtype(torch.device("cpu")) == devices.default_dtype("cpu", "torch") == "fp32"
    assert devices.default_dtype("cpu", "openvino") == "bf16"
    assert "PyTorch has no oneDNN" in devices.describe_dtype("auto", "fp32", "cpu")


def test_unknown_dtype_is_refused():
    with pytest.raises(UserError, match="dtype= must be one of auto, fp32"):
        devices.resolve_dtype("int4", "cpu")


@pytest.mark.parametrize("caps,dtype", [({"avx512_bf16": True}, "bf16"), ({}, "fp32")])
def test_segment_runs_and_records_the_auto_dtype(tmp_path, cpu_features, caps, dtype):
    from fastunet.segmentation import Segmenter

    cpu_features(caps)
    net = ReferenceUNet(UNetConfig(base_channels=2, depth=1))
    with Segmenter(net, device="cpu", backend="torch") as seg:
        assert seg.dtype == dtype and seg.network.predictor.dtype == dtype
        seg.segment(_rng().normal(size=(20, 24)).astype(np.float32), tmp_path / "o.zarr", progress=False,
                    output_kind="labels")
        assert seg.last_summary["dtype"] == dtype and seg.last_summary["dtype_choice"].startswith(f"{dtype} (auto")
    meta = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["fastunet"]
    assert meta["dtype"] == seg.dtype_choice and meta["backend"] == "torch"
    assert meta["summary"]["dtype"] == dtype


def test_network_is_prepared_in_a_helper_thread_and_its_failure_leaves_no_output(tmp_path, monkeypatch):
    """On the CPU a new Segmenter loads the network and prepares the run's tile (OpenVINO compiles
    it) in a thread while the statistics are taken; what that raises is raised before the output is made."""
    import threading

    from fastunet.engine import LoadedNetwork
    from fastunet.segmentation import Segmenter

    seen = []
    monkeypatch.setattr(LoadedNetwork, "prepare",
                        lambda self, tile, output: seen.append((tile, output, threading.current_thread().name)))
    net = ReferenceUNet(UNetConfig(base_channels=2, depth=1))
    image = _rng().normal(size=(20, 24)).astype(np.float32)
    with Segmenter(net, device="cpu", backend="torch", tile=28) as seg:
        seg.segment(image, tmp_path / "a.zarr", progress=False, output_kind="labels")
        seg.segment(image, tmp_path / "c.zarr", progress=False, min_confidence=0.5)  # torch: no "confidence" output
    assert seen == [((28, 28), "labels", "fastunet-warmup"), ((28, 28), "both", "fastunet-warmup")]

    def broken(self, tile, output):
        raise RuntimeError("the network cannot be compiled")

    monkeypatch.setattr(LoadedNetwork, "prepare", broken)
    with Segmenter(net, device="cpu", backend="torch") as seg, pytest.raises(RuntimeError, match="cannot be compiled"):
        seg.segment(image, tmp_path / "b.zarr", progress=False, output_kind="labels")
    assert not (tmp_path / "b.zarr").exists()


def test_a_small_image_runs_as_one_tile_a_stream_with_the_same_result(tmp_path, monkeypatch):
    """Under OpenVINO on the CPU (its streams: batch_size, at most one a thread) a small image's
    default plan has a tile for every stream; split or not, the same probabilities."""
    from fastunet.io import open_volume
    from fastunet.segmentation import Segmenter

    net = ReferenceUNet(UNetConfig(base_channels=4, depth=2))
    image = _rng().normal(size=(300, 280)).astype(np.float32)
    with Segmenter(net, device="cpu", backend="torch", dtype="fp32") as seg:
        assert seg._side_by_side(False) == 1  # PyTorch runs one tile on every thread
        seg.segment(image, tmp_path / "whole.zarr", progress=False, output_kind="probs")
        one = seg.last_summary["tile"]
        seg.backend = "openvino"  # what the plan asks of the backend, not the backend itself
        for threads, tiles in ((4, 2), (1, 1)):
            monkeypatch.setattr(openvino_backend, "cpu_threads", lambda: threads)
            assert seg._side_by_side(False) == tiles and seg._side_by_side(True) == 1
            assert seg._layout(open_volume(image, axes="YX"), chunks=None, block=None).tile_count() == tiles
        seg.backend = "torch"
        monkeypatch.setattr(Segmenter, "_side_by_side", lambda self, remote: 2)
        seg.segment(image, tmp_path / "split.zarr", progress=False, output_kind="probs")
        two = seg.last_summary["tile"]
    assert two[0] < one[0] and two[1] == one[1]  # Y (the longer side) split in two
    whole, split = (zarr.open_group(str(tmp_path / name), mode="r")["probs"][:]
                    for name in ("whole.zarr", "split.zarr"))
    np.testing.assert_allclose(split, whole, atol=1e-5)


def test_verbose_segment_says_the_dtype_and_why(tmp_path, cpu_features, capsys):
    from fastunet.cli import main

    cpu_features({"avx512_bf16": True})
    model = save_model(tmp_path / "m.safetensors", ReferenceUNet(UNetConfig(base_channels=2, depth=1)))
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=(24, 24), chunks=(24, 24), dtype="float32")
    z[:] = _rng().normal(size=(24, 24)).astype(np.float32)
    code = main(["segment", str(tmp_path / "in.zarr"), "-o", str(tmp_path / "o.zarr"), "--model", str(model),
                 "--device", "cpu", "--backend", "torch", "-v", "--kind", "labels"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "network on cpu: torch backend, bf16 (auto: the CPU has AVX512-BF16 units)" in err


# ------------------------------------------------------------------ the PyTorch predictor
@pytest.mark.parametrize("dtype,atol", [("fp32", 1e-4), ("bf16", 0.5)])
def test_cpu_predictor_runs_channels_last_on_a_copy(dtype, atol):
    net = ReferenceUNet(UNetConfig(base_channels=4, depth=2)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    predictor = TorchPredictor(net, "cpu", dtype)
    weight = predictor.model.down[0].conv2.weight
    assert weight.dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(v, net.state_dict()[k]) and v.dtype == torch.float32 for k, v in before.items())
    x = torch.randn(3, 1, 60, 60)
    with torch.no_grad():
        want = net(x)
    got = predictor.logits(x).float()
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    # one tile per call: a tile's result does not depend on the batch it comes in
    torch.testing.assert_close(predictor.logits(x[1:2]), predictor.logits(x)[1:2], atol=0, rtol=0)


def test_bf16_agrees_with_fp32_on_a_small_image():
    """The auto dtype's promise (TOLERANCES) with the bundled model on a small synthetic image."""
    from fastunet.synthetic_styles import style_image

    drawn = style_image("classic", (160, 160), seed=2026)
    result = compare_dtypes([drawn.image], [drawn.labels])
    assert result["max_prob_diff"] <= TOLERANCES["max_prob"] and result["mean_prob_diff"] <= TOLERANCES["mean_prob"]
    assert result["labels_identical"] >= TOLERANCES["labels"]
    assert result["f1_diff"] <= TOLERANCES["f1"] and result["f1_fp32"] > 0.5


def test_bf16_agrees_with_fp32_on_a_small_volume_with_the_3d_model():
    """The same promise for the bundled 3D model (auto runs it in bf16 too), scored as 3D
    objects; PyTorch's bf16, emulated where the CPU has no bf16 units."""
    from fastunet.synthetic3d import style_volume

    image, labels, _ = style_volume("confocal", (8, 64, 64), seed=31_000)
    result = compare_dtypes([image], [labels], model="3d", axes="ZYX")
    assert result["pixels"] == image.size and 0 < result["max_prob_diff"] <= TOLERANCES["max_prob"]
    assert result["mean_prob_diff"] <= TOLERANCES["mean_prob"] and result["labels_identical"] >= TOLERANCES["labels"]
    assert result["f1_diff"] <= TOLERANCES["f1"] and result["f1_fp32"] > 0.5


# --------------------------------------------------------------------------- backends
def test_auto_backend_on_the_cpu_picks_openvino_when_installed(monkeypatch):
    monkeypatch.delenv("FASTUNET_OPENVINO", raising=False)
    monkeypatch.setattr(openvino_backend, "available", lambda: True)
    assert backends.resolve_backend("auto", "cpu") == "openvino"
    monkeypatch.setenv("FASTUNET_OPENVINO", "0")
    assert backends.resolve_backend("auto", "cpu") == "torch"
    monkeypatch.setattr(openvino_backend, "available", lambda: False)
    monkeypatch.delenv("FASTUNET_OPENVINO")
    assert backends.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match=r"pip install 'fastunet\[openvino\]'"):
        backends.resolve_backend("openvino", "cpu")
    with pytest.raises(ValueError, match="runs on the CPU"):
        backends.resolve_backend("openvino", "cuda")


@pytest.mark.parametrize("classes", [1, 2, 3])
def test_class_labels_are_numpys_argmax(classes):
    """OpenVINO's labels: numpy's argmax over the classes, ties (first class), +-Inf and NaN (first NaN) included."""
    rng = _rng()
    for trial in range(40):
        scores = rng.integers(-2, 3, size=(2, classes, 5, 6)).astype(np.float32)  # many ties
        scores[rng.random(scores.shape) < 0.05] = np.inf if trial % 2 else -np.inf
        if trial % 4 == 0:
            scores[rng.random(scores.shape) < 0.1] = np.nan
        got = class_labels(scores)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, scores.argmax(axis=1))


def test_openvino_cache_keeps_the_most_recently_used_models(tmp_path):
    import os

    for i in range(5):
        for suffix in (".xml", ".bin"):
            (tmp_path / f"unet-{i}{suffix}").write_text("x")
        os.utime(tmp_path / f"unet-{i}.xml", (1000 + i, 1000 + i))
    os.utime(tmp_path / "unet-0.xml", (2000, 2000))  # the oldest, used again since
    openvino_backend._prune(tmp_path, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"unet-{i}{s}" for i in (0, 3, 4) for s in (".bin", ".xml")]


_OPENVINO_CHECKS = """
import sys
import pytest, torch
from fastunet.engine import openvino_backend
from fastunet.errors import UserError
from fastunet.model import ReferenceUNet, UNetConfig

cache = sys.argv[1]
torch.manual_seed(int(sys.argv[2]))
net = ReferenceUNet(UNetConfig(base_channels=4, depth=2)).eval()
predictor = openvino_backend.OpenVINOPredictor(net, "cpu", "fp32", cache=cache)
three = openvino_backend.OpenVINOPredictor(ReferenceUNet(UNetConfig(base_channels=4, depth=2, num_classes=3)).eval(),
                                           "cpu", "fp32", cache=False)
for shape in ((2, 1, 60, 60), (1, 1, 44, 76)):  # two tile shapes, one converted model
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(predictor.logits(x), net(x), atol=1e-4, rtol=1e-4)
# a second predictor reads the converted model from the cache instead of converting; in bf16
# where OpenVINO computes it, else refused (it would compute fp32 under bf16's name)
openvino_backend.convert = lambda *a, **k: sys.exit("converted again")
bf16 = openvino_backend.runs_bf16(openvino_backend.import_openvino().Core())
if not bf16:
    with pytest.raises(UserError, match="needs a CPU with bf16 units"):
        openvino_backend.OpenVINOPredictor(net, "cpu", "bf16", cache=cache)
again = openvino_backend.OpenVINOPredictor(net, "cpu", "bf16" if bf16 else "tf32", cache=cache, streams=2)
x = torch.randn(3, 1, 60, 60)
with torch.no_grad():
    want = net(x).argmax(1)
assert (again.predict(x).labels.long() == want).float().mean() > 0.99
torch.testing.assert_close(again.logits(x[1:2]), again.logits(x)[1:2], atol=0, rtol=0)  # streams: per tile
# "labels" and "confidence" from the compact graph (OpenVINO computes the labels and the object
# probability, uint8 in steps of 1/255): as the scores give them, exactly in fp32, within a step
# (and the labels but at near ties) in bf16; two classes and three
from fastunet.engine.predictor import CONFIDENCE_SCALE
for p, exact in ((predictor, True), (again, False), (three, True)):
    both, sure = p.predict(x, "both"), p.predict(x, "confidence")
    assert sure.probs.shape == (3, 1, *both.probs.shape[2:]) and sure.probs.dtype == torch.uint8
    want = (1 - both.probs[:, :1].double()) * CONFIDENCE_SCALE
    assert (sure.probs.double() - want).abs().max() <= (0.5 + 1e-4 if exact else 1.5)
    agree = (sure.labels == both.labels).double().mean()
    assert agree == 1 if exact else agree > 0.999, agree
    assert torch.equal(p.predict(x, "labels").labels, sure.labels) and p.predict(x, "labels").probs is None
with pytest.raises(UserError, match='runs in bf16, fp32, tf32, int8; got dtype="fp16"'):
    openvino_backend.OpenVINOPredictor(net, "cpu", "fp16", cache=False)
# OpenVINO's compiled models are kept (CACHE_DIR); a predictor that imports one computes the same bits
from pathlib import Path
# fp32: the scores at two shapes and the compact graph at one; the second predictor (bf16, or
# tf32 where OpenVINO has no bf16; its model read back from the cache): both graphs at one shape
blobs = 5
assert len(list((Path(cache) / "compiled").glob("*.blob"))) == blobs
x = torch.randn(2, 1, 60, 60)
imported = openvino_backend.OpenVINOPredictor(net, "cpu", "fp32", cache=cache)
torch.testing.assert_close(imported.logits(x), predictor.logits(x), atol=0, rtol=0)
assert torch.equal(imported.predict(x, "confidence").probs, predictor.predict(x, "confidence").probs)
assert len(list((Path(cache) / "compiled").glob("*.blob"))) == blobs
"""


@pytest.mark.parametrize("classes", [2, 3])
def test_openvino_softmax_in_numpy(classes):
    """The OpenVINO predictor's numpy softmax (two classes: the logistic of the difference, in
    place) equals the plain softmax, extreme scores included (no NaN from an overflowing exp)."""
    from fastunet.engine.openvino_backend import _softmax

    scores = (_rng().standard_normal((3, classes, 7, 9)) * 6).astype(np.float32)
    scores[0, 0, 0, :2], scores[0, -1, 0, :2] = (200, -200), (-200, 200)
    expected = torch.softmax(torch.from_numpy(scores).double(), 1).numpy()
    np.testing.assert_allclose(_softmax(scores), expected, atol=1e-6, rtol=0)


@pytest.mark.openvino
def test_openvino_backend_matches_the_reference_at_every_tile_from_one_conversion(tmp_path):
    """In a child process: with two OpenVINO compiled models loaded, this suite's later test of
    Ctrl-C under the Triton interpreter died of SIGSEGV (exit 139) in the same pytest process."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _OPENVINO_CHECKS, str(tmp_path), str(torch.initial_seed() % 2**31)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(tmp_path.glob("unet-*.xml"))) == 1


_INT8_CHECKS = """
import sys
from pathlib import Path
import torch
from fastunet.bench.dtypes import INT8_TOLERANCES as T, compare_dtypes
from fastunet.engine import openvino_backend, openvino_int8
from fastunet.modelfile import default_model_path, load_model
from fastunet.synthetic_styles import style_image

# the bundled model quantized (NNCF, once) against fp32 on a small image: the int8 promise
drawn = style_image("classic", (160, 160), seed=2026)
r = compare_dtypes([drawn.image], [drawn.labels], backend="openvino", dtype="int8")
assert r["max_prob_diff"] <= T["max_prob"] and r["mean_prob_diff"] <= T["mean_prob"], r
assert r["labels_identical"] >= T["labels"] and r["f1_diff"] <= T["f1"] and r["f1_fp32"] > 0.5, r
cache = openvino_backend.cache_dir()
assert len(list(cache.glob("unet-int8-*.xml"))) == 1
# a second predictor reads the quantized network from the cache instead of quantizing again
openvino_int8.quantize = lambda *a: sys.exit("quantized again")
again = openvino_backend.OpenVINOPredictor(load_model(default_model_path()), "cpu", "int8")
assert again.predict(torch.zeros(1, 1, 316, 316)).labels.shape == (1, 228, 228)
"""


@pytest.mark.openvino
def test_int8_agrees_with_fp32_and_is_quantized_once(tmp_path):
    """dtype="int8" (OpenVINO, quantized by NNCF) within INT8_TOLERANCES of fp32 for the bundled
    model on a small image; the quantized network is cached (in a child process, as above)."""
    import subprocess

    pytest.importorskip("nncf")
    done = subprocess.run([sys.executable, "-c", _INT8_CHECKS], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


_NO_TORCH_RUN = """
import sys
from fastunet.cli.main import main
rc = main(sys.argv[1:])
print("torch imported:", "torch" in sys.modules)
print("scipy imported:", "scipy" in sys.modules)
sys.exit(rc)
"""


@pytest.mark.openvino
def test_segment_on_openvino_never_imports_torch_once_the_model_is_converted(tmp_path):
    """The CPU path's start: with the converted model in the cache, ``fastunet segment``
    (OpenVINO, the bundled model) runs without importing PyTorch; the first run, which
    converts it, does; both give the same objects. Neither imports SciPy (the objects are
    labelled by :mod:`fastunet.engine.connectivity`)."""
    import subprocess

    import tifffile

    from fastunet.synthetic_styles import style_image

    tifffile.imwrite(tmp_path / "img.tif", style_image("classic", (200, 200), seed=7).image)
    seen = []
    for name in ("a", "b"):
        done = subprocess.run([sys.executable, "-c", _NO_TORCH_RUN, "segment", str(tmp_path / "img.tif"), "-o",
                               str(tmp_path / f"{name}.zarr")], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        seen.append(done.stdout.strip().splitlines()[-2:])
    assert seen == [["torch imported: True", "scipy imported: False"], ["torch imported: False", "scipy imported: False"]]
    a, b = (zarr.open_group(str(tmp_path / f"{n}.zarr"), mode="r") for n in "ab")
    la, lb = (np.asarray(g[next(iter(g.array_keys()))]) for g in (a, b))
    assert la.max() > 5 and np.array_equal(la, lb)


def test_import_fastunet_is_light():
    """``import fastunet`` (and the command's parser) loads neither PyTorch nor SciPy; the
    public names that need them load them when first used."""
    import subprocess

    code = ("import sys, fastunet, fastunet.cli.main; heavy = [m for m in ('torch', 'scipy', 'zarr', 'dask') "
            "if m in sys.modules]; print(heavy); fastunet.ReferenceUNet; print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["[]", "True"]


def test_the_segment_path_imports_no_scipy_and_the_warm_up_imports_what_it_is_given():
    """The modules of a CPU segment import without SciPy (0.2 s of a process's start here);
    the warm-up thread prepares the network, then imports the modules it is given (a run that
    splits objects: the watershed's), a missing one left for the block task to report."""
    import subprocess

    code = ("import sys, fastunet.cli.main, fastunet.segmentation.segmenter, fastunet.engine.instances, "
            "fastunet.engine.instance_tasks, fastunet.engine.blocks, fastunet.engine.rescale, fastunet.io.outputs, "
            "fastunet.segmentation.scaling, fastunet.objectsize; print('scipy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["False"]
    from fastunet.segmentation.warmup import Warmup

    class _Segmenter:
        class network:  # noqa: N801 - stands in for the property
            prepared = []

            @classmethod
            def prepare(cls, tile, output):
                cls.prepared.append((tile, output))

    warm = Warmup(_Segmenter, ("json", "no_such_module_here"), "confidence")
    warm.start(type("L", (), {"tile": (60, 60)}))
    warm.join()
    warm.thread.join()
    assert _Segmenter.network.prepared == [((60, 60), "confidence")] and warm.error is None


@pytest.mark.parametrize("name,kind,index", [("cpu", "cpu", None), ("cuda", "cuda", None), ("cuda:1", "cuda", 1),
                                             (torch.device("cuda", 2), "cuda", 2), ("cpu:0", "cpu", None)])
def test_devices_are_names_torch_takes(name, kind, index):
    device = devices.resolve_device(name)
    assert (device.type, device.index) == (kind, index) and isinstance(device, str)
    assert torch.device(device) == torch.device(str(device))


@pytest.mark.parametrize("name,message", [("gpu", "Unknown device"), ("mps", "Unsupported device"),
                                          ("cuda:x", "Unknown device")])
def test_unknown_devices_are_refused(name, message):
    with pytest.raises(UserError, match=message):
        devices.resolve_device(name)


def test_cuda_is_impossible_without_nvidia_device_nodes(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")  # as in a process that has not imported it
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(devices.os.path, "exists", lambda p: False)
    assert devices.cuda_impossible()
    monkeypatch.setattr(devices.os.path, "exists", lambda p: p == "/dev/nvidiactl")
    assert not devices.cuda_impossible()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.cuda_impossible()


def test_cpu_threads_follow_torch_or_the_environment(monkeypatch):
    assert devices.cpu_threads() == torch.get_num_threads()
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert devices.cpu_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert 1 <= devices.cpu_threads() <= (os.cpu_count() or 1)


def test_int8_runs_on_the_openvino_backend_only():
    net = ReferenceUNet(UNetConfig(base_channels=2, depth=2))
    with pytest.raises(UserError, match='dtype="int8" runs on the OpenVINO backend'):
        backends.make_predictor(net, backend="torch", device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="dtype must be one of"):
        TorchPredictor(net, "cpu", "int8")


# --------------------------------------------------------------------------------- P7
def test_p7_commands_are_whole_processes(tmp_path):
    seg = p7.segment_command(tmp_path / "v.zarr", tmp_path / "o.zarr", "--backend", "torch")
    assert seg[:4] == [sys.executable, "-m", "fastunet", "segment"] and seg[-2:] == ["--backend", "torch"]
    assert "--kind" not in seg  # the defaults: object ids
    monai = p7.monai_command(tmp_path / "v.zarr", tmp_path / "m.zarr", "bf16")
    assert "fastunet.bench.monai_baseline import main" in monai[2] and monai[monai.index("--roi") + 1] == "512"
    times, cpu = p7.whole_process_times({"ok": [sys.executable, "-c", "sum(range(10**6))"]}, rounds=2)
    assert len(times["ok"]) == len(cpu["ok"]) == 2 and all(t > 0 for t in times["ok"] + cpu["ok"])
    with pytest.raises(RuntimeError, match="P7: bad failed"):
        p7.whole_process_times({"bad": [sys.executable, "-c", "raise SystemExit(3)"]}, rounds=1)


def test_monai_process_writes_labels_of_every_slice(tmp_path, monkeypatch, capsys):
    from fastunet.bench import monai_baseline

    model = save_model(tmp_path / "m.safetensors", ReferenceUNet(UNetConfig(base_channels=2, depth=2)),
                       Normalization(mode="meanstd"))
    vol = zarr.create_array(str(tmp_path / "v.zarr"), shape=(2, 32, 32), chunks=(1, 32, 32), dtype="uint16")
    vol[:] = _rng().integers(0, 4000, size=(2, 32, 32)).astype(np.uint16)

    def whole_image(x, roi, sw_batch_size, predictor, **kwargs):  # stands in for MONAI's
        return predictor(x)

    monkeypatch.setattr(monai_baseline, "import_monai", lambda: whole_image)
    assert monai_baseline.main([str(tmp_path / "v.zarr"), str(tmp_path / "o.zarr"), "--model", str(model),
                                "--dtype", "bf16", "--roi", "16"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["calls"] == 2 and line["seconds"] > 0
    labels = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")
    assert labels.shape == (2, 32, 32) and labels.dtype == np.uint8


def test_matmul_and_conv_layer_rates_are_positive():
    assert p7.matmul_gflops(torch.float32, n=64, reps=2) > 0
    rows = p7.conv_layer_gflops(types.SimpleNamespace(in_channels=1, num_classes=2, depth=1, widths=(2, 4)), 20,
                                torch.bfloat16, reps=1)
    assert [r["layer"] for r in rows] == ["enc0.conv1", "enc0.conv2", "bottom.conv1", "bottom.conv2",
                                          "dec0.conv1", "dec0.conv2"]
    assert all(r["gflop_s"] > 0 for r in rows)


@pytest.mark.parametrize("caps,dtypes", [({"avx512_bf16": True}, ("fp32", "bf16")), ({"avx2": True}, ("fp32",))])
def test_p7_measures_bf16_only_on_a_cpu_with_bf16_units(cpu_features, monkeypatch, caps, dtypes):
    """Without bf16 units bf16 is emulated (many times slower than fp32) and auto picks fp32:
    P7 leaves bf16 out of its runs (MONAI's too) rather than time an emulation no one runs."""
    cpu_features(caps)
    assert p7.float_dtypes() == dtypes
    monkeypatch.setattr(p7, "openvino_dtypes", lambda: ())
    times = p7.backend_times(ReferenceUNet(UNetConfig(base_channels=2, depth=1)), 44, reps=1, compiled=False)
    assert sorted(times) == sorted(f"torch_{dtype}_ms" for dtype in dtypes) and min(times.values()) > 0


def test_p7_is_a_cpu_benchmark_run_by_name(monkeypatch):
    from fastunet import bench

    assert "P7" in bench.CPU and "P7" not in bench.BENCHMARKS  # not part of the GPU suite
    monkeypatch.setitem(sys.modules, "monai", None)
    monkeypatch.setitem(sys.modules, "monai.inferers", None)
    with pytest.raises(UserError, match="pip install monai"):
        bench.run("P7")


def test_engine_vs_raw_runs_in_a_process_of_its_own(tmp_path):
    """P7's engine-vs-raw measurement, in a Python process of its own, returns its rounds (a
    small volume, one round: the figures' shapes, not their values)."""
    vol = zarr.create_array(str(tmp_path / "v.zarr"), shape=(1, 200, 200), chunks=(1, 200, 200), dtype="uint16")
    vol[:] = _rng().integers(0, 4000, size=(1, 200, 200)).astype(np.uint16)
    got = p7.engine_vs_raw_apart(tmp_path / "v.zarr", rounds=1)
    assert len(got["segment_s"]) == len(got["raw_s"]) == len(got["ratios"]) == 1
    assert got["tiles"] >= 1 and got["ratios"][0] > 0 and got["blocks"] >= 1
    with pytest.raises(RuntimeError, match="P7: engine vs raw failed"):
        p7.engine_vs_raw_apart(tmp_path / "missing.zarr", rounds=1)
