"""Valid 3x3 convolution + bias + ReLU as an implicit GEMM over channels-last activations.

The 16-bit convolutions whose tensors suit TMA run the row-run loop (:mod:`.rowrun`, the
kernel :func:`fastunet.kernels.rowconv.conv_rowrun_kernel`, shared with the 3x3x3 convs);
:func:`conv3x3` picks it. The pointer kernel here serves the others (fp32/tf32, channel
counts TMA cannot read, the first layer), and its K loops (:func:`accumulate_source`,
:func:`accumulate_packed`, :func:`conv_tile`) take ``KD`` taps along Z: the 3x3x3 pointer
kernel of :mod:`.conv3d` runs them with ``KD = 3``. The pointer kernel:

* **Implicit GEMM.** Output pixels are the M dimension, output channels the N dimension,
  and the K dimension runs over the 9 taps x input channels; the im2col matrix is never
  formed: each K step loads a ``[BLOCK_M, BLOCK_K]`` slice of the NHWC input shifted by the
  tap. Accumulation is fp32.
* **One main loop per source.** The K steps of a source are one flattened loop over
  (tap, channel block): ``9 * cdiv(C, BLOCK_K)`` steps, the tap and channel block of a step
  derived from its index, and the pointers of step 0 computed once before the loop (a step
  adds one scalar offset). Triton's software pipeliner overlaps the loads of the next steps
  with the current dot across taps; nine tap loops (the v1 form) each filled and drained
  their own pipeline. ``num_warps`` stays at 4: this flattened form was reported to
  miscompile at 8 warps (triton-lang/triton#1254, pytorch/pytorch#173068, which is why
  PyTorch Inductor's conv template caps it at 4).
* **Small input channel counts.** With ``9 * C_in <= 64`` (the first layer: 1 channel; RGB:
  3) and one source, K = 9 * C_in is packed into a single dot of width ``K_PACKED`` (the
  next power of two, at least 16) instead of 9 dots each padded from C_in to BLOCK_K.
* **Fused crop-concat.** The first convolution of each decoder level reads its input
  channels from two sources: the skip tensor, center-cropped by a pointer offset (no copy),
  then the up-convolution output. The concatenated tensor is never materialized.
* **Fused 2x2 max-pool.** The M tile is a 2D block of output pixels with an even origin,
  ordered window by window (``m = 4 * window + position``), so each 2x2 pooling window lies
  in one program. The conv that feeds a max-pool writes its full-resolution output (needed
  by the skip connection) and the pooled output from the same accumulator. The pool is a
  reshape and a max over the window axis in registers.

Weights are packed once as a ``[9 * C_in, C_out]`` matrix (row ``tap * C_in + c``, tap =
``3 * kh + kw``) by :func:`pack_weight`. Offsets within one image are 32-bit (the launcher
checks that they fit); the batch offset is added to the base pointer in 64 bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import rowconv, rowrun
from ._utils import (
    check_channels_last,
    check_contiguous,
    check_nhwc,
    compute_dtype,
    launch,
    prune_by_shared_memory,
    select,
    size_class,
    to_storage,
    tuning_configs,
    upcast_for_interpreter,
)
from .convmodel import ConvShape, conv_shape, model_layer, predict, rank

__all__ = ["conv3x3", "pack_weight", "get_autotune_config", "configs_for", "packed_k", "MAX_WARPS",
           "get_rowrun_config", "rowrun_configs_for", "pointer_configs_for", "ConvShape", "conv_shape", "model_layer",
           "predict", "rank", "uses_rowrun", "AUTOTUNE_TOP"]

# The pointer loop (tap and channel block derived from the step index by division) was
# reported to miscompile with 8 warps (see the module docstring): its configs keep at most
# this many. The row-run loop (rowrun.py: counters, descriptor loads) runs 4 or 8.
MAX_WARPS = 4


def get_autotune_config() -> list[triton.Config]:
    """Block shapes, warps and stages tried on the GPU (Hopper-sized tiles, at most 4 warps:
    one warp group, so at most 128 x 128 or 256 x 64 fp32 accumulators per program)."""
    configs = []
    for block_h, block_w, block_n, block_k, warps, stages in [
        (8, 16, 64, 64, 4, 3),
        (8, 16, 128, 64, 4, 3),
        (16, 16, 64, 64, 4, 3),
        (8, 16, 128, 32, 4, 4),
        (16, 16, 64, 32, 4, 4),
        (16, 8, 64, 32, 4, 4),
        (8, 8, 64, 32, 4, 4),
        (8, 16, 64, 32, 4, 5),
    ]:
        meta = dict(BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_N=block_n, BLOCK_K=block_k)
        configs.append(triton.Config(meta, num_warps=warps, num_stages=stages))
    return configs


_INTERPRETER_CONFIG = triton.Config(dict(BLOCK_H=16, BLOCK_W=16, BLOCK_N=16, BLOCK_K=16), num_warps=4, num_stages=1)

# Small input channel counts: one dot over K = 9 * C_in when it fits this width.
MAX_PACKED_K = 64


def packed_k(c_a: int, c_b: int = 0) -> int:
    """Width of the single packed dot for ``c_a`` input channels (0: use the K loop).

    Only for one source and ``9 * c_a <= 64`` (the first layer: 16 for 1 channel, 32 for 3)."""
    if c_b or 9 * c_a > MAX_PACKED_K:
        return 0
    return max(16, triton.next_power_of_2(9 * c_a))


def _stage_bytes(config: triton.Config, element_size: int) -> int:
    m = config.kwargs["BLOCK_H"] * config.kwargs["BLOCK_W"]
    return (m + config.kwargs["BLOCK_N"]) * config.kwargs["BLOCK_K"] * element_size


# Full-precision fp32 ("ieee") dots run on the CUDA cores as unrolled FMAs, and their compile
# time grows with the tile (triton's bundled ptxas for sm_90 on a 2-core CPU, the v1 two-source
# conv with pooling: 256x128x64 over 400 s, 128x64x64 114 s, 128x64x32 44 s, 64x64x32 35 s; bf16
# 128x64x64 11 s). That path is the accuracy reference, not the fast one: it keeps the tiles
# of at most 128 x 64 x 32 multiply-adds per K step.
_IEEE_MAX_TILE = 128 * 64 * 32


def _tile_macs(config: triton.Config) -> int:
    kw = config.kwargs
    return kw["BLOCK_H"] * kw["BLOCK_W"] * kw["BLOCK_N"] * kw["BLOCK_K"]


def _kept(configs: list[triton.Config], dtype: torch.dtype, precision: str | None, device=None,
          limit: int | None = None, pool: bool = False) -> list[triton.Config]:
    """``configs`` that fit the shared memory for activations of ``dtype``; for "ieee" fp32
    only the smaller tiles; with ``pool`` and 4-byte storage at most 128 pixels a tile (ptxas
    for sm_90: the 256-pixel tf32 tile spills 44 bytes in the pool epilogue)."""
    size = torch.empty((), dtype=dtype).element_size()
    if dtype == torch.float32 and precision == "ieee":
        configs = [c for c in configs if _tile_macs(c) <= _IEEE_MAX_TILE] or configs
    if pool and size == 4:
        configs = [c for c in configs if c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"] <= 128] or configs
    return prune_by_shared_memory(configs, lambda c: _stage_bytes(c, size), device, limit=limit)


def unique_for_packed(configs: list[triton.Config]) -> list[triton.Config]:
    """With a packed K there is no K loop: BLOCK_K and the stages change nothing, so configs
    that differ only there are one variant (the first is kept)."""
    seen, out = set(), []
    for c in configs:
        key = (c.kwargs["BLOCK_H"], c.kwargs["BLOCK_W"], c.kwargs["BLOCK_N"], c.num_warps)
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def configs_for(dtype: torch.dtype, precision: str = "tf32", device=None, *,
                shared_memory: int | None = None, packed: bool = False, pool: bool = False) -> list[triton.Config]:
    """The autotune configs kept for activations of ``dtype`` (``precision`` of fp32 dots:
    "tf32" or "ieee"): those that fit the device's shared memory, and for "ieee" fp32 the
    smaller tiles; ``packed``: for a layer with a packed K (:func:`packed_k`); ``pool``: for
    a conv that also writes the max-pooled output."""
    kept = _kept(get_autotune_config(), dtype, precision, device, shared_memory, pool)
    return unique_for_packed(kept) if packed else kept


def _prune(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
    a = named_args["a_ptr"]
    ieee = a.dtype == torch.float32 and meta.get("PRECISION") == "ieee"
    kept = _kept(configs, a.dtype, meta.get("PRECISION"), a.device, pool=bool(meta.get("POOL")))
    if meta.get("K_PACKED"):
        kept = unique_for_packed(kept)
    # With FASTUNET_AUTOTUNE=0 one config is kept: the first, or for ieee the quickest to compile.
    return select(kept, key=_tile_macs if ieee else None)


# -- pieces shared with the conv + head kernel (conv_head.py) ----------------------------------
@triton.jit
def tile_pixels(pid_m, H_OUT, W_OUT, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Image ``n`` (int64 scalar) and output pixels ``(oh, ow)`` of M tile ``pid_m``, in
    window-major order ``m = 4 * window + position`` (each 2x2 pooling window in one tile)."""
    HALF_W: tl.constexpr = BLOCK_W // 2
    tiles_w = tl.cdiv(W_OUT, BLOCK_W)
    tiles_h = tl.cdiv(H_OUT, BLOCK_H)
    n = (pid_m // (tiles_h * tiles_w)).to(tl.int64)  # 64-bit: batch offsets can pass 2**31
    t = pid_m % (tiles_h * tiles_w)
    tile_h = t // tiles_w
    tile_w = t % tiles_w
    offs_m = tl.arange(0, BLOCK_H * BLOCK_W)
    win = offs_m // 4
    pos = offs_m % 4
    oh = tile_h * BLOCK_H + 2 * (win // HALF_W) + pos // 2
    ow = tile_w * BLOCK_W + 2 * (win % HALF_W) + pos % 2
    return n, tile_h, tile_w, oh, ow


@triton.jit
def _tap(tap, KD: tl.constexpr):
    """(kd, kh, kw) of tap ``9 kd + 3 kh + kw`` (kd = 0 in 2D: ``KD = 1``)."""
    if KD == 1:
        kd = tap * 0
    else:
        kd = tap // 9
    kh = (tap - 9 * kd) // 3
    return kd, kh, tap - 9 * kd - 3 * kh


@triton.jit
def accumulate_source(
    acc, src, w_ptr, pix, mask_m, offs_n, mask_n,
    C_SRC, C_IN, C_OUT, W_ROW0, stride_sd, stride_sh, stride_sw,
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr, BLOCK_K: tl.constexpr, KD: tl.constexpr,
):
    """acc[m, :] += sum over taps t = (kd, kh, kw) and channels c < C_SRC of
    src[pix_m + kd sd + kh sh + kw sw + c] * W[(9 kd + 3 kh + kw) * C_IN + W_ROW0 + c, :]
    (``KD`` taps along Z: 1 for a 3x3 conv, 3 for a 3x3x3 one; ``pix`` = offsets of the output pixels).

    One flattened loop over ``9 KD cdiv(C_SRC, BLOCK_K)`` (tap, channel block) steps; the
    pointers of step 0 are built once, a step adds the scalar offset of its tap and block.
    """
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = src + pix[:, None] + offs_k[None, :]
    w_ptrs = w_ptr + (W_ROW0 + offs_k)[:, None] * C_OUT + offs_n[None, :]
    k_blocks = tl.cdiv(C_SRC, BLOCK_K)
    for step in range(0, 9 * KD * k_blocks):
        tap = step // k_blocks
        c0 = (step - tap * k_blocks) * BLOCK_K
        kd, kh, kw = _tap(tap, KD)
        mask_k = offs_k < C_SRC - c0
        x = tl.load(x_ptrs + (kd * stride_sd + kh * stride_sh + kw * stride_sw + c0),
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_ptrs + (tap * C_IN + c0) * C_OUT, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if INTERP_BF16:  # interpreter only: its bf16 dot is wrong, so multiply in fp32 there
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def accumulate_packed(
    acc, src, w_ptr, pix, mask_m, offs_n, mask_n,
    C_SRC, C_OUT, stride_sd, stride_sh, stride_sw,
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr, K_PACKED: tl.constexpr, KD: tl.constexpr,
):
    """acc += im2col(src) @ W with all K = 9 KD C_SRC in one dot (K_PACKED >= 9 KD C_SRC columns,
    column k = tap * C_SRC + c, the packed weight's row order)."""
    k = tl.arange(0, K_PACKED)
    tap = k // C_SRC
    kd, kh, kw = _tap(tap, KD)
    col = kd * stride_sd + kh * stride_sh + kw * stride_sw + (k - tap * C_SRC)
    mask_k = k < 9 * KD * C_SRC
    x = tl.load(src + pix[:, None] + col[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
    w = tl.load(w_ptr + k[:, None] * C_OUT + offs_n[None, :], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
    if INTERP_BF16:  # interpreter only: its bf16 dot is wrong, so multiply in fp32 there
        x = x.to(tl.float32)
        w = w.to(tl.float32)
    return tl.dot(x, w, acc, input_precision=PRECISION)


@triton.jit
def conv_tile(
    a_ptr, b_ptr, w_ptr, bias_ptr, n, od, oh, ow, mask_m, offs_n, mask_n,
    C_A, C_B, C_OUT,
    stride_an, stride_ad, stride_ah, stride_aw, stride_bn, stride_bd, stride_bh, stride_bw, off_ad, off_ah, off_aw,
    RELU: tl.constexpr, HAS_B: tl.constexpr, K_PACKED: tl.constexpr,
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, KD: tl.constexpr,
):
    """act(bias + conv(concat(a[crop], b))) of one (BLOCK_M pixels, BLOCK_N channels) tile, fp32:
    3x3 (``KD = 1``: ``od`` and the D strides and offset 0) or 3x3x3 (``KD = 3``, :mod:`.conv3d`)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a = a_ptr + n * stride_an  # 64-bit batch offset on the base; per-image offsets are 32-bit
    pix_a = (od + off_ad) * stride_ad + (oh + off_ah) * stride_ah + (ow + off_aw) * stride_aw
    if K_PACKED:
        acc = accumulate_packed(acc, a, w_ptr, pix_a, mask_m, offs_n, mask_n, C_A, C_OUT, stride_ad, stride_ah,
                                stride_aw, INTERP_BF16, PRECISION, K_PACKED, KD)
    else:
        acc = accumulate_source(acc, a, w_ptr, pix_a, mask_m, offs_n, mask_n, C_A, C_A + C_B, C_OUT, 0,
                                stride_ad, stride_ah, stride_aw, INTERP_BF16, PRECISION, BLOCK_K, KD)
    if HAS_B:  # second source of a decoder conv: the up-convolution output, uncropped
        b = b_ptr + n * stride_bn
        pix_b = od * stride_bd + oh * stride_bh + ow * stride_bw
        acc = accumulate_source(acc, b, w_ptr, pix_b, mask_m, offs_n, mask_n, C_B, C_A + C_B, C_OUT, C_A,
                                stride_bd, stride_bh, stride_bw, INTERP_BF16, PRECISION, BLOCK_K, KD)
    acc = acc + tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    return acc


@triton.autotune(
    configs=tuning_configs(get_autotune_config(), _INTERPRETER_CONFIG, pruned=True),
    # Tensor dtypes join the key by themselves; PRECISION tells tf32 from fp32 (both store fp32);
    # SIZE_CLASS (output pixels, powers of 4) so that a small layer does not reuse a big one's tile.
    key=["C_A", "C_B", "C_OUT", "SIZE_CLASS", "POOL", "RELU", "WRITE_Y", "HAS_B", "K_PACKED", "PRECISION"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit(do_not_specialize=["SIZE_CLASS"])
def conv3x3_kernel(
    # pointers
    a_ptr, b_ptr, w_ptr, bias_ptr, y_ptr, p_ptr,
    # sizes
    H_OUT, W_OUT, C_A, C_B, C_OUT, SIZE_CLASS,
    # strides (the channel stride is 1 everywhere)
    stride_an, stride_ah, stride_aw,
    stride_bn, stride_bh, stride_bw,
    stride_yn, stride_yh, stride_yw,
    stride_pn, stride_ph, stride_pw,
    # center-crop offset of source a
    off_ah, off_aw,
    # meta-parameters
    RELU: tl.constexpr, POOL: tl.constexpr, WRITE_Y: tl.constexpr, HAS_B: tl.constexpr, K_PACKED: tl.constexpr,
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[n, oh, ow, co] = act(bias[co] + sum_{kh,kw,c} in[n, oh+kh, ow+kw, c] * W[kh, kw, c, co]),
    in = concat(a[crop], b) along channels; optionally p = maxpool2x2(y)."""
    BLOCK_M: tl.constexpr = BLOCK_H * BLOCK_W
    HALF_W: tl.constexpr = BLOCK_W // 2
    # One flat grid (axis 1 of a CUDA grid is limited to 65535 programs); channel blocks vary
    # fastest so that programs running side by side share the same input tile in L2.
    pid = tl.program_id(0)
    num_n = tl.cdiv(C_OUT, BLOCK_N)
    pid_n = pid % num_n
    n, tile_h, tile_w, oh, ow = tile_pixels(pid // num_n, H_OUT, W_OUT, BLOCK_H, BLOCK_W)
    mask_m = (oh < H_OUT) & (ow < W_OUT)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < C_OUT

    acc = conv_tile(
        a_ptr, b_ptr, w_ptr, bias_ptr, n, 0, oh, ow, mask_m, offs_n, mask_n, C_A, C_B, C_OUT,
        stride_an, 0, stride_ah, stride_aw, stride_bn, 0, stride_bh, stride_bw, 0, off_ah, off_aw,
        RELU, HAS_B, K_PACKED, INTERP_BF16, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, 1,
    )
    # Rounded to the storage dtype once: the pool takes the max of the rounded values, which
    # equals the rounded max (rounding is monotonic) and holds half the registers in 16 bits.
    y = to_storage(acc, y_ptr.dtype.element_ty, INTERP_BF16)
    if WRITE_Y:
        y_ptrs = y_ptr + n * stride_yn + (oh * stride_yh + ow * stride_yw)[:, None] + offs_n[None, :]
        tl.store(y_ptrs, y, mask=mask_m[:, None] & mask_n[None, :])
    if POOL:
        pooled = tl.max(tl.reshape(y, (BLOCK_M // 4, 4, BLOCK_N)), axis=1)
        offs_q = tl.arange(0, BLOCK_M // 4)
        ph = tile_h * (BLOCK_H // 2) + offs_q // HALF_W
        pw = tile_w * HALF_W + offs_q % HALF_W
        mask_q = (ph < H_OUT // 2) & (pw < W_OUT // 2)
        p_ptrs = p_ptr + n * stride_pn + (ph * stride_ph + pw * stride_pw)[:, None] + offs_n[None, :]
        tl.store(p_ptrs, pooled.to(p_ptr.dtype.element_ty), mask=mask_q[:, None] & mask_n[None, :])


# -- the row-run (TMA) path: 16-bit storage, channels multiples of 8 -------------------------
def get_rowrun_config() -> list[triton.Config]:
    """The row-run configs of the 3x3 convs (:func:`fastunet.kernels.rowconv.rowrun_configs`)."""
    return rowconv.rowrun_configs(2)


AUTOTUNE_TOP = rowconv.AUTOTUNE_TOP  # configs the autotuner times for a launch when it is on


def pointer_configs_for(s: ConvShape, dtype: torch.dtype, precision: str | None, device=None, *,
                        shared_memory: int | None = None) -> list[triton.Config]:
    """The pointer-loop configs kept for ``s`` (:func:`configs_for`), ranked by the model;
    for the fp32 "ieee" path (FMA dots, which the model does not cover) the quickest to
    compile first."""
    kept = configs_for(dtype, precision or "tf32", device, shared_memory=shared_memory, packed=bool(s.packed),
                       pool=s.pool)
    if dtype == torch.float32 and precision == "ieee":
        return sorted(kept, key=_tile_macs)
    return rank(kept, s)


def rowrun_configs_for(s: ConvShape) -> list[triton.Config]:
    """The row-run configs that can run ``s``, ranked by the model."""
    return rowconv.ranked(s)


def pack_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``nn.Conv2d`` weight ``(C_out, C_in, 3, 3)`` -> the kernel's ``(9 * C_in, C_out)`` matrix."""
    if weight.ndim != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"Expected a 3x3 conv weight (C_out, C_in, 3, 3); got {tuple(weight.shape)}.")
    c_out, c_in = weight.shape[:2]
    return weight.detach().permute(2, 3, 1, 0).reshape(9 * c_in, c_out).to(dtype).contiguous()


def check_image_offsets(*tensors: torch.Tensor | None) -> None:
    """Offsets within one image are 32-bit in the kernels (the batch offset is 64-bit)."""
    for t in tensors:
        if t is not None and sum((s - 1) * st for s, st in zip(t.shape[1:], t.stride()[1:])) >= 2**31:
            raise ValueError(f"Expected offsets within one image below 2**31; got a tensor of shape {tuple(t.shape)}.")


def check_conv_input(x: torch.Tensor, up: torch.Tensor | None, weight: torch.Tensor) -> tuple:
    """Validate the sources and packed weight; return (n, h_in, w_in, c_a, c_b, c_out, h_out, w_out)."""
    check_nhwc(x, "x")
    n, h_a, w_a, c_a = x.shape
    if up is not None:
        check_nhwc(up, "up")
        if up.shape[0] != n:
            raise ValueError(f"Expected up with batch {n}; got {up.shape[0]}.")
        h_in, w_in, c_b = up.shape[1], up.shape[2], up.shape[3]
        if h_in > h_a or w_in > w_a or (h_a - h_in) % 2 or (w_a - w_in) % 2:
            raise ValueError(
                f"Cannot center-crop the skip {h_a}x{w_a} to the up-conv size {h_in}x{w_in}: "
                "expected a smaller size with an even difference."
            )
    else:
        h_in, w_in, c_b = h_a, w_a, 0
    h_out, w_out = h_in - 2, w_in - 2
    if h_out < 1 or w_out < 1:
        raise ValueError(f"Expected an input of at least 3x3 for a valid 3x3 conv; got {h_in}x{w_in}.")
    if weight.ndim != 2 or weight.shape[0] != 9 * (c_a + c_b):
        raise ValueError(
            f"Expected a packed weight (9 * {c_a + c_b}, C_out); got {tuple(weight.shape)}. Use pack_weight()."
        )
    return n, h_in, w_in, c_a, c_b, weight.shape[1], h_out, w_out


def conv_outputs(x, out, pooled, shape: tuple, storage, write_full: bool, pool) -> tuple:
    """The outputs of a 3x3 (3x3x3) conv asked for, allocated where not given, their shapes
    checked: ``shape`` is ``(N, H, W, C)`` or ``(N, D, H, W, C)``; ``pool`` the max-pool's
    factor per spatial axis (True: 2 on each), or None/False."""
    n, *spatial, c_out = shape
    dims = len(spatial)
    factor = (2,) * dims if pool is True else tuple(pool) if pool else None
    if write_full:
        if out is None:
            out = torch.empty(shape, device=x.device, dtype=storage)
        check_channels_last(out, "out", c_out, dims=dims)
        if tuple(out.shape[:-1]) != (n, *spatial):
            raise ValueError(f"Expected out of shape {tuple(shape)}; got {tuple(out.shape)}.")
    if factor:
        pshape = (n, *(e // f for e, f in zip(spatial, factor)))
        if pooled is None:
            pooled = torch.empty((*pshape, c_out), device=x.device, dtype=storage)
        check_channels_last(pooled, "pooled", c_out, dims=dims)
        if tuple(pooled.shape[:-1]) != pshape:
            raise ValueError(f"Expected pooled of shape {(*pshape, c_out)}; got {tuple(pooled.shape)}.")
    if not write_full and not factor:
        raise ValueError(f"Nothing to write: pass write_full=True or pool={'True' if dims == 2 else '(2, 2, 2)'}.")
    return out, pooled


def uses_rowrun(s: ConvShape, storage: torch.dtype, weight: torch.Tensor, x: torch.Tensor, up: torch.Tensor | None,
                config: triton.Config | None = None) -> bool:
    """Whether a launch runs the row-run (TMA) main loop: a forced config says which; else
    every 16-bit conv with a looped K whose tensors suit TMA (:func:`rowrun.eligible`)."""
    if config is not None:
        if "R" in config.kwargs and not rowrun.eligible(storage, weight, x, up):
            raise ValueError("A row-run config was forced on tensors the TMA path cannot read "
                             "(16-bit storage, channels multiples of 8, dense 16-byte aligned pixels).")
        return "R" in config.kwargs
    return not s.packed and rowrun.eligible(storage, weight, x, up)


def _launch_pointer(x, up, weight, bias, y, p, s: ConvShape, flags: dict, config) -> None:
    b = up if up is not None else x
    grid = lambda META: (  # noqa: E731
        triton.cdiv(s.c_out, META["BLOCK_N"])
        * s.n * triton.cdiv(s.h_out, META["BLOCK_H"]) * triton.cdiv(s.w_out, META["BLOCK_W"]),
    )

    launch(
        conv3x3_kernel,
        grid,
        (
            x, b, weight, bias, y, p,
            s.h_out, s.w_out, s.c_a, s.c_b, s.c_out, size_class(s.n * s.h_out * s.w_out),
            x.stride(0), x.stride(1), x.stride(2),
            b.stride(0), b.stride(1), b.stride(2),
            y.stride(0), y.stride(1), y.stride(2),
            p.stride(0), p.stride(1), p.stride(2),
            (x.shape[1] - s.h_in) // 2, (x.shape[2] - s.w_in) // 2,
        ),
        flags,
        config,
        cache=True,
        choose=lambda: pointer_configs_for(s, x.dtype, flags["PRECISION"], x.device)[0],
    )


def conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    up: torch.Tensor | None = None,
    relu: bool = True,
    pool: bool = False,
    write_full: bool = True,
    out: torch.Tensor | None = None,
    pooled: torch.Tensor | None = None,
    dtype: str = "fp32",
    config: triton.Config | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Valid 3x3 convolution of NHWC activations, with bias, optional ReLU and 2x2 max-pool.

    Parameters
    ----------
    x : Tensor (N, H, W, C_a)
        Input, or with ``up`` the skip features, center-cropped to ``up``'s size on the fly.
    weight : Tensor (9 * C_in, C_out)
        Packed by :func:`pack_weight`; ``C_in = C_a`` (+ ``C_b`` with ``up``).
    bias : Tensor (C_out,) float32
    up : Tensor (N, H_b, W_b, C_b), optional
        Second source (decoder): the input is ``cat([crop(x), up], channels)``.
    relu, pool : bool
        Apply ReLU; also write the 2x2 max-pooled output.
    write_full : bool
        Write the full-resolution output (False when only the pooled one is needed).
    out, pooled : Tensor, optional
        Preallocated outputs (N, H_o, W_o, C_out) and (N, H_o // 2, W_o // 2, C_out).
    dtype : {"fp32", "tf32", "bf16", "fp16"}
        Dtype path; activations and weights must already be in its storage dtype.
    config : triton.Config, optional
        Force one block configuration instead of autotuning (tests run every config).

    Returns
    -------
    (out, pooled) — either is None when not asked for.
    """
    storage, precision = compute_dtype(dtype)
    n, h_in, w_in, c_a, c_b, c_out, h_out, w_out = check_conv_input(x, up, weight)
    for name, t in (("x", x), ("up", up), ("weight", weight)):
        if t is not None and t.dtype != storage:
            raise ValueError(f"Expected {name} in {storage} for dtype path {dtype!r}; got {t.dtype}.")
    if bias.shape != (c_out,) or bias.dtype != torch.float32:
        raise ValueError(f"Expected a float32 bias of shape ({c_out},); got {bias.dtype} {tuple(bias.shape)}.")
    check_contiguous(weight=weight, bias=bias)
    out, pooled = conv_outputs(x, out, pooled, (n, h_out, w_out, c_out), storage, write_full, pool)
    check_image_offsets(x, up, out, pooled)
    y = out if write_full else pooled
    p = pooled if pool else y
    flags = dict(RELU=relu, POOL=pool, WRITE_Y=write_full, HAS_B=up is not None,
                 INTERP_BF16=upcast_for_interpreter(storage))
    shape = conv_shape(x, up, c_out, pool=pool, write_y=write_full, packed=packed_k(c_a, c_b))
    if uses_rowrun(shape, storage, weight, x, up, config):
        rowconv.launch_rowrun(x, up, weight, bias, y, p, shape, flags, config)
    else:
        flags.update(K_PACKED=shape.packed,
                     PRECISION=precision if storage == torch.float32 or flags["INTERP_BF16"] else "tf32")  # 16-bit: unused
        _launch_pointer(x, up, weight, bias, y, p, shape, flags, config)
    return (out if write_full else None), (pooled if pool else None)
