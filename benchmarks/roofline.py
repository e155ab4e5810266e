"""Roofline predictions for the GPU goals P1-P5 (no GPU needed): ``python benchmarks/roofline.py``.

Everything printed here is computed from formulas, not measured: FLOPs from the
architecture, the fewest bytes each kernel must move, and two device models of an H100 SXM:
NVIDIA's nominal figures (989 TFLOP/s dense bf16, 3.35 TB/s HBM3) and the readings this
workplace recorded on its H100 (an 8192^3 bf16 matmul at 798 TFLOP/s, a device copy at
3.0 TB/s counting read + write). ``benchmarks/NOTES.md`` quotes these tables as predictions.

Per-layer model (bf16 storage, 2 bytes a value; batch ``n``):

* fused conv (``kernels/conv.py``): reads its input once (the skip only where cropped), writes
  its output (and the pooled output): ``t = max(FLOPs / (e * P), bytes / B)``;
* eager (``F.conv2d`` + bias + ReLU, + max-pool, + crop/cat): the conv kernel (cuDNN), plus
  memory-bound passes: the bias add and the ReLU each read and write the output (PyTorch adds
  the bias of a cuDNN convolution in a separate ``add_``; to confirm in a profile), the pool
  reads the output and writes a quarter, ``torch.cat`` reads both sources and writes the
  concatenation;
* torch.compile: the same conv kernel, bias + ReLU fused into one pass (read and write the
  output), the pool as in eager, the cat without the up-conv's copy (its producer writes
  into the concatenation) but with the copy of the cropped skip;
* ``fusion ceiling`` = eager / fused time with both conv main loops at the same efficiency:
  what the fusions alone can win. The predicted ratios assume cuDNN's conv main loop at
  ``E_CUDNN`` of the matmul peak and ours at ``r`` times that (both assumptions).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastunet import geometry  # noqa: E402
from fastunet.bench.monai_baseline import same_padded_flops  # noqa: E402
from fastunet.bench.pipeline import engine_tile_count, grid_tile_count  # noqa: E402
from fastunet.bench.timing import geometric_mean  # noqa: E402
from fastunet.engine.tiling import plan_layout  # noqa: E402
from fastunet.model import UNetConfig, forward_flops  # noqa: E402

DEVICES = {"nominal": (989e12, 3.35e12), "recorded": (798e12, 3.0e12)}  # (FLOP/s, B/s)
E_CUDNN = 0.7  # assumed fraction of the matmul peak cuDNN's bf16 3x3 convs reach (not measured)
S = 2  # bytes per bf16 value


def conv_rows(config: UNetConfig, tile: int, batch: int) -> list[dict]:
    """FLOPs and bytes of every 3x3 conv: fused, and the extra passes of eager and compile."""
    rows = []
    for s in geometry.layer_shapes(config, tile, "conv3x3"):
        n, size, c_in, c_out = batch, s.in_size[0], s.c_in, s.c_out
        c_a, c_b = (s.c_skip, c_in - s.c_skip) if s.c_skip else (c_in, 0)
        out_px = n * (size - 2) ** 2
        read = n * size * size * c_in * S
        write = out_px * c_out * S
        pooled = out_px // 4 * c_out * S if s.pool else 0
        pool_pass = write + pooled if s.pool else 0
        rows.append(dict(
            name=s.name, flops=n * s.flops,
            fused=read + write + pooled + 9 * c_in * c_out * S, conv=read + write + 9 * c_in * c_out * S,
            eager_extra=4 * write + pool_pass + (2 * read if c_b else 0),
            compile_extra=2 * write + pool_pass + (2 * n * size * size * c_a * S if c_b else 0),
        ))
    return rows


def layer_times(row: dict, peak: float, bandwidth: float, *, r: float = 1.0, e: float = E_CUDNN) -> dict:
    """Seconds of one layer: fused (ours at ``r * e`` of the peak), eager and compile (cuDNN at ``e``)."""
    cudnn = max(row["flops"] / (e * peak), row["conv"] / bandwidth)
    return dict(
        fused=max(row["flops"] / (r * e * peak), row["fused"] / bandwidth),
        eager=cudnn + row["eager_extra"] / bandwidth,
        compile=cudnn + row["compile_extra"] / bandwidth,
        ideal=max(row["flops"] / peak, row["fused"] / bandwidth),
        ideal_eager=max(row["flops"] / peak, row["conv"] / bandwidth) + row["eager_extra"] / bandwidth,
    )


def forward_bound(config: UNetConfig, tile: int, peak: float, bandwidth: float) -> tuple[float, float]:
    """(FLOP-bound time, roofline time) of one fused forward of one tile: convs, up-convs, head."""
    t = sum(layer_times(r, peak, bandwidth)["ideal"] for r in conv_rows(config, tile, 1))
    for layer in geometry.layer_shapes(config, tile):
        h, w = layer.in_size
        if layer.kind == "upconv":  # reads its input, writes 4x the pixels
            t += max(layer.flops / peak, (layer.c_in * h * w + layer.out_values) * S / bandwidth)
        elif layer.kind == "head":  # reads the features, writes one uint8 label per pixel
            t += max(layer.flops / peak, (layer.c_in * S + 1) * h * w / bandwidth)
    return forward_flops(config, tile, tile) / peak, t


def windows(extent: int, roi: int, overlap: float) -> int:
    """Windows MONAI's sliding_window_inference places along one axis."""
    if roi >= extent:
        return 1
    return math.ceil((extent - roi) / int(roi * (1 - overlap))) + 1


def tile_intensity() -> list[tuple[str, float]]:
    """FLOPs per byte loaded (from L2 / L1 into the SM) of each conv autotune config: an
    implicit GEMM's BLOCK_M x BLOCK_N output tile loads (BLOCK_M + BLOCK_N) x BLOCK_K values
    per K step for 2 x BLOCK_M x BLOCK_N x BLOCK_K FLOPs."""
    from fastunet.kernels.conv import get_autotune_config

    out = []
    for c in get_autotune_config():
        m, n = c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"], c.kwargs["BLOCK_N"]
        label = (f"{c.kwargs['BLOCK_H']}x{c.kwargs['BLOCK_W']} (M {m}), N {n}, K {c.kwargs['BLOCK_K']}, "
                 f"{c.num_warps} warps, {c.num_stages} stages")
        out.append((label, 2 * m * n / ((m + n) * S)))
    return out


def main() -> None:
    config = UNetConfig()
    peak, bw = DEVICES["recorded"]
    print("## P1: conv layers, tile 572, batch 8, recorded H100 figures (times in microseconds)\n")
    print("| layer | GFLOP | FLOP/B (fused) | bound | ideal fused | ideal eager | fusion ceiling |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in conv_rows(config, 572, 8):
        t = layer_times(row, peak, bw)
        bound = "compute" if row["flops"] / peak >= row["fused"] / bw else "memory"
        print(f"| {row['name']} | {row['flops'] / 1e9:.1f} | {row['flops'] / row['fused']:.0f} | {bound} | "
              f"{t['ideal'] * 1e6:.0f} | {t['ideal_eager'] * 1e6:.0f} | {t['ideal_eager'] / t['ideal']:.2f} |")
    print()
    for label, (pk, b) in DEVICES.items():
        for tile, batch in ((572, 8), (1052, 2)):
            gm = geometric_mean(layer_times(r, pk, b)["ideal_eager"] / layer_times(r, pk, b)["ideal"]
                                for r in conv_rows(config, tile, batch))
            print(f"fusion ceiling, geometric mean over the 18 convs, {label}, tile {tile} batch {batch}: {gm:.2f}")
    print(f"\n### Predicted P1 geometric mean (both tiles) and P2 conv-only ratios, cuDNN at {E_CUDNN:.0%} "
          "of the recorded peak, ours at r x that\n")
    print("| r | P1 geomean vs eager | P2 vs eager (convs) | P2 vs compile (convs) | P2 FLOP-bound fraction (convs) |")
    print("| --- | --- | --- | --- | --- |")
    for r in (1.0, 0.8, 0.6, 0.5):
        rows = conv_rows(config, 572, 8) + conv_rows(config, 1052, 2)
        gm = geometric_mean(layer_times(x, peak, bw, r=r)["eager"] / layer_times(x, peak, bw, r=r)["fused"] for x in rows)
        times = [layer_times(x, peak, bw, r=r) for x in conv_rows(config, 572, 8)]
        flops = sum(x["flops"] for x in conv_rows(config, 572, 8))
        fused = sum(t["fused"] for t in times)
        print(f"| {r} | {gm:.2f} | {sum(t['eager'] for t in times) / fused:.2f} | "
              f"{sum(t['compile'] for t in times) / fused:.2f} | {flops / peak / fused:.2f} |")
    print("\n### FLOPs per byte loaded into the SMs, per conv autotune config (a GEMM tile's intensity)\n")
    for label, value in tile_intensity():
        print(f"- {label}: {value:.0f} FLOP/B -> {peak / value / 1e12:.1f} TB/s of L2/L1 loads at the recorded peak")
    print("\n## P2: forward of one tile: FLOPs per output pixel and the roofline ceiling of the FLOP-bound fraction\n")
    print("| tile | output | MFLOP per output px | ceiling (nominal) | ceiling (recorded) |")
    print("| --- | --- | --- | --- | --- |")
    for tile in (572, 1052, 2236):
        out = geometry.output_size(tile, config.depth)
        fr = [b / t for b, t in (forward_bound(config, tile, *DEVICES[k]) for k in ("nominal", "recorded"))]
        print(f"| {tile} | {out} | {forward_flops(config, tile, tile) / out**2 / 1e6:.3f} | {fr[0]:.3f} | {fr[1]:.3f} |")
    print("\nenc0.conv1 (C_in = 1): 9 useful K values per output, 9 x BLOCK_K computed: 32x (BLOCK_K 32) or "
          "64x (BLOCK_K 64) the useful tensor work")
    print("\n## P4/P5: tiles and FLOPs on the full volume (64 x 4096 x 4096) and the quick one (8 x 2048 x 2048)\n")
    print("| volume | tile | step | tiles computed | grid tiles | computed twice | fastunet MFLOP/voxel | "
          "MONAI roi | windows/slice | MONAI MFLOP/voxel | MONAI / fastunet FLOPs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for shape in ((64, 4096, 4096), (8, 2048, 2048)):
        for tile in (572, None):
            layout = plan_layout(shape, config.depth, source_chunks=(1, 1024, 1024), tile=tile, max_step=2048)
            computed, grid = engine_tile_count(layout), grid_tile_count(layout)
            voxels = math.prod(shape)
            ours = forward_flops(config, *layout.tile) * computed / voxels
            roi = min(layout.out) // 16 * 16
            w = windows(shape[1], roi, 0.25) * windows(shape[2], roi, 0.25)
            theirs = same_padded_flops(config, roi, roi) * w * shape[0] / voxels
            print(f"| {'x'.join(map(str, shape))} | {layout.tile[0]} | {layout.step[0]} | {computed} | {grid} | "
                  f"{computed / grid - 1:.1%} | {ours / 1e6:.3f} | {roi} | {w} | {theirs / 1e6:.3f} | {theirs / ours:.2f} |")
    print("\n(tile 2236 is the engine's default on an 80 GB GPU: the largest step <= 2048 whose batch of 4 tiles "
          "fits half the free memory by activation_bytes)")


if __name__ == "__main__":
    main()
