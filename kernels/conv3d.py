"""Valid 3x3x3 convolution + bias + ReLU of channels-last (NDHWC) activations: the 3D U-Net.

The main loops of the 2D convs, with ``KD = 3`` taps along Z (no copy of them here):

* **The row-run TMA loop** (:mod:`fastunet.kernels.rowrun`, the kernel
  :func:`fastunet.kernels.rowconv.conv_rowrun_kernel` shared with the 3x3 convs) runs every
  16-bit conv whose tensors suit TMA (channels multiples of 8, dense voxels): a step per
  (kz, kw, channel block), the input runs of a tile's rows loaded once for the three taps kh;
  tiles of two planes of two rows hold a 2x2x2 pool's windows. The conv + head likewise
  (:func:`fastunet.kernels.conv_head.launch_rowrun`).
* **The pointer loop** (:func:`fastunet.kernels.conv.conv_tile` with ``KD = 3``) runs the
  others: fp32/tf32, channel counts TMA cannot read, the packed first layer. Implicit GEMM:
  output voxels are the M dimension, output channels N, and K runs over the 27 taps x input
  channels; one flattened loop per source over (tap, channel block), ``27 * cdiv(C,
  BLOCK_K)`` steps, the pointers built before the loop. 4 warps (the flattened loop's limit,
  see conv.py). Accumulation is fp32 in both loops.
* **Small input channel counts.** With ``27 * C_in <= 128`` (the first layer of a stack of
  1 to 4 channels) and one source, K is packed into one dot of width ``K_PACKED`` (the next
  power of two, at least 16): a K loop over 3 channels reads unaligned 6-byte rows (plain
  loads, no cp.async; ptxas spilled 656-672 bytes for 256-voxel tiles, Cicek et al.'s RGB
  first layer in the compile report).
* **Fused crop-concat.** A decoder's first convolution reads the skip, center-cropped by a
  pointer offset along every axis, then the up-convolution output: the concatenation is
  never materialized.
* **Fused max-pool, 2x2x2 or 1x2x2.** In the pointer loop the M tile is a ``BLOCK_D x BLOCK_H x BLOCK_W`` block
  of output voxels with its origin on the pool grid, ordered window by window (``m = P *
  window + position``, ``P = 8`` voxels a 2x2x2 window, 4 a 1x2x2 one: ``POOL_D`` is the
  pool along Z), so each window lies in one program; the conv that feeds a pool writes its
  full-resolution output (the skip) and the pooled one from the same accumulator.
* **Fused head** (:func:`conv3x3x3_head`): the last decoder conv computes all its channels
  in one tile, rounds them to the storage dtype, multiplies them by the 1x1x1 head in the
  epilogue and writes scores, probabilities and/or labels
  (:func:`fastunet.kernels.head.write_head`); its activation never reaches memory.

Weights are packed once as a ``[27 * C_in, C_out]`` matrix (row ``tap * C_in + c``, tap =
``9 * kd + 3 * kh + kw``) by :func:`pack_weight`. Offsets within one image are 32-bit (the
launchers check); the batch offset is added to the base pointer in 64 bits. Without
autotuning (``FASTUNET_AUTOTUNE=0``) and under the interpreter one config launches (the
performance model's first, :func:`rank`): nothing is benchmarked.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import convmodel, rowconv
from ._utils import (
    check_contiguous,
    check_ndhwc,
    compute_dtype,
    launch,
    prune_by_shared_memory,
    select,
    size_class,
    to_storage,
    tuning_configs,
    upcast_for_interpreter,
)
from .conv import conv_outputs, conv_tile, uses_rowrun
from .conv_head import launch_rowrun as launch_head_rowrun
from .convmodel import ConvShape, conv_shape
from .head import check_head_outputs, write_head

__all__ = ["conv3x3x3", "conv3x3x3_head", "pack_weight", "get_autotune_config", "configs_for", "head_configs_for",
           "packed_k", "rank", "can_fuse_head", "check_ndhwc"]

MAX_WARPS = 4  # the flattened pointer loop (see conv.py)
MAX_PACKED_K = 128  # 27 x up to 4 channels (an RGB stack: 81 -> 128); a looped K over 3 channels is unaligned
MAX_HEAD_CHANNELS = 128  # the fused head: BLOCK_N = C_mid padded, one tile
MAX_CLASSES = 64


def get_autotune_config() -> list[triton.Config]:
    """Voxel tiles ``BLOCK_D x BLOCK_H x BLOCK_W``, channels, K steps, warps and stages tried on
    the GPU (Hopper-sized: at most 256 voxels x 64 channels or 128 x 128 of fp32 accumulators)."""
    configs = []
    for d, h, w, n, k, warps, stages in [
        (2, 8, 8, 64, 64, 4, 3),
        (2, 8, 8, 128, 32, 4, 4),
        (2, 4, 16, 64, 64, 4, 3),
        (4, 8, 8, 64, 32, 4, 3),
        (2, 8, 16, 64, 32, 4, 4),
        (2, 4, 8, 64, 32, 4, 4),
        (2, 4, 8, 32, 32, 4, 4),  # the fp32 "ieee" (FMA) first layer with a 128-wide packed K
    ]:
        configs.append(triton.Config(dict(BLOCK_D=d, BLOCK_H=h, BLOCK_W=w, BLOCK_N=n, BLOCK_K=k),
                                     num_warps=warps, num_stages=stages))
    return configs


_INTERPRETER_CONFIG = triton.Config(dict(BLOCK_D=4, BLOCK_H=8, BLOCK_W=8, BLOCK_N=16, BLOCK_K=16),
                                    num_warps=4, num_stages=1)


def packed_k(c_a: int, c_b: int = 0) -> int:
    """Width of the single packed dot for ``c_a`` input channels (0: the K loop). Only for one
    source and ``27 * c_a <= 128`` (1 channel: 32, 2: 64, 3 or 4: 128)."""
    if c_b or 27 * c_a > MAX_PACKED_K:
        return 0
    return max(16, triton.next_power_of_2(27 * c_a))


def _m(config: triton.Config) -> int:
    kw = config.kwargs
    return kw["BLOCK_D"] * kw["BLOCK_H"] * kw["BLOCK_W"]


def _stage_bytes(config: triton.Config, element_size: int) -> int:
    return (_m(config) + config.kwargs["BLOCK_N"]) * config.kwargs["BLOCK_K"] * element_size


_IEEE_MAX_TILE = 128 * 64 * 32  # fp32 "ieee" dots are FMAs: the smaller tiles only (conv.py)


def _kept(configs, dtype: torch.dtype, precision: str | None, device=None, limit: int | None = None,
          packed: int = 0):
    size = torch.empty((), dtype=dtype).element_size()
    if packed:  # no K loop: BLOCK_K and the stages change nothing; a 128-wide im2col tile for 64 voxels at most
        # (ptxas of triton 3.6 spilled 532 B at 128 voxels x 64 x 128 in bf16, Cicek et al.'s RGB first layer; 3.9 did not)
        seen, unique = set(), []
        for c in configs:
            key = (c.kwargs["BLOCK_D"], c.kwargs["BLOCK_H"], c.kwargs["BLOCK_W"], c.kwargs["BLOCK_N"], c.num_warps)
            if key not in seen and (packed <= 64 or _m(c) <= 64):
                seen.add(key)
                unique.append(c)
        configs = unique or configs[-1:]
    if dtype == torch.float32 and precision == "ieee":  # FMA dots: ptxas spilled 33 KB at 64 x 64 x 128 (packed)
        configs = [c for c in configs
                   if _m(c) * c.kwargs["BLOCK_N"] * (packed or c.kwargs["BLOCK_K"]) <= _IEEE_MAX_TILE] or configs
    return prune_by_shared_memory(configs, lambda c: _stage_bytes(c, size), device, limit=limit)


def configs_for(dtype: torch.dtype, precision: str = "tf32", device=None, *,
                shared_memory: int | None = None, packed: int = 0) -> list[triton.Config]:
    """The autotune configs kept for activations of ``dtype`` (those that fit the device's
    shared memory; for fp32 "ieee" the smaller tiles; ``packed``: for a layer with a packed K)."""
    return _kept(get_autotune_config(), dtype, precision, device, shared_memory, packed)


def rank(configs: list[triton.Config], shape: tuple, c_in: int, c_out: int, element_size: int = 2,
         packed: int = 0) -> list[triton.Config]:
    """Pointer-loop ``configs`` fastest first by the model (:func:`fastunet.kernels.convmodel.rank`,
    pessimistic scenario), ``shape`` = ``(n, d_out, h_out, w_out)``: the first is what
    ``FASTUNET_AUTOTUNE=0`` launches."""
    n, d, h, w = shape
    return convmodel.rank(configs, ConvShape(n, h + 2, w + 2, c_in, 0, c_out, element_size=element_size,
                                             packed=packed, d_in=d + 2))


def _prune(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
    a = named_args["a_ptr"]
    kept = _kept(configs, a.dtype, meta.get("PRECISION"), a.device, packed=meta.get("K_PACKED", 0))
    return select(kept)  # FASTUNET_AUTOTUNE=0 launches through launch(choose=...): not reached


# -- the pieces the conv and the conv + head share ----------------------------------------
@triton.jit
def tile_voxels(pid_m, D_OUT, H_OUT, W_OUT, POOL_D: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Image ``n`` (int64) and output voxels ``(od, oh, ow)`` of M tile ``pid_m``, window-major
    (``m = P * window + position``, ``P = 4 * POOL_D``: each pool window in one tile)."""
    P: tl.constexpr = 4 * POOL_D
    WH: tl.constexpr = BLOCK_H // 2
    WW: tl.constexpr = BLOCK_W // 2
    tiles_w = tl.cdiv(W_OUT, BLOCK_W)
    tiles_h = tl.cdiv(H_OUT, BLOCK_H)
    tiles_d = tl.cdiv(D_OUT, BLOCK_D)
    n = (pid_m // (tiles_d * tiles_h * tiles_w)).to(tl.int64)  # 64-bit: batch offsets can pass 2**31
    t = pid_m % (tiles_d * tiles_h * tiles_w)
    tile_d = t // (tiles_h * tiles_w)
    tile_h = (t // tiles_w) % tiles_h
    tile_w = t % tiles_w
    offs_m = tl.arange(0, BLOCK_D * BLOCK_H * BLOCK_W)
    win = offs_m // P
    pos = offs_m % P
    od = tile_d * BLOCK_D + POOL_D * (win // (WH * WW)) + pos // 4
    oh = tile_h * BLOCK_H + 2 * ((win // WW) % WH) + (pos // 2) % 2
    ow = tile_w * BLOCK_W + 2 * (win % WW) + pos % 2
    return n, tile_d, tile_h, tile_w, od, oh, ow


@triton.autotune(
    configs=tuning_configs(get_autotune_config(), _INTERPRETER_CONFIG, pruned=True),
    key=["C_A", "C_B", "C_OUT", "SIZE_CLASS", "POOL", "POOL_D", "RELU", "WRITE_Y", "HAS_B", "K_PACKED", "PRECISION"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit(do_not_specialize=["SIZE_CLASS"])
def conv3x3x3_kernel(
    # pointers
    a_ptr, b_ptr, w_ptr, bias_ptr, y_ptr, p_ptr,
    # sizes
    D_OUT, H_OUT, W_OUT, C_A, C_B, C_OUT, SIZE_CLASS,
    # strides (the channel stride is 1 everywhere)
    stride_an, stride_ad, stride_ah, stride_aw,
    stride_bn, stride_bd, stride_bh, stride_bw,
    stride_yn, stride_yd, stride_yh, stride_yw,
    stride_pn, stride_pd, stride_ph, stride_pw,
    # center-crop offset of source a
    off_ad, off_ah, off_aw,
    # meta-parameters
    RELU: tl.constexpr, POOL: tl.constexpr, POOL_D: tl.constexpr, WRITE_Y: tl.constexpr, HAS_B: tl.constexpr,
    K_PACKED: tl.constexpr, INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """y[n, od, oh, ow, co] = act(bias[co] + sum_{kd,kh,kw,c} in[n, od+kd, oh+kh, ow+kw, c] W[kd, kh, kw, c, co]),
    in = concat(a[crop], b) along channels; optionally p = maxpool(y) over POOL_D x 2 x 2 windows."""
    BLOCK_M: tl.constexpr = BLOCK_D * BLOCK_H * BLOCK_W
    P: tl.constexpr = 4 * POOL_D
    pid = tl.program_id(0)
    num_n = tl.cdiv(C_OUT, BLOCK_N)  # channel blocks vary fastest: neighbours share their input in L2
    pid_n = pid % num_n
    n, tile_d, tile_h, tile_w, od, oh, ow = tile_voxels(pid // num_n, D_OUT, H_OUT, W_OUT, POOL_D, BLOCK_D, BLOCK_H,
                                                        BLOCK_W)
    mask_m = (od < D_OUT) & (oh < H_OUT) & (ow < W_OUT)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < C_OUT
    acc = conv_tile(
        a_ptr, b_ptr, w_ptr, bias_ptr, n, od, oh, ow, mask_m, offs_n, mask_n, C_A, C_B, C_OUT,
        stride_an, stride_ad, stride_ah, stride_aw, stride_bn, stride_bd, stride_bh, stride_bw, off_ad, off_ah, off_aw,
        RELU, HAS_B, K_PACKED, INTERP_BF16, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, 3,
    )
    y = to_storage(acc, y_ptr.dtype.element_ty, INTERP_BF16)  # the pool's max of rounded = rounded max
    if WRITE_Y:
        y_ptrs = y_ptr + n * stride_yn + (od * stride_yd + oh * stride_yh + ow * stride_yw)[:, None] + offs_n[None, :]
        tl.store(y_ptrs, y, mask=mask_m[:, None] & mask_n[None, :])
    if POOL:
        WH: tl.constexpr = BLOCK_H // 2
        WW: tl.constexpr = BLOCK_W // 2
        pooled = tl.max(tl.reshape(y, (BLOCK_M // P, P, BLOCK_N)), axis=1)
        offs_q = tl.arange(0, BLOCK_M // P)
        pd = tile_d * (BLOCK_D // POOL_D) + offs_q // (WH * WW)
        ph = tile_h * WH + (offs_q // WW) % WH
        pw = tile_w * WW + offs_q % WW
        mask_q = (pd < D_OUT // POOL_D) & (ph < H_OUT // 2) & (pw < W_OUT // 2)
        p_ptrs = p_ptr + n * stride_pn + (pd * stride_pd + ph * stride_ph + pw * stride_pw)[:, None] + offs_n[None, :]
        tl.store(p_ptrs, pooled.to(p_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_n[None, :])


def pack_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``nn.Conv3d`` weight ``(C_out, C_in, 3, 3, 3)`` -> the kernels' ``(27 * C_in, C_out)`` matrix."""
    if weight.ndim != 5 or tuple(weight.shape[2:]) != (3, 3, 3):
        raise ValueError(f"Expected a 3x3x3 conv weight (C_out, C_in, 3, 3, 3); got {tuple(weight.shape)}.")
    c_out, c_in = weight.shape[:2]
    return weight.detach().permute(2, 3, 4, 1, 0).reshape(27 * c_in, c_out).to(dtype).contiguous()


def _check_offsets(*tensors: torch.Tensor | None) -> None:
    for t in tensors:
        if t is not None and sum((s - 1) * st for s, st in zip(t.shape[1:], t.stride()[1:])) >= 2**31:
            raise ValueError(f"Expected offsets within one image below 2**31; got a tensor of shape {tuple(t.shape)}.")


def _check_input(x, up, weight, storage, dtype: str) -> tuple:
    """The sources and packed weight checked: (n, in_size, c_a, c_b, c_out, out_size)."""
    check_ndhwc(x, "x")
    n, c_a = x.shape[0], x.shape[4]
    size = tuple(x.shape[1:4])
    c_b = 0
    if up is not None:
        check_ndhwc(up, "up")
        if up.shape[0] != n:
            raise ValueError(f"Expected up with batch {n}; got {up.shape[0]}.")
        crop = tuple(up.shape[1:4])
        if any(b > a or (a - b) % 2 for a, b in zip(size, crop)):
            raise ValueError(f"Cannot center-crop the skip {size} to the up-conv size {crop}: expected a smaller "
                             "size with an even difference along every axis.")
        size, c_b = crop, up.shape[4]
    out = tuple(s - 2 for s in size)
    if min(out) < 1:
        raise ValueError(f"Expected an input of at least 3x3x3 for a valid 3x3x3 conv; got {size}.")
    if weight.ndim != 2 or weight.shape[0] != 27 * (c_a + c_b):
        raise ValueError(f"Expected a packed weight (27 * {c_a + c_b}, C_out); got {tuple(weight.shape)}. "
                         "Use pack_weight().")
    for name, t in (("x", x), ("up", up), ("weight", weight)):
        if t is not None and t.dtype != storage:
            raise ValueError(f"Expected {name} in {storage} for dtype path {dtype!r}; got {t.dtype}.")
    return n, size, c_a, c_b, weight.shape[1], out


def _precision(storage: torch.dtype, precision: str, upcast: bool) -> str:
    return precision if storage == torch.float32 or upcast else "tf32"  # 16-bit: unused


def conv3x3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    up: torch.Tensor | None = None,
    relu: bool = True,
    pool: tuple[int, int, int] | None = None,
    write_full: bool = True,
    out: torch.Tensor | None = None,
    pooled: torch.Tensor | None = None,
    dtype: str = "fp32",
    config: triton.Config | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Valid 3x3x3 convolution of NDHWC activations, with bias, optional ReLU and max-pool.

    Parameters
    ----------
    x : Tensor (N, D, H, W, C_a)
        Input, or with ``up`` the skip features, center-cropped to ``up``'s size on the fly.
    weight : Tensor (27 * C_in, C_out)
        Packed by :func:`pack_weight`; ``C_in = C_a`` (+ ``C_b`` with ``up``).
    bias : Tensor (C_out,) float32
    up : Tensor (N, D_b, H_b, W_b, C_b), optional
        Second source (decoder): the input is ``cat([crop(x), up], channels)``.
    relu : bool
    pool : (2, 2, 2) or (1, 2, 2), optional
        Also write the max-pooled output over windows of this size.
    write_full : bool
        Write the full-resolution output (False when only the pooled one is needed).
    out, pooled : Tensor, optional
        Preallocated outputs (N, D_o, H_o, W_o, C_out) and the pooled (N, D_o / pd, H_o / 2, W_o / 2, C_out).
    dtype : {"fp32", "tf32", "bf16", "fp16"}
    config : triton.Config, optional
        Force one block configuration (the GPU tests run every config; a config of
        :func:`fastunet.kernels.rowconv.rowrun_configs` runs the row-run TMA loop).

    Without a forced config the 16-bit convolutions whose tensors suit TMA run the row-run
    loop shared with the 2D convs, the others the pointer loop.

    Returns
    -------
    (out, pooled) — either is None when not asked for.
    """
    storage, precision = compute_dtype(dtype)
    n, size, c_a, c_b, c_out, (d, h, w) = _check_input(x, up, weight, storage, dtype)
    if bias.shape != (c_out,) or bias.dtype != torch.float32:
        raise ValueError(f"Expected a float32 bias of shape ({c_out},); got {bias.dtype} {tuple(bias.shape)}.")
    check_contiguous(weight=weight, bias=bias)
    if pool is not None and tuple(pool) not in ((2, 2, 2), (1, 2, 2)):
        raise ValueError(f"Expected a pool of (2, 2, 2) or (1, 2, 2); got {pool!r}.")
    pool_d = 1 if pool is None else pool[0]
    if pool is not None and (d % pool_d or h % 2 or w % 2):
        raise ValueError(f"A {pool} max-pool needs an output divisible by it; got {(d, h, w)}.")
    shape = conv_shape(x, up, c_out, pool=tuple(pool) if pool is not None else False, write_y=write_full,
                       packed=packed_k(c_a, c_b))
    rowrun_path = uses_rowrun(shape, storage, weight, x, up, config)
    out, pooled = conv_outputs(x, out, pooled, (n, d, h, w, c_out), storage, write_full, pool)
    _check_offsets(x, up, out, pooled)
    y = out if write_full else pooled
    p = pooled if pool is not None else y
    if rowrun_path:
        flags = dict(RELU=relu, POOL=pool is not None, WRITE_Y=write_full, HAS_B=up is not None,
                     INTERP_BF16=upcast_for_interpreter(storage))
        rowconv.launch_rowrun(x, up, weight, bias, y, p, shape, flags, config)
        return (out if write_full else None), (pooled if pool is not None else None)
    b = up if up is not None else x
    packed = shape.packed
    upcast = upcast_for_interpreter(storage)
    flags = dict(RELU=relu, POOL=pool is not None, POOL_D=pool_d, WRITE_Y=write_full, HAS_B=up is not None,
                 K_PACKED=packed, INTERP_BF16=upcast, PRECISION=_precision(storage, precision, upcast))
    grid = lambda META: (triton.cdiv(c_out, META["BLOCK_N"]) * n * triton.cdiv(d, META["BLOCK_D"])  # noqa: E731
                         * triton.cdiv(h, META["BLOCK_H"]) * triton.cdiv(w, META["BLOCK_W"]),)
    launch(
        conv3x3x3_kernel, grid,
        (x, b, weight, bias, y, p, d, h, w, c_a, c_b, c_out, size_class(n * d * h * w),
         *x.stride()[:4], *b.stride()[:4], *y.stride()[:4], *p.stride()[:4],
         *((a - s) // 2 for a, s in zip(x.shape[1:4], size))),
        flags, config, cache=True,
        choose=lambda: rank(_kept(get_autotune_config(), storage, precision, x.device, packed=packed), (n, d, h, w),
                            c_a + c_b, c_out, x.element_size(), packed)[0],
    )
    return (out if write_full else None), (pooled if pool is not None else None)


# -- the last decoder conv with the head fused --------------------------------------------
def can_fuse_head(c_mid: int, num_classes: int) -> bool:
    """Whether the last conv (``c_mid`` channels) and a head of ``num_classes`` run as one kernel."""
    return 1 <= c_mid <= MAX_HEAD_CHANNELS and 1 <= num_classes <= MAX_CLASSES


def _head_configs() -> list[triton.Config]:
    """Voxel tiles and K steps of the conv + head (BLOCK_N is C_mid padded: all channels)."""
    return [triton.Config(dict(BLOCK_D=d, BLOCK_H=h, BLOCK_W=w, BLOCK_K=k), num_warps=4, num_stages=s)
            for d, h, w, k, s in [(2, 8, 8, 64, 3), (2, 4, 8, 64, 3), (2, 8, 8, 32, 4), (2, 4, 8, 32, 4)]]


_HEAD_INTERPRETER_CONFIG = triton.Config(dict(BLOCK_D=4, BLOCK_H=8, BLOCK_W=8, BLOCK_K=16), num_warps=4, num_stages=1)


def _head_kept(configs, dtype: torch.dtype, precision: str | None, block_n: int, device=None, limit=None):
    configs = [c for c in configs if _m(c) * block_n <= 128 * 128] or configs[-1:]
    if dtype == torch.float32 and precision == "ieee":
        configs = [c for c in configs if _m(c) * block_n <= 64 * 64] or configs[-1:]
    size = torch.empty((), dtype=dtype).element_size()
    return prune_by_shared_memory(configs, lambda c: (_m(c) + block_n) * c.kwargs["BLOCK_K"] * size, device,
                                  limit=limit)


def head_configs_for(dtype: torch.dtype, c_mid: int, precision: str = "tf32", device=None, *,
                     shared_memory: int | None = None) -> list[triton.Config]:
    """The conv + head configs kept for activations of ``dtype`` and ``c_mid`` conv channels."""
    return _head_kept(_head_configs(), dtype, precision, max(16, triton.next_power_of_2(c_mid)), device,
                      shared_memory)


def _head_prune(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
    x = named_args["x_ptr"]
    return select(_head_kept(configs, x.dtype, meta.get("PRECISION"), meta["BLOCK_N"], x.device))


@triton.autotune(
    configs=tuning_configs(_head_configs(), _HEAD_INTERPRETER_CONFIG, pruned=True),
    key=["C_IN", "C_MID", "K", "SIZE_CLASS", "RELU", "WRITE_LOGITS", "WRITE_PROBS", "WRITE_LABELS", "K_PACKED",
         "PRECISION"],
    prune_configs_by={"early_config_prune": _head_prune},
)
@triton.jit(do_not_specialize=["SIZE_CLASS"])
def conv3x3x3_head_kernel(
    # pointers
    x_ptr, w_ptr, bias_ptr, hw_ptr, hb_ptr, logits_ptr, probs_ptr, labels_ptr,
    # sizes
    D_OUT, H_OUT, W_OUT, C_IN, C_MID, K, SIZE_CLASS,
    # strides (x channel stride 1; outputs (N, K, D, H, W) and (N, D, H, W), any strides)
    stride_xn, stride_xd, stride_xh, stride_xw,
    stride_ln, stride_lk, stride_ld, stride_lh, stride_lw,
    stride_pn, stride_pk, stride_pd, stride_ph, stride_pw,
    stride_yn, stride_yd, stride_yh, stride_yw,
    # meta-parameters
    RELU: tl.constexpr, WRITE_LOGITS: tl.constexpr, WRITE_PROBS: tl.constexpr, WRITE_LABELS: tl.constexpr,
    K_PACKED: tl.constexpr, INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """f = act(bias + conv3x3x3(x)) rounded to the storage dtype; s = f @ Wh + bh per voxel;
    writes s, softmax(s) and/or argmax(s), never f."""
    BLOCK_M: tl.constexpr = BLOCK_D * BLOCK_H * BLOCK_W
    n, _, _, _, od, oh, ow = tile_voxels(tl.program_id(0), D_OUT, H_OUT, W_OUT, 1, BLOCK_D, BLOCK_H, BLOCK_W)
    mask_m = (od < D_OUT) & (oh < H_OUT) & (ow < W_OUT)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < C_MID
    feats = conv_tile(
        x_ptr, x_ptr, w_ptr, bias_ptr, n, od, oh, ow, mask_m, offs_n, mask_n, C_IN, 0, C_MID,
        stride_xn, stride_xd, stride_xh, stride_xw, 0, 0, 0, 0, 0, 0, 0,
        RELU, False, K_PACKED, INTERP_BF16, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, 3,
    )
    feats = to_storage(feats, w_ptr.dtype.element_ty, INTERP_BF16)  # as the unfused path stores it
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < K
    hw = tl.load(hw_ptr + offs_n[:, None] * K + offs_c[None, :], mask=mask_n[:, None] & mask_c[None, :], other=0.0)
    if INTERP_BF16:
        feats = feats.to(tl.float32)
        hw = hw.to(tl.float32)
    scores = tl.dot(feats, hw, input_precision=PRECISION)
    scores = scores + tl.load(hb_ptr + offs_c, mask=mask_c, other=0.0)[None, :]
    write_head(
        scores, mask_m, offs_c, mask_c,
        logits_ptr + n * stride_ln, od * stride_ld + oh * stride_lh + ow * stride_lw, stride_lk,
        probs_ptr + n * stride_pn, od * stride_pd + oh * stride_ph + ow * stride_pw, stride_pk,
        labels_ptr + n * stride_yn, od * stride_yd + oh * stride_yh + ow * stride_yw,
        WRITE_LOGITS, WRITE_PROBS, WRITE_LABELS, INTERP_BF16,
    )


def conv3x3x3_head(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    relu: bool = True,
    dtype: str = "fp32",
    config: triton.Config | None = None,
) -> None:
    """The last 3x3x3 conv (+ bias, ReLU) and the 1x1x1 head in one kernel.

    ``x`` (N, D, H, W, C_in) NDHWC; ``weight`` packed by :func:`pack_weight` (C_mid outputs, at
    most 128); ``head_weight`` the head packed as ``(C_mid, K)`` (``fastunet.kernels.head.
    pack_weight`` of the 1x1 weight viewed 2D); writes any of ``logits``/``probs`` (N, K, D_o,
    H_o, W_o) and ``labels`` (N, D_o, H_o, W_o) uint8, any strides.
    """
    storage, precision = compute_dtype(dtype)
    n, _, c_in, _, c_mid, size = _check_input(x, None, weight, storage, dtype)
    k = head_weight.shape[1] if head_weight.ndim == 2 else -1
    if not can_fuse_head(c_mid, k) or head_weight.shape[0] != c_mid or head_weight.dtype != storage:
        raise ValueError(f"Expected a packed head weight ({c_mid}, K <= {MAX_CLASSES}) in {storage} after a conv of "
                         f"at most {MAX_HEAD_CHANNELS} channels; got {head_weight.dtype} {tuple(head_weight.shape)}.")
    for name, b, c in (("bias", bias, c_mid), ("head_bias", head_bias, k)):
        if b.shape != (c,) or b.dtype != torch.float32:
            raise ValueError(f"Expected a float32 {name} of shape ({c},); got {b.dtype} {tuple(b.shape)}.")
    check_contiguous(weight=weight, bias=bias, head_weight=head_weight, head_bias=head_bias)
    outputs = check_head_outputs(logits, probs, labels, n, k, *size)
    _check_offsets(x, *outputs[:3])
    block_n = max(16, triton.next_power_of_2(c_mid))
    upcast = upcast_for_interpreter(storage)
    d, h, w = size
    packed = packed_k(c_in)
    shape = ConvShape(n, h + 2, w + 2, c_in, 0, c_mid, element_size=x.element_size(), packed=packed, d_in=d + 2)
    if uses_rowrun(shape, storage, weight, x, None, config):  # the 2D conv + head's row-run kernel with KD = 3
        launch_head_rowrun(x, weight, bias, head_weight, head_bias, outputs, shape,
                           dict(RELU=relu, WRITE_LOGITS=logits is not None, WRITE_PROBS=probs is not None,
                                WRITE_LABELS=labels is not None, INTERP_BF16=upcast, BLOCK_N=block_n,
                                BLOCK_C=max(16, triton.next_power_of_2(k))), config)
        return
    grid = lambda META: (n * triton.cdiv(d, META["BLOCK_D"]) * triton.cdiv(h, META["BLOCK_H"])  # noqa: E731
                         * triton.cdiv(w, META["BLOCK_W"]),)
    launch(
        conv3x3x3_head_kernel, grid,
        (x, weight, bias, head_weight, head_bias, *outputs[:3], d, h, w, c_in, c_mid, k, size_class(n * d * h * w),
         *x.stride()[:4], *outputs[3:]),
        dict(RELU=relu, WRITE_LOGITS=logits is not None, WRITE_PROBS=probs is not None,
             WRITE_LABELS=labels is not None, K_PACKED=packed, INTERP_BF16=upcast,
             PRECISION=_precision(storage, precision, upcast), BLOCK_N=block_n,
             BLOCK_C=max(16, triton.next_power_of_2(k))),
        config, cache=True,
        choose=lambda: _head_choice(_head_kept(_head_configs(), storage, precision, block_n, x.device), block_n,
                                    (n, d, h, w), c_in, c_mid, x.element_size(), packed),
    )


def _head_choice(kept: list[triton.Config], block_n: int, shape: tuple, c_in: int, c_mid: int, element_size: int,
                 packed: int) -> triton.Config:
    """The config of ``kept`` whose tile the model ranks first (with BLOCK_N = C_mid padded)."""
    full = [triton.Config(dict(c.kwargs, BLOCK_N=block_n), num_warps=c.num_warps, num_stages=c.num_stages)
            for c in kept]
    best = rank(full, shape, c_in, c_mid, element_size, packed)[0]
    return kept[full.index(best)]
