"""The U-Net head: 1x1 convolution to class scores fused with softmax and argmax.

Reads each pixel's top-level features once (NHWC) and writes any of: the class scores
(logits), the class probabilities (softmax, fp16 or fp32) and the labels (argmax, uint8).
Scores, probabilities and labels are written through strides, so the outputs can be NCHW
(``(N, K, H, W)``, what the engine stores) without a transpose pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import (
    check_contiguous,
    check_nhwc,
    compute_dtype,
    launch,
    size_class,
    to_storage,
    tuning_configs,
    upcast_for_interpreter,
)
from .rowgemm import pixel_rows, row_gemm

__all__ = ["head", "pack_weight", "get_autotune_config", "configs_for", "write_head", "check_head_outputs"]


def get_autotune_config() -> list[triton.Config]:
    """Block shapes and warps tried on the GPU (the op is bandwidth-bound)."""
    return [
        triton.Config(dict(BLOCK_M=m, BLOCK_K=k), num_warps=w, num_stages=s)
        for m, k, w, s in [(128, 64, 4, 3), (256, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4)]
    ]


_INTERPRETER_CONFIG = triton.Config(dict(BLOCK_M=256, BLOCK_K=16), num_warps=4, num_stages=1)


def configs_for() -> list[triton.Config]:
    """The autotune configs (none is pruned: the tiles are small)."""
    return get_autotune_config()


@triton.jit
def write_head(
    scores, mask_m, offs_c, mask_c,
    logits_ptr, l_row, stride_lk, probs_ptr, p_row, stride_pk, labels_ptr, y_row,
    WRITE_LOGITS: tl.constexpr, WRITE_PROBS: tl.constexpr, WRITE_LABELS: tl.constexpr,
    INTERP_BF16: tl.constexpr,
):
    """Write the class scores ``s`` (BLOCK_M pixels x BLOCK_C classes, fp32, classes past K
    masked by ``mask_c``) of pixel rows ``*_row`` (offsets from each output's base): scores,
    p = softmax(s) and label = argmax(s) (the first maximum on ties), whichever is asked for."""
    mask_mc = mask_m[:, None] & mask_c[None, :]
    if WRITE_LOGITS:
        l_ptrs = logits_ptr + l_row[:, None] + offs_c[None, :] * stride_lk
        tl.store(l_ptrs, to_storage(scores, logits_ptr.dtype.element_ty, INTERP_BF16), mask=mask_mc)
    masked = tl.where(mask_c[None, :], scores, float("-inf"))
    if WRITE_PROBS:
        row_max = tl.max(masked, axis=1)
        e = tl.exp(masked - row_max[:, None])
        p = e / tl.sum(e, axis=1)[:, None]
        p_ptrs = probs_ptr + p_row[:, None] + offs_c[None, :] * stride_pk
        tl.store(p_ptrs, to_storage(p, probs_ptr.dtype.element_ty, INTERP_BF16), mask=mask_mc)
    if WRITE_LABELS:
        label = tl.argmax(masked, axis=1)
        tl.store(labels_ptr + y_row, label.to(tl.uint8), mask=mask_m)


@triton.autotune(
    configs=tuning_configs(get_autotune_config(), _INTERPRETER_CONFIG),
    key=["C_IN", "K", "SIZE_CLASS", "WRITE_LOGITS", "WRITE_PROBS", "WRITE_LABELS", "PRECISION"],
)
@triton.jit(do_not_specialize=["SIZE_CLASS"])
def head_kernel(
    # pointers
    x_ptr, w_ptr, bias_ptr, logits_ptr, probs_ptr, labels_ptr,
    # sizes
    M, H, W, C_IN, K, SIZE_CLASS,
    # strides (x channel stride is 1)
    stride_xn, stride_xh, stride_xw,
    stride_ln, stride_lk, stride_lh, stride_lw,
    stride_pn, stride_pk, stride_ph, stride_pw,
    stride_yn, stride_yh, stride_yw,
    # meta-parameters
    WRITE_LOGITS: tl.constexpr, WRITE_PROBS: tl.constexpr, WRITE_LABELS: tl.constexpr,
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr, BLOCK_C: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """s = x @ W + b per pixel; p = softmax(s); label = argmax(s) (first maximum on ties)."""
    mask_m, n, i, j = pixel_rows(tl.program_id(0), M, H, W, BLOCK_M)
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < K
    x_row = n * stride_xn + i * stride_xh + j * stride_xw
    acc = row_gemm(x_ptr, x_row, mask_m, w_ptr, offs_c, mask_c, C_IN, K,
                   INTERP_BF16, PRECISION, BLOCK_M, BLOCK_C, BLOCK_K)
    acc = acc + tl.load(bias_ptr + offs_c, mask=mask_c, other=0.0)[None, :]
    write_head(
        acc, mask_m, offs_c, mask_c,
        logits_ptr, n * stride_ln + i * stride_lh + j * stride_lw, stride_lk,
        probs_ptr, n * stride_pn + i * stride_ph + j * stride_pw, stride_pk,
        labels_ptr, n * stride_yn + i * stride_yh + j * stride_yw,
        WRITE_LOGITS, WRITE_PROBS, WRITE_LABELS, INTERP_BF16,
    )


def pack_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``nn.Conv2d`` 1x1 weight ``(K, C_in, 1, 1)`` -> ``(C_in, K)``."""
    if weight.ndim != 4 or weight.shape[2:] != (1, 1):
        raise ValueError(f"Expected a 1x1 conv weight (K, C_in, 1, 1); got {tuple(weight.shape)}.")
    return weight.detach()[:, :, 0, 0].t().to(dtype).contiguous()


def _check_out(t: torch.Tensor | None, name: str, shape: tuple, dtypes: tuple) -> None:
    if t is None:
        return
    if tuple(t.shape) != shape:
        raise ValueError(f"Expected {name} of shape {shape}; got {tuple(t.shape)}.")
    if t.dtype not in dtypes:
        raise ValueError(f"Expected {name} with dtype in {dtypes}; got {t.dtype}.")


def check_head_outputs(logits, probs, labels, n: int, k: int, *size: int) -> tuple:
    """Check the head outputs asked for (at least one) against the spatial ``size`` (``H, W``,
    or ``D, H, W`` for a 3D network); return the kernel arguments: the three tensors, an absent
    one replaced by a present one (never written: its WRITE_* is False), then their strides
    (N, K, spatial of logits and probs, N, spatial of labels; 0 when absent)."""
    floats = (torch.float32, torch.float16, torch.bfloat16)
    _check_out(logits, "logits", (n, k, *size), floats)
    _check_out(probs, "probs", (n, k, *size), floats)
    _check_out(labels, "labels", (n, *size), (torch.uint8,))
    if logits is None and probs is None and labels is None:
        raise ValueError("Nothing to write: pass logits, probs and/or labels.")
    dummy = next(t for t in (logits, probs, labels) if t is not None)
    tensors = tuple(t if t is not None else dummy for t in (logits, probs, labels))
    ranks = (2 + len(size), 2 + len(size), 1 + len(size))
    strides = [t.stride() if t is not None else (0,) * rank for t, rank in zip((logits, probs, labels), ranks)]
    return (*tensors, *strides[0], *strides[1], *strides[2])


def head(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    dtype: str = "fp32",
    config: triton.Config | None = None,
) -> None:
    """1x1 conv + softmax + argmax of NHWC features ``x`` (N, H, W, C_in).

    Writes into whichever of ``logits`` (N, K, H, W) float32/16, ``probs`` (N, K, H, W)
    float16/float32 and ``labels`` (N, H, W) uint8 are given (any strides); at least one.
    ``weight`` is packed by :func:`pack_weight`; ``config`` forces one block configuration.
    """
    storage, precision = compute_dtype(dtype)
    check_nhwc(x, "x")
    n, h, w, c_in = x.shape
    if weight.ndim != 2 or weight.shape[0] != c_in:
        raise ValueError(f"Expected a packed weight ({c_in}, K); got {tuple(weight.shape)}. Use pack_weight().")
    k = weight.shape[1]
    if k > 256:
        raise ValueError(f"Expected at most 256 classes (labels are uint8); got {k}.")
    if x.dtype != storage or weight.dtype != storage:
        raise ValueError(f"Expected x and weight in {storage} for dtype path {dtype!r}; got {x.dtype}, {weight.dtype}.")
    if bias.shape != (k,) or bias.dtype != torch.float32:
        raise ValueError(f"Expected a float32 bias of shape ({k},); got {bias.dtype} {tuple(bias.shape)}.")
    check_contiguous(weight=weight, bias=bias)
    outputs = check_head_outputs(logits, probs, labels, n, k, h, w)
    upcast = upcast_for_interpreter(storage)
    m = n * h * w
    grid = lambda META: (triton.cdiv(m, META["BLOCK_M"]),)  # noqa: E731
    launch(
        head_kernel,
        grid,
        (
            x, weight, bias, *outputs[:3],
            m, h, w, c_in, k, size_class(m),
            x.stride(0), x.stride(1), x.stride(2),
            *outputs[3:],
        ),
        dict(
            WRITE_LOGITS=logits is not None, WRITE_PROBS=probs is not None, WRITE_LABELS=labels is not None,
            INTERP_BF16=upcast,
            PRECISION=precision if storage == torch.float32 or upcast else "tf32",  # 16-bit: unused
            BLOCK_C=max(16, triton.next_power_of_2(k)),
        ),
        config,
        cache=True,
    )
