"""The row-run main loop of the 3x3 and 3x3x3 convolutions: TMA tiles of pixel runs, taps reused across rows.

One loop for 2D and 3D (``KD`` taps along Z: 1 or 3). The input of a source is viewed as a 2-D
``[pixels, C]`` matrix (channels-last with dense pixels: row ``((n D + z) H + h) W + w``), so
the input of one run of ``BW`` output pixels along X under one tap is a contiguous box of that
matrix: one TMA load (a host-side ``TensorDescriptor``, :func:`descriptor`, its box set per
config by :func:`set_block_shapes`), which lands in shared memory in the layout the warp-group
dot reads (no register round trip; in triton 3.9 a 3-D or 4-D box reshaped to 2-D goes through
registers). A source's grid is three pixel strides: ``IMG`` (an image), ``PS`` (a Z plane) and
``WS`` (a row); :func:`grid_of` gives them.

* ``R = 1`` (a "flat" tile: ``BW`` consecutive pixels of the grid, wrapping rows, planes and
  images; the columns, rows and planes past the valid output computed and dropped): a step per
  (tap, channel block), ``9 KD`` taps: one A box, one weight box, one dot.
* ``R >= 2``: a step per (kz, kw, channel block), ``3 KD`` of them a channel block: the
  ``R / RD + 2`` input runs of each of the tile's ``RD`` planes are loaded once and serve the
  three taps ``kh`` (input row ``r + kh`` feeds output row ``r`` under ``kh`` and ``r + 1``
  under ``kh - 1``), with the three weight boxes of that column of taps: ``3 R`` dots. The
  activations cross L2 ``(R / RD + 2) / (3 R / RD)`` times as often as with one load per tap
  (2/3 for two rows, 1/2 for four). ``RD = 2`` (3D: two Z planes of two rows each, so that a
  2x2x2 pool's windows lie in one tile) loads 8 runs a step.

The step's tap and channel block are loop-carried counters (no division or remainder of the
step index: the flattened loop that derives them so was reported to miscompile at 8 warps,
triton-lang/triton#1254, pytorch/pytorch#173068), and every load is a descriptor load at
scalar coordinates: the loop body holds no pointer tensor and no mask. Channels past the
source's and pixels past the tensor's end are zero-filled by the TMA unit.

Constraints of the TMA path (checked by :func:`eligible`): 16-bit storage, channel counts
(input and output) multiples of 8, inputs with dense pixels and 16-byte aligned rows and base.
Other convolutions run the pointer loop of :mod:`fastunet.kernels.conv` (2D and 3D).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import to_storage

__all__ = ["eligible", "descriptor", "set_block_shapes", "grid_of", "accumulate", "row_tile", "flat_coords",
           "source_origin", "store_run", "store_pooled", "pool2", "bias_relu", "to_output", "MAX_RUNS"]

MAX_RUNS = 4  # R: output runs a tile covers


def _dense_pixels(t: torch.Tensor) -> bool:
    """Whether the pixels of a channels-last tensor are equally spaced (a 2-D [pixels, C] view)."""
    c = t.shape[-1]
    if t.stride(-1) != 1 or t.stride(-2) < c:
        return False
    return all(t.shape[i] == 1 or t.stride(i) == t.shape[i + 1] * t.stride(i + 1) for i in range(t.ndim - 2))


def eligible(storage: torch.dtype, weight: torch.Tensor, *sources: torch.Tensor | None) -> bool:
    """Whether a conv with these sources (channels-last, 2D or 3D) and packed weight can run the TMA loop."""
    if storage not in (torch.bfloat16, torch.float16):
        return False
    size = torch.empty((), dtype=storage).element_size()
    if (weight.shape[1] * size) % 16 or weight.data_ptr() % 16:
        return False
    for t in sources:
        if t is None:
            continue
        if t.shape[-1] % 8 or not _dense_pixels(t) or t.data_ptr() % 16 or (t.stride(-2) * size) % 16:
            return False
        if t.numel() // t.shape[-1] >= 2**31:
            return False
    return True


def descriptor(t: torch.Tensor, block: list[int]):
    """The 2-D TMA descriptor of a channels-last ``t`` as a ``[pixels, C]`` matrix (or of a 2-D weight)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    if t.ndim > 2:
        pixels = 1
        for s in t.shape[:-1]:
            pixels *= s
        return TensorDescriptor(t, [pixels, t.shape[-1]], [t.stride(-2), 1], block)
    return TensorDescriptor(t, list(t.shape), [t.stride(0), 1], block)


def set_block_shapes(args: dict) -> None:
    """A config's ``pre_hook``: the descriptors' boxes follow the config's block sizes
    (the autotuner calls it before each config it runs)."""
    bw, bk = args["BW"], args["BK"]
    for name in ("a_desc", "b_desc", "x_desc"):
        if name in args:
            args[name].block_shape = [bw, bk]
    args["w_desc"].block_shape = [bk, args["BN"]]


def grid_of(t: torch.Tensor) -> tuple[int, ...]:
    """A channels-last source's pixel strides ``(IMG, PS, WS)`` and its grid ``(D, H, W)``
    (``D = 1`` in 2D) for the kernels."""
    spatial = tuple(t.shape[1:-1])
    d, h, w = (1, *spatial) if len(spatial) == 2 else spatial
    return d * h * w, h * w, w, d, h, w


# -- the K loop -----------------------------------------------------------------------------
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
def _plane_rows(acc0, acc1, acc2, acc3, src, q, c0, WS, w0, w1, w2, INTERP_BF16: tl.constexpr, RH: tl.constexpr):
    """The ``RH`` (2 or 4) runs of one plane under the taps kh: the ``RH + 2`` input runs at
    ``q + j WS``, each loaded once."""
    x0 = src.load([q, c0])
    x1 = src.load([q + WS, c0])
    x2 = src.load([q + 2 * WS, c0])
    x3 = src.load([q + 3 * WS, c0])
    acc0 = _dot3(acc0, x0, x1, x2, w0, w1, w2, INTERP_BF16)
    acc1 = _dot3(acc1, x1, x2, x3, w0, w1, w2, INTERP_BF16)
    if RH == 4:
        x4 = src.load([q + 4 * WS, c0])
        x5 = src.load([q + 5 * WS, c0])
        acc2 = _dot3(acc2, x2, x3, x4, w0, w1, w2, INTERP_BF16)
        acc3 = _dot3(acc3, x3, x4, x5, w0, w1, w2, INTERP_BF16)
    return acc0, acc1, acc2, acc3


@triton.jit
def rowrun_source(
    acc0, acc1, acc2, acc3, src, w_desc, q0, WS, PS, C_SRC, C_IN, W_ROW0, n0,
    INTERP_BF16: tl.constexpr, R: tl.constexpr, RD: tl.constexpr, KD: tl.constexpr, BK: tl.constexpr,
):
    """acc_i += sum over taps (kz, kh, kw) and channels c < C_SRC of
    src[q0 + kz PS + (i + kh) WS + kw + m, c] * W[(9 kz + 3 kh + kw) C_IN + W_ROW0 + c, n0 + j]
    (``src``: the source's ``[pixels, C]`` descriptor, ``q0`` the tile's first input pixel;
    ``w_desc``: the packed ``[9 KD C_IN, C_OUT]`` weight). One loop per source; see the module
    docstring for its two forms."""
    k_blocks = tl.cdiv(C_SRC, BK)
    c0 = 0
    kw = 0
    if R == 1:  # one run: a step per (tap, channel block), tap = 9 kz + 3 kh + kw
        kh = 0
        tap_q = 0  # kz PS + kh WS + kw
        tap_row = W_ROW0  # tap C_IN + W_ROW0
        for _ in range(0, 9 * KD * k_blocks):
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
            if KD == 1:
                tap_q = tl.where(wrap, tl.where(row_end, tap_q + WS - 2, tap_q + 1), tap_q)
            else:
                kh = tl.where(row_end, kh + 1, kh)
                plane_end = kh == 3
                kh = tl.where(plane_end, 0, kh)
                step = tl.where(row_end, tl.where(plane_end, PS - 2 * WS - 2, WS - 2), 1)
                tap_q = tl.where(wrap, tap_q + step, tap_q)
    else:  # a step per (kz, kw, channel block): the input runs shared by the taps kh
        kz = 0
        for _ in range(0, 3 * KD * k_blocks):
            q = q0 + kz * PS + kw
            row = (9 * kz + kw) * C_IN + W_ROW0 + c0
            w0 = w_desc.load([row, n0])
            w1 = w_desc.load([row + 3 * C_IN, n0])
            w2 = w_desc.load([row + 6 * C_IN, n0])
            if RD == 1:
                acc0, acc1, acc2, acc3 = _plane_rows(acc0, acc1, acc2, acc3, src, q, c0, WS, w0, w1, w2,
                                                     INTERP_BF16, R)
            else:  # two planes of two rows
                acc0, acc1, _, _ = _plane_rows(acc0, acc1, acc0, acc1, src, q, c0, WS, w0, w1, w2, INTERP_BF16, 2)
                acc2, acc3, _, _ = _plane_rows(acc2, acc3, acc2, acc3, src, q + PS, c0, WS, w0, w1, w2,
                                               INTERP_BF16, 2)
            c0 += BK
            wrap = c0 >= C_SRC
            c0 = tl.where(wrap, 0, c0)
            kw = tl.where(wrap, kw + 1, kw)
            if KD == 3:
                kz = tl.where(kw == 3, kz + 1, kz)
            kw = tl.where(kw == 3, 0, kw)
    return acc0, acc1, acc2, acc3


@triton.jit
def accumulate(
    a_desc, b_desc, w_desc, q_a, q_b, WS_A, PS_A, WS_B, PS_B, C_A, C_B, n0,
    HAS_B: tl.constexpr, INTERP_BF16: tl.constexpr, R: tl.constexpr, RD: tl.constexpr, KD: tl.constexpr,
    BW: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """The ``R`` fp32 accumulators of a tile: one K loop per source (source a's, then b's:
    the weight rows of a decoder conv's two sources)."""
    zero = tl.zeros((BW, BN), dtype=tl.float32)
    acc0, acc1, acc2, acc3 = rowrun_source(zero, zero, zero, zero, a_desc, w_desc, q_a, WS_A, PS_A, C_A, C_A + C_B,
                                           0, n0, INTERP_BF16, R, RD, KD, BK)
    if HAS_B:  # second source of a decoder conv: the up-convolution output, uncropped
        acc0, acc1, acc2, acc3 = rowrun_source(acc0, acc1, acc2, acc3, b_desc, w_desc, q_b, WS_B, PS_B, C_B,
                                               C_A + C_B, C_A, n0, INTERP_BF16, R, RD, KD, BK)
    return acc0, acc1, acc2, acc3


# -- tiles and their outputs --------------------------------------------------------------------
@triton.jit
def row_tile(t, D_OUT, H_OUT, W_OUT, RD: tl.constexpr, RH: tl.constexpr, BW: tl.constexpr):
    """Image ``n`` (int64), first output plane, row and column of row tile ``t``."""
    tiles_w = tl.cdiv(W_OUT, BW)
    tiles_hw = tl.cdiv(H_OUT, RH) * tiles_w
    per_image = tl.cdiv(D_OUT, RD) * tiles_hw
    n = t // per_image
    t = t - n * per_image
    od0 = (t // tiles_hw) * RD
    t = t % tiles_hw
    return n.to(tl.int64), od0, (t // tiles_w) * RH, (t % tiles_w) * BW


@triton.jit
def source_origin(n, z, r, x, IMG, PS, WS):
    """The ``[pixels, C]`` row of input pixel (n, z, r, x) of a source (fits 32 bits: :func:`eligible`)."""
    return (n * IMG + z * PS + r * WS + x).to(tl.int32)


@triton.jit
def flat_coords(p, DS, HS, WS):
    """(n, z, row, x) of flat grid positions ``p`` (vectors) of a ``DS x HS x WS`` grid."""
    x = p % WS
    r = p // WS
    row = r % HS
    r = r // HS
    return (r // DS).to(tl.int64), r % DS, row, x


@triton.jit
def bias_relu(acc, bias, RELU: tl.constexpr):
    acc = acc + bias[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    return acc


@triton.jit
def to_output(acc, bias, y_ptr, RELU: tl.constexpr, INTERP_BF16: tl.constexpr):
    """Bias, ReLU, rounded to the storage dtype (the pool takes the max of the rounded values,
    which equals the rounded max: rounding is monotonic)."""
    return to_storage(bias_relu(acc, bias, RELU), y_ptr.dtype.element_ty, INTERP_BF16)


@triton.jit
def store_run(y, y_ptr, n, z, r, x, valid, offs_n, mask_n, stride_yn, stride_yd, stride_yh, stride_yw):
    """Store output pixels (n, z, r, x) (``x`` a vector, the others scalars or vectors) where ``valid``."""
    offs = n * stride_yn + z * stride_yd + r * stride_yh + x * stride_yw
    tl.store(y_ptr + offs[:, None] + offs_n[None, :], y, mask=valid[:, None] & mask_n[None, :])


@triton.jit
def pool2(y0, y1, BW: tl.constexpr, BN: tl.constexpr):
    """Max over two output runs and over column pairs (first column even): ``[BW / 2, BN]``."""
    return tl.max(tl.reshape(tl.maximum(y0, y1), (BW // 2, 2, BN)), axis=1)


@triton.jit
def store_pooled(pooled, p_ptr, n, pz, pr, px, valid, offs_n, mask_n, stride_pn, stride_pd, stride_ph, stride_pw):
    offs = n * stride_pn + pz * stride_pd + pr * stride_ph + px * stride_pw
    tl.store(p_ptr + offs[:, None] + offs_n[None, :], pooled, mask=valid[:, None] & mask_n[None, :])
