"""Which device the network runs on, and in which dtype: one place that reads ``device=`` and
``dtype=`` and checks them.

``device``: ``None`` or ``"auto"`` means the first CUDA device when one is visible, else the
CPU. :func:`resolve_device` only parses (a cluster's workers may have GPUs this process does
not see) and gives a :class:`Device`, a string that torch takes wherever it takes a device;
:func:`check_visible` checks that a CUDA device is there, where the network will run in this
process. Neither imports PyTorch where CUDA cannot be there (:func:`cuda_impossible`), so that
a run on OpenVINO's CPU runtime never loads it.

``dtype``: ``None`` or ``"auto"`` (:func:`resolve_dtype`) means bf16 on CUDA, and on the CPU
bf16 where the CPU runs bf16 matrix work natively (AMX-BF16 or AVX512-BF16, from the CPU's
features: :func:`cpu_bf16_units`) and the backend has the kernels for them (OpenVINO's CPU
plugin always; PyTorch when built with oneDNN), fp32 elsewhere (an emulated bf16 is slower
than fp32). :func:`describe_dtype` says which and why, for ``-v`` and the output's metadata.
"""

from __future__ import annotations

import functools
import os
import sys

from .errors import UserError

__all__ = ["Device", "cpu_threads", "cuda_available", "cuda_impossible", "resolve_device", "check_visible",
           "default_dtype", "resolve_dtype", "describe_dtype", "cpu_bf16_units", "DTYPES", "FLOAT_DTYPES",
           "DTYPE_CHOICES"]

FLOAT_DTYPES = ("fp32", "tf32", "bf16", "fp16")  # what the network runs in on every backend
DTYPES = (*FLOAT_DTYPES, "int8")  # ... and int8: quantized, on the OpenVINO backend
DTYPE_CHOICES = ("auto", *DTYPES)  # what dtype= accepts


class Device(str):
    """A device as its name, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (what ``str(torch.device)``
    gives): a ``str``, so that torch takes it wherever it takes a device, with the
    :attr:`type` and :attr:`index` of a ``torch.device``; made by :func:`resolve_device`."""

    __slots__ = ()

    @property
    def type(self) -> str:
        return self.partition(":")[0]

    @property
    def index(self) -> int | None:
        _, _, index = self.partition(":")
        return int(index) if index else None


def cuda_impossible() -> bool:
    """True where no CUDA device can be visible, known without importing PyTorch: on Linux, no
    NVIDIA device node (``/dev/nvidiactl``, ``/dev/nvidia0``) and no WSL GPU (``/dev/dxg``), or
    ``CUDA_VISIBLE_DEVICES`` set to nothing or ``-1``. False elsewhere, and wherever PyTorch
    is already imported (then it is asked)."""
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return True
    return not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg"))


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA device, asked only where one can be there (:func:`cuda_impossible`)."""
    if cuda_impossible():
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(device=None) -> Device:
    """``device`` (``None``, ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a torch.device)
    as a :class:`Device`; raises :class:`UserError` for an unknown or unsupported one."""
    if device is None or device == "auto":
        return Device("cuda" if cuda_available() else "cpu")
    name = str(device).strip()
    kind, colon, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (colon and not index.isdigit()):
        if _torch_knows(name):
            raise UserError(f"Unsupported device {device!r}; use device=\"cpu\" or device=\"cuda[:N]\".")
        raise UserError(f"Unknown device {device!r}; use e.g. device=\"cpu\" or device=\"cuda:0\".")
    return Device(f"cuda:{int(index)}" if colon and kind == "cuda" else kind)


def _torch_knows(name: str) -> bool:
    """Whether torch parses ``name`` as a device (``"mps"``, ``"xpu:0"``: known, unsupported here)."""
    import torch

    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        return False
    return True


def check_visible(device) -> Device:
    """Raise :class:`UserError` unless ``device`` exists in this process (CUDA visible, the
    index within the device count); returns it as a :class:`Device`."""
    device = resolve_device(device)
    if device.type == "cuda":
        if not cuda_available():
            raise UserError(f"CUDA was asked for (device=\"{device}\") but no CUDA device is visible; use device=\"cpu\".")
        import torch

        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"There is no {device}; this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device


def cpu_threads() -> int:
    """The threads a network on the CPU uses by default: PyTorch's intra-op threads where torch
    is imported (its default, or what ``torch.set_num_threads`` set); else what torch would
    start with, found without importing it: ``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``) when
    set, else the physical cores this process may run on (one thread per core, as torch)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return _physical_cores()


def _physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (Linux: from sysfs, hyperthreads
    counted once); the logical CPU count where that cannot be read."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            return len(cpus) or 1
    return len(cores) or 1


def _cpu_capabilities() -> dict:
    """The CPU's features: on Linux the flags of ``/proc/cpuinfo`` (as booleans under their
    names, e.g. ``amx_bf16``), elsewhere as torch reports them (``torch.cpu.get_capabilities()``,
    through cpuinfo, under the same names); nothing where neither says (so: fp32)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is not None:
        return dict.fromkeys(flags, True)
    import torch

    get = getattr(torch.cpu, "get_capabilities", None)
    return dict(get()) if get is not None else {}


def _torch_has_onednn() -> bool:
    """Whether PyTorch runs bf16 convolutions through oneDNN (every official build does)."""
    import torch

    return bool(torch.backends.mkldnn.is_available())


@functools.lru_cache(maxsize=1)
def cpu_bf16_units() -> str | None:
    """The unit this CPU runs bf16 matrix products on natively, from its features
    (:func:`_cpu_capabilities`): ``"AMX-BF16"``, ``"AVX512-BF16"``, or None.

    Returns
    -------
    str or None
    """
    caps = _cpu_capabilities()
    if caps.get("amx_bf16"):
        return "AMX-BF16"
    if caps.get("avx512_bf16"):
        return "AVX512-BF16"
    return None


def default_dtype(device, backend: str | None = None) -> str:
    """The dtype used when none is asked for (``dtype="auto"``): bf16 on CUDA; on the CPU bf16
    where it has bf16 matrix units (:func:`cpu_bf16_units`) and the backend runs bf16 on them
    (``backend="openvino"``: always; PyTorch's backends: with oneDNN), fp32 elsewhere."""
    if resolve_device(device).type == "cuda":
        return "bf16"
    if not cpu_bf16_units():
        return "fp32"
    return "bf16" if backend == "openvino" or _torch_has_onednn() else "fp32"


def resolve_dtype(dtype, device, backend: str | None = None) -> str:
    """``dtype`` (``None``, ``"auto"``, ``"bf16"``, ``"fp16"``, ``"tf32"``, ``"fp32"``, ``"int8"``) as the
    dtype the network runs in on ``device`` with ``backend``; raises :class:`UserError` for
    another value.

    Parameters
    ----------
    dtype : str or None
    device : str or torch.device
    backend : str, optional
        The backend the network runs on (``"openvino"``, ``"torch"``, ...; see :func:`default_dtype`).

    Returns
    -------
    str
        One of :data:`DTYPES`.
    """
    if dtype is None or dtype == "auto":
        return default_dtype(device, backend)
    if dtype not in DTYPES:
        raise UserError(f"dtype= must be one of {', '.join(DTYPE_CHOICES)}; got {dtype!r}.")
    return dtype


def describe_dtype(asked, dtype: str, device) -> str:
    """Why the network runs in ``dtype``: ``"bf16 (auto: the CPU has AVX512-BF16 units)"``,
    ``"fp32 (auto: the CPU has no bf16 matrix units)"``, ``"bf16 (auto: CUDA)"`` or ``"fp32
    (asked for)"``, for ``-v`` and the output's metadata (``asked`` is what ``dtype=`` was)."""
    if asked not in (None, "auto"):
        return f"{dtype} (asked for)"
    if resolve_device(device).type == "cuda":
        return f"{dtype} (auto: CUDA)"
    units = cpu_bf16_units()
    if units and dtype != "bf16":
        return f"{dtype} (auto: the CPU has {units} units, but PyTorch has no oneDNN to run bf16 on them)"
    return f"{dtype} (auto: the CPU has {units} units)" if units else f"{dtype} (auto: the CPU has no bf16 matrix units)"
