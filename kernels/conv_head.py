"""The last decoder convolution fused with the U-Net head (1x1 conv, softmax, argmax).

The network's last 3x3 conv (64 channels at full resolution in the paper) feeds only the
head. Here one program computes a tile of that conv for *all* its output channels
(``BLOCK_N`` covers ``C_MID``), rounds it to the storage dtype as the unfused path stores it,
multiplies it by the head's ``[C_MID, K]`` weight in the epilogue and writes the class
scores, probabilities and/or labels: the full-resolution activation never reaches memory
(paper network, tile 572, batch 8: 154 MB of bf16 not written and not read back).

The conv part is :func:`fastunet.kernels.conv.conv_tile` (same main loop, packed K for small
input channel counts), the head part :func:`fastunet.kernels.head.write_head`. Fused when
:func:`can_fuse` holds (at most 128 conv channels and 64 classes); otherwise use ``conv3x3``
then ``head``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import rowrun
from ._utils import (
    check_contiguous,
    compute_dtype,
    launch,
    prune_by_shared_memory,
    select,
    size_class,
    to_storage,
    tuning_configs,
    upcast_for_interpreter,
)
from .conv import (
    MAX_WARPS,
    ConvShape,
    check_conv_input,
    check_image_offsets,
    conv_tile,
    packed_k,
    rank,
    tile_pixels,
    uses_rowrun,
)
from .head import check_head_outputs, write_head

__all__ = ["conv3x3_head", "can_fuse", "get_autotune_config", "configs_for", "MAX_CHANNELS", "MAX_CLASSES"]

MAX_CHANNELS = 128  # BLOCK_N = C_MID padded: 128 x 128 fp32 accumulators fill one warp group
MAX_CLASSES = 64

# Accumulator elements per program that 4 warps hold without spilling (128 x 128 fp32).
_MAX_ACC = 128 * 128
# fp32 "ieee" dots are FMAs: their accumulator and operands share the registers; ptxas for
# sm_90 spills 20-36 bytes at 128 x 64, none at 64 x 64 (4 warps).
_IEEE_MAX_ACC = 64 * 64


def can_fuse(c_mid: int, num_classes: int) -> bool:
    """Whether a conv with ``c_mid`` output channels and a head of ``num_classes`` run as one kernel."""
    return 1 <= c_mid <= MAX_CHANNELS and 1 <= num_classes <= MAX_CLASSES


def _block_n(c_mid: int) -> int:
    return max(16, triton.next_power_of_2(c_mid))


def get_autotune_config() -> list[triton.Config]:
    """Pixel tiles, K steps, warps and stages tried on the GPU; BLOCK_N is C_MID padded (the
    launcher's), so the tile grows with it and :func:`configs_for` drops what cannot fit."""
    return [
        triton.Config(dict(BLOCK_H=h, BLOCK_W=w, BLOCK_K=k), num_warps=warps, num_stages=s)
        for h, w, k, warps, s in [
            (8, 16, 64, 4, 3),
            (16, 16, 64, 4, 3),
            (8, 16, 32, 4, 4),
            (16, 8, 32, 4, 4),
            (8, 8, 64, 4, 3),
            (8, 8, 32, 4, 4),
        ]
    ]


_INTERPRETER_CONFIG = triton.Config(dict(BLOCK_H=8, BLOCK_W=16, BLOCK_K=16), num_warps=4, num_stages=1)


def _kept(configs, dtype: torch.dtype, precision: str | None, block_n: int, device=None, limit=None):
    m = lambda c: c.kwargs["BLOCK_H"] * c.kwargs["BLOCK_W"]  # noqa: E731
    configs = [c for c in configs if m(c) * block_n <= _MAX_ACC and c.num_warps <= MAX_WARPS] or configs[-1:]
    if dtype == torch.float32 and precision == "ieee":
        configs = [c for c in configs if m(c) * block_n <= _IEEE_MAX_ACC] or configs[-1:]
    size = torch.empty((), dtype=dtype).element_size()
    return prune_by_shared_memory(configs, lambda c: (m(c) + block_n) * c.kwargs["BLOCK_K"] * size, device, limit=limit)


def configs_for(dtype: torch.dtype, c_mid: int, precision: str = "tf32", device=None, *,
                shared_memory: int | None = None) -> list[triton.Config]:
    """The autotune configs kept for activations of ``dtype`` and ``c_mid`` conv channels."""
    return _kept(get_autotune_config(), dtype, precision, _block_n(c_mid), device, shared_memory)


def _prune(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
    x = named_args["x_ptr"]
    kept = _kept(configs, x.dtype, meta.get("PRECISION"), meta["BLOCK_N"], x.device)
    return select(kept)  # FASTUNET_AUTOTUNE=0: the first that fits


@triton.autotune(
    configs=tuning_configs(get_autotune_config(), _INTERPRETER_CONFIG, pruned=True),
    key=["C_IN", "C_MID", "K", "SIZE_CLASS", "RELU", "WRITE_LOGITS", "WRITE_PROBS", "WRITE_LABELS",
         "K_PACKED", "PRECISION"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit(do_not_specialize=["SIZE_CLASS"])
def conv3x3_head_kernel(
    # pointers
    x_ptr, w_ptr, bias_ptr, hw_ptr, hb_ptr, logits_ptr, probs_ptr, labels_ptr,
    # sizes
    H_OUT, W_OUT, C_IN, C_MID, K, SIZE_CLASS,
    # strides (x channel stride is 1; outputs (N, K, H, W) and (N, H, W), any strides)
    stride_xn, stride_xh, stride_xw,
    stride_ln, stride_lk, stride_lh, stride_lw,
    stride_pn, stride_pk, stride_ph, stride_pw,
    stride_yn, stride_yh, stride_yw,
    # meta-parameters
    RELU: tl.constexpr, WRITE_LOGITS: tl.constexpr, WRITE_PROBS: tl.constexpr, WRITE_LABELS: tl.constexpr,
    K_PACKED: tl.constexpr, INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """f = act(bias + conv3x3(x)) rounded to the storage dtype; s = f @ Wh + bh per pixel;
    writes s, softmax(s) and/or argmax(s), never f."""
    BLOCK_M: tl.constexpr = BLOCK_H * BLOCK_W
    n, tile_h, tile_w, oh, ow = tile_pixels(tl.program_id(0), H_OUT, W_OUT, BLOCK_H, BLOCK_W)
    mask_m = (oh < H_OUT) & (ow < W_OUT)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < C_MID
    feats = conv_tile(
        x_ptr, x_ptr, w_ptr, bias_ptr, n, 0, oh, ow, mask_m, offs_n, mask_n, C_IN, 0, C_MID,
        stride_xn, 0, stride_xh, stride_xw, 0, 0, 0, 0, 0, 0, 0,
        RELU, False, K_PACKED, INTERP_BF16, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, 1,
    )
    # The activation as the unfused path stores it (and the head kernel reads it back).
    feats = to_storage(feats, w_ptr.dtype.element_ty, INTERP_BF16)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < K
    hw = tl.load(hw_ptr + offs_n[:, None] * K + offs_c[None, :], mask=mask_n[:, None] & mask_c[None, :], other=0.0)
    if INTERP_BF16:  # interpreter only: its bf16 dot is wrong, so multiply in fp32 there
        feats = feats.to(tl.float32)
        hw = hw.to(tl.float32)
    scores = tl.dot(feats, hw, input_precision=PRECISION)
    scores = scores + tl.load(hb_ptr + offs_c, mask=mask_c, other=0.0)[None, :]
    write_head(
        scores, mask_m, offs_c, mask_c,
        logits_ptr + n * stride_ln, oh * stride_lh + ow * stride_lw, stride_lk,
        probs_ptr + n * stride_pn, oh * stride_ph + ow * stride_pw, stride_pk,
        labels_ptr + n * stride_yn, oh * stride_yh + ow * stride_yw,
        WRITE_LOGITS, WRITE_PROBS, WRITE_LABELS, INTERP_BF16,
    )


# -- the row-run (TMA) path: 16-bit storage, channels multiples of 8 -------------------------
def get_rowrun_config() -> list[triton.Config]:
    """Row-run tiles (:mod:`fastunet.kernels.rowconv`) for the conv + head, 2D or 3D: BN is
    C_MID padded (the launcher's), so a config sets R, BW, BK, warps and stages."""
    return [
        triton.Config(dict(R=r, BW=bw, BK=bk), num_warps=warps, num_stages=stages, pre_hook=_set_blocks)
        for r, bw, bk, warps, stages in [
            (4, 64, 64, 4, 3),
            (4, 64, 32, 4, 4),
            (4, 64, 32, 4, 3),
            (2, 128, 32, 8, 2),
            (2, 128, 64, 8, 2),
            (2, 128, 32, 8, 4),
            (1, 256, 64, 8, 4),
            (1, 128, 64, 4, 4),
        ]
    ]


def _set_blocks(args: dict) -> None:
    rowrun.set_block_shapes({**args, "BN": args["BLOCK_N"]})


_ROWRUN_INTERPRETER_CONFIG = triton.Config(dict(R=4, BW=32, BK=16), num_warps=4, num_stages=1, pre_hook=_set_blocks)


def as_conv_config(config: triton.Config, block_n: int) -> triton.Config:
    """The conv config with the same tile (the model ranks conv configs)."""
    return triton.Config(dict(config.kwargs, BN=block_n, RD=1), num_warps=config.num_warps,
                         num_stages=config.num_stages)


def rowrun_configs_for(s: ConvShape) -> list[triton.Config]:
    """The row-run configs that can run the conv of ``s`` (its C_out padded to one tile; 2D or
    3D), ranked by the model (the head's dot, one per output run, is not counted)."""
    block_n = _block_n(s.c_out)
    # fp32 accumulators: at most 128 registers a thread
    configs = [c for c in get_rowrun_config() if c.kwargs["R"] * c.kwargs["BW"] * block_n <= 4096 * c.num_warps]
    ranked = rank([as_conv_config(c, block_n) for c in configs], s)
    by_tile = {(tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages): c for c in configs}
    return [by_tile[(tuple(sorted((k, v) for k, v in r.kwargs.items() if k not in ("BN", "RD"))),
                     r.num_warps, r.num_stages)] for r in ranked]


def _prune_rowrun(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
    a = named_args
    s = ConvShape(a["N"], a["H_OUT"] + 2, a["W_OUT"] + 2, a["C_IN"], 0, a["C_MID"],
                  element_size=a["w_desc"].base.element_size(), d_in=a["D_OUT"] + 2 if meta.get("KD") == 3 else 0)
    return select(rowrun_configs_for(s)[:4] or configs[:1])


@triton.jit
def _head_run(acc, bias, hw, hb, mask_m, offs_c, mask_c, l_base, l_row, stride_lk, p_base, p_row, stride_pk,
              y_base, y_row, RELU: tl.constexpr, WRITE_LOGITS: tl.constexpr, WRITE_PROBS: tl.constexpr,
              WRITE_LABELS: tl.constexpr, INTERP_BF16: tl.constexpr):
    """The head of one output run: features rounded as the unfused path stores them, scores,
    then logits / probabilities / labels."""
    feats = to_storage(rowrun.bias_relu(acc, bias, RELU), hw.dtype, INTERP_BF16)
    if INTERP_BF16:  # interpreter only: its bf16 dot is wrong, so multiply in fp32 there
        feats = feats.to(tl.float32)
        hw = hw.to(tl.float32)
    scores = tl.dot(feats, hw) + hb[None, :]
    write_head(scores, mask_m, offs_c, mask_c, l_base, l_row, stride_lk, p_base, p_row, stride_pk, y_base, y_row,
               WRITE_LOGITS, WRITE_PROBS, WRITE_LABELS, INTERP_BF16)


@triton.jit
def _head_out(acc, bias, hw, hb, n, z, r, x, mask_m, offs_c, mask_c, logits_ptr, probs_ptr, labels_ptr,
              stride_ln, stride_lk, stride_ld, stride_lh, stride_lw, stride_pn, stride_pk, stride_pd, stride_ph,
              stride_pw, stride_yn, stride_yd, stride_yh, stride_yw,
              RELU: tl.constexpr, WRITE_LOGITS: tl.constexpr, WRITE_PROBS: tl.constexpr, WRITE_LABELS: tl.constexpr,
              INTERP_BF16: tl.constexpr):
    """The head of output pixels (n, z, r, x) (``x`` a vector)."""
    _head_run(acc, bias, hw, hb, mask_m, offs_c, mask_c,
              logits_ptr, n * stride_ln + z * stride_ld + r * stride_lh + x * stride_lw, stride_lk,
              probs_ptr, n * stride_pn + z * stride_pd + r * stride_ph + x * stride_pw, stride_pk,
              labels_ptr, n * stride_yn + z * stride_yd + r * stride_yh + x * stride_yw,
              RELU, WRITE_LOGITS, WRITE_PROBS, WRITE_LABELS, INTERP_BF16)


@triton.autotune(
    configs=tuning_configs(get_rowrun_config(), _ROWRUN_INTERPRETER_CONFIG, pruned=True),
    key=["C_IN", "C_MID", "K", "SIZE_CLASS", "KD", "RELU", "WRITE_LOGITS", "WRITE_PROBS", "WRITE_LABELS"],
    prune_configs_by={"early_config_prune": _prune_rowrun},
)
@triton.jit(do_not_specialize=["SIZE_CLASS"])
def conv_head_rowrun_kernel(
    # descriptors ([pixels, C] view of x, the packed conv weight) and pointers
    x_desc, w_desc, bias_ptr, hw_ptr, hb_ptr, logits_ptr, probs_ptr, labels_ptr,
    # sizes (D = 1 in 2D); x's pixel strides (an image, a plane, a row: W_in) and grid (D_in, H_in)
    N, D_OUT, H_OUT, W_OUT, C_IN, C_MID, K, SIZE_CLASS, IMG, PS, WS, DS, HS,
    # output strides (N, K, D, H, W) and (N, D, H, W)
    stride_ln, stride_lk, stride_ld, stride_lh, stride_lw,
    stride_pn, stride_pk, stride_pd, stride_ph, stride_pw,
    stride_yn, stride_yd, stride_yh, stride_yw,
    # meta-parameters
    RELU: tl.constexpr, WRITE_LOGITS: tl.constexpr, WRITE_PROBS: tl.constexpr, WRITE_LABELS: tl.constexpr,
    KD: tl.constexpr, INTERP_BF16: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    R: tl.constexpr, BW: tl.constexpr, BK: tl.constexpr,
):
    """The outputs of :func:`conv3x3_head_kernel` (3x3, or 3x3x3 with ``KD = 3``) on the row-run
    TMA main loop (one tile holds every conv channel; ``R == 1``: a flat tile)."""
    t = tl.program_id(0)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < C_MID
    bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < K
    hw = tl.load(hw_ptr + offs_n[:, None] * K + offs_c[None, :], mask=mask_n[:, None] & mask_c[None, :], other=0.0)
    hb = tl.load(hb_ptr + offs_c, mask=mask_c, other=0.0)
    if R == 1:
        q = t * BW
    else:
        n, z0, r0, x0 = rowrun.row_tile(t, D_OUT, H_OUT, W_OUT, 1, R, BW)
        q = rowrun.source_origin(n, z0, r0, x0, IMG, PS, WS)
    acc0, acc1, acc2, acc3 = rowrun.accumulate(x_desc, x_desc, w_desc, q, q, WS, PS, WS, PS, C_IN, 0, 0,
                                               False, INTERP_BF16, R, 1, KD, BW, BLOCK_N, BK)
    if R == 1:
        n, z, r, x = rowrun.flat_coords(q + tl.arange(0, BW), DS, HS, WS)
        mask_m = (n < N) & (z < D_OUT) & (r < H_OUT) & (x < W_OUT)
        _head_out(acc0, bias, hw, hb, n, z, r, x, mask_m, offs_c, mask_c, logits_ptr, probs_ptr, labels_ptr,
                  stride_ln, stride_lk, stride_ld, stride_lh, stride_lw, stride_pn, stride_pk, stride_pd, stride_ph,
                  stride_pw, stride_yn, stride_yd, stride_yh, stride_yw,
                  RELU, WRITE_LOGITS, WRITE_PROBS, WRITE_LABELS, INTERP_BF16)
    else:
        x = x0 + tl.arange(0, BW)
        for i in tl.static_range(R):
            if i == 0:
                acc = acc0
            elif i == 1:
                acc = acc1
            elif i == 2:
                acc = acc2
            else:
                acc = acc3
            mask_m = (x < W_OUT) & (x * 0 + r0 + i < H_OUT) & (x * 0 + z0 < D_OUT)
            _head_out(acc, bias, hw, hb, n, z0, r0 + i, x, mask_m, offs_c, mask_c, logits_ptr, probs_ptr, labels_ptr,
                      stride_ln, stride_lk, stride_ld, stride_lh, stride_lw, stride_pn, stride_pk, stride_pd,
                      stride_ph, stride_pw, stride_yn, stride_yd, stride_yh, stride_yw,
                      RELU, WRITE_LOGITS, WRITE_PROBS, WRITE_LABELS, INTERP_BF16)


def launch_rowrun(x, weight, bias, head_weight, head_bias, outputs: tuple, s: ConvShape, flags: dict, config) -> None:
    """Launch :func:`conv_head_rowrun_kernel` (2D or 3D: ``s.d_in``): ``outputs`` = (logits,
    probs, labels, then their strides as (N, K, D, H, W), (N, K, D, H, W) and (N, D, H, W))."""
    grid_x = rowrun.grid_of(x)

    def grid(meta):
        r, bw = meta["R"], meta["BW"]
        if r == 1:
            return (triton.cdiv(s.n * s.planes_in * s.h_in * s.w_in, bw),)
        return (s.n * s.d_out * triton.cdiv(s.h_out, r) * triton.cdiv(s.w_out, bw),)

    launch(
        conv_head_rowrun_kernel, grid,
        (rowrun.descriptor(x, [16, 16]), rowrun.descriptor(weight, [16, 16]), bias, head_weight, head_bias,
         *outputs[:3], s.n, s.d_out, s.h_out, s.w_out, s.c_a, s.c_out, head_weight.shape[1],
         size_class(s.out_pixels()), *grid_x[:5], *outputs[3:]),
        dict(flags, KD=3 if s.d_in else 1), config, cache=True, choose=lambda: rowrun_configs_for(s)[0],
    )


def conv3x3_head(
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
    """``head(act(conv3x3(x) + bias))`` in one kernel, the conv's output never written.

    ``x`` (N, H, W, C_in) NHWC; ``weight`` (9 * C_in, C_mid) packed by
    :func:`fastunet.kernels.conv.pack_weight`, ``bias`` (C_mid,) float32; ``head_weight``
    (C_mid, K) packed by :func:`fastunet.kernels.head.pack_weight`, ``head_bias`` (K,) float32.
    Writes into whichever of ``logits`` (N, K, H - 2, W - 2) float32/16, ``probs`` (same shape)
    and ``labels`` (N, H - 2, W - 2) uint8 are given (any strides). Needs :func:`can_fuse`.
    """
    storage, precision = compute_dtype(dtype)
    n, h_in, w_in, c_in, _, c_mid, h_out, w_out = check_conv_input(x, None, weight)
    if head_weight.ndim != 2 or head_weight.shape[0] != c_mid:
        raise ValueError(f"Expected a packed head weight ({c_mid}, K); got {tuple(head_weight.shape)}.")
    k = head_weight.shape[1]
    if not can_fuse(c_mid, k):
        raise ValueError(f"Expected at most {MAX_CHANNELS} conv channels and {MAX_CLASSES} classes to fuse the head; "
                         f"got {c_mid} and {k}. Use conv3x3() then head().")
    for name, t in (("x", x), ("weight", weight), ("head_weight", head_weight)):
        if t.dtype != storage:
            raise ValueError(f"Expected {name} in {storage} for dtype path {dtype!r}; got {t.dtype}.")
    for name, b, size in (("bias", bias, c_mid), ("head_bias", head_bias, k)):
        if b.shape != (size,) or b.dtype != torch.float32:
            raise ValueError(f"Expected a float32 {name} of shape ({size},); got {b.dtype} {tuple(b.shape)}.")
    check_contiguous(weight=weight, bias=bias, head_weight=head_weight, head_bias=head_bias)
    outputs = check_head_outputs(logits, probs, labels, n, k, h_out, w_out)
    check_image_offsets(x, logits, probs, labels)
    upcast = upcast_for_interpreter(storage)
    flags = dict(RELU=relu, WRITE_LOGITS=logits is not None, WRITE_PROBS=probs is not None,
                 WRITE_LABELS=labels is not None, INTERP_BF16=upcast,
                 BLOCK_N=_block_n(c_mid), BLOCK_C=max(16, triton.next_power_of_2(k)))
    shape = ConvShape(n, h_in, w_in, c_in, 0, c_mid, element_size=x.element_size(), packed=packed_k(c_in))
    if uses_rowrun(shape, storage, weight, x, None, config):
        strided = (*outputs[:3], *_with_depth(outputs[3:7]), *_with_depth(outputs[7:11]), outputs[11], 0,
                   *outputs[12:14])
        launch_rowrun(x, weight, bias, head_weight, head_bias, strided, shape, flags, config)
        return
    flags.update(K_PACKED=shape.packed, PRECISION=precision if storage == torch.float32 or upcast else "tf32")
    grid = lambda META: (n * triton.cdiv(h_out, META["BLOCK_H"]) * triton.cdiv(w_out, META["BLOCK_W"]),)  # noqa: E731
    launch(
        conv3x3_head_kernel,
        grid,
        (
            x, weight, bias, head_weight, head_bias, *outputs[:3],
            h_out, w_out, c_in, c_mid, k, size_class(n * h_out * w_out),
            x.stride(0), x.stride(1), x.stride(2),
            *outputs[3:],
        ),
        flags,
        config,
        cache=True,
        choose=lambda: _kept(get_autotune_config(), x.dtype, flags["PRECISION"], flags["BLOCK_N"], x.device)[0],
    )


def _with_depth(strides: tuple) -> tuple:
    """(N, K, H, W) strides as (N, K, D, H, W) with a D stride of 0."""
    return (*strides[:2], 0, *strides[2:])
