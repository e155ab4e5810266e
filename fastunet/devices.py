"""Which device the network runs on, and in which dtype: one place that reads ``device=`` and
``dtype=`` and checks them.

``device``: ``None`` or ``"auto"`` means the first CUDA device when one is visible, else the
CPU. :func:`resolve_device` only parses (a cluster's workers may have GPUs this process does
not see); :func:`check_visible` checks that a CUDA device is there, where the network will
run in this process.

``dtype``: ``None`` or ``"auto"`` (:func:`resolve_dtype`) means bf16 on CUDA, and on the CPU
bf16 where the CPU runs bf16 matrix work natively (AMX-BF16 or AVX512-BF16, as torch reports
the CPU's features: :func:`cpu_bf16_units`) and PyTorch has oneDNN, fp32 elsewhere (an
emulated bf16 is slower than fp32). :func:`describe_dtype` says which and why, for ``-v``
and the output's metadata.
"""

from __future__ import annotations

import functools

import torch

from .errors import UserError

__all__ = ["resolve_device", "check_visible", "default_dtype", "resolve_dtype", "describe_dtype",
           "cpu_bf16_units", "DTYPES", "FLOAT_DTYPES", "DTYPE_CHOICES"]

FLOAT_DTYPES = ("fp32", "tf32", "bf16", "fp16")  # what the network runs in on every backend
DTYPES = (*FLOAT_DTYPES, "int8")  # ... and int8: quantized, on the OpenVINO backend
DTYPE_CHOICES = ("auto", *DTYPES)  # what dtype= accepts


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


def _cpu_capabilities() -> dict:
    """The CPU's features as torch reports them (``torch.cpu.get_capabilities()``, through
    cpuinfo); where this torch has no such function, the flags of Linux's ``/proc/cpuinfo``
    (as booleans under the same names); elsewhere nothing (so: fp32)."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        return dict(get())
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return {}
    return dict.fromkeys(flags, True)


@functools.lru_cache(maxsize=1)
def cpu_bf16_units() -> str | None:
    """The unit this CPU runs bf16 matrix products on natively, as torch reports the CPU's
    features: ``"AMX-BF16"``, ``"AVX512-BF16"``, or None (none, or PyTorch built without
    oneDNN, which runs them).

    Returns
    -------
    str or None
    """
    if not torch.backends.mkldnn.is_available():
        return None
    caps = _cpu_capabilities()
    if caps.get("amx_bf16"):
        return "AMX-BF16"
    if caps.get("avx512_bf16"):
        return "AVX512-BF16"
    return None


def default_dtype(device: torch.device) -> str:
    """The dtype used when none is asked for (``dtype="auto"``): bf16 on CUDA; on the CPU bf16
    where it has bf16 matrix units (:func:`cpu_bf16_units`), fp32 elsewhere."""
    if torch.device(device).type == "cuda":
        return "bf16"
    return "bf16" if cpu_bf16_units() else "fp32"


def resolve_dtype(dtype, device) -> str:
    """``dtype`` (``None``, ``"auto"``, ``"bf16"``, ``"fp16"``, ``"tf32"``, ``"fp32"``, ``"int8"``) as the
    dtype the network runs in on ``device``; raises :class:`UserError` for another value.

    Parameters
    ----------
    dtype : str or None
    device : torch.device or str

    Returns
    -------
    str
        One of :data:`DTYPES`.
    """
    if dtype is None or dtype == "auto":
        return default_dtype(torch.device(device))
    if dtype not in DTYPES:
        raise UserError(f"dtype= must be one of {', '.join(DTYPE_CHOICES)}; got {dtype!r}.")
    return dtype


def describe_dtype(asked, dtype: str, device) -> str:
    """Why the network runs in ``dtype``: ``"bf16 (auto: the CPU has AVX512-BF16 units)"``,
    ``"fp32 (auto: the CPU has no bf16 matrix units)"``, ``"bf16 (auto: CUDA)"`` or ``"fp32
    (asked for)"``, for ``-v`` and the output's metadata (``asked`` is what ``dtype=`` was)."""
    if asked not in (None, "auto"):
        return f"{dtype} (asked for)"
    if torch.device(device).type == "cuda":
        return f"{dtype} (auto: CUDA)"
    units = cpu_bf16_units()
    return f"{dtype} (auto: the CPU has {units} units)" if units else f"{dtype} (auto: the CPU has no bf16 matrix units)"
