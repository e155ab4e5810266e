"""The CPU-checkable parts of the benchmark suite (timings themselves need a GPU)."""

import json

import pytest
import torch
from torch import nn

from fastunet import bench
from fastunet.cli import main
from fastunet.model import ReferenceUNet, UNetConfig


def test_conv_layer_shapes_match_the_network():
    cfg = UNetConfig(in_channels=1, num_classes=2, base_channels=4, depth=2)
    model = ReferenceUNet(cfg).eval()
    seen = []
    for layer in model.conv_layers():
        if isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3):
            layer.register_forward_hook(lambda m, i, o: seen.append((i[0].shape[1], i[0].shape[-1], o.shape[1])))
    with torch.no_grad():
        model(torch.randn(1, 1, 60, 60))
    shapes = bench.conv_layer_shapes(cfg, 60, batch=3)
    assert [(s["c_a"] + s["c_b"], s["size"], s["c_out"]) for s in shapes] == seen
    assert [s["pool"] for s in shapes] == [False, True, False, True, False, False, False, False, False, False]
    decoder_first = [s for s in shapes if s["c_b"]]
    assert [s["skip"] for s in decoder_first] == [24, 56]  # skips of levels 1 and 0 at tile 60


def test_paper_network_has_18_conv3x3_layers():
    assert len(bench.conv_layer_shapes(UNetConfig(), 572, batch=1)) == 18


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
