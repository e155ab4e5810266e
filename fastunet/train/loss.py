"""The paper's pixel-weighted softmax cross-entropy.

The energy of Ronneberger et al. (2015), eq. (1), is ``E = sum_x w(x) log p_{l(x)}(x)``;
as a loss we minimise its negative. ``reduction="mean"`` divides by the number of pixels
that are not ignored (not by the sum of the weights, so the border weights keep their
strength relative to the class-balance weights).

:func:`weighted_cross_entropy` picks the fused Triton kernel (``fastunet.kernels.loss``) for
CUDA tensors and the plain PyTorch expression :func:`weighted_cross_entropy_reference`
elsewhere; both give the same value and gradient w.r.t. the logits. The kernel gives no
gradient w.r.t. the weight map: for a weight map that requires grad, ``backend="auto"``
uses the PyTorch expression instead and ``backend="triton"`` raises. A label outside
[0, C) that is not ``ignore_index`` makes the kernel's loss NaN where PyTorch raises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import kernels

__all__ = ["weighted_cross_entropy", "weighted_cross_entropy_reference"]

_REDUCTIONS = ("mean", "sum", "none")


def _check(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str) -> None:
    if logits.ndim < 2:
        raise ValueError(f"Expected logits (N, C, ...); got shape {tuple(logits.shape)}.")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"Expected target of shape {expected} for logits {tuple(logits.shape)}; got {tuple(target.shape)}.")
    if weight is not None and tuple(weight.shape) != expected:
        raise ValueError(f"Expected weight of shape {expected}; got {tuple(weight.shape)}.")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}.")


def weighted_cross_entropy_reference(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Plain PyTorch: ``F.cross_entropy(reduction='none') * weight``, reduced, math in fp32.

    Any integer target dtype; labels are compared with ``ignore_index`` as int64, so a uint8
    target never matches -100 (comparing the uint8 tensor itself would wrap -100 to 156).
    """
    _check(logits, target, weight, reduction)
    target = target.long()
    nll = F.cross_entropy(logits.float(), target, reduction="none", ignore_index=ignore_index)
    if weight is not None:
        nll = nll * weight.float()
    if reduction == "none":
        return nll
    total = nll.sum()
    if reduction == "sum":
        return total
    count = (target != ignore_index).sum().clamp_min(1)
    return total / count


def _use_triton(backend: str, *, on_cuda: bool, reduction: str, weight_needs_grad: bool) -> bool:
    """Whether :func:`weighted_cross_entropy` runs the fused kernel.

    ``auto``: on CUDA with triton installed, unless the reduction is ``none`` (the kernel
    reduces) or a gradient w.r.t. the weight map is needed (the kernel gives none).
    ``triton``: always except for ``none``; the kernel then refuses a weight map that needs a
    gradient.
    """
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch'; got {backend!r}.")
    if reduction == "none" or backend == "torch":
        return False
    return backend == "triton" or (on_cuda and not weight_needs_grad and kernels.available())


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Pixel-weighted softmax cross-entropy of the U-Net paper.

    Parameters
    ----------
    logits : Tensor (N, C, H, W)
        Class scores (fp32, bf16 or fp16; the math is fp32); ``(N, C, D, H, W)`` for a 3D
        network (the kernel then reads it as ``(N, C, D * H, W)``).
    target : Tensor (N, H, W), int64, int32 or uint8
        Class per pixel; ``ignore_index`` pixels contribute neither loss nor gradient. The
        trainer feeds uint8 (:func:`fastunet.train.augment.augment_batch`): with the default
        ``ignore_index=-100``, which uint8 cannot hold, the kernel's ``mean`` needs no pass
        that counts the ignored pixels.
    weight : Tensor (N, H, W), optional
        The weight map ``w(x)``; all ones when omitted.
    reduction : {"mean", "sum", "none"}
        ``mean`` divides by the number of non-ignored pixels.
    backend : {"auto", "triton", "torch"}
        ``auto`` uses the fused Triton kernel for CUDA tensors, PyTorch otherwise (and
        where the weight map requires grad, which the kernel does not give).
    """
    _check(logits, target, weight, reduction)
    weight_needs_grad = weight is not None and weight.requires_grad and torch.is_grad_enabled()
    if _use_triton(backend, on_cuda=logits.is_cuda, reduction=reduction, weight_needs_grad=weight_needs_grad):
        from ..kernels import load

        (kernel,) = load(logits.device, "loss")
        if logits.ndim == 5:  # a 3D network's (N, C, D, H, W) as the kernel's (N, C, D * H, W), unchanged
            logits, target = logits.flatten(2, 3), target.flatten(1, 2)
            weight = None if weight is None else weight.flatten(1, 2)
        return kernel.weighted_softmax_ce(logits, target, weight, ignore_index=ignore_index, reduction=reduction)
    return weighted_cross_entropy_reference(logits, target, weight, ignore_index, reduction)
