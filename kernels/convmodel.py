"""The performance model's view of a 3x3 conv launch (:mod:`fastunet.kernels.perfmodel`):
its shape, and per tile config (either main loop of :mod:`fastunet.kernels.conv`) the tiles,
K steps, step traffic, shared memory and registers, the predicted time, and the ranking that
``FASTUNET_AUTOTUNE=0`` launches the first of. Predictions, never measurements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import perfmodel

if TYPE_CHECKING:  # configs are read through .kwargs, .num_warps and .num_stages only
    from triton import Config

__all__ = ["ConvShape", "conv_shape", "model_layer", "predict", "rank", "rowrun_smem", "fits"]


@dataclass(frozen=True)
class ConvShape:
    """What the model needs of a conv launch: batch, input grid (of the second source with
    two), channels of each source, output channels, flags, bytes a value."""

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

    @property
    def h_out(self) -> int:
        return self.h_in - 2

    @property
    def w_out(self) -> int:
        return self.w_in - 2

    def useful_flops(self) -> float:
        return 2.0 * self.n * self.h_out * self.w_out * 9 * (self.c_a + self.c_b) * self.c_out

    def hbm_bytes(self) -> float:
        out_px = self.n * self.h_out * self.w_out
        written = out_px * self.c_out * (int(self.write_y) + (0.25 if self.pool else 0.0))
        c_in = self.c_a + self.c_b
        return (self.n * self.h_in * self.w_in * c_in + 9 * c_in * self.c_out + written) * self.element_size


def conv_shape(x, up, c_out: int, *, pool: bool = False, write_y: bool = True, packed: int = 0) -> ConvShape:
    """The :class:`ConvShape` of a launch (``x``: the input, or the skip with ``up``)."""
    grid = up if up is not None else x
    return ConvShape(x.shape[0], grid.shape[1], grid.shape[2], x.shape[3], 0 if up is None else up.shape[3], c_out,
                     pool, write_y, x.element_size(), packed)


def rowrun_smem(kw: dict, stages: int, element_size: int) -> int:
    r, bw, bn, bk = kw["R"], kw["BW"], kw["BN"], kw["BK"]
    a_boxes, w_boxes = (1, 1) if r == 1 else (r + 2, 3)
    return stages * (a_boxes * bw + w_boxes * bn) * bk * element_size


def _registers(acc_elements: int, num_warps: int) -> int:
    """Registers a thread, estimated: the fp32 accumulators plus ~48 for addresses, counters
    and the epilogue (ptxas's figure is in the compile report)."""
    return min(255, acc_elements // (32 * num_warps) + 48)


def model_layer(config: Config, s: ConvShape) -> perfmodel.Layer:
    """The model's view of one launch of ``config`` on ``s`` (either main loop)."""
    kw, e, warps, stages = config.kwargs, s.element_size, config.num_warps, config.num_stages
    bk = kw.get("BK", kw.get("BLOCK_K"))
    blocks = sum(-(-c // bk) for c in (s.c_a, s.c_b) if c)
    if "R" in kw:  # row runs
        r, bw, bn = kw["R"], kw["BW"], kw["BN"]
        if r == 1:
            tiles_m, steps = -(-(s.n * s.h_in * s.w_in) // bw), 9 * blocks
        else:
            tiles_m, steps = s.n * -(-s.h_out // r) * -(-s.w_out // bw), 3 * blocks
        step = perfmodel.rowrun_step(r, bw, bn, kw["BK"], warps, e)
        smem, acc = rowrun_smem(kw, stages, e), r * bw * bn
    else:  # the pointer loop
        bm, bn = kw["BLOCK_H"] * kw["BLOCK_W"], kw["BLOCK_N"]
        tiles_m = s.n * -(-s.h_out // kw["BLOCK_H"]) * -(-s.w_out // kw["BLOCK_W"])
        k = s.packed or kw["BLOCK_K"]
        steps = 1 if s.packed else 9 * blocks
        step = perfmodel.pointer_step(bm, bn, k, warps, e)
        smem, acc = (bm + bn) * k * e * (1 if s.packed else stages), bm * bn
        r, bw = bm, 1
    tiles = tiles_m * -(-s.c_out // bn)
    out_bytes = r * bw * bn * e * (int(s.write_y) + (0.25 if s.pool else 0.0))
    return perfmodel.Layer(tiles=tiles, steps=steps, step=step, out_bytes_per_tile=out_bytes,
                           hbm_bytes=s.hbm_bytes(), useful_flops=s.useful_flops(), smem_bytes=smem,
                           num_warps=warps, num_stages=stages, registers=_registers(acc, warps))


def predict(config: Config, s: ConvShape, scenario: str = "low") -> dict:
    """The model's prediction for ``config`` on ``s``: seconds, bound, ceilings, fraction of
    the matmul rate (:func:`fastunet.kernels.perfmodel.launch_time`). A prediction, not a
    measurement."""
    return perfmodel.launch_time(model_layer(config, s), perfmodel.device(scenario))


def fits(config: Config, s: ConvShape) -> bool:
    kw = config.kwargs
    if "R" not in kw:
        return True
    if kw["R"] == 1:
        return not (s.pool or s.c_b)  # a flat tile wraps rows: one uncropped source, no pool
    return rowrun_smem(kw, config.num_stages, s.element_size) + 1024 <= perfmodel.H200.smem_per_block


def rank(configs: list[Config], s: ConvShape) -> list[Config]:
    """``configs`` that can run ``s``, fastest first by the model (pessimistic scenario;
    ties keep the list's order). ``FASTUNET_AUTOTUNE=0`` launches the first."""
    usable = [c for c in configs if fits(c, s)]
    return sorted(usable, key=lambda c: predict(c, s)["seconds"])
