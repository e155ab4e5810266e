"""The GPU benchmark suite through pytest-benchmark: ``python -m pytest benchmarks/``.

Not collected by the default ``python -m pytest`` (``testpaths = ["tests"]``). Every test
skips without a CUDA device. On a GPU each one runs one benchmark of :mod:`fastunet.bench`
once (the function ``fastunet bench`` runs), puts its figures and ratios in
``benchmark.extra_info``, writes its JSON result with :func:`fastunet.bench.write_result`,
and times one representative CUDA-synchronized call with ``benchmark.pedantic`` (fresh
inputs made and synchronized outside the timed call), so that pytest-benchmark's own
table shows a timing too. The headline figures are those of the JSON result; the
pedantic timing is host wall clock around one synchronized call.

Environment variables:

``FASTUNET_BENCH_QUICK=1``
    the ``--quick`` sizes (:data:`fastunet.bench.QUICK`);
``FASTUNET_BENCH_OUT=DIR``
    where the JSON results go (default ``benchmarks/results`` of this checkout, passed to
    :func:`fastunet.bench.write_result` explicitly);
``FASTUNET_BENCH_CACHE=DIR``
    the folder of P4/P5's generated volume (default :func:`fastunet.bench.default_cache_dir`).

For example ``FASTUNET_BENCH_QUICK=1 python -m pytest benchmarks/ -k "P2 or P4" --benchmark-json=b.json``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from fastunet import bench, geometry
from fastunet.model import ReferenceUNet, UNetConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmarks need a CUDA device"),
    pytest.mark.timeout(3600),
]

QUICK = os.environ.get("FASTUNET_BENCH_QUICK", "") not in ("", "0")
OUT = Path(os.environ.get("FASTUNET_BENCH_OUT") or Path(__file__).resolve().parent / "results")
CACHE = os.environ.get("FASTUNET_BENCH_CACHE") or None
BF16 = torch.bfloat16


def run_benchmark(name: str, benchmark) -> dict:
    """Run benchmark ``name`` once, record it in ``extra_info`` and as a JSON result."""
    kwargs = dict(bench.QUICK.get(name, {})) if QUICK else {}
    if name in ("P4", "P5") and CACHE:
        kwargs["cache_dir"] = CACHE
    figures, ratios = bench.BENCHMARKS[name](**kwargs)
    path = bench.write_result(name, figures, ratios, out_dir=OUT, extra={"quick": QUICK, "runner": "pytest-benchmark"})
    benchmark.extra_info.update(figures)
    benchmark.extra_info.update(ratios)
    benchmark.extra_info["result_file"] = str(path)
    assert ratios and all(math.isfinite(v) and v > 0 for v in ratios.values())
    return figures


def time_call(benchmark, fn, make_inputs, *, rounds: int = 20) -> None:
    """pytest-benchmark timing of ``fn(*make_inputs())``, synchronized, fresh inputs per round."""

    def setup():
        args = make_inputs()
        torch.cuda.synchronize()
        return args, {}

    def target(*args):
        fn(*args)
        torch.cuda.synchronize()

    benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=3)


def test_P1_conv_layers(benchmark):
    """P1; timed: the fused decoder conv (crop-concat of skip and up-conv) of level 0 at tile 572."""
    from fastunet.kernels import conv

    run_benchmark("P1", benchmark)
    batch = bench.QUICK["P1"]["batches"][0] if QUICK else 8
    s = next(s for s in geometry.layer_shapes(UNetConfig(), 572, "conv3x3") if s.name == "dec0.conv1")
    c_in, n, size, skip_size = s.c_in, batch, s.in_size[0], s.skip_size[0]
    weight = conv.pack_weight(torch.randn(s.c_out, c_in, 3, 3, device="cuda") * (2 / (9 * c_in)) ** 0.5, BF16)
    bias = torch.randn(s.c_out, device="cuda")

    def inputs():
        skip = torch.randn(n, skip_size, skip_size, s.c_skip, device="cuda", dtype=BF16)  # NHWC
        up = torch.randn(n, size, size, c_in - s.c_skip, device="cuda", dtype=BF16)
        return skip, up

    time_call(benchmark, lambda skip, up: conv.conv3x3(skip, weight, bias, up=up, dtype="bf16"), inputs)


def test_P2_forward(benchmark):
    """P2; timed: the fused bf16 forward of the paper network at tile 572."""
    from fastunet.engine.fused import FusedUNet

    run_benchmark("P2", benchmark)
    batch = bench.QUICK["P2"]["batch"] if QUICK else 8
    net = FusedUNet(ReferenceUNet(UNetConfig()).eval(), device="cuda", dtype="bf16")
    time_call(benchmark, net, lambda: (torch.randn(batch, 1, 572, 572, device="cuda"),))


def test_P3_loss(benchmark):
    """P3; timed: fused weighted softmax-CE forward + backward, bf16 logits, uint8 target, 8 x 388^2."""
    from fastunet.train.loss import weighted_cross_entropy

    run_benchmark("P3", benchmark)

    def inputs():
        logits = torch.randn(8, 2, 388, 388, device="cuda", dtype=BF16, requires_grad=True)
        target = torch.randint(0, 2, (8, 388, 388), device="cuda", dtype=torch.uint8)
        return logits, target, torch.rand(8, 388, 388, device="cuda") * 10

    time_call(benchmark, lambda *a: weighted_cross_entropy(*a, backend="triton").backward(), inputs)


def test_P4_segment(benchmark):
    """P4; timed: one batch of the raw fused forward at the tile and batch the segment run used."""
    from fastunet.engine.fused import FusedUNet

    figures = run_benchmark("P4", benchmark)
    tile, batch = int(figures["P4.tile"]), int(figures["P4.batch"])
    net = FusedUNet(ReferenceUNet(UNetConfig()).eval(), device="cuda", dtype="bf16")
    time_call(benchmark, lambda x: net.predict(x, "labels"), lambda: (torch.randn(batch, 1, tile, tile, device="cuda"),),
              rounds=10)


def test_P5_vs_monai(benchmark):
    """P5; timed: one sw_batch of windows through the same-padded network (MONAI's per-call work)."""
    figures = run_benchmark("P5", benchmark)
    roi, batch = int(figures["P5.monai_roi"]), int(figures["P5.monai_sw_batch"])
    net = bench.SamePaddedUNet(UNetConfig()).cuda().eval().to(memory_format=torch.channels_last)

    def forward(x):
        with torch.no_grad(), torch.autocast("cuda", dtype=BF16):
            net(x)

    inputs = lambda: (torch.randn(batch, 1, roi, roi, device="cuda").contiguous(memory_format=torch.channels_last),)  # noqa: E731
    time_call(benchmark, forward, inputs, rounds=10)


def test_P6_train_step(benchmark):
    """P6; timed: one training step with the fused loss (bf16 autocast forward, backward, SGD), 4 x 572^2,
    uint8 targets."""
    from fastunet.train.loss import weighted_cross_entropy

    run_benchmark("P6", benchmark)
    model = ReferenceUNet(UNetConfig()).cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99)

    def step(x, target, weight):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=BF16):
            logits = model(x)
        weighted_cross_entropy(logits, target, weight, backend="triton").backward()
        opt.step()

    def inputs():
        x = torch.randn(4, 1, 572, 572, device="cuda").contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, 2, (4, 388, 388), device="cuda", dtype=torch.uint8)  # as the trainer feeds it
        return x, target, torch.rand(4, 388, 388, device="cuda") * 10

    time_call(benchmark, step, inputs, rounds=10)
