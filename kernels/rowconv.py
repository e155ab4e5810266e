"""The row-run conv kernel of the 2D and the 3D U-Net (:mod:`fastunet.kernels.rowrun`'s loop).

One kernel, :func:`conv_rowrun_kernel`, runs every 16-bit 3x3 (``KD = 1``) and 3x3x3 (``KD =
3``) convolution whose tensors suit TMA, with the epilogues of both networks: bias and ReLU,
the full-resolution output, its 2x2 / 1x2x2 / 2x2x2 max-pool, and the two sources of a decoder
conv (the skip, center-cropped by an offset, and the up-convolution output). Tiles:

* flat (``R = 1``): ``BW`` consecutive positions of the input grid, wrapping rows (and planes
  and images); one source, no pool;
* rows: ``R / RD`` output rows on each of ``RD`` planes, ``BW`` columns (``RD = 2``: a 2x2x2
  pool's windows in one tile).

Its configs (:func:`rowrun_configs`) are ranked by the performance model (:func:`ranked`);
:func:`launch_rowrun` launches the model's first (``FASTUNET_AUTOTUNE=0``) or lets the
autotuner time the best few. The launchers of :mod:`fastunet.kernels.conv` (``conv3x3``) and
:mod:`fastunet.kernels.conv3d` (``conv3x3x3``) call it.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _utils, rowrun
from ._utils import launch, select, size_class, tuning_configs
from .convmodel import ConvShape, rank

__all__ = ["conv_rowrun_kernel", "rowrun_configs", "ranked", "launch_rowrun", "AUTOTUNE_TOP"]

AUTOTUNE_TOP = 4  # configs the autotuner times for a launch when it is on: the model's best few

# (R, RD, BW, BN, BK, warps, stages). Shared memory (stages x (A boxes x BW + weight boxes x BN)
# x BK x 2 bytes) within 227 KiB; fp32 accumulators (R BW BN) at most 128 registers a thread.
# Left out because ptxas for sm_90a spilled them (the compile report): R = 4 x 64 x 128 at 8
# warps (84-164 bytes at 255 registers), R = 2 x 64 x 256 at 8 warps (1.6 KB).
_TILES_2D = [
    (2, 1, 128, 128, 32, 8, 3),
    (2, 1, 128, 128, 64, 8, 2),
    (2, 1, 128, 64, 64, 8, 2),
    (2, 1, 128, 64, 32, 8, 4),
    (2, 1, 128, 64, 32, 8, 2),
    (4, 1, 64, 64, 64, 4, 3),
    (4, 1, 64, 64, 32, 4, 4),
    (4, 1, 64, 64, 32, 4, 3),
    (2, 1, 64, 64, 64, 4, 3),
    (2, 1, 64, 128, 32, 4, 4),
    (2, 1, 64, 128, 64, 4, 2),
    (1, 1, 256, 128, 64, 8, 4),
    (1, 1, 256, 64, 64, 8, 4),
    (1, 1, 128, 128, 64, 8, 3),
    (1, 1, 128, 64, 64, 4, 4),
]
# 3D adds tiles of two planes of two rows (a 2x2x2 pool's windows in one tile): 8 A boxes a step.
_TILES_3D = _TILES_2D + [
    (4, 2, 64, 64, 64, 4, 2),
    (4, 2, 64, 64, 32, 4, 4),
]


@functools.lru_cache(maxsize=None)
def rowrun_configs(dims: int = 2) -> list[triton.Config]:
    """The row-run configs of a ``dims``-D conv (2 or 3)."""
    return [triton.Config(dict(R=r, RD=rd, BW=bw, BN=bn, BK=bk), num_warps=warps, num_stages=stages,
                          pre_hook=rowrun.set_block_shapes)
            for r, rd, bw, bn, bk, warps, stages in (_TILES_3D if dims == 3 else _TILES_2D)]


# The interpreter's row-run tile (dots need 16 rows, columns and K at least; 128 pixels a
# program: fewer, larger programs run faster under the interpreter).
_INTERPRETER_CONFIG = triton.Config(dict(R=4, RD=1, BW=32, BN=16, BK=16), num_warps=4, num_stages=1,
                                    pre_hook=rowrun.set_block_shapes)
# ... and for a 2x2x2 pool, whose windows need two planes a tile.
_INTERPRETER_CONFIG_PLANES = triton.Config(dict(R=4, RD=2, BW=32, BN=16, BK=16), num_warps=4, num_stages=1,
                                           pre_hook=rowrun.set_block_shapes)


def ranked(s: ConvShape) -> list[triton.Config]:
    """The row-run configs that can run ``s``, fastest first by the model."""
    return list(_ranked(s))


@functools.lru_cache(maxsize=256)
def _ranked(s: ConvShape) -> tuple[triton.Config, ...]:
    return tuple(rank(rowrun_configs(3 if s.d_in else 2), s))


def _shape_of(a: dict, meta: dict) -> ConvShape:
    """The :class:`ConvShape` of a launch from the kernel's arguments."""
    return ConvShape(a["N"], a["H_OUT"] + 2, a["W_OUT"] + 2, a["C_A"], a["C_B"], a["C_OUT"], bool(meta.get("POOL")),
                     bool(meta.get("WRITE_Y", True)), a["y_ptr"].element_size(), 0,
                     a["D_OUT"] + 2 if meta.get("KD") == 3 else 0, meta.get("POOL_D", 1))


def _prune(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
    """The autotuner times the model's best few configs for the launch."""
    return select(rank(configs, _shape_of(named_args, meta))[:AUTOTUNE_TOP] or configs[:1])


@triton.jit
def _flat_epilogue(acc, bias, q0, y_ptr, N, DS, HS, WS, D_OUT, H_OUT, W_OUT, offs_n, mask_n,
                   stride_yn, stride_yd, stride_yh, stride_yw,
                   RELU: tl.constexpr, INTERP_BF16: tl.constexpr, BW: tl.constexpr):
    """A flat tile's outputs: positions ``q0 + m`` of the input grid."""
    n, z, r, x = rowrun.flat_coords(q0 + tl.arange(0, BW), DS, HS, WS)
    valid = (n < N) & (z < D_OUT) & (r < H_OUT) & (x < W_OUT)
    y = rowrun.to_output(acc, bias, y_ptr, RELU, INTERP_BF16)
    rowrun.store_run(y, y_ptr, n, z, r, x, valid, offs_n, mask_n, stride_yn, stride_yd, stride_yh, stride_yw)


@triton.jit
def _run_out(acc, bias, y_ptr, n, z, r, x, valid, offs_n, mask_n, stride_yn, stride_yd, stride_yh, stride_yw, H_OUT,
             RELU: tl.constexpr, WRITE_Y: tl.constexpr, INTERP_BF16: tl.constexpr):
    """One output run of a row tile: stored (where asked), returned rounded for the pool."""
    y = rowrun.to_output(acc, bias, y_ptr, RELU, INTERP_BF16)
    if WRITE_Y:  # x * 0 + r: a vector (the interpreter refuses a scalar in a mask)
        rowrun.store_run(y, y_ptr, n, z, r, x, valid & (x * 0 + r < H_OUT), offs_n, mask_n,
                         stride_yn, stride_yd, stride_yh, stride_yw)
    return y


@triton.jit
def _rows_epilogue(acc0, acc1, acc2, acc3, bias, n, z0, r0, x0, y_ptr, p_ptr, D_OUT, H_OUT, W_OUT, offs_n, mask_n,
                   stride_yn, stride_yd, stride_yh, stride_yw, stride_pn, stride_pd, stride_ph, stride_pw,
                   RELU: tl.constexpr, POOL: tl.constexpr, POOL_D: tl.constexpr, WRITE_Y: tl.constexpr,
                   INTERP_BF16: tl.constexpr, R: tl.constexpr, RD: tl.constexpr, BW: tl.constexpr,
                   BN: tl.constexpr):
    """A row tile's outputs: run ``i`` on plane ``z0 + i // (R / RD)``, row ``r0 + i % (R / RD)``."""
    x = x0 + tl.arange(0, BW)
    valid = (x < W_OUT) & (x * 0 + z0 < D_OUT)
    y0 = _run_out(acc0, bias, y_ptr, n, z0, r0, x, valid, offs_n, mask_n, stride_yn, stride_yd, stride_yh, stride_yw,
                  H_OUT, RELU, WRITE_Y, INTERP_BF16)
    y1 = _run_out(acc1, bias, y_ptr, n, z0, r0 + 1, x, valid, offs_n, mask_n, stride_yn, stride_yd, stride_yh,
                  stride_yw, H_OUT, RELU, WRITE_Y, INTERP_BF16)
    px = x0 // 2 + tl.arange(0, BW // 2)
    if R == 4:
        z1 = z0 + RD - 1  # runs 2 and 3: the next two rows, or the next plane's first two
        r2 = r0 + 2 if RD == 1 else r0
        valid1 = (x < W_OUT) & (x * 0 + z1 < D_OUT)
        y2 = _run_out(acc2, bias, y_ptr, n, z1, r2, x, valid1, offs_n, mask_n, stride_yn, stride_yd, stride_yh,
                      stride_yw, H_OUT, RELU, WRITE_Y, INTERP_BF16)
        y3 = _run_out(acc3, bias, y_ptr, n, z1, r2 + 1, x, valid1, offs_n, mask_n, stride_yn, stride_yd, stride_yh,
                      stride_yw, H_OUT, RELU, WRITE_Y, INTERP_BF16)
        if POOL and POOL_D == 1:  # the second row pair's windows (the same plane, or the next one)
            keep2 = (px < W_OUT // 2) & (px * 0 + r2 // 2 < H_OUT // 2) & (px * 0 + z1 < D_OUT)
            rowrun.store_pooled(rowrun.pool2(y2, y3, BW, BN), p_ptr, n, z1, r2 // 2, px, keep2, offs_n, mask_n,
                                stride_pn, stride_pd, stride_ph, stride_pw)
    if POOL:
        keep = (px < W_OUT // 2) & (px * 0 + r0 // 2 < H_OUT // 2)
        if POOL_D == 2:  # two planes of two rows: one row of 2x2x2 windows
            rowrun.store_pooled(rowrun.pool2(tl.maximum(y0, y2), tl.maximum(y1, y3), BW, BN), p_ptr, n, z0 // 2,
                                r0 // 2, px, keep & (px * 0 + z0 // 2 < D_OUT // 2), offs_n, mask_n,
                                stride_pn, stride_pd, stride_ph, stride_pw)
        else:
            rowrun.store_pooled(rowrun.pool2(y0, y1, BW, BN), p_ptr, n, z0, r0 // 2, px, keep & (px * 0 + z0 < D_OUT),
                                offs_n, mask_n, stride_pn, stride_pd, stride_ph, stride_pw)


@triton.autotune(
    configs=tuning_configs(rowrun_configs(3), _INTERPRETER_CONFIG, pruned=True),
    key=["C_A", "C_B", "C_OUT", "SIZE_CLASS", "KD", "POOL", "POOL_D", "RELU", "WRITE_Y", "HAS_B"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit(do_not_specialize=["SIZE_CLASS"])
def conv_rowrun_kernel(
    # descriptors ([pixels, C] views of the sources, the packed weight) and pointers
    a_desc, b_desc, w_desc, bias_ptr, y_ptr, p_ptr,
    # sizes: batch, output (D = 1 in 2D), channels
    N, D_OUT, H_OUT, W_OUT, C_A, C_B, C_OUT, SIZE_CLASS,
    # the sources' pixel strides (rowrun.grid_of), source a's grid
    IMG_A, PS_A, WS_A, IMG_B, PS_B, WS_B, DS, HS, WS,
    # center-crop offset of source a
    off_ad, off_ah, off_aw,
    # output strides (the channel stride is 1; the D strides are 0 in 2D)
    stride_yn, stride_yd, stride_yh, stride_yw,
    stride_pn, stride_pd, stride_ph, stride_pw,
    # meta-parameters
    RELU: tl.constexpr, POOL: tl.constexpr, POOL_D: tl.constexpr, WRITE_Y: tl.constexpr, HAS_B: tl.constexpr,
    KD: tl.constexpr, INTERP_BF16: tl.constexpr,
    R: tl.constexpr, RD: tl.constexpr, BW: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """y = act(bias + conv(concat(a[crop], b))) (3x3, or 3x3x3 with ``KD = 3``); optionally
    p = maxpool(y) (``POOL_D`` x 2 x 2). Flat tiles (``R = 1``: the output pixel at input grid
    position (n, z, r, x) computed there, those past the valid output dropped) or row tiles."""
    tl.static_assert(POOL_D == 1 or RD == 2, "a 2x2x2 pool needs tiles of two planes")
    tl.static_assert(R > 1 or not (POOL or HAS_B), "a flat tile has one source and no pool")
    pid = tl.program_id(0)
    num_n = tl.cdiv(C_OUT, BN)  # channel tiles vary fastest: tiles side by side share their input in L2
    pid_n = pid % num_n
    t = pid // num_n
    n0 = pid_n * BN
    if R == 1:
        q_a = t * BW
        q_b = q_a
    else:
        n, z0, r0, x0 = rowrun.row_tile(t, D_OUT, H_OUT, W_OUT, RD, R // RD, BW)
        q_a = rowrun.source_origin(n, z0 + off_ad, r0 + off_ah, x0 + off_aw, IMG_A, PS_A, WS_A)
        q_b = rowrun.source_origin(n, z0, r0, x0, IMG_B, PS_B, WS_B)
    acc0, acc1, acc2, acc3 = rowrun.accumulate(a_desc, b_desc, w_desc, q_a, q_b, WS_A, PS_A, WS_B, PS_B, C_A, C_B, n0,
                                               HAS_B, INTERP_BF16, R, RD, KD, BW, BN, BK)
    offs_n = n0 + tl.arange(0, BN)
    mask_n = offs_n < C_OUT
    bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)
    if R == 1:
        _flat_epilogue(acc0, bias, q_a, y_ptr, N, DS, HS, WS, D_OUT, H_OUT, W_OUT, offs_n, mask_n,
                       stride_yn, stride_yd, stride_yh, stride_yw, RELU, INTERP_BF16, BW)
    else:
        _rows_epilogue(acc0, acc1, acc2, acc3, bias, n, z0, r0, x0, y_ptr, p_ptr, D_OUT, H_OUT, W_OUT, offs_n, mask_n,
                       stride_yn, stride_yd, stride_yh, stride_yw, stride_pn, stride_pd, stride_ph, stride_pw,
                       RELU, POOL, POOL_D, WRITE_Y, INTERP_BF16, R, RD, BW, BN)


# -- the host side -----------------------------------------------------------------------------
def _strides5(t: torch.Tensor) -> tuple[int, int, int, int]:
    """(n, d, h, w) strides of a channels-last 2D (d stride 0) or 3D tensor."""
    if t.ndim == 4:
        return t.stride(0), 0, t.stride(1), t.stride(2)
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def launch_rowrun(x, up, weight, bias, y, p, s: ConvShape, flags: dict, config) -> None:
    """Launch :func:`conv_rowrun_kernel` for ``s``: ``x`` the input (or the skip with ``up``,
    center-cropped on the fly), ``y`` the full output (or the pooled one when it is not
    written), ``p`` the pooled output (or y). ``flags``: RELU, POOL, WRITE_Y, HAS_B, INTERP_BF16."""
    b = up if up is not None else x
    block = [16, 16]  # placeholders: each config's pre_hook sets its boxes
    descs = rowrun.descriptor(x, block), rowrun.descriptor(b, block), rowrun.descriptor(weight, block)
    grid_a, grid_b = rowrun.grid_of(x), rowrun.grid_of(b)
    crop = [(a - o) // 2 for a, o in zip(x.shape[1:-1], b.shape[1:-1])]
    crop = [0] * (3 - len(crop)) + crop

    if config is None and _utils.INTERPRET and s.pool_d == 2:
        config = _INTERPRETER_CONFIG_PLANES

    def grid(meta):
        r, rd, bw = meta["R"], meta["RD"], meta["BW"]
        if r == 1:
            tiles_m = triton.cdiv(x.numel() // x.shape[-1], bw)
        else:
            tiles_m = s.n * triton.cdiv(s.d_out, rd) * triton.cdiv(s.h_out, r // rd) * triton.cdiv(s.w_out, bw)
        return (triton.cdiv(s.c_out, meta["BN"]) * tiles_m,)

    launch(
        conv_rowrun_kernel, grid,
        (*descs, bias, y, p,
         s.n, s.d_out, s.h_out, s.w_out, s.c_a, s.c_b, s.c_out, size_class(s.out_pixels()),
         *grid_a[:3], *grid_b[:3], *grid_a[3:], *crop, *_strides5(y), *_strides5(p)),
        dict(flags, KD=s.kd, POOL_D=s.pool_d),
        config, cache=True, choose=lambda: ranked(s)[0],
    )
