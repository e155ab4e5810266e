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
P4  ``segment`` disk-to-disk on a zarr volume (64 x 4096 x 4096 uint16, 1.07 Gvoxel, made
    once by :func:`bench_volume`) with the fused network in bf16, vs the raw fused forward
    (:class:`~fastunet.fused.FusedUNet`, inputs already on the GPU, only the network timed)
    on the same tiles, tile size and batch.
P5  ``segment`` vs MONAI ``sliding_window_inference`` (overlap 0.25, gaussian blending)
    running :class:`SamePaddedUNet` (the same widths and weights, 3x3 convs padded by 1) in
    bf16 autocast, channels_last, on the same volume and GPU; both sides disk to disk (see
    :func:`bench_vs_monai` for what each side's time includes).
P6  a training step (forward, weighted loss, backward, SGD) vs the same step in PyTorch
    eager with bf16 autocast.

``fastunet bench`` and :func:`run` refuse without a CUDA device: a benchmark on the CPU
would only time the Triton interpreter. P1, P2, P3 and P6 take ``device="cpu"`` (kernels
under the interpreter, :func:`median_ms` then times with ``time.perf_counter``) and small
sizes so that the tests can run them end to end on the CPU; those figures mean nothing.
The non-timing parts (layer shapes, FLOPs, result files) are plain functions, tested on the
CPU.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import geometry
from .errors import UserError
from .model import ReferenceUNet, UNetConfig, center_crop, forward_flops

__all__ = [
    "BENCHMARKS",
    "QUICK",
    "SamePaddedUNet",
    "bench_volume",
    "cuda_median_ms",
    "default_cache_dir",
    "engine_tile_count",
    "environment",
    "geometric_mean",
    "grid_tile_count",
    "median_ms",
    "random_model_file",
    "run",
    "same_padded_flops",
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


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise UserError(
            "fastunet bench needs a CUDA GPU: on the CPU it would only time the Triton "
            "interpreter. Run it on a GPU machine."
        )


def _bench_device(device) -> torch.device:
    """The device of a P1/P2/P3/P6 run: CUDA (the benchmark), or the CPU for tests.

    On the CPU the Triton kernels run under the interpreter, so the figures only show that
    the benchmark runs end to end; they are no measurement. The kernel modules are imported
    here through :func:`fastunet.kernels.load`, which switches the interpreter on for the
    CPU before triton defines a kernel (or says why it cannot).
    """
    from .kernels import load

    device = torch.device(device)
    if device.type == "cuda":
        _require_cuda()
    elif device.type != "cpu":
        raise ValueError(f"The benchmarks run on 'cuda' (or 'cpu' under the Triton interpreter, for tests); got {device}.")
    load(device, "conv", "upconv", "head", "loss")
    return device


def median_ms(fn: Callable, *, make_inputs: Callable | None = None, warmup: int = 5, reps: int = 25,
              device="cuda") -> float:
    """Median time of ``fn(*make_inputs())`` in milliseconds over ``reps`` repetitions.

    ``make_inputs`` is called before every repetition (warm-up included), outside the timed
    region, so each repetition sees fresh inputs (no cache-warm replays of identical data).
    On a CUDA ``device`` the time is that between two CUDA events recorded on its current
    stream around the call; on the CPU (tests only: there it times the Triton interpreter)
    it is ``time.perf_counter`` around the call, which is synchronous there.
    """
    make_inputs = make_inputs or (lambda: ())
    device = torch.device(device)
    if device.type != "cuda":
        for _ in range(warmup):
            fn(*make_inputs())
        times = []
        for _ in range(reps):
            args = make_inputs()
            start = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    with torch.cuda.device(device):
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


def cuda_median_ms(fn: Callable, *, make_inputs: Callable | None = None, warmup: int = 5, reps: int = 25) -> float:
    """:func:`median_ms` on the current CUDA device."""
    return median_ms(fn, make_inputs=make_inputs, warmup=warmup, reps=reps, device="cuda")


def measured_peak_tflops(n: int = 8192, *, device="cuda") -> float:
    """bf16 matmul throughput of this device, measured now (the FLOP bound of P2)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = median_ms(lambda: torch.mm(a, b), warmup=5, reps=20, device=device)
    return 2 * n**3 / (ms * 1e-3) / 1e12


# -- P1: conv layers -------------------------------------------------------------------------
def bench_conv_layers(*, tiles=(572, 1052), batches=(8, 2), base_channels: int = 64, depth: int = 4,
                      device="cuda", warmup: int = 5, reps: int = 25) -> tuple[dict, dict]:
    """P1: every 3x3 conv layer shape, fused kernel vs ``F.conv2d`` + bias + ReLU (+ pool, +
    crop/cat) in eager bf16 channels_last, at each ``tiles[i]`` with batch ``batches[i]``.

    ``device="cpu"`` (kernels under the Triton interpreter) is for tests only: it checks
    that the benchmark runs, its figures mean nothing. ``fastunet bench`` runs on CUDA.
    """
    dev, bf = _bench_device(device), torch.bfloat16
    from .kernels import conv

    if len(tiles) != len(batches):
        raise ValueError(f"Expected one batch per tile; got tiles {tiles} and batches {batches}.")
    config = UNetConfig(base_channels=base_channels, depth=depth)
    figures, ratios = {}, {}
    timing = dict(warmup=warmup, reps=reps, device=dev)
    for tile, batch in zip(tiles, batches):
        for s in geometry.layer_shapes(config, tile, "conv3x3"):
            # A decoder's conv1 reads the cropped skip (c_skip channels) and the up-conv output.
            c_in, n, size = s.c_in, batch, s.in_size[0]
            c_a, c_b = (s.c_skip, s.c_in - s.c_skip) if s.c_skip else (s.c_in, 0)
            a_size = s.skip_size[0] if s.skip_size else size
            weight = torch.randn(s.c_out, c_in, 3, 3, device=dev) * (2 / (9 * c_in)) ** 0.5
            bias = torch.randn(s.c_out, device=dev)
            packed = conv.pack_weight(weight, bf)
            w_cl = weight.to(bf).contiguous(memory_format=torch.channels_last)
            bias_bf = bias.to(bf)  # cast once, outside the timed calls

            def inputs():
                a = torch.randn(n, c_a, a_size, a_size, device=dev, dtype=bf).contiguous(memory_format=torch.channels_last)
                b = (torch.randn(n, c_b, size, size, device=dev, dtype=bf).contiguous(memory_format=torch.channels_last)
                     if c_b else None)
                return a, b

            def fused(a, b):
                conv.conv3x3(a.permute(0, 2, 3, 1), packed, bias, up=None if b is None else b.permute(0, 2, 3, 1),
                             pool=s.pool, dtype="bf16")

            def eager(a, b):
                x = a if b is None else torch.cat([center_crop(a, size, size), b], dim=1)
                y = torch.relu(F.conv2d(x, w_cl, bias_bf))
                if s.pool:
                    F.max_pool2d(y, 2)

            key = f"{tile}.{s.name}"
            t_fused = median_ms(fused, make_inputs=inputs, **timing)
            t_eager = median_ms(eager, make_inputs=inputs, **timing)
            figures[f"P1.{key}.fused_ms"] = t_fused
            figures[f"P1.{key}.cudnn_ms"] = t_eager
            ratios[f"P1.{key}.speedup"] = t_eager / t_fused
    ratios["P1.geomean_speedup"] = geometric_mean(v for k, v in ratios.items() if k.endswith(".speedup"))
    return figures, ratios


# -- P2: whole forward -----------------------------------------------------------------------
def bench_forward(*, tile: int = 572, batch: int = 8, compile_baseline: bool = True, base_channels: int = 64,
                  depth: int = 4, device="cuda", peak_n: int = 8192, warmup: int = 5, reps: int = 25) -> tuple[dict, dict]:
    """P2: the whole forward (bf16, fp16, tf32) fused vs eager (and ``torch.compile``), and
    the bf16 FLOP-bound fraction against a ``peak_n``-sized bf16 matmul measured now.

    The cuDNN/matmul TF32 flags are set per dtype for the eager side and restored to what
    they were on return, also when a measurement raises. ``device="cpu"`` (kernels under
    the Triton interpreter) is for tests only, with ``compile_baseline=False``.
    """
    from .fused import FusedUNet

    dev = _bench_device(device)
    config = UNetConfig(base_channels=base_channels, depth=depth)
    model = ReferenceUNet(config).eval().to(dev)
    out = geometry.output_size(tile, config.depth)
    mpx = batch * out * out / 1e6
    flops = forward_flops(config, tile, tile) * batch
    timing = dict(warmup=warmup, reps=reps, device=dev)
    peak = measured_peak_tflops(peak_n, device=dev)
    figures, ratios = {"P2.peak_bf16_tflops": peak, "P2.flops_per_output_px": flops / (batch * out * out)}, {}

    def inputs():
        return (torch.randn(batch, 1, tile, tile, device=dev),)

    cl = model.to(memory_format=torch.channels_last)
    saved_tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for dtype in ("bf16", "fp16", "tf32"):
            net = FusedUNet(model, device=dev, dtype=dtype)
            t_fused = median_ms(lambda x: net(x), make_inputs=inputs, **timing)
            amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"

            def eager(x):
                with torch.no_grad(), torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                    cl(x.contiguous(memory_format=torch.channels_last))

            t_eager = median_ms(eager, make_inputs=inputs, **timing)
            figures[f"P2.{dtype}.fused_mpx_s"] = mpx / (t_fused * 1e-3)
            figures[f"P2.{dtype}.eager_mpx_s"] = mpx / (t_eager * 1e-3)
            ratios[f"P2.{dtype}.vs_eager"] = t_eager / t_fused
            if dtype == "bf16":
                ratios["P2.bf16.flop_bound_fraction"] = flops / (t_fused * 1e-3) / (peak * 1e12)
                if compile_baseline:
                    compiled = torch.compile(cl, mode="max-autotune")

                    def comp(x):
                        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
                            compiled(x.contiguous(memory_format=torch.channels_last))

                    t_comp = median_ms(comp, make_inputs=inputs, **{**timing, "warmup": 3})
                    figures["P2.bf16.compile_mpx_s"] = mpx / (t_comp * 1e-3)
                    ratios["P2.bf16.vs_compile"] = t_comp / t_fused
            del net
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    return figures, ratios


# -- P3: weighted softmax-CE ----------------------------------------------------------------
def bench_loss(*, batch: int = 8, classes: int = 2, size: int = 388, large_batch: int = 128,
               copy_bytes: int = 256 * 2**20, device="cuda", warmup: int = 5, reps: int = 25) -> tuple[dict, dict]:
    """Forward + backward of the weighted softmax-CE, fused vs PyTorch eager.

    bf16 logits, an fp32 weight map, the default ``ignore_index=-100``, ``loss.backward()``;
    uint8 targets (what fastunet's trainer feeds: no count pass) and, as separate figures,
    int64 targets (-100 can occur: one extra read of the target counts the pixels). Timed
    at the paper-like ``batch`` (a few MB: launch overheads can weigh) and at ``large_batch``
    (hundreds of MB, far beyond the L2 cache), where the headline bandwidth fraction is taken.
    The reference bandwidth is a device-to-device copy of ``copy_bytes`` bytes. ``device="cpu"``
    (the kernel under the Triton interpreter) is for tests only.
    """
    from .train.loss import weighted_cross_entropy

    dev = _bench_device(device)
    timing = dict(warmup=warmup, reps=reps, device=dev)
    src = torch.empty(int(copy_bytes), device=dev, dtype=torch.uint8)
    dst = torch.empty_like(src)
    t_copy = median_ms(lambda: dst.copy_(src), **timing)
    copy_gbs = 2 * src.numel() / (t_copy * 1e-3) / 1e9  # read + write
    del src, dst
    figures, ratios = {"P3.copy_gb_s": copy_gbs}, {}

    def loss_step(backend):
        def step(logits, target, weight):
            weighted_cross_entropy(logits, target, weight, backend=backend).backward()
        return step

    for target_dtype in (torch.uint8, torch.int64):
        for n in dict.fromkeys((batch, large_batch)):

            def inputs(n=n, target_dtype=target_dtype):
                logits = torch.randn(n, classes, size, size, device=dev, dtype=torch.bfloat16, requires_grad=True)
                target = torch.randint(0, classes, (n, size, size), device=dev, dtype=target_dtype)
                weight = torch.rand(n, size, size, device=dev) * 10
                return logits, target, weight

            t_fused = median_ms(loss_step("triton"), make_inputs=inputs, **timing)
            t_eager = median_ms(loss_step("torch"), make_inputs=inputs, **timing)
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
def bench_train_step(*, tile: int = 572, batch: int = 4, base_channels: int = 64, depth: int = 4, device="cuda",
                     warmup: int = 5, reps: int = 25) -> tuple[dict, dict]:
    """P6: one training step (bf16 autocast forward of :class:`ReferenceUNet`, weighted
    loss, backward, SGD with momentum) with the fused loss vs the same step with the eager
    PyTorch loss. Both models start from the same weights; targets are uint8, as the trainer
    feeds them (:func:`fastunet.augment.augment_batch`). ``device="cpu"`` (the loss kernel
    under the Triton interpreter) is for tests only.
    """
    from .train.loss import weighted_cross_entropy

    dev = _bench_device(device)
    config = UNetConfig(base_channels=base_channels, depth=depth)
    out = geometry.output_size(tile, config.depth)
    first = ReferenceUNet(config)
    second = ReferenceUNet(config)
    second.load_state_dict(first.state_dict())
    models = {k: m.to(dev).to(memory_format=torch.channels_last).train() for k, m in (("fused", first), ("eager", second))}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.99) for k, m in models.items()}

    def inputs():
        x = torch.randn(batch, 1, tile, tile, device=dev).contiguous(memory_format=torch.channels_last)
        target = torch.randint(0, config.num_classes, (batch, out, out), device=dev, dtype=torch.uint8)
        weight = torch.rand(batch, out, out, device=dev) * 10
        return x, target, weight

    def step(kind):
        model, opt, backend = models[kind], opts[kind], ("triton" if kind == "fused" else "torch")

        def train_step(x, target, weight):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                logits = model(x)
            weighted_cross_entropy(logits, target, weight, backend=backend).backward()
            opt.step()
        return train_step

    timing = dict(warmup=warmup, reps=reps, device=dev)
    t_fused = median_ms(step("fused"), make_inputs=inputs, **timing)
    t_eager = median_ms(step("eager"), make_inputs=inputs, **timing)
    return ({"P6.fused_ms": t_fused, "P6.eager_amp_ms": t_eager}, {"P6.vs_eager_amp": t_eager / t_fused})


# -- P4/P5 plumbing (CPU-testable): the volume, the model, the same-padded network -------------
VOLUME_ATTR = "fastunet_bench_volume"


def default_cache_dir() -> Path:
    """Where P4 and P5 keep their generated volume and their outputs (several GiB).

    ``$XDG_CACHE_HOME/fastunet/bench``, else ``~/.cache/fastunet/bench``: on a local disk,
    outside the repository (``fastunet bench --cache DIR`` picks another folder).
    """
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "fastunet" / "bench"


def bench_volume(path, shape=(64, 4096, 4096), *, chunks=(1, 1024, 1024), seed: int = 0, variants: int = 4):
    """A uint16 zarr volume of synthetic nuclei for P4/P5, written once and then reused.

    Drawing a gigavoxel of new nuclei would take long, so ``variants`` planes of
    :func:`fastunet.data.synthetic_nuclei` of one chunk's ``(Y, X)`` size are drawn once, and
    every chunk of the volume is one of them, cyclically shifted by a random offset, plus a
    randomly shifted pattern of uniform noise in ``[0, 16)`` counts (random choices from
    ``seed``: the same arguments give the same volume). Speed does not depend on the
    content beyond its compressibility, which stays that of nuclei images.

    Parameters
    ----------
    path : path-like
        The zarr array folder (zarr v3, default compressor).
    shape, chunks : (Z, Y, X)
    seed, variants : int

    Returns
    -------
    zarr.Array
        The volume, opened read-only.

    Notes
    -----
    An attribute ``fastunet_bench_volume`` records shape, chunks, seed and variants and is
    marked complete last: a volume this function made with the same arguments is reused; a
    partial one, or one made with other arguments, is rewritten; anything else at ``path``
    is refused (:class:`~fastunet.errors.UserError`), never overwritten.
    """
    import zarr

    from .synthetic import synthetic_nuclei

    shape = tuple(int(n) for n in shape)
    chunks = tuple(int(c) for c in chunks)
    if len(shape) != 3 or len(chunks) != 3 or min(shape) < 1 or min(chunks) < 1:
        raise ValueError(f"Expected a (Z, Y, X) shape and chunks of positive sizes; got {shape} and {chunks}.")
    path = Path(path)
    want = {"shape": list(shape), "chunks": list(chunks), "seed": int(seed), "variants": int(variants), "complete": True}
    if path.exists():
        try:
            meta = dict(zarr.open_array(str(path), mode="r").attrs).get(VOLUME_ATTR)
        except (OSError, ValueError):
            meta = None
        if meta is None:
            raise UserError(
                f"{str(path)!r} exists and is not a fastunet benchmark volume; remove it or choose "
                "another cache folder (fastunet bench --cache DIR)."
            )
        if meta == want:
            return zarr.open_array(str(path), mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _, cy, cx = chunks
    by, bx = max(cy, 64), max(cx, 64)  # nuclei need some room; cropped to the chunk below
    # Tiled 2 x 2, so that a cyclic shift of a plane is a window of it (a view, no copy).
    bases = [np.tile(np.minimum(synthetic_nuclei((by, bx), rng=rng, dtype="uint16")[0], 65535 - 16), (2, 2))
             for _ in range(variants)]
    noise = np.tile(rng.integers(0, 16, size=(by, bx), dtype=np.uint16), (2, 2))
    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16", fill_value=0, overwrite=True,
                            attributes={VOLUME_ATTR: {**want, "complete": False}})
    depth, height, width = shape
    for z0 in range(0, depth, chunks[0]):
        slab = np.empty((min(chunks[0], depth - z0), height, width), np.uint16)
        for plane in slab:
            for y0 in range(0, height, cy):
                for x0 in range(0, width, cx):
                    ny, nx = min(cy, height - y0), min(cx, width - x0)
                    (sy, sx), (ty, tx) = rng.integers((by, bx), size=(2, 2))
                    base = bases[rng.integers(variants)][sy:sy + ny, sx:sx + nx]
                    np.add(base, noise[ty:ty + ny, tx:tx + nx], out=plane[y0:y0 + ny, x0:x0 + nx])
        arr[z0:z0 + len(slab)] = slab
    arr.update_attributes({VOLUME_ATTR: want})
    return zarr.open_array(str(path), mode="r")


def random_model_file(path, config: UNetConfig | None = None, *, seed: int = 0) -> Path:
    """Save a :class:`ReferenceUNet` with He-initialized random weights (the speed of a
    forward does not depend on the weights) to ``path``; the global RNG is left untouched."""
    from .modelfile import save_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ReferenceUNet(config or UNetConfig())
    return save_model(path, model)


class SamePaddedUNet(ReferenceUNet):
    """The U-Net with every 3x3 convolution padded by 1 ("same"), as MONAI-style U-Nets are.

    Per level two 3x3 conv (padding 1) + ReLU, a 2x2 max-pool, 2x2 stride-2 up-convolutions,
    the skip concatenated (uncropped: it has the up-conv's size), a 1x1 head. Widths,
    layers and parameters are those of :class:`ReferenceUNet` for the same config (its
    ``state_dict`` loads as is); only the padding differs, so the output has the input's
    size. Inputs must be multiples of ``2**depth``. This is P5's baseline network (built
    here rather than with ``monai.networks.nets``, whose U-Nets do not have these widths
    and layers exactly).
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        for block in (*self.down, self.bottom, *self.dec):
            block.conv1.padding = block.conv2.padding = (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = 2**self.config.depth
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"Expected input of shape (N, {self.config.in_channels}, H, W); got {tuple(x.shape)}.")
        if x.shape[-2] % q or x.shape[-1] % q:
            raise ValueError(f"Expected a height and width that are multiples of {q}; got {tuple(x.shape[-2:])}.")
        return self._layers(x)  # not super().forward: its valid-convolution size check does not apply


def same_padded_flops(config: UNetConfig, height: int, width: int) -> int:
    """FLOPs (2 per multiply-add) of one :class:`SamePaddedUNet` forward on a ``height x
    width`` window: the 3x3 convs, up-convolutions and the head, as :func:`forward_flops`
    counts them for the valid network."""
    q = 2**config.depth
    if height % q or width % q:
        raise ValueError(f"Expected a height and width that are multiples of {q}; got {(height, width)}.")
    widths, flops, c_in = config.widths, 0, config.in_channels
    for level in range(config.depth + 1):
        px = (height >> level) * (width >> level)
        flops += 2 * 9 * px * (c_in * widths[level] + widths[level] ** 2)
        c_in = widths[level]
    for level in range(config.depth):
        px = (height >> level) * (width >> level)
        flops += 2 * widths[level + 1] * widths[level] * px  # up-conv: 4 outputs per input pixel
        flops += 2 * 9 * px * (2 * widths[level] * widths[level] + widths[level] ** 2)
    return flops + 2 * widths[0] * config.num_classes * height * width


def engine_tile_count(layout) -> int:
    """Tiles the engine runs through the network for ``layout`` (a
    :class:`fastunet.tiling.Layout`): per block and Z slice, every tile that supplies one of
    its pixels. Tiles on a boundary between blocks are counted once per block."""
    return sum((block.shape[0] if layout.ndim == 3 else 1) * len(layout.block_tiles(block)) for block in layout.blocks())


def grid_tile_count(layout) -> int:
    """Tiles of the global tile grid that cover the volume, each counted once (the fewest a
    run with this tile size can compute)."""
    planes = layout.shape[0] if layout.ndim == 3 else 1
    return planes * (layout.last_tile(0) + 1) * (layout.last_tile(1) + 1)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _time_segment(model_path, volume_path, out_path, *, tile: int | None, batch: int, device="cuda",
                  backend: str = "triton", dtype: str = "bf16", repeats: int = 1) -> dict:
    """Time ``Segmenter.segment`` from the zarr ``volume_path`` to the zarr ``out_path``.

    The run is warmed up first on the volume's first two slices (kernel compilation,
    autotuning, the device runner thread), with the same tile and batch; ``tile=None``
    takes the engine's default for this volume and device, found by that warm-up and then
    fixed, so the timed runs cannot pick another one. Each timed run includes everything
    ``segment`` does: opening the volume, the normalization statistics, creating the output,
    reading, normalizing, tiling, the network, assembling and writing the labels.

    Returns ``{"seconds": [...], "summary": {...}, "layout": Layout, "batches": float | None}``
    (``batches``: network calls per run made by the device runner; None without one).
    """
    import zarr

    from .segmentation import Segmenter
    from .tiling import Layout

    options = dict(batch_size=batch, device=device, backend=backend, dtype=dtype)
    source = zarr.open_array(str(volume_path), mode="r")
    warm = np.asarray(source[: min(2, source.shape[0])])
    warm_out = Path(out_path).with_name(Path(out_path).stem + "-warmup.zarr")
    if tile is None:
        with Segmenter(model_path, **options) as probe:
            probe.segment(warm, warm_out, axes="ZYX", overwrite=True, progress=False)
            ty, tx = probe.last_summary["tile"]
        if ty != tx:
            raise ValueError(f"The engine's default tile is {ty}x{tx} here; pass a square tile.")
        tile = ty
    times = []
    with Segmenter(model_path, tile=tile, **options) as seg:
        seg.segment(warm, warm_out, axes="ZYX", overwrite=True, progress=False)
        runner = seg.network.runner
        before = None if runner is None else runner.batches
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            labels = seg.segment(str(volume_path), str(out_path), axes="ZYX", overwrite=True, progress=False)
            times.append(time.perf_counter() - start)
        summary = dict(seg.last_summary)
        batches = None if runner is None else (runner.batches - before) / repeats
        depth = seg.config.depth
    shutil.rmtree(warm_out, ignore_errors=True)
    layout = Layout(shape=tuple(source.shape), depth=depth, tile=tuple(summary["tile"]),
                    chunks=tuple(labels.chunks), block=tuple(summary["block"]))
    return {"seconds": times, "summary": summary, "layout": layout, "batches": batches}


def _volume_path(cache: Path, shape) -> Path:
    return cache / f"volume-{'x'.join(str(int(n)) for n in shape)}.zarr"


# -- P4: segment disk to disk vs the raw forward ----------------------------------------------
def bench_segment(*, shape=(64, 4096, 4096), tile: int | None = None, batch: int = 4, repeats: int = 3,
                  cache_dir=None) -> tuple[dict, dict]:
    """P4: ``segment`` zarr to zarr (fused network, bf16) vs the raw fused forward on the same tiles.

    The volume is :func:`bench_volume` (uint16, chunks ``(1, 1024, 1024)``) in ``cache_dir``;
    the network the paper's (base 64, depth 4) with random weights. ``tile=None`` is the
    engine's default tile on this GPU. The segment time is the median of ``repeats`` runs
    (wall clock, see :func:`_time_segment`; the volume was just written or read, so the
    OS page cache may hold it: reads are not cold-disk reads). The raw forward is
    :meth:`FusedUNet.predict` (labels, as the engine asks) on ``batch`` fresh random tiles
    already on the GPU, timed with CUDA events; its time for the volume is that median times
    the batches needed: ``ceil(tiles / batch)`` for the tiles the engine computed
    (``P4.segment_vs_raw``, the goal >= 0.9) and for the global tile grid counted once
    (``P4.segment_vs_raw_grid``: also charges the engine for tiles computed twice on
    block boundaries).
    """
    from .fused import FusedUNet
    from .modelfile import load_model

    _require_cuda()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    volume_path = _volume_path(cache, shape)
    bench_volume(volume_path, shape)
    out_path = cache / "p4-fastunet.zarr"
    with tempfile.TemporaryDirectory() as tmp:
        model_path = random_model_file(Path(tmp) / "unet-random.safetensors")
        timed = _time_segment(model_path, volume_path, out_path, tile=tile, batch=batch, repeats=repeats)
        model = load_model(model_path)
    shutil.rmtree(out_path, ignore_errors=True)
    layout = timed["layout"]
    net = FusedUNet(model, device="cuda", dtype="bf16")
    batch_ms = cuda_median_ms(lambda x: net.predict(x, "labels"),
                              make_inputs=lambda: (torch.randn(batch, 1, *layout.tile, device="cuda"),))
    del net
    voxels = math.prod(shape)
    tiles, grid = engine_tile_count(layout), grid_tile_count(layout)
    seg_s = statistics.median(timed["seconds"])
    raw_s = math.ceil(tiles / batch) * batch_ms * 1e-3
    raw_grid_s = math.ceil(grid / batch) * batch_ms * 1e-3
    figures = {
        "P4.volume_voxels": voxels, "P4.tile": layout.tile[0], "P4.batch": batch,
        "P4.block_voxels": math.prod(layout.block), "P4.repeats": repeats,
        "P4.tiles_computed": tiles, "P4.tiles_grid": grid, "P4.runner_batches": timed["batches"],
        "P4.segment_s": seg_s, "P4.segment_s_min": min(timed["seconds"]), "P4.segment_mpx_s": voxels / seg_s / 1e6,
        "P4.raw_batch_ms": batch_ms, "P4.raw_s": raw_s, "P4.raw_mpx_s": voxels / raw_s / 1e6,
        "P4.raw_grid_mpx_s": voxels / raw_grid_s / 1e6,
    }
    ratios = {"P4.segment_vs_raw": raw_s / seg_s, "P4.segment_vs_raw_grid": raw_grid_s / seg_s}
    return figures, ratios


# -- P5: segment vs MONAI sliding-window inference --------------------------------------------
def _import_monai():
    """MONAI's ``sliding_window_inference`` (a benchmark-only dependency)."""
    try:
        from monai.inferers import sliding_window_inference
    except ImportError as exc:
        raise UserError(
            f"P5 compares fastunet with MONAI, which cannot be imported here ({exc}); "
            "pip install monai (or pip install 'fastunet[bench]')."
        ) from None
    return sliding_window_inference


def _monai_segment(volume_path, out_path, net, *, normalization, roi: int, sw_batch_size: int, slices_per_call: int,
                   overlap: float, device, autocast_dtype, sliding_window) -> dict:
    """The MONAI side of P5, disk to disk: labels of a zarr (Z, Y, X) volume into a new zarr.

    The normalization statistics come from the same fixed lattice sample as fastunet's
    (:func:`fastunet.normalization.normalization_stats`). Then for each group of
    ``slices_per_call`` slices: read them (one reader thread, a group ahead), copy them to
    ``device``, normalize, ``sliding_window(x, (roi, roi), sw_batch_size, predictor,
    overlap=overlap, mode="gaussian")`` under autocast, argmax to uint8 on the device, copy
    back and write (one writer thread, zarr default compressor, the input's chunks).
    Returns ``{"windows": windows through the network, "calls": sliding-window calls}``.
    """
    import zarr

    from . import io
    from .normalization import normalization_stats

    device = torch.device(device)
    source = zarr.open_array(str(volume_path), mode="r")
    depth = source.shape[0]
    out = zarr.create_array(str(out_path), shape=source.shape, chunks=source.chunks, dtype="uint8", fill_value=0,
                            overwrite=True)
    stats = normalization_stats(io.open_volume(str(volume_path), axes="ZYX"), normalization)
    counts = {"windows": 0, "calls": 0}

    def predictor(windows):
        counts["windows"] += windows.shape[0]
        return net(windows.contiguous(memory_format=torch.channels_last))

    def read(z0):
        return torch.from_numpy(np.asarray(source[z0:z0 + slices_per_call], dtype=np.float32))

    starts = list(range(0, depth, slices_per_call))
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending = reader.submit(read, starts[0])
        writes = []
        for i, z0 in enumerate(starts):
            slab = pending.result()
            if i + 1 < len(starts):
                pending = reader.submit(read, starts[i + 1])
            z1 = z0 + slab.shape[0]
            offset, scale = (torch.as_tensor(np.asarray(v, np.float32).reshape(-1, 1, 1, 1), device=device)
                             for v in stats.for_slices(z0, z1))  # (1 or Z, 1, 1, 1): one channel
            x = (slab.to(device, non_blocking=True)[:, None] - offset) / scale
            with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                                 enabled=autocast_dtype is not None):
                scores = sliding_window(x, (roi, roi), sw_batch_size, predictor, overlap=overlap, mode="gaussian")
            counts["calls"] += 1
            labels = scores.argmax(dim=1).to(torch.uint8).cpu().numpy()
            writes.append(writer.submit(out.__setitem__, slice(z0, z1), labels))
        for w in writes:
            w.result()
    return counts


def bench_vs_monai(*, shape=(64, 4096, 4096), tile: int | None = None, batch: int = 4, slices_per_call: int = 4,
                   overlap: float = 0.25, repeats: int = 1, cache_dir=None) -> tuple[dict, dict]:
    """P5: ``segment`` vs MONAI ``sliding_window_inference`` on the same volume and GPU.

    fastunet: as in P4 (fused network, bf16, the engine's default tile unless ``tile`` is
    given, ``batch`` tiles per call), zarr to zarr. MONAI: :class:`SamePaddedUNet` with the
    same random weights, bf16 autocast, channels_last, cuDNN benchmark mode on (restored
    afterwards), windows of ``roi`` = the largest multiple of ``2**depth`` not above
    fastunet's output tile edge, ``sw_batch_size = batch``, ``overlap`` 0.25, gaussian
    blending, ``slices_per_call`` slices per call, zarr to zarr (:func:`_monai_segment`).
    Both times are wall clock and include opening the volume, the normalization statistics,
    reading, normalizing, the network, blending / assembling, argmax and writing uint8
    labels with the same chunks and compressor; both sides were warmed up first (fastunet
    on two slices, MONAI with one call of the same shape). Not included on either side:
    loading the model and building the network. The ratio ``P5.fastunet_vs_monai`` is
    the throughput ratio (the goal is >= 3). FLOPs per output voxel of both sides
    (network FLOPs times tiles or windows, divided by the volume) are recorded beside.
    """
    sliding_window = _import_monai()
    from .modelfile import read_model

    _require_cuda()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    volume_path = _volume_path(cache, shape)
    bench_volume(volume_path, shape)
    ours_out, monai_out = cache / "p5-fastunet.zarr", cache / "p5-monai.zarr"
    with tempfile.TemporaryDirectory() as tmp:
        model_path = random_model_file(Path(tmp) / "unet-random.safetensors")
        ours = _time_segment(model_path, volume_path, ours_out, tile=tile, batch=batch, repeats=repeats)
        reference = read_model(model_path)
    shutil.rmtree(ours_out, ignore_errors=True)
    layout, config = ours["layout"], reference.config
    q = 2**config.depth
    roi = min(layout.out) // q * q
    net = SamePaddedUNet(config)
    net.load_state_dict(reference.module.state_dict())
    net = net.cuda().eval().to(memory_format=torch.channels_last)
    options = dict(normalization=reference.normalization, roi=roi, sw_batch_size=batch,
                   slices_per_call=slices_per_call, overlap=overlap, device="cuda",
                   autocast_dtype=torch.bfloat16, sliding_window=sliding_window)
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            warm = torch.randn(min(slices_per_call, shape[0]), 1, *shape[1:], device="cuda")
            sliding_window(warm, (roi, roi), batch, lambda w: net(w.contiguous(memory_format=torch.channels_last)),
                           overlap=overlap, mode="gaussian")
            del warm
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            counts = _monai_segment(volume_path, monai_out, net, **options)
            times.append(time.perf_counter() - start)
    finally:
        torch.backends.cudnn.benchmark = previous
    shutil.rmtree(monai_out, ignore_errors=True)
    voxels = math.prod(shape)
    ours_s, monai_s = statistics.median(ours["seconds"]), statistics.median(times)
    tiles = engine_tile_count(layout)
    figures = {
        "P5.volume_voxels": voxels, "P5.repeats": repeats,
        "P5.fastunet_tile": layout.tile[0], "P5.fastunet_batch": batch, "P5.fastunet_tiles": tiles,
        "P5.fastunet_s": ours_s, "P5.fastunet_mpx_s": voxels / ours_s / 1e6,
        "P5.fastunet_flops_per_voxel": forward_flops(config, *layout.tile) * tiles / voxels,
        "P5.monai_roi": roi, "P5.monai_sw_batch": batch, "P5.monai_overlap": overlap,
        "P5.monai_slices_per_call": slices_per_call, "P5.monai_windows": counts["windows"],
        "P5.monai_s": monai_s, "P5.monai_mpx_s": voxels / monai_s / 1e6,
        "P5.monai_flops_per_voxel": same_padded_flops(config, roi, roi) * counts["windows"] / voxels,
    }
    return figures, {"P5.fastunet_vs_monai": monai_s / ours_s}


BENCHMARKS = {
    "P1": bench_conv_layers,
    "P2": bench_forward,
    "P3": bench_loss,
    "P4": bench_segment,
    "P5": bench_vs_monai,
    "P6": bench_train_step,
}

# Smaller sizes for ``--quick`` (the benchmarks not listed run at their full size).
QUICK = {
    "P1": dict(tiles=(572,), batches=(2,)),
    "P2": dict(batch=2, compile_baseline=False),
    "P4": dict(shape=(8, 2048, 2048), repeats=1),
    "P5": dict(shape=(8, 2048, 2048)),
}

# Benchmarks that keep a generated volume in a cache folder.
_CACHED = ("P4", "P5")


def run(only: list[str] | None = None, *, out_dir: Path | None = None, quick: bool = False,
        cache_dir: Path | None = None) -> list[Path]:
    """Run the chosen benchmarks (all by default) and write one JSON result per benchmark.

    ``cache_dir`` holds the volume of P4/P5 (default :func:`default_cache_dir`).
    """
    _require_cuda()
    names = only or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise UserError(f"Unknown benchmark(s) {unknown}; choose among {sorted(BENCHMARKS)}.")
    if "P5" in names:
        _import_monai()  # refuse before hours of other benchmarks, not after
    paths = []
    for name in names:
        kwargs = dict(QUICK.get(name, {})) if quick else {}
        if name in _CACHED and cache_dir is not None:
            kwargs["cache_dir"] = cache_dir
        figures, ratios = BENCHMARKS[name](**kwargs)
        paths.append(write_result(name, figures, ratios, out_dir=out_dir, extra={"quick": quick}))
    return paths
