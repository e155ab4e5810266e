"""The pixel-weighted softmax cross-entropy of the U-Net, fused: loss and gradient in one pass.

Ronneberger et al. (2015), eq. (1): ``E = sum_x w(x) log p_{l(x)}(x)`` with ``p`` the
softmax over classes; the loss is ``-E`` (``reduction="sum"``) or ``-E`` divided by the
number of pixels whose label is not ``ignore_index`` (``reduction="mean"``), the same as
:func:`fastunet.train.loss.weighted_cross_entropy_reference`.

Design (Liger-Kernel style: kernels, host functions, one ``torch.autograd.Function``):

* **One read of the logits, the final gradient written once.** Each program takes
  ``BLOCK_P`` pixels of one image and all ``C`` classes (``BLOCK_C = next_pow2(C)``),
  computes the log-softmax in fp32 whatever the logits dtype (max-subtracted), the weighted
  loss ``w * (-log p_l)`` and, in the same pass, the gradient
  ``(w * scale) * (softmax - onehot(l))``, rounded once to the logits' dtype into a buffer
  allocated by the forward. ``scale`` is 1 for ``sum`` and ``1 / count`` for ``mean``, so
  the stored gradient is the final one for an upstream gradient of 1 (what
  ``loss.backward()`` passes). The logits are not kept for the backward.
* **The count of ``mean`` is known before the gradient is stored.** Where ``ignore_index``
  cannot occur in the target's dtype (a uint8 target with ``ignore_index`` outside
  [0, 255], e.g. PyTorch's default -100), the count is the number of pixels, known on the
  host. Otherwise a small kernel first reads the target alone and writes per-program
  counts, a one-program kernel sums them (in a fixed order) into ``1 / max(count, 1)`` on
  the device, and the main kernel loads that through a pointer. No host sync either way.
* **The upstream gradient without a pass in the common case.** The backward launches a
  scaling kernel that loads ``grad_output`` from device memory; every program returns at
  once when it is exactly 1, else it scales the forward's buffer in place (a read and a
  write of the gradient, and a second rounding of a 16-bit gradient). No ``.item()``, no
  host sync: forward and backward can be captured in a CUDA graph once autotuning has run.
* **Deterministic reduction.** Each program writes its partial loss sum; a one-program
  kernel sums them in a fixed order and writes ``sum * scale``. No float atomics: the same
  inputs give the same bits.
* **Labels outside [0, C)** that are not ``ignore_index`` make their pixel's loss and
  gradient NaN, hence the loss NaN (PyTorch raises instead, but raising needs a host
  sync). ``check_labels=True`` checks on the host first and raises a ``ValueError`` (one
  sync; for debugging).

Memory traffic per pixel, with ``s`` the logits' element size, ``t`` the target's (1 for
uint8, 4 for int32, 8 for int64) and the 4-byte weight map (the per-program partials, 4
bytes a block of pixels, are negligible):

==============================================================  ============================
path                                                            bytes per pixel
==============================================================  ============================
minimum: logits read, gradient written, target and weight read  ``2 C s + t + 4``
``sum``, or ``mean`` where ``ignore_index`` cannot occur        the minimum: one pass
``mean`` where it can (int64 target with -100, uint8 with 255)  the minimum ``+ t`` (count)
an upstream gradient other than 1 (``(2 * loss).backward()``)   ``+ 2 C s`` (in-place scale)
loss only (the logits require no gradient)                      ``C s + t + 4`` (``+ t``)
==============================================================  ============================

For bf16 logits of 2 classes, a uint8 target and the default ``ignore_index=-100``
(fastunet's trainer) that is 13 bytes a pixel, in one pass; an int64 target with -100
reads 20 bytes a pixel plus 8 for the count.

Logits may have any strides (NCHW, channels-last, slices); where each tensor's pixels can
be indexed by one stride the kernels do so (``FLAT``), which keeps loads vectorized.
"""

from __future__ import annotations

import operator

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from . import perfmodel
from ._utils import INTERPRET, launch, size_class, to_storage, tuning_configs, upcast_for_interpreter

__all__ = [
    "weighted_softmax_ce",
    "softmax_ce_forward",
    "softmax_ce_backward",
    "ignore_index_can_occur",
    "WeightedSoftmaxCE",
    "get_autotune_config",
    "default_config",
    "predict_fraction",
    "MAX_CLASSES",
]

MAX_CLASSES = 256
_MAX_TILE = 8192  # BLOCK_P * BLOCK_C elements a program holds at most (registers)
_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TARGET_DTYPES = (torch.int64, torch.int32, torch.uint8)
# The two streaming kernels beside the main one (fixed blocks, no autotuning: the scaling
# kernel works in place, so autotuning would have to restore its buffer). Count: 2048
# labels a program (2 KiB of uint8, 16 KiB of int64); scale: 4096 gradient elements.
_COUNT_BLOCK, _COUNT_WARPS = 2048, 4
_SCALE_BLOCK, _SCALE_WARPS = 4096, 4
_REDUCE_BLOCK = 1024  # partials summed per step by the one-program kernels


def get_autotune_config() -> list[triton.Config]:
    """Pixels per program and warps tried on the GPU (the op is bandwidth-bound); configs
    holding more than ``_MAX_TILE`` logits are pruned for many classes. Without autotuning
    the launch takes :func:`default_config` (large blocks, by the model)."""
    return [
        triton.Config(dict(BLOCK_P=p), num_warps=w, num_stages=1)
        for p, w in [(4096, 8), (2048, 8), (1024, 8), (1024, 4), (512, 4), (256, 4), (128, 4), (32, 4)]
    ]


def predict_fraction(config: triton.Config, n: int, pixels: int, classes: int, logit_bytes: int = 2,
                     target_bytes: int = 1, weight_bytes: int = 4, scenario: str = "low") -> float:
    """The model's fraction of the copy bandwidth for the forward kernel (loss and gradient
    in one pass) with ``config`` (:func:`fastunet.kernels.perfmodel.streaming_fraction`):
    the loads a program has in flight, the programs an SM holds (threads, and registers at
    about 6 a logit plus 32), the backward's scaling kernel and the finishing kernel as two
    more launch gaps. A prediction, not a measurement."""
    block_p, warps = config.kwargs["BLOCK_P"], config.num_warps
    block_c = max(2, triton.next_power_of_2(classes))
    threads = 32 * warps
    registers = min(255, 32 + 6 * block_p * block_c // threads)
    resident = min(2048 // threads, 65536 // (registers * threads), 32)
    per_pixel_read = classes * logit_bytes + target_bytes + weight_bytes
    total = n * pixels * (per_pixel_read + classes * logit_bytes)
    programs = n * triton.cdiv(pixels, block_p)
    return perfmodel.streaming_fraction(perfmodel.device(scenario), total, block_p * per_pixel_read, programs,
                                        resident, kernels=3)


def default_config(n: int, pixels: int, classes: int, logit_bytes: int = 2, target_bytes: int = 1,
                   weight_bytes: int = 4) -> triton.Config:
    """The config launched without autotuning: of those whose tile fits the registers, the
    one the model predicts fastest (the first of the list on ties: the largest block)."""
    fits = [c for c in get_autotune_config() if c.kwargs["BLOCK_P"] * max(2, triton.next_power_of_2(classes)) <= _MAX_TILE]
    fits = fits or [min(get_autotune_config(), key=lambda c: c.kwargs["BLOCK_P"])]
    return max(fits, key=lambda c: predict_fraction(c, n, pixels, classes, logit_bytes, target_bytes, weight_bytes))


_INTERPRETER_CONFIG = triton.Config(dict(BLOCK_P=32), num_warps=4, num_stages=1)
_CONFIGS = tuning_configs(get_autotune_config(), _INTERPRETER_CONFIG)


def _prune(configs: list[triton.Config], named_args: dict, **meta) -> list[triton.Config]:
    kept = [c for c in configs if c.kwargs["BLOCK_P"] * meta["BLOCK_C"] <= _MAX_TILE]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_P"])]


@triton.jit
def _pixel_offset(p, W, stride_h, stride_w, FLAT: tl.constexpr):
    """Offset of flat pixel index ``p = h * W + w`` within one image."""
    if FLAT:  # the pixels of this tensor are one strided axis
        return p * stride_w
    return (p // W) * stride_h + (p % W) * stride_w


@triton.jit
def softmax_ce_count_kernel(
    target_ptr, partial_count_ptr,
    P, W, ignore_index,
    stride_tn, stride_th, stride_tw,
    FLAT: tl.constexpr, BLOCK: tl.constexpr,
):
    """The number of pixels of this program's block whose label is not ``ignore_index``
    (reads the target only)."""
    pid = tl.program_id(0)
    tiles = tl.cdiv(P, BLOCK)
    n = (pid // tiles).to(tl.int64)
    offs_p = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)
    mask_p = offs_p < P
    label = tl.load(target_ptr + n * stride_tn + _pixel_offset(offs_p, W, stride_th, stride_tw, FLAT),
                    mask=mask_p, other=0)
    active = mask_p & (label != ignore_index)
    tl.store(partial_count_ptr + pid, tl.sum(active.to(tl.int32), axis=0))


@triton.jit
def softmax_ce_inv_count_kernel(partial_count_ptr, scale_ptr, num_partials, BLOCK: tl.constexpr):
    """One program: scale = 1 / max(sum of the partial counts, 1), summed in a fixed order."""
    offs = tl.arange(0, BLOCK)
    cnt = tl.zeros((BLOCK,), dtype=tl.int64)
    for start in range(0, num_partials, BLOCK):
        mask = start + offs < num_partials
        cnt += tl.load(partial_count_ptr + start + offs, mask=mask, other=0).to(tl.int64)
    denom = tl.maximum(tl.sum(cnt, axis=0), 1).to(tl.float32)
    tl.store(scale_ptr, 1.0 / denom)


@triton.autotune(
    configs=_CONFIGS,
    key=["C", "SIZE_CLASS", "HAS_WEIGHT", "WRITE_GRAD", "FLAT"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit(do_not_specialize=["SIZE_CLASS"])
def softmax_ce_fwd_kernel(
    # pointers
    logits_ptr, target_ptr, weight_ptr, grad_ptr, scale_ptr, partial_loss_ptr,
    # sizes and scalars
    P, W, C, SIZE_CLASS, ignore_index, scale_value,
    # strides
    stride_ln, stride_lc, stride_lh, stride_lw,
    stride_tn, stride_th, stride_tw,
    stride_wn, stride_wh, stride_ww,
    stride_gn, stride_gc, stride_gh, stride_gw,
    # meta-parameters
    HAS_WEIGHT: tl.constexpr, HAS_IGNORE: tl.constexpr, SCALE_IN_MEMORY: tl.constexpr,
    WRITE_GRAD: tl.constexpr, FLAT: tl.constexpr, INTERP_BF16: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """Per pixel x with label l and weight w, p = softmax(s(x)) over the C classes:
    loss(x) = w * (-log p_l) = w * ((m - s_l) + log sum_c exp(s_c - m)),  m = max_c s_c,
    grad(x) = (w * scale) * (p - onehot(l)); both 0 where l == ignore_index (only compared
    with ``HAS_IGNORE``), NaN where l is not in [0, C). ``scale`` is loaded from
    ``scale_ptr`` (``SCALE_IN_MEMORY``, counted on the device) or is ``scale_value``.
    Writes the gradient and sum_x loss(x) of this program's tile (unscaled)."""
    pid = tl.program_id(0)
    tiles = tl.cdiv(P, BLOCK_P)
    n = (pid // tiles).to(tl.int64)  # 64-bit: batch offsets can pass 2**31
    offs_p = (pid % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < P
    offs_c = tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    mask_pc = mask_p[:, None] & mask_c[None, :]

    l_pix = n * stride_ln + _pixel_offset(offs_p, W, stride_lh, stride_lw, FLAT)
    s = tl.load(logits_ptr + l_pix[:, None] + offs_c[None, :] * stride_lc, mask=mask_pc, other=0.0)
    s = tl.where(mask_c[None, :], s.to(tl.float32), float("-inf"))
    t_pix = n * stride_tn + _pixel_offset(offs_p, W, stride_th, stride_tw, FLAT)
    label = tl.load(target_ptr + t_pix, mask=mask_p, other=0)
    if HAS_WEIGHT:
        w_pix = n * stride_wn + _pixel_offset(offs_p, W, stride_wh, stride_ww, FLAT)
        w = tl.load(weight_ptr + w_pix, mask=mask_p, other=0.0)
    else:
        w = tl.full((BLOCK_P,), 1.0, tl.float32)

    if HAS_IGNORE:
        active = mask_p & (label != ignore_index)
    else:  # ignore_index is outside the target dtype's range
        active = mask_p
    in_range = (label >= 0) & (label < C)
    valid = active & in_range
    bad = active & ~in_range

    m = tl.max(s, axis=1)
    e = tl.exp(s - m[:, None])
    total = tl.sum(e, axis=1)
    onehot = offs_c[None, :] == label[:, None]
    s_label = tl.sum(tl.where(onehot, s, 0.0), axis=1)
    nll = (m - s_label) + tl.log(total)  # -log p_l, without cancellation when s_l is the max
    loss = tl.where(valid, w * nll, 0.0)
    loss = tl.where(bad, float("nan"), loss)
    tl.store(partial_loss_ptr + pid, tl.sum(loss, axis=0))

    if WRITE_GRAD:
        if SCALE_IN_MEMORY:
            scale = tl.load(scale_ptr)
        else:
            scale = scale_value
        g = w * scale  # the upstream gradient of each pixel's -log p_l
        prob = e / total[:, None]
        grad = g[:, None] * (prob - onehot.to(tl.float32))
        grad = tl.where(valid[:, None], grad, 0.0)
        grad = tl.where(bad[:, None], float("nan"), grad)
        g_pix = n * stride_gn + _pixel_offset(offs_p, W, stride_gh, stride_gw, FLAT)
        g_ptrs = grad_ptr + g_pix[:, None] + offs_c[None, :] * stride_gc
        tl.store(g_ptrs, to_storage(grad, grad_ptr.dtype.element_ty, INTERP_BF16), mask=mask_pc)


@triton.jit
def softmax_ce_finish_kernel(
    partial_loss_ptr, scale_ptr, loss_ptr,
    num_partials, scale_value,
    SCALE_IN_MEMORY: tl.constexpr, BLOCK: tl.constexpr,
):
    """One program: loss = sum(partials) * scale, summed in a fixed order (deterministic)."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, num_partials, BLOCK):
        mask = start + offs < num_partials
        acc += tl.load(partial_loss_ptr + start + offs, mask=mask, other=0.0)
    if SCALE_IN_MEMORY:
        scale = tl.load(scale_ptr)
    else:
        scale = scale_value
    tl.store(loss_ptr, tl.sum(acc, axis=0) * scale)


@triton.jit
def softmax_ce_scale_kernel(grad_ptr, grad_output_ptr, numel, INTERP_BF16: tl.constexpr, BLOCK: tl.constexpr):
    """grad *= grad_output in place, over the buffer's storage as one flat axis; every
    program returns without touching the gradient when grad_output == 1."""
    g = tl.load(grad_output_ptr).to(tl.float32)
    if g != 1.0:  # a branch on a loaded scalar: no host sync, the same launch either way
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < numel
        x = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(grad_ptr + offs, to_storage(x * g, grad_ptr.dtype.element_ty, INTERP_BF16), mask=mask)


# -- host functions ---------------------------------------------------------------------------
def _empty_like(t: torch.Tensor) -> torch.Tensor:
    """The gradient buffer (dense layouts such as channels-last are kept, other layouts
    become contiguous: the buffer is always dense). The tests replace this allocator to
    poison what the kernel must overwrite."""
    return torch.empty_like(t)


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Per-program partials and the result scalars (replaced by the tests, see above)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _flat_pixels(t: torch.Tensor) -> bool:
    """Whether the two trailing (pixel) axes of ``t`` are one strided axis."""
    return t.shape[-2] == 1 or t.stride(-2) == t.shape[-1] * t.stride(-1)


def _extent(t: torch.Tensor) -> int:
    """Largest element offset within one batch entry (kernel offsets there are 32-bit)."""
    return sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:]))


def _flat_view(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor (no gaps, no overlaps, axes in any memory order) as one flat axis in
    memory order, a view of the same storage."""
    expected = 1
    for d in sorted(range(t.ndim), key=t.stride):
        if t.shape[d] != 1 and t.stride(d) != expected:
            raise RuntimeError(f"Internal error: the gradient buffer is not dense (strides {t.stride()}).")
        expected *= t.shape[d]
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def ignore_index_can_occur(ignore_index: int, dtype: torch.dtype) -> bool:
    """Whether a target of integer ``dtype`` can hold ``ignore_index`` (if not, ``mean``
    divides by the number of pixels, known without reading the target)."""
    info = torch.iinfo(dtype)
    return info.min <= ignore_index <= info.max


def _check(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str) -> None:
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("Expected logits and target as torch tensors.")
    if logits.ndim not in (3, 4):
        raise ValueError(f"Expected logits (N, C, H, W) or (N, C, L); got shape {tuple(logits.shape)}.")
    if logits.dtype not in _LOGIT_DTYPES:
        raise ValueError(f"Expected logits in float32, bfloat16 or float16; got {logits.dtype}.")
    c = logits.shape[1]
    if not 1 <= c <= MAX_CLASSES:
        raise ValueError(f"Expected between 1 and {MAX_CLASSES} classes (axis 1 of logits); got {c}.")
    expected = (logits.shape[0], *logits.shape[2:])
    names = "(N, H, W)" if logits.ndim == 4 else "(N, L)"
    if tuple(target.shape) != expected:
        raise ValueError(
            f"Expected target {names} of shape {expected} for logits {tuple(logits.shape)}; got {tuple(target.shape)}."
        )
    if target.dtype not in _TARGET_DTYPES:
        raise ValueError(f"Expected an int64, int32 or uint8 target; got {target.dtype}. Convert it with .long().")
    if weight is not None:
        if tuple(weight.shape) != expected:
            raise ValueError(f"Expected weight {names} of shape {expected}; got {tuple(weight.shape)}.")
        if weight.dtype != torch.float32:
            raise ValueError(f"Expected a float32 weight; got {weight.dtype}. Convert it with .float().")
    for name, t in (("target", target), ("weight", weight)):
        if t is not None and t.device != logits.device:
            raise ValueError(f"Expected {name} on {logits.device} like the logits; got {t.device}.")
    if not logits.is_cuda and not INTERPRET:
        raise ValueError("The Triton loss needs CUDA tensors (or TRITON_INTERPRET=1); use backend='torch' on the CPU.")
    if reduction not in ("mean", "sum"):
        raise ValueError(
            f"Expected reduction 'mean' or 'sum'; got {reduction!r} (use the PyTorch reference for 'none')."
        )
    for name, t in (("logits", logits), ("target", target), ("weight", weight)):
        if t is not None and _extent(t) >= 2**31:
            raise ValueError(f"Expected each batch entry of {name} to span fewer than 2**31 elements; split the batch.")


def _check_labels(target: torch.Tensor, classes: int, ignore_index: int) -> None:
    """Host check of the labels (one device sync)."""
    t = target.long()
    bad = (t != ignore_index) & ((t < 0) | (t >= classes))
    if bool(bad.any()):
        raise ValueError(
            f"Expected labels in [0, {classes}) or ignore_index={ignore_index}; got values "
            f"{torch.unique(t[bad])[:8].tolist()}."
        )


def _inverse_count(tg: torch.Tensor, ignore_index: int, scale: torch.Tensor) -> None:
    """Write 1 / max(count of non-ignored pixels, 1) of the (N, H, W) target into ``scale``,
    on the device: per-program counts, then their sum in a fixed order."""
    n, h, w = tg.shape
    pixels = h * w
    grid = n * triton.cdiv(pixels, _COUNT_BLOCK)
    partial_count = _empty((grid,), torch.int32, tg.device)
    if grid > 0:
        softmax_ce_count_kernel[(grid,)](
            tg, partial_count, pixels, w, ignore_index, *tg.stride(),
            FLAT=_flat_pixels(tg), BLOCK=_COUNT_BLOCK, num_warps=_COUNT_WARPS,
        )
    softmax_ce_inv_count_kernel[(1,)](partial_count, scale, grid, BLOCK=_REDUCE_BLOCK)


def softmax_ce_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    compute_grad: bool = True,
    check_labels: bool = False,
    config: triton.Config | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the fused kernel (after the count kernel where ``mean`` needs it); returns
    ``(loss, grad)``.

    ``loss`` is the 0-d float32 reduced loss. ``grad`` is the gradient of ``loss`` w.r.t.
    the logits (``1 / count`` included for mean) in the logits' dtype and a dense layout
    (the logits' where they are dense), or None without ``compute_grad``. ``config`` forces
    one block configuration of the main kernel instead of autotuning.
    """
    _check(logits, target, weight, reduction)
    try:
        ignore_index = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"Expected an integer ignore_index; got {ignore_index!r}.") from None
    if check_labels:
        _check_labels(target, logits.shape[1], ignore_index)
    grad = _empty_like(logits) if compute_grad else None
    if logits.ndim == 3:  # (N, C, L) as (N, C, 1, L)
        lg, tg = logits.unsqueeze(2), target.unsqueeze(1)
        wt = weight.unsqueeze(1) if weight is not None else None
        gr = grad.unsqueeze(2) if grad is not None else None
    else:
        lg, tg, wt, gr = logits, target, weight, grad
    n, c, h, w = lg.shape
    pixels = h * w
    device = logits.device

    has_ignore = ignore_index_can_occur(ignore_index, target.dtype)
    # mean: 1/count on the device where ignored pixels can occur, else 1/numel from the host
    scale_in_memory = reduction == "mean" and has_ignore
    scale_value = 1.0 / max(n * pixels, 1) if reduction == "mean" else 1.0
    scale = _empty((), torch.float32, device)
    if scale_in_memory:
        _inverse_count(tg, ignore_index, scale)

    # Room for the partials of the smallest block (autotuning tries them all); only the
    # first ``num_partials``, those of the block that ran last, are summed.
    every = (*get_autotune_config(), _INTERPRETER_CONFIG, *([config] if config is not None else []))
    min_block = min(cfg.kwargs["BLOCK_P"] for cfg in every)
    partial_loss = _empty((n * triton.cdiv(pixels, min_block),), torch.float32, device)
    loss = _empty((), torch.float32, device)

    num_partials = 0
    if n * pixels > 0:
        tensors = [t for t in (lg, tg, wt, gr) if t is not None]
        w_strides = wt.stride() if wt is not None else (0, 0, 0)
        g_strides = gr.stride() if gr is not None else (0, 0, 0, 0)
        tiles = lambda block_p: triton.cdiv(pixels, block_p)  # noqa: E731
        grid = lambda META: (n * tiles(META["BLOCK_P"]),)  # noqa: E731
        used = launch(
            softmax_ce_fwd_kernel,
            grid,
            (
                lg, tg, wt if wt is not None else lg, gr if gr is not None else lg, scale, partial_loss,
                pixels, w, c, size_class(n * pixels), ignore_index if has_ignore else 0, scale_value,
                *lg.stride(),
                *tg.stride(),
                *w_strides,
                *g_strides,
            ),
            dict(
                HAS_WEIGHT=wt is not None, HAS_IGNORE=has_ignore, SCALE_IN_MEMORY=scale_in_memory,
                WRITE_GRAD=gr is not None,
                FLAT=all(_flat_pixels(t) for t in tensors),
                INTERP_BF16=upcast_for_interpreter(logits.dtype),
                BLOCK_C=max(2, triton.next_power_of_2(c)),
            ),
            config,
            choose=lambda: default_config(n, pixels, c, logits.element_size(), target.element_size(),
                                          4 if weight is not None else 0),
        )
        used = used or softmax_ce_fwd_kernel.best_config
        num_partials = n * tiles(used.kwargs["BLOCK_P"])
    softmax_ce_finish_kernel[(1,)](
        partial_loss, scale, loss, num_partials, scale_value, SCALE_IN_MEMORY=scale_in_memory, BLOCK=_REDUCE_BLOCK,
    )
    return loss, grad


def softmax_ce_backward(grad: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """The gradient of the logits: the forward's buffer times ``grad_output``.

    ``grad_output`` (a one-element tensor) is read on the device by the scaling kernel:
    nothing is read or written when it is 1, else ``grad`` is scaled in place. Returns
    ``grad``.
    """
    grad_output = grad_output.reshape(()).to(device=grad.device, dtype=torch.float32)
    flat = _flat_view(grad)
    if flat.numel() > 0:
        softmax_ce_scale_kernel[(triton.cdiv(flat.numel(), _SCALE_BLOCK),)](
            flat, grad_output, flat.numel(),
            INTERP_BF16=upcast_for_interpreter(grad.dtype), BLOCK=_SCALE_BLOCK, num_warps=_SCALE_WARPS,
        )
    return grad


class WeightedSoftmaxCE(torch.autograd.Function):
    """Autograd wrapper: the forward computes the loss and its gradient, the backward
    applies the upstream gradient."""

    @staticmethod
    def forward(ctx, logits, target, weight, ignore_index, reduction, check_labels, config, compute_grad):
        loss, grad = softmax_ce_forward(
            logits, target, weight, ignore_index=ignore_index, reduction=reduction,
            compute_grad=compute_grad, check_labels=check_labels, config=config,
        )
        if grad is not None:
            ctx.save_for_backward(grad)
        ctx.used = False
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        if ctx.used:
            raise RuntimeError(
                "The fused loss's gradient buffer was already handed out (and scaled in place by the "
                "upstream gradient) by a first backward: backward through it only once; compute the "
                "loss again to backpropagate again."
            )
        ctx.used = True
        (grad,) = ctx.saved_tensors
        return softmax_ce_backward(grad, grad_output), None, None, None, None, None, None, None


def weighted_softmax_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    check_labels: bool = False,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """Fused pixel-weighted softmax cross-entropy, differentiable w.r.t. the logits.

    Parameters
    ----------
    logits : Tensor (N, C, H, W) or (N, C, L)
        Class scores, float32, bfloat16 or float16, any strides; 1 <= C <= 256. The math
        is fp32; the gradient is stored in the logits' dtype.
    target : Tensor (N, H, W) or (N, L), int64, int32 or uint8
        Class per pixel; ``ignore_index`` pixels give neither loss nor gradient. Other
        labels outside [0, C) make the loss NaN (see ``check_labels``).
    weight : Tensor (N, H, W) or (N, L), float32, optional
        The weight map ``w(x)``; all ones when omitted. No gradient flows to it: one that
        requires grad is refused while grad mode is on.
    ignore_index : int
        With a uint8 target, a value outside [0, 255] (such as the default -100) saves
        the pass that counts the non-ignored pixels for ``mean``.
    reduction : {"mean", "sum"}
        ``mean`` divides by the number of non-ignored pixels (0 when there are none).
    check_labels : bool
        Check the labels on the host first and raise ``ValueError`` for one outside
        [0, C) (costs a device sync; for debugging).
    config : triton.Config, optional
        Force one block configuration instead of autotuning (the tests run every config).

    Returns
    -------
    Tensor
        The 0-d float32 loss. Call ``backward`` on it (or on what is computed from it) once.
    """
    if weight is not None and isinstance(weight, torch.Tensor) and weight.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "The fused loss gives no gradient w.r.t. the weight map, which requires grad: pass "
            "weight.detach(), or use the PyTorch reference (backend='torch', or 'auto', which "
            "falls back to it for such a weight)."
        )
    compute_grad = logits.requires_grad and torch.is_grad_enabled()  # else no gradient buffer
    return WeightedSoftmaxCE.apply(logits, target, weight, ignore_index, reduction, check_labels, config, compute_grad)
