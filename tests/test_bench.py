"""The CPU-checkable parts of the benchmark suite (timings themselves need a GPU)."""

import importlib.util
import inspect
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fastunet import bench, geometry
from fastunet.bench import timing as bench_timing
from fastunet.bench.monai_baseline import monai_segment
from fastunet.bench.pipeline import time_segment
from fastunet.cli import main
from fastunet.engine.tiling import plan_layout
from fastunet.errors import UserError
from fastunet.model import ReferenceUNet, UNetConfig, count_parameters, forward_flops
from fastunet.normalization import Normalization

ROOT = Path(__file__).resolve().parents[1]


def test_conv_layer_shapes_match_the_network():
    cfg = UNetConfig(in_channels=1, num_classes=2, base_channels=4, depth=2)
    model = ReferenceUNet(cfg).eval()
    seen = []
    for layer in model.conv_layers():
        if isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3):
            layer.register_forward_hook(lambda m, i, o: seen.append((i[0].shape[1], i[0].shape[-1], o.shape[1])))
    with torch.no_grad():
        model(torch.randn(1, 1, 60, 60))
    shapes = geometry.layer_shapes(cfg, 60, "conv3x3")
    assert [(s.c_in, s.in_size[1], s.c_out) for s in shapes] == seen
    assert [s.pool for s in shapes] == [False, True, False, True, False, False, False, False, False, False]
    decoder_first = [s for s in shapes if s.c_skip]
    assert [s.skip_size[0] for s in decoder_first] == [24, 56]  # skips of levels 1 and 0 at tile 60


def test_paper_network_has_18_conv3x3_layers():
    assert len(geometry.layer_shapes(UNetConfig(), 572, "conv3x3")) == 18


def test_write_result_records_environment(tmp_path):
    path = bench.write_result("P0", {"x_ms": 1.0}, {"speedup": 2.0}, out_dir=tmp_path)
    data = json.loads(path.read_text())
    assert data["benchmark"] == "P0" and data["figures"] == {"x_ms": 1.0} and data["ratios"] == {"speedup": 2.0}
    for key in ("date", "device", "torch", "triton", "python"):
        assert data[key]


def test_geometric_mean():
    assert bench.geometric_mean([1.0, 4.0]) == pytest.approx(2.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on CPU machines")
def test_bench_refuses_without_gpu(capsys):
    assert main(["bench", "--only", "P1"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


# -- P1/P2/P3/P6 end to end at tiny sizes (CPU: kernels under the Triton interpreter) ---------
SMOKE_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SMOKE_TIMING = dict(device=SMOKE_DEVICE, warmup=1, reps=2)


def _check_run(name, figures, ratios, expected_figures, expected_ratios, tmp_path):
    import math

    assert set(figures) == set(expected_figures) and set(ratios) == set(expected_ratios)
    for key, value in {**figures, **ratios}.items():
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    data = json.loads(bench.write_result(name, figures, ratios, out_dir=tmp_path).read_text())
    assert data["figures"] == pytest.approx(figures) and data["ratios"] == pytest.approx(ratios)


def test_p1_conv_layers_runs_at_tiny_sizes(tmp_path):
    figures, ratios = bench.bench_conv_layers(tiles=(18, 20), batches=(1, 2), base_channels=4, depth=1, **SMOKE_TIMING)
    names = ["enc0.conv1", "enc0.conv2", "bottom.conv1", "bottom.conv2", "dec0.conv1", "dec0.conv2"]
    keys = [f"P1.{t}.{n}" for t in (18, 20) for n in names]
    _check_run("P1", figures, ratios, [f"{k}.{x}" for k in keys for x in ("fused_ms", "cudnn_ms")],
               [f"{k}.speedup" for k in keys] + ["P1.geomean_speedup"], tmp_path)
    assert ratios["P1.geomean_speedup"] == pytest.approx(bench.geometric_mean(ratios[f"{k}.speedup"] for k in keys))


def test_p2_forward_runs_at_tiny_sizes_and_restores_tf32(tmp_path):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
        figures, ratios = bench.bench_forward(tile=18, batch=2, base_channels=4, depth=1, compile_baseline=False,
                                              peak_n=64, **SMOKE_TIMING)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, False)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    dtypes = ("bf16", "fp16", "tf32")
    _check_run("P2", figures, ratios,
               ["P2.peak_bf16_tflops", "P2.flops_per_output_px"]
               + [f"P2.{d}.{k}" for d in dtypes for k in ("fused_mpx_s", "eager_mpx_s")],
               [f"P2.{d}.vs_eager" for d in dtypes] + ["P2.bf16.flop_bound_fraction"], tmp_path)
    cfg = UNetConfig(base_channels=4, depth=1)
    assert figures["P2.flops_per_output_px"] == forward_flops(cfg, 18, 18) / 2**2  # output 2 x 2


def test_p1_3d_conv_layers_run_at_tiny_sizes_with_an_anisotropic_pool(tmp_path):
    # Z kept by the 1x2x2 pool: the pooled conv's epilogue and max_pool3d take the factor per axis
    cfg = UNetConfig(base_channels=4, depth=1, spatial_dims=3, pools=((1, 2, 2),))
    figures, ratios = bench.bench_conv_layers_3d(config=cfg, tiles=((13, 18, 18),), batches=(1,), **SMOKE_TIMING)
    names = ["enc0.conv1", "enc0.conv2", "bottom.conv1", "bottom.conv2", "dec0.conv1", "dec0.conv2"]
    keys = [f"P1-3D.13x18x18.{n}" for n in names]
    _check_run("P1-3D", figures, ratios, [f"{k}.{x}" for k in keys for x in ("fused_ms", "cudnn_ms")],
               [f"{k}.speedup" for k in keys] + ["P1-3D.geomean_speedup"], tmp_path)
    with pytest.raises(ValueError, match="times a 3D network"):
        bench.bench_conv_layers_3d(config=UNetConfig(base_channels=4, depth=1), **SMOKE_TIMING)


def test_p2_3d_forward_runs_at_a_tiny_size(tmp_path):
    cfg = UNetConfig(base_channels=4, depth=1, spatial_dims=3)
    figures, ratios = bench.bench_forward_3d(config=cfg, tile=(18, 18, 18), batch=1, compile_baseline=False,
                                             peak_n=64, dtypes=("bf16",), **SMOKE_TIMING)
    _check_run("P2-3D", figures, ratios,
               ["P2-3D.peak_bf16_tflops", "P2-3D.flops_per_output_px", "P2-3D.bf16.fused_mpx_s",
                "P2-3D.bf16.eager_mpx_s"], ["P2-3D.bf16.vs_eager", "P2-3D.bf16.flop_bound_fraction"], tmp_path)
    assert figures["P2-3D.flops_per_output_px"] == forward_flops(cfg, 18, 18, 18) / 2**3  # output 2 x 2 x 2
    assert bench.CICEK_3D.spatial_dims == 3 and bench.CICEK_3D_TILE == (116, 132, 132)


def test_p2_restores_tf32_flags_when_a_measurement_fails(monkeypatch):
    calls = []

    def failing_timer(fn, **kwargs):  # the peak, the fused bf16 forward, then the eager one fails
        calls.append(kwargs)
        if len(calls) == 3:
            assert torch.backends.cudnn.allow_tf32 is False  # bf16 switched TF32 off for eager
            raise RuntimeError("out of memory")
        return 1.0

    monkeypatch.setattr(bench_timing, "median_ms", failing_timer)  # every benchmark times through it
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True
        with pytest.raises(RuntimeError, match="out of memory"):
            bench.bench_forward(tile=18, batch=1, base_channels=4, depth=1, compile_baseline=False, peak_n=8,
                                device=SMOKE_DEVICE)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert len(calls) == 3 and all(torch.device(c["device"]).type == SMOKE_DEVICE for c in calls)


def test_p3_loss_runs_at_tiny_sizes(tmp_path):
    figures, ratios = bench.bench_loss(batch=1, large_batch=2, classes=3, size=16, copy_bytes=2**16, **SMOKE_TIMING)
    keys = [f"P3.{t}.batch{n}" for t in ("uint8", "int64") for n in (1, 2)]
    _check_run("P3", figures, ratios,
               ["P3.copy_gb_s"] + [f"{k}.{x}" for k in keys for x in ("fused_ms", "eager_ms", "min_bytes", "fused_min_traffic_gb_s")],
               [f"{k}.{x}" for k in keys for x in ("vs_eager", "copy_bandwidth_fraction")]
               + ["P3.vs_eager", "P3.copy_bandwidth_fraction", "P3.int64.copy_bandwidth_fraction"], tmp_path)
    assert figures["P3.uint8.batch2.min_bytes"] == 2 * 16 * 16 * (2 * 3 * 2 + 1 + 4)
    assert ratios["P3.copy_bandwidth_fraction"] == ratios["P3.uint8.batch2.copy_bandwidth_fraction"]


def test_p6_train_step_runs_at_tiny_sizes_with_uint8_targets(tmp_path, monkeypatch):
    import fastunet.train.loss

    seen = []
    original = fastunet.train.loss.weighted_cross_entropy

    def recording(logits, target, weight, **kwargs):
        seen.append((kwargs["backend"], target.dtype, logits.dtype, tuple(target.shape)))
        return original(logits, target, weight, **kwargs)

    monkeypatch.setattr(fastunet.train.loss, "weighted_cross_entropy", recording)
    figures, ratios = bench.bench_train_step(tile=18, batch=2, base_channels=4, depth=1, **SMOKE_TIMING)
    _check_run("P6", figures, ratios, ["P6.fused_ms", "P6.eager_amp_ms"], ["P6.vs_eager_amp"], tmp_path)
    assert {s[0] for s in seen} == {"triton", "torch"} and len(seen) == 2 * (1 + 2)
    assert all(s[1:] == (torch.uint8, torch.bfloat16, (2, 2, 2)) for s in seen)  # as the trainer feeds it


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on CPU machines")
def test_p1_p2_p3_p6_default_to_cuda_and_refuse_without_it():
    for fn in (bench.bench_conv_layers, bench.bench_forward, bench.bench_loss, bench.bench_train_step,
               bench.bench_conv_layers_3d, bench.bench_forward_3d):
        with pytest.raises(UserError, match="needs a CUDA GPU"):
            fn()


# -- P4/P5 and the registry -------------------------------------------------------------------


def test_bench_volume_written_once_then_reused(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "vol.zarr"  # the cache folder does not exist yet
    vol = bench.bench_volume(path, (3, 40, 50), chunks=(2, 16, 32), seed=5)
    assert vol.shape == (3, 40, 50) and vol.chunks == (2, 16, 32) and vol.dtype == np.uint16
    data = vol[:]
    assert data.std() > 0 and not np.array_equal(data[0], data[1])
    same = bench.bench_volume(tmp_path / "other.zarr", (3, 40, 50), chunks=(2, 16, 32), seed=5)
    np.testing.assert_array_equal(same[:], data)  # deterministic in the seed

    import fastunet.synthetic

    drawn = []
    original = fastunet.synthetic.synthetic_nuclei
    monkeypatch.setattr(fastunet.synthetic, "synthetic_nuclei", lambda *a, **k: drawn.append(1) or original(*a, **k))
    np.testing.assert_array_equal(bench.bench_volume(path, (3, 40, 50), chunks=(2, 16, 32), seed=5)[:], data)
    assert not drawn  # reused
    # A generation that did not finish (not marked complete) is made again, with the same data.
    meta = dict(zarr.open_array(str(path), mode="r").attrs[bench.VOLUME_ATTR])
    zarr.open_array(str(path), mode="r+").update_attributes({bench.VOLUME_ATTR: {**meta, "complete": False}})
    np.testing.assert_array_equal(bench.bench_volume(path, (3, 40, 50), chunks=(2, 16, 32), seed=5)[:], data)
    assert len(drawn) == 4  # the default 4 variants
    # Other arguments: regenerated in place.
    vol = bench.bench_volume(path, (2, 40, 50), chunks=(1, 16, 16), seed=5)
    assert vol.shape == (2, 40, 50) and vol.chunks == (1, 16, 16) and len(drawn) == 8


def test_bench_volume_never_overwrites_foreign_data(tmp_path):
    foreign = zarr.create_array(str(tmp_path / "mine.zarr"), shape=(2, 8, 8), chunks=(1, 8, 8), dtype="uint16")
    foreign[:] = 7
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("keep")
    for name in ("mine.zarr", "folder"):
        with pytest.raises(UserError, match="not a fastunet benchmark volume"):
            bench.bench_volume(tmp_path / name, (2, 8, 8), chunks=(1, 8, 8))
    assert (foreign[:] == 7).all() and (tmp_path / "folder" / "notes.txt").read_text() == "keep"


def _same_padded_reference(model, x):
    """The same-padded U-Net written out with torch.nn.functional, from the module's weights."""

    def double(block, x):
        x = torch.relu(F.conv2d(x, block.conv1.weight, block.conv1.bias, padding=1))
        return torch.relu(F.conv2d(x, block.conv2.weight, block.conv2.bias, padding=1))

    skips = []
    for block in model.down:
        x = double(block, x)
        skips.append(x)
        x = F.max_pool2d(x, 2)
    x = double(model.bottom, x)
    for up, dec, skip in zip(model.up, model.dec, reversed(skips)):
        x = F.conv_transpose2d(x, up.weight, up.bias, stride=2)
        x = double(dec, torch.cat([skip, x], dim=1))
    return F.conv2d(x, model.head.weight, model.head.bias)


def test_same_padded_unet_keeps_the_size_and_the_widths():
    cfg = UNetConfig(in_channels=1, num_classes=3, base_channels=4, depth=2)
    padded, valid = bench.SamePaddedUNet(cfg).eval(), ReferenceUNet(cfg)
    assert [layer.weight.shape for layer in padded.conv_layers()] == [layer.weight.shape for layer in valid.conv_layers()]
    assert count_parameters(padded) == count_parameters(valid)
    deep = UNetConfig(base_channels=2, depth=4)  # the paper's layout, narrower (fast to build)
    assert count_parameters(bench.SamePaddedUNet(deep)) == count_parameters(ReferenceUNet(deep))
    padded.load_state_dict(valid.state_dict())  # the same weights load as they are
    x = torch.randn(2, 1, 24, 32)
    with torch.no_grad():
        y = padded(x)
        expected = _same_padded_reference(padded, x)
    assert y.shape == (2, 3, 24, 32)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 4"):
        padded(torch.randn(1, 1, 24, 30))


def test_same_padded_flops_match_the_flop_counter():
    cfg = UNetConfig(in_channels=1, num_classes=3, base_channels=4, depth=2)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        bench.SamePaddedUNet(cfg)(torch.randn(1, 1, 32, 48))
    assert bench.same_padded_flops(cfg, 32, 48) == counter.get_total_flops()


def test_tile_counts_of_the_paper_tile_on_a_4096_plane():
    # Tile 572 -> 388 output, step 384: 11 tiles cover 4096 (10 * 384 + 388 >= 4096).
    # Output chunks of the input's 1024: blocks of 2048, tiles 0-5 for the first and 5-10 for
    # the second, so tile 5 runs twice.
    layout = plan_layout((2, 4096, 4096), 4, source_chunks=(1, 1024, 1024), tile=572, max_step=2048,
                         chunks=(1, 1024, 1024))
    assert layout.block[1:] == (2048, 2048)
    assert bench.grid_tile_count(layout) == 2 * 11 * 11
    assert bench.engine_tile_count(layout) == 2 * 12 * 12
    # By default the chunks follow the tiles (768: two steps), and each tile runs once
    free = plan_layout((2, 4096, 4096), 4, source_chunks=(1, 1024, 1024), tile=572, max_step=2048)
    assert free.chunks[1:] == (768, 768) and bench.engine_tile_count(free) == bench.grid_tile_count(free) == 2 * 11 * 11
    aligned = plan_layout((2, 4096, 4096), 4, source_chunks=(1, 1024, 1024), max_step=2048)
    assert aligned.step == (2048, 2048) and bench.engine_tile_count(aligned) == bench.grid_tile_count(aligned) == 8


def test_time_segment_runs_the_engine_disk_to_disk(tmp_path, monkeypatch):
    import fastunet
    from fastunet.engine import LoadedNetwork
    from fastunet.segmentation import Segmenter

    model = bench.random_model_file(tmp_path / "m.safetensors", UNetConfig(base_channels=2, depth=2))
    volume = bench.bench_volume(tmp_path / "vol.zarr", (3, 72, 72), chunks=(1, 32, 32))
    tiles, per_call = [0], []
    predict, predict_raw, segment = LoadedNetwork.predict, LoadedNetwork.predict_raw, Segmenter.segment

    def counting_predict(self, batch, output):
        tiles[0] += batch.shape[0]
        return predict(self, batch, output)

    def counting_predict_raw(self, batch, *args):  # the device runner's path (CUDA and the CPU)
        tiles[0] += batch.shape[0]
        return predict_raw(self, batch, *args)

    def counting_segment(self, *args, **kwargs):
        before = tiles[0]
        result = segment(self, *args, **kwargs)
        per_call.append(tiles[0] - before)
        return result

    monkeypatch.setattr(LoadedNetwork, "predict", counting_predict)
    monkeypatch.setattr(LoadedNetwork, "predict_raw", counting_predict_raw)
    monkeypatch.setattr(Segmenter, "segment", counting_segment)
    out = tmp_path / "out.zarr"
    timed = time_segment(model, tmp_path / "vol.zarr", out, tile=None, batch=2, device="cpu",
                         backend="torch", dtype="fp32", repeats=2)
    layout = timed["layout"]
    assert len(timed["seconds"]) == 2 and all(s > 0 for s in timed["seconds"])
    assert list(layout.tile) == timed["summary"]["tile"] and layout.shape == (3, 72, 72)
    assert len(per_call) == 4  # the default-tile probe, the warm-up and two timed runs
    assert per_call[-1] == per_call[-2] == bench.engine_tile_count(layout)
    # the runner's batches of at most 2 tiles, gathered across blocks
    assert -(-per_call[-1] // 2) <= timed["batches"] <= per_call[-1]
    assert not (tmp_path / "out-warmup.zarr").exists()
    expected = np.asarray(fastunet.segment(volume[:], model, None, axes="ZYX", device="cpu", dtype="fp32",
                                           progress=False, output_kind="labels"))
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["labels"][:], expected)


def test_monai_side_reads_normalizes_and_writes_every_slice(tmp_path):
    cfg = UNetConfig(in_channels=1, num_classes=3, base_channels=4, depth=2)
    net = bench.SamePaddedUNet(cfg).eval()
    with torch.no_grad():  # random biases: dead ReLUs would otherwise tie the logits at 0
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module.bias.normal_(0.0, 0.1)
    volume = bench.bench_volume(tmp_path / "vol.zarr", (3, 32, 48), chunks=(1, 16, 16))
    calls = []

    def whole_image(x, roi, sw_batch_size, predictor, **kwargs):  # stands in for MONAI's
        calls.append((tuple(x.shape), roi, sw_batch_size, kwargs))
        return predictor(x)

    counts = monai_segment(
        tmp_path / "vol.zarr", tmp_path / "monai.zarr", net, normalization=Normalization(), roi=16, sw_batch_size=4,
        slices_per_call=2, overlap=0.25, device="cpu", autocast_dtype=None, sliding_window=whole_image,
    )
    assert counts == {"windows": 3, "calls": 2}
    assert [c[0] for c in calls] == [(2, 1, 32, 48), (1, 1, 32, 48)]
    assert all(c[1:] == ((16, 16), 4, {"overlap": 0.25, "mode": "gaussian"}) for c in calls)
    raw = volume[:].astype(np.float64)
    offset, scale = Normalization().stats(raw)  # the volume is small: the sample is all of it
    with torch.no_grad():
        scores = _same_padded_reference(net, torch.from_numpy(((raw - offset) / scale)[:, None]).float())
    top2 = scores.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-4).numpy()  # leave out near-ties (summation order)
    labels = zarr.open_array(str(tmp_path / "monai.zarr"), mode="r")
    assert labels.shape == (3, 32, 48) and labels.dtype == np.uint8 and labels.chunks == (1, 16, 16)
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(labels[:][clear], scores.argmax(dim=1).numpy()[clear])


def test_p5_without_monai_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "monai", None)  # makes `import monai` raise ImportError
    monkeypatch.setitem(sys.modules, "monai.inferers", None)
    with pytest.raises(UserError, match="pip install monai"):
        bench.bench_vs_monai(shape=(1, 16, 16))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on CPU machines")
def test_p4_p5_refuse_without_gpu(tmp_path, capsys):
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        bench.run(["P4"], out_dir=tmp_path)
    assert main(["bench", "--only", "P4,P5", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing generated, nothing written


def test_registry_lists_p1_to_p6_and_the_3d_benchmarks_and_quick_options_fit():
    assert list(bench.BENCHMARKS) == ["P1", "P2", "P3", "P4", "P5", "P6", "P1-3D", "P2-3D"]
    for name, kwargs in bench.QUICK.items():
        inspect.signature(bench.BENCHMARKS[name]).bind(**kwargs)  # raises TypeError on a wrong name
    for name in ("P4", "P5"):
        inspect.signature(bench.BENCHMARKS[name]).bind(cache_dir="x", **bench.QUICK[name])
        assert np.prod(bench.QUICK[name]["shape"]) < np.prod(inspect.signature(bench.BENCHMARKS[name]).parameters["shape"].default)
    assert np.prod(inspect.signature(bench.bench_segment).parameters["shape"].default) >= 2**30


def test_report_renders_p4_and_p5_results(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    (tmp_path / "README.md").write_text("# B\n")
    bench.write_result("P4", {"P4.segment_mpx_s": 123.456, "P4.tile": 2236}, {"P4.segment_vs_raw": 0.875},
                       out_dir=tmp_path / "results")
    bench.write_result("P5", {"P5.monai_mpx_s": 40.0}, {"P5.fastunet_vs_monai": 3.0864}, out_dir=tmp_path / "results")
    assert report.main([str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    for row in ("| P4 | cpu | P4.segment_mpx_s | 123.5 |", "| P4 | cpu | P4.tile | 2236 |",
                "| P4 | cpu | P4.segment_vs_raw | 0.875 |", "| P5 | cpu | P5.fastunet_vs_monai | 3.086 |"):
        assert row in text


def test_roofline_script_runs_and_places_windows_like_monai(capsys):
    spec = importlib.util.spec_from_file_location("bench_roofline", ROOT / "benchmarks" / "roofline.py")
    roofline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roofline)
    # MONAI 1.6.1's sliding_window_inference put 3 x 4 windows of 32 on a 64 x 96 image at
    # overlap 0.25 (seen on the CPU); one window when the roi covers the axis.
    assert (roofline.windows(64, 32, 0.25), roofline.windows(96, 32, 0.25), roofline.windows(2048, 2048, 0.25)) == (3, 4, 1)
    assert roofline.windows(4096, 2048, 0.25) == 3  # steps of 1536: 0, 1536, 2048 (clamped)
    cfg = UNetConfig()
    rows = roofline.conv_rows(cfg, 572, 2)
    assert [r["name"] for r in rows] == [s.name for s in geometry.layer_shapes(cfg, 572, "conv3x3")]
    up_and_head = 2 * forward_flops_of_upconvs_and_head(cfg, 572)
    assert sum(r["flops"] for r in rows) + up_and_head == 2 * forward_flops(cfg, 572, 572)
    roofline.main()
    out = capsys.readouterr().out
    assert "| 64x4096x4096 | 572 | 384 | 7744 | 7744 | 0.0% |" in out  # the chunks follow the tiles


def forward_flops_of_upconvs_and_head(cfg, tile):
    """FLOPs of the up-convolutions and the head of one tile, by the sizes the network passes through."""
    model = ReferenceUNet(UNetConfig(base_channels=1, depth=cfg.depth))  # sizes only
    sizes = []
    for layer in model.up:
        layer.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[-1]))
    with torch.no_grad():
        out = model(torch.zeros(1, 1, tile, tile))
    widths = cfg.widths
    ups = sum(2 * widths[d + 1] * 4 * widths[d] * s * s for d, s in zip(reversed(range(cfg.depth)), sizes))
    return ups + 2 * widths[0] * cfg.num_classes * out.shape[-1] ** 2


# -- where results go, what the CLI says, what importing the suite costs -----------------------
def test_results_default_to_a_folder_in_the_current_directory(tmp_path, monkeypatch):
    import fastunet

    monkeypatch.chdir(tmp_path)
    assert bench.default_out_dir() == tmp_path / bench.RESULTS_FOLDER == tmp_path / "fastunet-bench-results"
    path = bench.write_result("P0", {"x_ms": 1.0}, {"speedup": 2.0})
    assert path.parent == tmp_path / "fastunet-bench-results" and path.is_file()
    package = Path(fastunet.__file__).resolve().parent
    assert package not in path.resolve().parents  # never next to the installed package


def test_bench_help_names_the_default_results_folder(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # argparse wraps at hyphens on narrow terminals
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "fastunet-bench-results" in " ".join(capsys.readouterr().out.split())


def test_unknown_benchmark_named_as_parameter_and_as_flag(capsys, tmp_path):
    with pytest.raises(UserError, match='Unknown benchmark.*P9 in only="P1,P9"; choose among P1, P2'):
        bench.run(["P1", "p9"], out_dir=tmp_path)
    with pytest.raises(UserError, match='only="P9"'):
        bench.run("P9", out_dir=tmp_path)
    assert main(["bench", "--only", "P9", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "in --only P9;" in err and "only=" not in err
    assert not any(tmp_path.iterdir())


def test_cache_folder_hint_reads_as_the_cli_flag():
    from fastunet.cli import build_parser, to_flags

    args = build_parser().parse_args(["bench"])
    assert to_flags('choose another cache folder (cache_dir="DIR").', args) == "choose another cache folder (--cache DIR)."
    assert to_flags('write them elsewhere (out_dir="DIR").', args) == "write them elsewhere (--out DIR)."


def test_importing_the_suite_leaves_heavy_libraries_unimported():
    import subprocess

    code = ("import sys, fastunet.bench; heavy = ('triton', 'monai', 'zarr', 'dask', 'distributed'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
