"""Triton kernels of fastunet, installed as ``fastunet.kernels``.

One op per file, each with its ``@triton.jit`` kernel beside the Python launcher that checks
shapes and picks the grid. Importing this package does not import triton; each op module
does, and :func:`load` imports them for the device their tensors live on.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

__all__ = ["load", "interpreting", "available"]


def available() -> bool:
    """Whether the triton package is installed (an optional dependency: ``fastunet[gpu]``),
    found without importing it."""
    return importlib.util.find_spec("triton") is not None


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

    A CPU device needs the Triton interpreter (about 1000x slower than a GPU, but the kernels
    can be checked end to end without one), which Triton reads from ``TRITON_INTERPRET=1``
    when a kernel is defined, i.e. when its module is first imported: it is a setting of the
    whole process, so this library never makes it; the program does (the ``fastunet``
    command for ``--backend triton`` on a machine without CUDA, the test suite's conftest),
    and without it a CPU device is refused with the fix. On a machine with CUDA the kernels
    are compiled for the GPU.
    """
    import torch

    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"The Triton kernels run on 'cuda' (or 'cpu' under the interpreter); got {device}.")
    if device.type == "cpu" and not interpreting():
        from ..errors import UserError

        raise UserError(
            "The Triton kernels run on the CPU only under Triton's interpreter, a setting of the whole process: "
            "start it with TRITON_INTERPRET=1 (the fastunet command does so itself for --backend triton on a "
            'machine without CUDA), use a CUDA device, or backend="torch".'
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("A CUDA device was asked for, but none is visible; use device 'cpu'.")
    return tuple(importlib.import_module(f"{__name__}.{name}") for name in names)
