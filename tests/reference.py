"""Reference helpers for the kernel tests: plain PyTorch, the ground truth."""

from __future__ import annotations

import dataclasses

import torch

from fastunet.model import ReferenceUNet

STORAGE = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# (relative tolerance of a single op, relative tolerance of the whole network) per dtype path.
TOL = {"fp32": (1e-5, 1e-5), "tf32": (1e-3, 1e-3), "fp16": (1e-2, 1e-2), "bf16": (1e-2, 1e-2)}

# The paper's network (23 layers, K up to 9 * 1024) on the GPU, against the storage-rounded
# reference: a value that lands near a rounding boundary of the 16-bit storage flips by one
# ulp with another summation order, and 23 layers compound it. A CPU emulation of the bf16
# path at tile 380 (same bf16 storage rounding, fp32 vs fp64 accumulation, 4 seeds) gave
# 0.7-1.3e-2, and TF32 operands against true fp32 gave 1.0e-3: the bounds are ~3x those;
# fp16 has 3 more mantissa bits than bf16 (8x less).
TOL_PAPER = {"fp32": 1e-4, "tf32": 3e-3, "fp16": 1e-2, "bf16": 3e-2}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Norm-wise relative error; NaN (an unwritten poisoned element) makes it NaN."""
    return ((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-30)).item()


def nhwc(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous().to(dtype)


def nchw(x: torch.Tensor) -> torch.Tensor:
    return x.float().permute(0, 3, 1, 2)


def poisoned(shape, dtype, device="cpu") -> torch.Tensor:
    if dtype == torch.uint8:
        return torch.full(shape, 255, dtype=dtype, device=device)
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def plan_tensors(net) -> list[torch.Tensor]:
    """Every buffer a fused network (2D or 3D) has planned, in its plans' field order."""
    tensors = []
    for plan in net._plans.values():
        for f in dataclasses.fields(plan):
            value = getattr(plan, f.name)
            tensors += [t for t in (value if isinstance(value, list) else [value]) if isinstance(t, torch.Tensor)]
    return tensors


def poison_plans(net) -> None:
    """Fill every planned buffer with NaN (labels with 255) so an unwritten element shows."""
    for t in plan_tensors(net):
        t.fill_(255 if t.dtype == torch.uint8 else float("nan"))


@torch.no_grad()
def reference_forward(model: ReferenceUNet, x: torch.Tensor, dtype: str) -> torch.Tensor:
    """ReferenceUNet in fp32 with the storage rounding of a dtype path.

    Weights, the input and every conv output are rounded to the path's storage dtype (the
    fused network stores activations in it; rounding commutes with ReLU and max-pool), so
    what remains between this and the fused network is accumulation order alone.
    """
    storage = STORAGE[dtype]
    if storage == torch.float32:
        return model(x)
    rounded = ReferenceUNet(model.config).eval().to(x.device)
    rounded.load_state_dict({k: v.to(storage).float() if k.endswith("weight") else v for k, v in model.state_dict().items()})
    hooks = [
        layer.register_forward_hook(lambda m, i, o: o.to(storage).float())
        for layer in rounded.conv_layers()
        if layer is not rounded.head
    ]
    try:
        return rounded(x.to(storage).float())
    finally:
        for h in hooks:
            h.remove()
