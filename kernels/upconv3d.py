"""The 3D U-Net's up-convolution: ``nn.ConvTranspose3d`` with kernel = stride = ``(fd, 2, 2)``
(2x2x2, or 1x2x2 where the network keeps Z) + bias, of channels-last (NDHWC) activations.

As in 2D (:mod:`fastunet.kernels.upconv`) the output windows do not overlap: each input voxel
maps to its own ``fd x 2 x 2`` window, so the op is the GEMM ``[voxels, C_in] @ [C_in,
S * C_out]`` (``S = 4 fd``) of the shared row-GEMM loop (:func:`fastunet.kernels.rowgemm.row_gemm`),
column ``j = (4 dz + 2 dy + dx) * C_out + co`` scattered to voxel ``(fd d + dz, 2 i + dy,
2 k + dx)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import perfmodel
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
from .rowgemm import row_gemm

__all__ = ["upconv3d", "pack_weight", "get_autotune_config", "configs_for", "ranked_configs"]


def get_autotune_config() -> list[triton.Config]:
    """Block shapes, warps and stages tried on the GPU (those of the 2D up-convolution)."""
    return [
        triton.Config(dict(BLOCK_M=m, BLOCK_N=nn, BLOCK_K=k), num_warps=w, num_stages=s)
        for m, nn, k, w, s in [(128, 128, 64, 8, 3), (128, 64, 64, 4, 3), (64, 128, 64, 4, 4), (128, 128, 32, 4, 4),
                               (64, 64, 64, 4, 3), (128, 64, 32, 4, 3)]
    ]


_INTERPRETER_CONFIG = triton.Config(dict(BLOCK_M=256, BLOCK_N=16, BLOCK_K=16), num_warps=4, num_stages=1)
_IEEE_MAX_TILE = 128 * 64 * 32


def _kept(configs, dtype: torch.dtype, precision: str | None, device=None, limit: int | None = None):
    if dtype == torch.float32 and precision == "ieee":
        macs = lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"]  # noqa: E731
        configs = [c for c in configs if macs(c) <= _IEEE_MAX_TILE] or configs
    size = torch.empty((), dtype=dtype).element_size()
    return prune_by_shared_memory(
        configs, lambda c: (c.kwargs["BLOCK_M"] + c.kwargs["BLOCK_N"]) * c.kwargs["BLOCK_K"] * size, device, limit=limit)


def configs_for(dtype: torch.dtype, precision: str = "tf32", device=None, *,
                shared_memory: int | None = None) -> list[triton.Config]:
    """The autotune configs kept for activations of ``dtype`` (``precision`` of fp32 dots)."""
    return _kept(get_autotune_config(), dtype, precision, device, shared_memory)


def ranked_configs(m: int, c_in: int, cols: int, dtype: torch.dtype, precision: str | None, device=None):
    """The configs kept for ``dtype``, fastest first by the performance model (a ``[m, c_in] x
    [c_in, cols]`` GEMM): the first is what ``FASTUNET_AUTOTUNE=0`` launches."""
    kept = _kept(get_autotune_config(), dtype, precision, device)
    e = torch.empty((), dtype=dtype).element_size()
    dev = perfmodel.device("low")

    def seconds(c):
        kw = c.kwargs
        layer = perfmodel.Layer(
            tiles=-(-m // kw["BLOCK_M"]) * -(-cols // kw["BLOCK_N"]), steps=-(-c_in // kw["BLOCK_K"]),
            step=perfmodel.pointer_step(kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], c.num_warps, e),
            out_bytes_per_tile=kw["BLOCK_M"] * kw["BLOCK_N"] * e, hbm_bytes=(m * c_in + c_in * cols + m * cols) * e,
            useful_flops=2.0 * m * c_in * cols, smem_bytes=(kw["BLOCK_M"] + kw["BLOCK_N"]) * kw["BLOCK_K"] * e
            * c.num_stages, num_warps=c.num_warps, num_stages=c.num_stages,
            registers=min(255, kw["BLOCK_M"] * kw["BLOCK_N"] // (32 * c.num_warps) + 48))
        return perfmodel.launch_time(layer, dev)["seconds"]

    return sorted(kept, key=seconds)


def _prune(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
    x = named_args["x_ptr"]
    return select(_kept(configs, x.dtype, meta.get("PRECISION"), x.device))


@triton.autotune(
    configs=tuning_configs(get_autotune_config(), _INTERPRETER_CONFIG, pruned=True),
    key=["C_IN", "C_OUT", "SIZE_CLASS", "FD", "PRECISION"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit(do_not_specialize=["SIZE_CLASS"])
def upconv3d_kernel(
    # pointers
    x_ptr, w_ptr, bias_ptr, y_ptr,
    # sizes
    M, D, H, W, C_IN, C_OUT, SIZE_CLASS,
    # strides (channel stride 1)
    stride_xn, stride_xd, stride_xh, stride_xw,
    stride_yn, stride_yd, stride_yh, stride_yw,
    # meta-parameters
    FD: tl.constexpr, INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[n, FD d + dz, 2i + dy, 2k + dx, co] = bias[co] + sum_c x[n, d, i, k, c] W[c, (4dz + 2dy + dx) C_OUT + co]."""
    S: tl.constexpr = 4 * FD
    pid = tl.program_id(0)
    num_n = tl.cdiv(S * C_OUT, BLOCK_N)
    pid_n = pid % num_n
    offs_m = (pid // num_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    n = (offs_m // (D * H * W)).to(tl.int64)
    d = (offs_m // (H * W)) % D
    i = (offs_m // W) % H
    k = offs_m % W
    offs_j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_j = offs_j < S * C_OUT
    x_row = n * stride_xn + d * stride_xd + i * stride_xh + k * stride_xw
    acc = row_gemm(x_ptr, x_row, mask_m, w_ptr, offs_j, mask_j, C_IN, S * C_OUT,
                   INTERP_BF16, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
    sub = offs_j // C_OUT
    co = offs_j % C_OUT
    acc = acc + tl.load(bias_ptr + co, mask=mask_j, other=0.0)[None, :]
    dz = sub // 4
    dy = (sub // 2) % 2
    dx = sub % 2
    y_ptrs = (
        y_ptr
        + (n * stride_yn + FD * d * stride_yd + 2 * i * stride_yh + 2 * k * stride_yw)[:, None]
        + (dz * stride_yd + dy * stride_yh + dx * stride_yw + co)[None, :]
    )
    tl.store(y_ptrs, to_storage(acc, y_ptr.dtype.element_ty, INTERP_BF16), mask=mask_m[:, None] & mask_j[None, :])


def pack_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``nn.ConvTranspose3d`` weight ``(C_in, C_out, fd, 2, 2)`` -> ``(C_in, 4 fd C_out)``, column
    ``(4 dz + 2 dy + dx) * C_out + co``."""
    if weight.ndim != 5 or tuple(weight.shape[3:]) != (2, 2) or weight.shape[2] not in (1, 2):
        raise ValueError(f"Expected a (2 or 1)x2x2 up-conv weight (C_in, C_out, fd, 2, 2); got {tuple(weight.shape)}.")
    c_in, c_out, fd = weight.shape[:3]
    return weight.detach().permute(0, 2, 3, 4, 1).reshape(c_in, 4 * fd * c_out).to(dtype).contiguous()


def upconv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, factor: tuple[int, int, int] = (2, 2, 2),
             out: torch.Tensor | None = None, dtype: str = "fp32", config: triton.Config | None = None) -> torch.Tensor:
    """Up-convolution + bias of NDHWC activations: (N, D, H, W, C_in) -> (N, fd D, 2H, 2W, C_out).

    ``weight`` is packed by :func:`pack_weight` (its width says ``fd``, which must match
    ``factor``); ``bias`` is float32; ``out`` may be preallocated (channel stride 1);
    ``config`` forces one block configuration.
    """
    storage, precision = compute_dtype(dtype)
    if tuple(factor) not in ((2, 2, 2), (1, 2, 2)):
        raise ValueError(f"Expected an up-convolution factor of (2, 2, 2) or (1, 2, 2); got {factor!r}.")
    fd = factor[0]
    check_ndhwc(x, "x")
    n, d, h, w, c_in = x.shape
    if weight.ndim != 2 or weight.shape[0] != c_in or weight.shape[1] % (4 * fd):
        raise ValueError(f"Expected a packed weight ({c_in}, {4 * fd} * C_out); got {tuple(weight.shape)}. "
                         "Use pack_weight().")
    c_out = weight.shape[1] // (4 * fd)
    if x.dtype != storage or weight.dtype != storage:
        raise ValueError(f"Expected x and weight in {storage} for dtype path {dtype!r}; got {x.dtype}, {weight.dtype}.")
    if bias.shape != (c_out,) or bias.dtype != torch.float32:
        raise ValueError(f"Expected a float32 bias of shape ({c_out},); got {bias.dtype} {tuple(bias.shape)}.")
    check_contiguous(weight=weight, bias=bias)
    shape = (n, fd * d, 2 * h, 2 * w, c_out)
    if out is None:
        out = torch.empty(shape, device=x.device, dtype=storage)
    check_ndhwc(out, "out", c_out)
    if tuple(out.shape) != shape:
        raise ValueError(f"Expected out of shape {shape}; got {tuple(out.shape)}.")
    upcast = upcast_for_interpreter(storage)
    m, cols = n * d * h * w, 4 * fd * c_out
    grid = lambda META: (triton.cdiv(m, META["BLOCK_M"]) * triton.cdiv(cols, META["BLOCK_N"]),)  # noqa: E731
    launch(
        upconv3d_kernel, grid,
        (x, weight, bias, out, m, d, h, w, c_in, c_out, size_class(m), *x.stride()[:4], *out.stride()[:4]),
        dict(FD=fd, INTERP_BF16=upcast, PRECISION=precision if storage == torch.float32 or upcast else "tf32"),
        config, cache=True,
        choose=lambda: ranked_configs(m, c_in, cols, storage, precision, x.device)[0],
    )
    return out
