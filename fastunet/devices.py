"""Which device the network runs on: one place that reads ``device=`` and checks it.

``None`` or ``"auto"`` means the first CUDA device when one is visible, else the CPU.
:func:`resolve_device` only parses (a cluster's workers may have GPUs this process does not
see); :func:`check_visible` checks that a CUDA device is there, where the network will run
in this process.
"""

from __future__ import annotations

import torch

from .errors import UserError

__all__ = ["resolve_device", "check_visible", "default_dtype"]


def resolve_device(device=None) -> torch.device:
    """``device`` (``None``, ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a torch.device)
    as a ``torch.device``; raises :class:`UserError` for an unknown or unsupported one."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"Unknown device {device!r}; use e.g. device=\"cpu\" or device=\"cuda:0\".") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"Unsupported device {device!r}; use device=\"cpu\" or device=\"cuda[:N]\".")
    return dev


def check_visible(device: torch.device) -> torch.device:
    """Raise :class:`UserError` unless ``device`` exists in this process (CUDA visible, the
    index within the device count); returns it."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"CUDA was asked for (device=\"{device}\") but no CUDA device is visible; use device=\"cpu\".")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"There is no {device}; this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device


def default_dtype(device: torch.device) -> str:
    """The dtype path used when none is asked for: bf16 on CUDA, fp32 on the CPU."""
    return "bf16" if device.type == "cuda" else "fp32"
