"""2x2 stride-2 up-convolution (``nn.ConvTranspose2d(kernel_size=2, stride=2)``) + bias.

With kernel 2 and stride 2 the output windows do not overlap: every input pixel maps to
its own 2x2 output window. That makes the op a plain GEMM ``[pixels, C_in] @ [C_in,
4 * C_out]`` whose column ``j = (2 * dy + dx) * C_out + co`` is scattered to output pixel
``(2 * i + dy, 2 * k + dx)``, channel ``co``. Activations are channels-last (NHWC).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import perfmodel
from ._utils import (
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
from .rowgemm import pixel_rows, row_gemm

__all__ = ["upconv2x2", "pack_weight", "get_autotune_config", "configs_for", "predict", "ranked_configs"]


def get_autotune_config() -> list[triton.Config]:
    """Block shapes, warps and stages tried on the GPU."""
    return [
        triton.Config(dict(BLOCK_M=m, BLOCK_N=nn, BLOCK_K=k), num_warps=w, num_stages=s)
        for m, nn, k, w, s in [
            (128, 128, 64, 8, 3),
            (128, 64, 64, 4, 3),
            (64, 128, 64, 4, 4),
            (128, 128, 32, 4, 4),
            (64, 64, 64, 4, 3),
            (128, 64, 32, 4, 3),
        ]
    ]


_INTERPRETER_CONFIG = triton.Config(dict(BLOCK_M=256, BLOCK_N=16, BLOCK_K=16), num_warps=4, num_stages=1)


def _stage_bytes(config: triton.Config, element_size: int) -> int:
    return (config.kwargs["BLOCK_M"] + config.kwargs["BLOCK_N"]) * config.kwargs["BLOCK_K"] * element_size


# fp32 "ieee" dots are FMAs: ptxas for sm_90 spills 88-180 bytes at 128 x 64 x 64 and
# 128 x 128 x 32 with 4 warps, none at 128 x 64 x 32 or 64 x 64 x 64.
_IEEE_MAX_TILE = 128 * 64 * 32


def _kept(configs: list[triton.Config], dtype: torch.dtype, precision: str | None = None, device=None,
          limit: int | None = None):
    if dtype == torch.float32 and precision == "ieee":
        macs = lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"]  # noqa: E731
        configs = [c for c in configs if macs(c) <= _IEEE_MAX_TILE] or configs
    size = torch.empty((), dtype=dtype).element_size()
    return prune_by_shared_memory(configs, lambda c: _stage_bytes(c, size), device, limit=limit)


def configs_for(dtype: torch.dtype, device=None, *, shared_memory: int | None = None,
                precision: str = "tf32") -> list[triton.Config]:
    """The autotune configs that fit the device's shared memory for activations of ``dtype``
    (``precision`` of fp32 dots: "ieee" keeps the smaller FMA tiles)."""
    return _kept(get_autotune_config(), dtype, precision, device, shared_memory)


def predict(config: triton.Config, m: int, c_in: int, c_out: int, element_size: int = 2,
            scenario: str = "low") -> dict:
    """The model's prediction (:mod:`fastunet.kernels.perfmodel`) for ``config`` on ``m``
    input pixels: a ``[m, c_in] x [c_in, 4 c_out]`` GEMM. A prediction, not a measurement."""
    kw, e = config.kwargs, element_size
    bm, bn, bk = kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"]
    layer = perfmodel.Layer(
        tiles=-(-m // bm) * -(-4 * c_out // bn), steps=-(-c_in // bk),
        step=perfmodel.pointer_step(bm, bn, bk, config.num_warps, e), out_bytes_per_tile=bm * bn * e,
        hbm_bytes=(m * c_in + c_in * 4 * c_out + m * 4 * c_out) * e, useful_flops=2.0 * m * c_in * 4 * c_out,
        smem_bytes=_stage_bytes(config, e) * config.num_stages, num_warps=config.num_warps,
        num_stages=config.num_stages, registers=min(255, bm * bn // (32 * config.num_warps) + 48))
    return perfmodel.launch_time(layer, perfmodel.device(scenario))


def ranked_configs(m: int, c_in: int, c_out: int, dtype: torch.dtype, precision: str | None = "tf32", device=None, *,
                   shared_memory: int | None = None) -> list[triton.Config]:
    """The configs kept for ``dtype`` (:func:`configs_for`), fastest first by the model (for
    fp32 "ieee", whose FMA dots it does not cover, the smallest tile first)."""
    kept = _kept(get_autotune_config(), dtype, precision, device, shared_memory)
    if dtype == torch.float32 and precision == "ieee":
        return sorted(kept, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])
    size = torch.empty((), dtype=dtype).element_size()
    return sorted(kept, key=lambda c: predict(c, m, c_in, c_out, size)["seconds"])


def _prune(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
    x = named_args["x_ptr"]
    return select(_kept(configs, x.dtype, meta.get("PRECISION"), x.device))  # FASTUNET_AUTOTUNE=0: the first that fits


@triton.autotune(
    configs=tuning_configs(get_autotune_config(), _INTERPRETER_CONFIG, pruned=True),
    key=["C_IN", "C_OUT", "SIZE_CLASS", "PRECISION"],  # tensor dtypes join the key by themselves
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit(do_not_specialize=["SIZE_CLASS"])
def upconv2x2_kernel(
    # pointers
    x_ptr, w_ptr, bias_ptr, y_ptr,
    # sizes
    M, H, W, C_IN, C_OUT, SIZE_CLASS,
    # strides (channel stride 1)
    stride_xn, stride_xh, stride_xw,
    stride_yn, stride_yh, stride_yw,
    # meta-parameters
    INTERP_BF16: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[n, 2i+dy, 2k+dx, co] = bias[co] + sum_c x[n, i, k, c] * W[c, (2dy+dx) * C_OUT + co]."""
    pid = tl.program_id(0)
    num_n = tl.cdiv(4 * C_OUT, BLOCK_N)
    pid_n = pid % num_n
    mask_m, n, i, k = pixel_rows(pid // num_n, M, H, W, BLOCK_M)
    offs_j = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_j = offs_j < 4 * C_OUT
    x_row = n * stride_xn + i * stride_xh + k * stride_xw
    acc = row_gemm(x_ptr, x_row, mask_m, w_ptr, offs_j, mask_j, C_IN, 4 * C_OUT,
                   INTERP_BF16, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)

    sub = offs_j // C_OUT
    co = offs_j % C_OUT
    acc = acc + tl.load(bias_ptr + co, mask=mask_j, other=0.0)[None, :]
    dy = sub // 2
    dx = sub % 2
    y_ptrs = (
        y_ptr
        + (n * stride_yn + 2 * i * stride_yh + 2 * k * stride_yw)[:, None]
        + (dy * stride_yh + dx * stride_yw + co)[None, :]
    )
    tl.store(y_ptrs, to_storage(acc, y_ptr.dtype.element_ty, INTERP_BF16), mask=mask_m[:, None] & mask_j[None, :])


def pack_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``nn.ConvTranspose2d`` weight ``(C_in, C_out, 2, 2)`` -> ``(C_in, 4 * C_out)``, column
    ``(2 * dy + dx) * C_out + co``."""
    if weight.ndim != 4 or weight.shape[2:] != (2, 2):
        raise ValueError(f"Expected a 2x2 up-conv weight (C_in, C_out, 2, 2); got {tuple(weight.shape)}.")
    c_in, c_out = weight.shape[:2]
    return weight.detach().permute(0, 2, 3, 1).reshape(c_in, 4 * c_out).to(dtype).contiguous()


def upconv2x2(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    dtype: str = "fp32",
    config: triton.Config | None = None,
) -> torch.Tensor:
    """2x2 stride-2 up-convolution + bias of NHWC activations: (N, H, W, C_in) -> (N, 2H, 2W, C_out).

    ``weight`` is packed by :func:`pack_weight`; ``bias`` is float32; ``out`` may be
    preallocated (channels-last, channel stride 1); ``config`` forces one block configuration.
    """
    storage, precision = compute_dtype(dtype)
    check_nhwc(x, "x")
    n, h, w, c_in = x.shape
    if weight.ndim != 2 or weight.shape[0] != c_in or weight.shape[1] % 4:
        raise ValueError(f"Expected a packed weight ({c_in}, 4 * C_out); got {tuple(weight.shape)}. Use pack_weight().")
    c_out = weight.shape[1] // 4
    if x.dtype != storage or weight.dtype != storage:
        raise ValueError(f"Expected x and weight in {storage} for dtype path {dtype!r}; got {x.dtype}, {weight.dtype}.")
    if bias.shape != (c_out,) or bias.dtype != torch.float32:
        raise ValueError(f"Expected a float32 bias of shape ({c_out},); got {bias.dtype} {tuple(bias.shape)}.")
    check_contiguous(weight=weight, bias=bias)
    if out is None:
        out = torch.empty((n, 2 * h, 2 * w, c_out), device=x.device, dtype=storage)
    check_nhwc(out, "out", c_out)
    if tuple(out.shape[:3]) != (n, 2 * h, 2 * w):
        raise ValueError(f"Expected out of shape {(n, 2 * h, 2 * w, c_out)}; got {tuple(out.shape)}.")
    upcast = upcast_for_interpreter(storage)
    m = n * h * w
    grid = lambda META: (triton.cdiv(m, META["BLOCK_M"]) * triton.cdiv(4 * c_out, META["BLOCK_N"]),)  # noqa: E731
    launch(
        upconv2x2_kernel,
        grid,
        (
            x, weight, bias, out,
            m, h, w, c_in, c_out, size_class(m),
            x.stride(0), x.stride(1), x.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
        ),
        dict(
            INTERP_BF16=upcast,
            PRECISION=precision if storage == torch.float32 or upcast else "tf32",  # 16-bit: unused
        ),
        config,
        cache=True,
        choose=lambda: ranked_configs(m, c_in, c_out, storage, precision, x.device)[0],
    )
    return out
