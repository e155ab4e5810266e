"""The GPU benchmark suite behind ``fastunet bench``.

Each benchmark measures fastunet against the PyTorch op or pipeline it replaces, in one
run on one device, with warm-up, CUDA-event timing, medians and fresh inputs per
repetition, and writes one JSON file to ``benchmarks/results/`` (device, driver,
torch/triton versions, date, every figure and ratio):

P1  each 3x3 conv layer shape of the paper network through the fused kernel vs
    ``F.conv2d`` + bias + ReLU (+ max-pool, + crop/cat where the kernel fuses them) in
    PyTorch eager, bf16 channels_last (cuDNN); per shape and the geometric mean.
P2  the whole forward in Mpx/s for bf16, fp16 and tf32 vs PyTorch eager, vs
    ``torch.compile(mode="max-autotune")`` of the reference, and as a fraction of the FLOP
    bound (FLOPs from :func:`fastunet.model.forward_flops`, the peak measured in the same run
    with a large bf16 matmul).
P3  the weighted softmax-CE forward+backward vs eager, and its achieved bandwidth vs a
    measured device-to-device copy.
P4  ``segment`` disk-to-disk on a zarr volume vs the raw fused forward on the same tiles.
P5  ``segment`` vs MONAI ``sliding_window_inference`` (overlap 0.25, gaussian blending)
    running a same-padded U-Net of the same widths on the same volume.
P6  a training step (forward, weighted loss, backward, SGD) vs the same step in PyTorch
    eager with bf16 autocast.

Nothing here runs without a CUDA device: a benchmark on the CPU would only time the
Triton interpreter. The non-timing parts (layer shapes, FLOPs, result files) are plain
functions, tested on the CPU.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import geometry
from .errors import UserError
from .model import ReferenceUNet, UNetConfig, center_crop, forward_flops

__all__ = [
    "BENCHMARKS",
    "conv_layer_shapes",
    "cuda_median_ms",
    "environment",
    "geometric_mean",
    "run",
    "write_result",
]

RESULTS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


# -- plumbing (CPU-testable) -----------------------------------------------------------------
def environment() -> dict:
    """Device, driver and library versions, and the date, for a result file."""
    import triton

    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "device": "cpu",
        "driver": None,
    }
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            )
            env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            env["driver"] = None
    return env


def write_result(benchmark: str, figures: dict, ratios: dict, *, out_dir: Path | None = None, extra: dict | None = None) -> Path:
    """Write one benchmark run as ``<out_dir>/<date>-<benchmark>.json`` and return its path."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    record = {"benchmark": benchmark, **env, "figures": figures, "ratios": ratios, **(extra or {})}
    stamp = env["date"].replace(":", "").replace("+0000", "Z")
    path = out_dir / f"{stamp}-{benchmark}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def geometric_mean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def conv_layer_shapes(config: UNetConfig, tile: int, batch: int) -> list[dict]:
    """Every 3x3 conv of the network at input tile ``tile``: its input size and channels.

    ``c_b`` is the channel count of the second source (the up-conv output) of a decoder's
    first conv, whose first source is the skip of size ``skip``; ``pool`` marks the encoder
    convs that feed a max-pool.
    """
    geometry.check_tile_size(tile, config.depth)
    widths = config.widths
    shapes, size, c_in, skips = [], tile, config.in_channels, []
    for level in range(config.depth + 1):
        name = f"enc{level}" if level < config.depth else "bottom"
        shapes.append(dict(name=f"{name}.conv1", n=batch, size=size, c_a=c_in, c_b=0, c_out=widths[level], pool=False, skip=0))
        shapes.append(dict(name=f"{name}.conv2", n=batch, size=size - 2, c_a=widths[level], c_b=0, c_out=widths[level], pool=level < config.depth, skip=0))
        skips.append(size - 4)
        size, c_in = (size - 4) // 2, widths[level]
    size = skips.pop()
    for level in reversed(range(config.depth)):
        size = 2 * size
        shapes.append(dict(name=f"dec{level}.conv1", n=batch, size=size, c_a=widths[level], c_b=widths[level], c_out=widths[level], pool=False, skip=skips[level]))
        shapes.append(dict(name=f"dec{level}.conv2", n=batch, size=size - 2, c_a=widths[level], c_b=0, c_out=widths[level], pool=False, skip=0))
        size -= 4
    return shapes


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise UserError(
            "fastunet bench needs a CUDA GPU: on the CPU it would only time the Triton "
            "interpreter. Run it on a GPU machine."
        )


def cuda_median_ms(fn: Callable, *, make_inputs: Callable | None = None, warmup: int = 5, reps: int = 25) -> float:
    """Median time of ``fn(*make_inputs())`` in milliseconds, with CUDA events.

    ``make_inputs`` is called before every repetition, outside the timed region, so each
    repetition sees fresh inputs (no cache-warm replays of identical data).
    """
    make_inputs = make_inputs or (lambda: ())
    for _ in range(warmup):
        fn(*make_inputs())
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        args = make_inputs()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measured_peak_tflops(n: int = 8192) -> float:
    """bf16 matmul throughput of this device, measured now (the FLOP bound of P2)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_median_ms(lambda: torch.mm(a, b), warmup=5, reps=20)
    return 2 * n**3 / (ms * 1e-3) / 1e12


# -- P1: conv layers -------------------------------------------------------------------------
def bench_conv_layers(*, tiles=(572, 1052), batches=(8, 2), base_channels: int = 64, depth: int = 4) -> tuple[dict, dict]:
    from .kernels import conv

    config = UNetConfig(base_channels=base_channels, depth=depth)
    figures, ratios = {}, {}
    dev, bf = "cuda", torch.bfloat16
    for tile, batch in zip(tiles, batches):
        for s in conv_layer_shapes(config, tile, batch):
            c_in = s["c_a"] + s["c_b"]
            weight = torch.randn(s["c_out"], c_in, 3, 3, device=dev) * (2 / (9 * c_in)) ** 0.5
            bias = torch.randn(s["c_out"], device=dev)
            packed = conv.pack_weight(weight, bf)
            w_cl = weight.to(bf).contiguous(memory_format=torch.channels_last)
            size, n = s["size"], s["n"]
            a_size = s["skip"] or size

            def inputs():
                a = torch.randn(n, s["c_a"], a_size, a_size, device=dev, dtype=bf).contiguous(memory_format=torch.channels_last)
                b = (torch.randn(n, s["c_b"], size, size, device=dev, dtype=bf).contiguous(memory_format=torch.channels_last)
                     if s["c_b"] else None)
                return a, b

            def fused(a, b):
                conv.conv3x3(a.permute(0, 2, 3, 1), packed, bias, up=None if b is None else b.permute(0, 2, 3, 1),
                             pool=s["pool"], dtype="bf16")

            def eager(a, b):
                x = a if b is None else torch.cat([center_crop(a, size, size), b], dim=1)
                y = torch.relu(F.conv2d(x, w_cl, bias.to(bf)))
                if s["pool"]:
                    F.max_pool2d(y, 2)

            key = f"{tile}.{s['name']}"
            t_fused = cuda_median_ms(fused, make_inputs=inputs)
            t_eager = cuda_median_ms(eager, make_inputs=inputs)
            figures[f"P1.{key}.fused_ms"] = t_fused
            figures[f"P1.{key}.cudnn_ms"] = t_eager
            ratios[f"P1.{key}.speedup"] = t_eager / t_fused
    ratios["P1.geomean_speedup"] = geometric_mean(v for k, v in ratios.items() if k.endswith(".speedup"))
    return figures, ratios


# -- P2: whole forward -----------------------------------------------------------------------
def bench_forward(*, tile: int = 572, batch: int = 8, compile_baseline: bool = True) -> tuple[dict, dict]:
    from .fused import FusedUNet

    config = UNetConfig()
    model = ReferenceUNet(config).eval().cuda()
    out = geometry.output_size(tile, config.depth)
    mpx = batch * out * out / 1e6
    flops = forward_flops(config, tile, tile) * batch
    peak = measured_peak_tflops()
    figures, ratios = {"P2.peak_bf16_tflops": peak, "P2.flops_per_output_px": flops / (batch * out * out)}

    def inputs():
        return (torch.randn(batch, 1, tile, tile, device="cuda"),)

    cl = model.to(memory_format=torch.channels_last)
    for dtype in ("bf16", "fp16", "tf32"):
        net = FusedUNet(model, device="cuda", dtype=dtype)
        t_fused = cuda_median_ms(lambda x: net(x), make_inputs=inputs)
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"

        def eager(x):
            with torch.no_grad(), torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
                cl(x.contiguous(memory_format=torch.channels_last))

        t_eager = cuda_median_ms(eager, make_inputs=inputs)
        figures[f"P2.{dtype}.fused_mpx_s"] = mpx / (t_fused * 1e-3)
        figures[f"P2.{dtype}.eager_mpx_s"] = mpx / (t_eager * 1e-3)
        ratios[f"P2.{dtype}.vs_eager"] = t_eager / t_fused
        if dtype == "bf16":
            ratios["P2.bf16.flop_bound_fraction"] = flops / (t_fused * 1e-3) / (peak * 1e12)
            if compile_baseline:
                compiled = torch.compile(cl, mode="max-autotune")

                def comp(x):
                    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                        compiled(x.contiguous(memory_format=torch.channels_last))

                t_comp = cuda_median_ms(comp, make_inputs=inputs, warmup=3)
                figures["P2.bf16.compile_mpx_s"] = mpx / (t_comp * 1e-3)
                ratios["P2.bf16.vs_compile"] = t_comp / t_fused
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    return figures, ratios


# -- P3: weighted softmax-CE ----------------------------------------------------------------
def bench_loss(*, batch: int = 8, classes: int = 2, size: int = 388, large_batch: int = 128) -> tuple[dict, dict]:
    """Forward + backward of the weighted softmax-CE, fused vs PyTorch eager.

    bf16 logits, an fp32 weight map, the default ``ignore_index=-100``, ``loss.backward()``;
    uint8 targets (what fastunet's trainer feeds: no count pass) and, as separate figures,
    int64 targets (-100 can occur: one extra read of the target counts the pixels). Timed
    at the paper-like ``batch`` (a few MB: launch overheads can weigh) and at ``large_batch``
    (hundreds of MB, far beyond the L2 cache), where the headline bandwidth fraction is taken.
    """
    from .loss import weighted_cross_entropy

    src = torch.empty(256 * 2**20, device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(src)
    t_copy = cuda_median_ms(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() / (t_copy * 1e-3) / 1e9  # read + write
    del src, dst
    figures, ratios = {"P3.copy_gb_s": copy_gbs}, {}

    def run(backend):
        def step(logits, target, weight):
            weighted_cross_entropy(logits, target, weight, backend=backend).backward()
        return step

    for target_dtype in (torch.uint8, torch.int64):
        for n in dict.fromkeys((batch, large_batch)):

            def inputs(n=n, target_dtype=target_dtype):
                logits = torch.randn(n, classes, size, size, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                target = torch.randint(0, classes, (n, size, size), device="cuda", dtype=target_dtype)
                weight = torch.rand(n, size, size, device="cuda") * 10
                return logits, target, weight

            t_fused = cuda_median_ms(run("triton"), make_inputs=inputs)
            t_eager = cuda_median_ms(run("torch"), make_inputs=inputs)
            # The minimum traffic: logits read + gradient written in the logits' dtype (bf16),
            # target (its own element size) and fp32 weight read. Passes beyond it (the count
            # of an int64 target) are not counted, so the bandwidth is a lower bound of the
            # achieved one where such passes run.
            min_bytes = n * size * size * (2 * classes * torch.bfloat16.itemsize + target_dtype.itemsize + 4)
            fused_gbs = min_bytes / (t_fused * 1e-3) / 1e9
            key = f"P3.{str(target_dtype).removeprefix('torch.')}.batch{n}"
            figures.update({
                f"{key}.fused_ms": t_fused, f"{key}.eager_ms": t_eager,
                f"{key}.min_bytes": min_bytes, f"{key}.fused_min_traffic_gb_s": fused_gbs,
            })
            ratios.update({f"{key}.vs_eager": t_eager / t_fused, f"{key}.copy_bandwidth_fraction": fused_gbs / copy_gbs})
    ratios["P3.vs_eager"] = ratios[f"P3.uint8.batch{batch}.vs_eager"]
    ratios["P3.copy_bandwidth_fraction"] = ratios[f"P3.uint8.batch{large_batch}.copy_bandwidth_fraction"]
    ratios["P3.int64.copy_bandwidth_fraction"] = ratios[f"P3.int64.batch{large_batch}.copy_bandwidth_fraction"]
    return figures, ratios


# -- P6: training step ------------------------------------------------------------------------
def bench_train_step(*, tile: int = 572, batch: int = 4) -> tuple[dict, dict]:
    from .loss import weighted_cross_entropy

    config = UNetConfig()
    out = geometry.output_size(tile, config.depth)
    models = {k: ReferenceUNet(config).cuda().to(memory_format=torch.channels_last).train() for k in ("fused", "eager")}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.99) for k, m in models.items()}

    def inputs():
        x = torch.randn(batch, 1, tile, tile, device="cuda").contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, 2, (batch, out, out), device="cuda")
        weight = torch.rand(batch, out, out, device="cuda") * 10
        return x, target, weight

    def step(kind):
        model, opt, backend = models[kind], opts[kind], ("triton" if kind == "fused" else "torch")

        def run(x, target, weight):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(x)
            weighted_cross_entropy(logits, target, weight, backend=backend).backward()
            opt.step()
        return run

    t_fused = cuda_median_ms(step("fused"), make_inputs=inputs)
    t_eager = cuda_median_ms(step("eager"), make_inputs=inputs)
    return ({"P6.fused_ms": t_fused, "P6.eager_amp_ms": t_eager}, {"P6.vs_eager_amp": t_eager / t_fused})


BENCHMARKS = {
    "P1": bench_conv_layers,
    "P2": bench_forward,
    "P3": bench_loss,
    "P6": bench_train_step,
}


def run(only: list[str] | None = None, *, out_dir: Path | None = None, quick: bool = False) -> list[Path]:
    """Run the chosen benchmarks (all by default) and write one JSON result per benchmark."""
    _require_cuda()
    names = only or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise UserError(f"Unknown benchmark(s) {unknown}; choose among {sorted(BENCHMARKS)}.")
    paths = []
    for name in names:
        kwargs = {}
        if quick and name == "P1":
            kwargs = dict(tiles=(572,), batches=(2,))
        if quick and name == "P2":
            kwargs = dict(batch=2, compile_baseline=False)
        figures, ratios = BENCHMARKS[name](**kwargs)
        paths.append(write_result(name, figures, ratios, out_dir=out_dir, extra={"quick": quick}))
    return paths
