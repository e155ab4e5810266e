"""The performance model's view of a 3x3 or 3x3x3 conv launch (:mod:`fastunet.kernels.perfmodel`):
its shape, and per tile config (either main loop: the row-run loop of :mod:`fastunet.kernels.rowrun`,
or the pointer loops of :mod:`fastunet.kernels.conv` / ``conv3d``) the tiles, K steps, step
traffic, shared memory and registers, the predicted time, and the ranking that
``FASTUNET_AUTOTUNE=0`` launches the first of. Predictions, never measurements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import perfmodel

if TYPE_CHECKING:  # configs are read through .kwargs, .num_warps and .num_stages only
    from triton import Config

__all__ = ["ConvShape", "conv_shape", "model_layer", "predict", "rank", "rowrun_smem", "fits", "rowrun_tiles"]


@dataclass(frozen=True)
class ConvShape:
    """What the model needs of a conv launch: batch, input grid (of the second source with
    two; ``d_in`` = 0 for a 2D conv), channels of each source, output channels, flags, bytes
    a value; ``pool_d``: the pool's extent along Z (3D)."""

    n: int
    h_in: int
    w_in: int
    c_a: int
    c_b: int
    c_out: int
    pool: bool = False
    write_y: bool = True
    element_size: int = 2
    packed: int = 0
    d_in: int = 0
    pool_d: int = 1

    @property
    def h_out(self) -> int:
        return self.h_in - 2

    @property
    def w_out(self) -> int:
        return self.w_in - 2

    @property
    def d_out(self) -> int:
        """Output planes (1 for a 2D conv)."""
        return self.d_in - 2 if self.d_in else 1

    @property
    def planes_in(self) -> int:
        return self.d_in or 1

    @property
    def kd(self) -> int:
        """Taps along Z: 3 (3D) or 1 (2D)."""
        return 3 if self.d_in else 1

    def out_pixels(self) -> int:
        return self.n * self.d_out * self.h_out * self.w_out

    def useful_flops(self) -> float:
        return 2.0 * self.out_pixels() * 9 * self.kd * (self.c_a + self.c_b) * self.c_out

    def pooled_fraction(self) -> float:
        return (1 / (4 * self.pool_d)) if self.pool else 0.0

    def hbm_bytes(self) -> float:
        written = self.out_pixels() * self.c_out * (int(self.write_y) + self.pooled_fraction())
        c_in = self.c_a + self.c_b
        pixels_in = self.n * self.planes_in * self.h_in * self.w_in
        return (pixels_in * c_in + 9 * self.kd * c_in * self.c_out + written) * self.element_size


def conv_shape(x, up, c_out: int, *, pool=False, write_y: bool = True, packed: int = 0) -> ConvShape:
    """The :class:`ConvShape` of a launch (``x``: the input, or the skip with ``up``; channels-last,
    2D or 3D; ``pool``: True, or the 3D pool's extents)."""
    grid = up if up is not None else x
    spatial = tuple(grid.shape[1:-1])
    d_in = spatial[0] if len(spatial) == 3 else 0
    pool_d = pool[0] if isinstance(pool, tuple) else 1
    return ConvShape(x.shape[0], spatial[-2], spatial[-1], x.shape[-1], 0 if up is None else up.shape[-1], c_out,
                     bool(pool), write_y, x.element_size(), packed, d_in, pool_d)


def rowrun_smem(kw: dict, stages: int, element_size: int) -> int:
    r, bw, bn, bk, rd = kw["R"], kw["BW"], kw["BN"], kw["BK"], kw.get("RD", 1)
    a_boxes, w_boxes = (1, 1) if r == 1 else (rd * (r // rd + 2), 3)
    return stages * (a_boxes * bw + w_boxes * bn) * bk * element_size


def _registers(acc_elements: int, num_warps: int) -> int:
    """Registers a thread, estimated: the fp32 accumulators plus ~48 for addresses, counters
    and the epilogue (ptxas's figure is in the compile report)."""
    return min(255, acc_elements // (32 * num_warps) + 48)


def rowrun_tiles(kw: dict, s: ConvShape) -> tuple[int, int]:
    """(tiles, K steps a tile) of a row-run config on ``s``: what the grid launches and the kernel
    counts (the tile decomposition of :func:`fastunet.kernels.rowconv.conv_rowrun_kernel`)."""
    r, bw, bn, bk, rd = kw["R"], kw["BW"], kw["BN"], kw["BK"], kw.get("RD", 1)
    blocks = sum(-(-c // bk) for c in (s.c_a, s.c_b) if c)
    if r == 1:
        tiles_m = -(-(s.n * s.planes_in * s.h_in * s.w_in) // bw)
    else:
        tiles_m = s.n * -(-s.d_out // rd) * -(-s.h_out // (r // rd)) * -(-s.w_out // bw)
    taps = 9 * s.kd if r == 1 else 3 * s.kd
    return tiles_m * -(-s.c_out // bn), taps * blocks


def _pointer_layer(config: Config, s: ConvShape):
    kw, e = config.kwargs, s.element_size
    bn, bk = kw["BLOCK_N"], kw["BLOCK_K"]
    bd = kw.get("BLOCK_D", 1)
    bm = bd * kw["BLOCK_H"] * kw["BLOCK_W"]
    tiles_m = s.n * -(-s.d_out // bd) * -(-s.h_out // kw["BLOCK_H"]) * -(-s.w_out // kw["BLOCK_W"])
    k = s.packed or bk
    blocks = sum(-(-c // bk) for c in (s.c_a, s.c_b) if c)
    steps = 1 if s.packed else 9 * s.kd * blocks
    return (tiles_m * -(-s.c_out // bn), steps, perfmodel.pointer_step(bm, bn, k, config.num_warps, e),
            (bm + bn) * k * e * (1 if s.packed else config.num_stages), bm * bn, bm, bn)


def model_layer(config: Config, s: ConvShape) -> perfmodel.Layer:
    """The model's view of one launch of ``config`` on ``s`` (either main loop, 2D or 3D)."""
    kw, e, warps, stages = config.kwargs, s.element_size, config.num_warps, config.num_stages
    if "R" in kw:  # row runs
        r, bw, bn = kw["R"], kw["BW"], kw["BN"]
        tiles, steps = rowrun_tiles(kw, s)
        step = perfmodel.rowrun_step(r, bw, bn, kw["BK"], warps, e, kw.get("RD", 1))
        smem, acc, pixels = rowrun_smem(kw, stages, e), r * bw * bn, r * bw
    else:  # the pointer loop
        tiles, steps, step, smem, acc, pixels, bn = _pointer_layer(config, s)
    out_bytes = pixels * bn * e * (int(s.write_y) + s.pooled_fraction())
    return perfmodel.Layer(tiles=tiles, steps=steps, step=step, out_bytes_per_tile=out_bytes,
                           hbm_bytes=s.hbm_bytes(), useful_flops=s.useful_flops(), smem_bytes=smem,
                           num_warps=warps, num_stages=stages, registers=_registers(acc, warps))


def predict(config: Config, s: ConvShape, scenario: str = "low") -> dict:
    """The model's prediction for ``config`` on ``s``: seconds, bound, ceilings, fraction of
    the matmul rate (:func:`fastunet.kernels.perfmodel.launch_time`). A prediction, not a
    measurement."""
    return perfmodel.launch_time(model_layer(config, s), perfmodel.device(scenario))


def fits(config: Config, s: ConvShape) -> bool:
    """Whether a row-run ``config`` can run ``s`` (pointer configs always can): a flat tile
    (``R = 1``) wraps rows: one uncropped source, no pool; a 2x2x2 pool needs two planes a
    tile; two planes only in 3D; within 227 KiB."""
    kw = config.kwargs
    if "R" not in kw:
        return True
    r, rd = kw["R"], kw.get("RD", 1)
    if r == 1:
        ok = not (s.pool or s.c_b)
    else:
        ok = (rd == 1 or s.d_in > 0) and (not s.pool or s.pool_d == 1 or rd == 2)
    return ok and rowrun_smem(kw, config.num_stages, s.element_size) + 1024 <= perfmodel.H200.smem_per_block


def rank(configs: list[Config], s: ConvShape) -> list[Config]:
    """``configs`` that can run ``s``, fastest first by the model (pessimistic scenario;
    ties keep the list's order). ``FASTUNET_AUTOTUNE=0`` launches the first."""
    usable = [c for c in configs if fits(c, s)]
    return sorted(usable, key=lambda c: predict(c, s)["seconds"])
