"""The row-run main loop of the 3x3 convolutions: TMA tiles of pixel runs, taps reused across rows.

An output tile is ``R`` runs of ``BW`` consecutive output pixels on ``R`` consecutive image
rows (``R`` = 1, 2 or 4), times ``BN`` output channels. The input of a source is viewed as a
2-D ``[pixels, C]`` matrix (NHWC with dense pixels: row ``(n * H + h) * W + w``), so the
input of one run under one tap is a contiguous box of that matrix: one TMA load (a host-side
``TensorDescriptor``, :func:`descriptor`, its box set per config by :func:`set_block_shapes`),
which lands in shared memory in the layout the warp-group dot reads (no register round trip;
in triton 3.9 a 3-D or 4-D box reshaped to 2-D goes through registers).

* ``R = 1`` (a "flat" tile when ``BW`` runs past the image row: the pixels of several rows
  in a row, the two columns past the valid output computed and dropped): one loop over
  ``9 * cdiv(C, BK)`` (tap, channel block) steps, one A box, one weight box and one dot a
  step.
* ``R >= 2``: one loop over ``3 * cdiv(C, BK)`` (kw, channel block) steps. Input row
  ``oh + i + kh`` serves output row ``oh + i`` under tap ``kh`` and row ``oh + i + 1`` under
  tap ``kh - 1``: a step loads the ``R + 2`` input runs once and the three weight boxes of
  that column of taps, and runs ``3 R`` dots. The activations cross L2 ``(R + 2) / (3 R)``
  times as often as with one load per tap (2/3 for R = 2, 1/2 for R = 4).

The step's tap and channel block are loop-carried counters (no division or remainder of
the step index; the flattened loop that derives them so was reported to miscompile at 8
warps, triton-lang/triton#1254, pytorch/pytorch#173068), and every load is a descriptor
load at scalar coordinates: the loop body holds no pointer tensor and no mask. Channels
past the source's and pixels past the tensor's end are zero-filled by the TMA unit. A 3D
convolution (27 taps over NDHWC) fits the same form: a step per (kd, kw, channel block)
over ``R + 2`` runs of the input plane ``d + kd``.

Constraints of the TMA path (checked by :func:`eligible`): 16-bit storage, channel counts
(input and output) multiples of 8, inputs with dense pixels (``stride_h == W * stride_w``,
``stride_n == H * stride_h``) and 16-byte aligned rows and base. Other convolutions run the
pointer main loop of :mod:`fastunet.kernels.conv`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import to_storage

__all__ = ["eligible", "descriptor", "set_block_shapes", "rowrun_source", "rowrun_tile", "store_run", "pool_runs",
           "MAX_RUNS"]

MAX_RUNS = 4  # R: output rows a tile covers


def _dense_pixels(t: torch.Tensor) -> bool:
    """Whether the pixels of an NHWC tensor are equally spaced (a 2-D [pixels, C] view)."""
    n, h, w, c = t.shape
    return (t.stride(3) == 1 and t.stride(2) >= c and (h == 1 or t.stride(1) == w * t.stride(2))
            and (n == 1 or t.stride(0) == h * t.stride(1)))


def eligible(storage: torch.dtype, weight: torch.Tensor, *sources: torch.Tensor | None) -> bool:
    """Whether a conv with these sources and packed weight can run the TMA row-run loop."""
    if storage not in (torch.bfloat16, torch.float16):
        return False
    size = torch.empty((), dtype=storage).element_size()
    if (weight.shape[1] * size) % 16 or weight.data_ptr() % 16:
        return False
    for t in sources:
        if t is None:
            continue
        if t.shape[3] % 8 or not _dense_pixels(t) or t.data_ptr() % 16 or (t.stride(2) * size) % 16:
            return False
        if t.shape[0] * t.shape[1] * t.shape[2] >= 2**31:
            return False
    return True


def descriptor(t: torch.Tensor, block: list[int]):
    """The 2-D TMA descriptor of NHWC ``t`` as a ``[pixels, C]`` matrix (or of a 2-D weight)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    if t.ndim == 4:
        n, h, w, c = t.shape
        return TensorDescriptor(t, [n * h * w, c], [t.stride(2), 1], block)
    return TensorDescriptor(t, list(t.shape), [t.stride(0), 1], block)


def set_block_shapes(args: dict) -> None:
    """A config's ``pre_hook``: the descriptors' boxes follow the config's block sizes
    (the autotuner calls it before each config it runs)."""
    bw, bk = args["BW"], args["BK"]
    for name in ("a_desc", "b_desc", "x_desc"):
        if name in args:
            args[name].block_shape = [bw, bk]
    args["w_desc"].block_shape = [bk, args["BN"]]


@triton.jit
def _dot(acc, x, w, INTERP_BF16: tl.constexpr):
    if INTERP_BF16:  # interpreter only: its bf16 dot is wrong, so multiply in fp32 there
        x = x.to(tl.float32)
        w = w.to(tl.float32)
    return tl.dot(x, w, acc)


@triton.jit
def _dot3(acc, x0, x1, x2, w0, w1, w2, INTERP_BF16: tl.constexpr):
    """acc += x0 @ w0 + x1 @ w1 + x2 @ w2: one output run under the three taps kh = 0, 1, 2."""
    acc = _dot(acc, x0, w0, INTERP_BF16)
    acc = _dot(acc, x1, w1, INTERP_BF16)
    return _dot(acc, x2, w2, INTERP_BF16)


@triton.jit
def rowrun_source(
    acc0, acc1, acc2, acc3, src, w_desc, q0, WS, C_SRC, C_IN, W_ROW0, n0,
    INTERP_BF16: tl.constexpr, R: tl.constexpr, BK: tl.constexpr,
):
    """acc_i += sum over taps (kh, kw) and channels c < C_SRC of
    src[q0 + (i + kh) * WS + kw + m, c] * W[(3 * kh + kw) * C_IN + W_ROW0 + c, n0 + j]
    for i < R (``src``: the source's ``[pixels, C]`` descriptor, ``WS`` its pixels a row,
    ``q0`` the tile's first input pixel; ``w_desc``: the packed ``[9 * C_IN, C_OUT]``
    weight). One loop per source; see the module docstring for its two forms."""
    k_blocks = tl.cdiv(C_SRC, BK)
    c0 = 0
    kw = 0
    if R == 1:  # one run: a step per (tap, channel block)
        tap_q = 0  # kh * WS + kw
        tap_row = W_ROW0  # (3 * kh + kw) * C_IN + W_ROW0
        for _ in range(0, 9 * k_blocks):
            x = src.load([q0 + tap_q, c0])
            w = w_desc.load([tap_row + c0, n0])
            acc0 = _dot(acc0, x, w, INTERP_BF16)
            c0 += BK
            wrap = c0 >= C_SRC
            c0 = tl.where(wrap, 0, c0)
            tap_row = tl.where(wrap, tap_row + C_IN, tap_row)
            kw = tl.where(wrap, kw + 1, kw)
            row_end = kw == 3
            kw = tl.where(row_end, 0, kw)
            tap_q = tl.where(wrap, tl.where(row_end, tap_q + WS - 2, tap_q + 1), tap_q)
    else:  # R runs: a step per (kw, channel block), the R + 2 input runs shared by the taps kh
        for _ in range(0, 3 * k_blocks):
            q = q0 + kw
            row = kw * C_IN + W_ROW0 + c0
            w0 = w_desc.load([row, n0])
            w1 = w_desc.load([row + 3 * C_IN, n0])
            w2 = w_desc.load([row + 6 * C_IN, n0])
            x0 = src.load([q, c0])
            x1 = src.load([q + WS, c0])
            x2 = src.load([q + 2 * WS, c0])
            x3 = src.load([q + 3 * WS, c0])
            acc0 = _dot3(acc0, x0, x1, x2, w0, w1, w2, INTERP_BF16)
            acc1 = _dot3(acc1, x1, x2, x3, w0, w1, w2, INTERP_BF16)
            if R == 4:
                x4 = src.load([q + 4 * WS, c0])
                x5 = src.load([q + 5 * WS, c0])
                acc2 = _dot3(acc2, x2, x3, x4, w0, w1, w2, INTERP_BF16)
                acc3 = _dot3(acc3, x3, x4, x5, w0, w1, w2, INTERP_BF16)
            c0 += BK
            wrap = c0 >= C_SRC
            c0 = tl.where(wrap, 0, c0)
            kw = tl.where(wrap, kw + 1, kw)
    return acc0, acc1, acc2, acc3


@triton.jit
def store_run(acc, bias, y_ptr, y_base, oh, ow, mask_w, offs_n, mask_n, stride_yh, stride_yw, H_OUT,
               RELU: tl.constexpr, WRITE_Y: tl.constexpr, INTERP_BF16: tl.constexpr):
    """One output run: bias, ReLU, rounded to the storage dtype (returned for the pool),
    written at row ``oh`` (scalar), columns ``ow`` of the image at ``y_base``."""
    acc = acc + bias[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    y = to_storage(acc, y_ptr.dtype.element_ty, INTERP_BF16)
    if WRITE_Y:
        ptrs = y_base + oh * stride_yh + (ow * stride_yw)[:, None] + offs_n[None, :]
        mask_m = mask_w & (ow * 0 + oh < H_OUT)  # a vector: the interpreter refuses a scalar in a mask
        tl.store(ptrs, y, mask=mask_m[:, None] & mask_n[None, :])
    return y


@triton.jit
def pool_runs(y0, y1, p_base, ph, ow0, offs_n, mask_n, stride_ph, stride_pw, H_OUT, W_OUT,
               BW: tl.constexpr, BN: tl.constexpr):
    """2x2 max-pool of two output runs (rows 2 ph and 2 ph + 1, even first column ``ow0``)."""
    pooled = tl.max(tl.reshape(tl.maximum(y0, y1), (BW // 2, 2, BN)), axis=1)
    pw = ow0 // 2 + tl.arange(0, BW // 2)
    mask = ((pw < W_OUT // 2) & (pw * 0 + ph < H_OUT // 2))[:, None] & mask_n[None, :]
    tl.store(p_base + ph * stride_ph + (pw * stride_pw)[:, None] + offs_n[None, :], pooled, mask=mask)


@triton.jit
def rowrun_tile(
    a_desc, b_desc, w_desc, t, n0, H_OUT, W_OUT, C_A, C_B, HS_A, WS_A, HS_B, WS_B, off_ah, off_aw,
    HAS_B: tl.constexpr, INTERP_BF16: tl.constexpr, R: tl.constexpr, BW: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr,
):
    """The accumulators of row-run tile ``t`` (``R >= 2``): image ``n``, first output row
    ``oh0`` and column ``ow0``, and one K loop per source."""
    tiles_w = tl.cdiv(W_OUT, BW)
    tiles_h = tl.cdiv(H_OUT, R)
    n = t // (tiles_h * tiles_w)
    t = t % (tiles_h * tiles_w)
    oh0 = (t // tiles_w) * R
    ow0 = (t % tiles_w) * BW
    zero = tl.zeros((BW, BN), dtype=tl.float32)
    q_a = (n * HS_A + oh0 + off_ah) * WS_A + ow0 + off_aw
    acc0, acc1, acc2, acc3 = rowrun_source(zero, zero, zero, zero, a_desc, w_desc, q_a, WS_A, C_A, C_A + C_B,
                                                  0, n0, INTERP_BF16, R, BK)
    if HAS_B:  # second source of a decoder conv: the up-convolution output, uncropped
        q_b = (n * HS_B + oh0) * WS_B + ow0
        acc0, acc1, acc2, acc3 = rowrun_source(acc0, acc1, acc2, acc3, b_desc, w_desc, q_b, WS_B, C_B,
                                                      C_A + C_B, C_A, n0, INTERP_BF16, R, BK)
    return acc0, acc1, acc2, acc3, n.to(tl.int64), oh0, ow0
