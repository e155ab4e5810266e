"""Reference helpers for the kernel tests: plain PyTorch, the ground truth."""

from __future__ import annotations

import torch
from torch import nn

from fastunet.model import ReferenceUNet

STORAGE = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# (relative tolerance of a single op, relative tolerance of the whole network) per dtype path.
TOL = {"fp32": (1e-5, 1e-5), "tf32": (1e-3, 1e-3), "fp16": (1e-2, 1e-2), "bf16": (1e-2, 1e-2)}


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
    rounded = ReferenceUNet(model.config).eval()
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
