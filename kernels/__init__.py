"""Triton kernels of fastunet, installed as ``fastunet.kernels``.

One op per file, each with its ``@triton.jit`` kernel beside the Python launcher that checks
shapes and picks the grid. Importing this package does not import triton; each op module
does, and :func:`load` imports them for the device their tensors live on.
"""

from __future__ import annotations

import importlib
import os
import sys

__all__ = ["load", "interpreting"]


def interpreting() -> bool:
    """Whether Triton runs kernels under its interpreter (``TRITON_INTERPRET``), as Triton reads it.

    Does not import triton: importing it defines the standard library's jit functions, and
    they must be defined after ``TRITON_INTERPRET`` is set (see :func:`load`)."""
    triton = sys.modules.get("triton")
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def load(device, *names: str) -> tuple:
    """Import the kernel modules ``names`` (e.g. ``"conv", "head"``) for tensors on ``device``.

    On a machine without CUDA, a CPU device switches the Triton interpreter on (about 1000x
    slower than a GPU, but the kernels can be checked end to end without one). Triton decides
    between compiling and interpreting when a kernel is defined, i.e. when its module is
    first imported, so this must happen before that import, and it holds for the whole
    process: on a machine with CUDA the kernels are compiled for the GPU, and running them
    on the CPU there needs a process started with ``TRITON_INTERPRET=1``.
    """
    import torch

    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"The Triton kernels run on 'cuda' (or 'cpu' under the interpreter); got {device}.")
    if device.type == "cpu" and not interpreting():
        if "triton" in sys.modules or torch.cuda.is_available():
            raise RuntimeError(
                "Triton was set up to compile for the GPU in this process, so the kernels cannot run on the "
                "CPU here: use a CUDA device, the torch backend, or a new process with TRITON_INTERPRET=1."
            )
        os.environ["TRITON_INTERPRET"] = "1"  # before the first kernel is defined
    elif device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("A CUDA device was asked for, but none is visible; use device 'cpu'.")
    return tuple(importlib.import_module(f"{__name__}.{name}") for name in names)
