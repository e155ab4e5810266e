"""The row-GEMM prologue shared by the up-convolution and head kernels.

Both treat the NHWC activation as a ``[pixels, C_in]`` matrix: a program takes ``BLOCK_M``
consecutive pixels (rows, across images) and multiplies them by a row-major ``[C_in, N]``
weight. :func:`pixel_rows` maps the rows to ``(n, i, j)``; :func:`row_gemm` is the K loop,
with the pointers of the first channel block built once before it (a step adds a scalar).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["pixel_rows", "row_gemm"]


@triton.jit
def pixel_rows(pid_m, M, H, W, BLOCK_M: tl.constexpr):
    """Rows ``pid_m * BLOCK_M + [0, BLOCK_M)`` of the (N, H, W) pixel grid (M = N * H * W
    pixels): their mask and coordinates ``n`` (int64: batch offsets can pass 2**31), ``i``, ``j``."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    n = (offs_m // (H * W)).to(tl.int64)
    i = (offs_m // W) % H
    j = offs_m % W
    return mask_m, n, i, j


@triton.jit
def row_gemm(
    x_ptr, x_row, mask_m, w_ptr, offs_n, mask_n, C_IN, N_COLS,
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """acc[m, j] = sum_c x[x_row[m] + c] * W[c, offs_n[j]] in fp32, W row-major ``[C_IN, N_COLS]``.

    One loop over ``cdiv(C_IN, BLOCK_K)`` channel blocks; the operand pointers of block 0 are
    built before it and each step adds its channel offset."""
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + x_row[:, None] + offs_k[None, :]
    w_ptrs = w_ptr + offs_k[:, None] * N_COLS + offs_n[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C_IN, BLOCK_K):
        mask_k = offs_k < C_IN - c0
        x = tl.load(x_ptrs + c0, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_ptrs + c0 * N_COLS, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if INTERP_BF16:  # interpreter only: its bf16 dot is wrong, so multiply in fp32 there
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    return acc
