"""P1 and P3: single fused kernels against the PyTorch operations they replace.

P1     each 3x3 conv layer shape of the paper network through the fused kernel vs
       ``F.conv2d`` + bias + ReLU (+ max-pool, + crop/cat where the kernel fuses them) in
       PyTorch eager, bf16 channels_last (cuDNN); per shape and the geometric mean.
P1-3D  the same for each 3x3x3 conv layer of a 3D U-Net (:data:`CICEK_3D`, Cicek et al.'s
       network): the fused 3D kernel vs ``F.conv3d`` (+ ``max_pool3d``, + crop/cat),
       channels_last_3d.
P3     the weighted softmax-CE forward+backward vs eager, and its achieved bandwidth vs a
       measured device-to-device copy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import geometry
from ..model import UNetConfig, center_crop
from . import timing

__all__ = ["bench_conv_layers", "bench_conv_layers_3d", "bench_loss", "CICEK_3D", "CICEK_3D_TILE"]

# Cicek et al. (2016), "3D U-Net": 3 channels in, 3 classes, 2x2x2 pools, a 116 x 132 x 132 input
# tile (fastunet's widths: base 32, doubled at each level; the paper's were 32-64, 64-128, ...).
CICEK_3D = UNetConfig(in_channels=3, num_classes=3, base_channels=32, depth=3, spatial_dims=3)
CICEK_3D_TILE = (116, 132, 132)


def _label(tile) -> str:
    """A tile's name in the figures: ``572``, or ``116x132x132`` for a 3D tile."""
    return "x".join(map(str, tile)) if isinstance(tile, tuple) else str(tile)


def _time_conv_layer(s: geometry.Layer, batch: int, runs: dict) -> tuple[float, float]:
    """Median milliseconds of one 3x3 (3D: 3x3x3) conv layer ``s`` at ``batch``: (fused kernel, eager)."""
    from ..kernels import conv, conv3d

    dev, bf = runs["device"], torch.bfloat16
    three_d = len(s.in_size) == 3
    layout = torch.channels_last_3d if three_d else torch.channels_last
    last = (0, 2, 3, 4, 1) if three_d else (0, 2, 3, 1)  # NC... -> N...C, the kernels' layout
    # A decoder's conv1 reads the cropped skip (c_skip channels) and the up-conv output.
    c_in, n, size = s.c_in, batch, s.in_size
    c_a, c_b = (s.c_skip, s.c_in - s.c_skip) if s.c_skip else (s.c_in, 0)
    a_size = s.skip_size or size
    taps = 27 if three_d else 9
    weight = torch.randn(s.c_out, c_in, *(3,) * len(size), device=dev) * (2 / (taps * c_in)) ** 0.5
    bias = torch.randn(s.c_out, device=dev)
    packed = (conv3d if three_d else conv).pack_weight(weight, bf)
    w_cl = weight.to(bf).contiguous(memory_format=layout)
    bias_bf = bias.to(bf)  # cast once, outside the timed calls

    def inputs():
        a = torch.randn(n, c_a, *a_size, device=dev, dtype=bf).contiguous(memory_format=layout)
        b = torch.randn(n, c_b, *size, device=dev, dtype=bf).contiguous(memory_format=layout) if c_b else None
        return a, b

    def fused(a, b):
        up = None if b is None else b.permute(*last)
        if three_d:
            conv3d.conv3x3x3(a.permute(*last), packed, bias, up=up, pool=s.factor if s.pool else None, dtype="bf16")
        else:
            conv.conv3x3(a.permute(*last), packed, bias, up=up, pool=s.pool, dtype="bf16")

    def eager(a, b):
        x = a if b is None else torch.cat([center_crop(a, *size), b], dim=1)
        y = torch.relu((F.conv3d if three_d else F.conv2d)(x, w_cl, bias_bf))
        if s.pool:
            (F.max_pool3d if three_d else F.max_pool2d)(y, s.factor)

    return timing.median_ms(fused, make_inputs=inputs, **runs), timing.median_ms(eager, make_inputs=inputs, **runs)


def _conv_layers(name: str, config: UNetConfig, tiles, batches, runs: dict, layers) -> tuple[dict, dict]:
    """Each 3x3 conv layer of ``config`` at each tile and batch: ``<name>.<tile>.<layer>.*``."""
    if len(tiles) != len(batches):
        raise ValueError(f"Expected one batch per tile; got tiles={tiles} and batches={batches}.")
    figures, ratios = {}, {}
    for tile, batch in zip(tiles, batches):
        for s in geometry.layer_shapes(config, tile, "conv3x3"):
            if layers is not None and s.name not in layers:
                continue
            key = f"{name}.{_label(tile)}.{s.name}"
            t_fused, t_eager = _time_conv_layer(s, batch, runs)
            figures[f"{key}.fused_ms"] = t_fused
            figures[f"{key}.cudnn_ms"] = t_eager
            ratios[f"{key}.speedup"] = t_eager / t_fused
    ratios[f"{name}.geomean_speedup"] = timing.geometric_mean(v for k, v in ratios.items() if k.endswith(".speedup"))
    return figures, ratios


def bench_conv_layers(*, tiles=(572, 1052), batches=(8, 2), base_channels: int = 64, depth: int = 4,
                      device="cuda", warmup: int = 5, reps: int = 25, layers=None) -> tuple[dict, dict]:
    """P1: every 3x3 conv layer shape, fused kernel vs ``F.conv2d`` + bias + ReLU (+ pool, +
    crop/cat) in eager bf16 channels_last, at each ``tiles[i]`` with batch ``batches[i]``.

    The shapes are :func:`fastunet.geometry.layer_shapes` of the network. ``device="cpu"``
    (kernels under the Triton interpreter) is for tests only: it checks that the benchmark
    runs, its figures mean nothing. ``fastunet bench`` runs on CUDA.

    Parameters
    ----------
    tiles, batches : sequence of int
        Input tile edges and the batch of each (as many of one as of the other).
    base_channels, depth : int
        The network's widths (:class:`~fastunet.model.UNetConfig`).
    device : str
        ``"cuda"``, or ``"cpu"`` for tests.
    warmup, reps : int
        Untimed and timed calls of each measurement.
    layers : sequence of str, optional
        Only these layer names (``benchmarks/device_check.sh`` times one shape a call, so
        each is written as soon as it is measured).

    Returns
    -------
    figures, ratios : dict
        ``P1.<tile>.<layer>.fused_ms`` / ``.cudnn_ms``; ``P1.<tile>.<layer>.speedup`` and
        ``P1.geomean_speedup``.
    """
    runs = dict(warmup=warmup, reps=reps, device=timing.bench_device(device))
    return _conv_layers("P1", UNetConfig(base_channels=base_channels, depth=depth), tiles, batches, runs, layers)


def bench_conv_layers_3d(*, config: UNetConfig = CICEK_3D, tiles=(CICEK_3D_TILE,), batches=(1,), device="cuda",
                         warmup: int = 5, reps: int = 25, layers=None) -> tuple[dict, dict]:
    """P1-3D: every 3x3x3 conv layer shape of the 3D network ``config``, the fused 3D kernel
    (:func:`fastunet.kernels.conv3d.conv3x3x3`) vs ``F.conv3d`` + bias + ReLU (+
    ``max_pool3d``, + crop/cat) in eager bf16 channels_last_3d (cuDNN), at each
    ``tiles[i]`` ``(D, H, W)`` with batch ``batches[i]`` (the engine runs a 3D network one
    tile at a time). ``device="cpu"`` (the interpreter) is for tests only.

    Returns
    -------
    figures, ratios : dict
        ``P1-3D.<D>x<H>x<W>.<layer>.fused_ms`` / ``.cudnn_ms`` / ``.speedup``, and
        ``P1-3D.geomean_speedup``.
    """
    if config.spatial_dims != 3:
        raise ValueError(f"bench_conv_layers_3d times a 3D network; got {config.describe()} (use bench_conv_layers).")
    runs = dict(warmup=warmup, reps=reps, device=timing.bench_device(device))
    return _conv_layers("P1-3D", config, [tuple(t) for t in tiles], batches, runs, layers)


def _copy_gb_s(nbytes: int, runs: dict) -> float:
    """Device-to-device copy bandwidth of ``nbytes`` bytes in GB/s, counting read + write.

    The two buffers live only here, so they are freed before the loss is timed.
    """
    src = torch.empty(int(nbytes), device=runs["device"], dtype=torch.uint8)
    dst = torch.empty_like(src)
    t_copy = timing.median_ms(lambda: dst.copy_(src), **runs)
    return 2 * src.numel() / (t_copy * 1e-3) / 1e9


def bench_loss(*, batch: int = 8, classes: int = 2, size: int = 388, large_batch: int = 128,
               copy_bytes: int = 256 * 2**20, device="cuda", warmup: int = 5, reps: int = 25) -> tuple[dict, dict]:
    """P3: forward + backward of the weighted softmax-CE, fused vs PyTorch eager.

    bf16 logits, an fp32 weight map, the default ``ignore_index=-100``, ``loss.backward()``;
    uint8 targets (what fastunet's trainer feeds: no count pass) and, as separate figures,
    int64 targets (-100 can occur: one extra read of the target counts the pixels). Timed
    at the paper-like ``batch`` (a few MB: launch overheads can weigh) and at ``large_batch``
    (hundreds of MB, far beyond the L2 cache), where the headline bandwidth fraction is taken.
    The reference bandwidth is a device-to-device copy of ``copy_bytes`` bytes. ``device="cpu"``
    (the kernel under the Triton interpreter) is for tests only.

    Parameters
    ----------
    batch, large_batch : int
        The two batch sizes.
    classes, size : int
        Logit channels and the square logit edge.
    copy_bytes : int
        Size of the reference copy.
    device : str
        ``"cuda"``, or ``"cpu"`` for tests.
    warmup, reps : int
        Untimed and timed calls of each measurement.

    Returns
    -------
    figures, ratios : dict
        Per target dtype and batch ``P3.<dtype>.batch<n>.*``; the headline ratios
        ``P3.vs_eager``, ``P3.copy_bandwidth_fraction`` and ``P3.int64.copy_bandwidth_fraction``.
    """
    from ..train.loss import weighted_cross_entropy

    dev = timing.bench_device(device)
    runs = dict(warmup=warmup, reps=reps, device=dev)
    copy_gbs = _copy_gb_s(copy_bytes, runs)
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

            t_fused = timing.median_ms(loss_step("triton"), make_inputs=inputs, **runs)
            t_eager = timing.median_ms(loss_step("torch"), make_inputs=inputs, **runs)
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
