"""Timing for the benchmarks: the device check, medians of CUDA-event (or, on the CPU for
tests, wall-clock) times over fresh inputs, the measured matmul peak, the geometric mean.

Every benchmark times through :func:`median_ms` of this module (looked up here at call
time), so a test can stand in for the timer in one place.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import torch

from ..errors import UserError

__all__ = [
    "bench_device",
    "cuda_median_ms",
    "geometric_mean",
    "measured_peak_tflops",
    "median_ms",
    "require_cuda",
    "synchronize",
]


def require_cuda() -> None:
    """Refuse (:class:`~fastunet.errors.UserError`) without a CUDA device."""
    if not torch.cuda.is_available():
        raise UserError(
            "The benchmark suite needs a CUDA GPU: on the CPU it would only time the Triton "
            "interpreter. Run it on a GPU machine."
        )


def bench_device(device) -> torch.device:
    """The device of a P1/P2/P3/P6 run: CUDA (the benchmark), or the CPU for tests.

    On the CPU the Triton kernels run under the interpreter, so the figures only show that
    the benchmark runs end to end; they are no measurement. The kernel modules are imported
    here through :func:`fastunet.kernels.load`, which switches the interpreter on for the
    CPU before triton defines a kernel (or says why it cannot).

    Parameters
    ----------
    device : str or torch.device
        ``"cuda"`` (or a CUDA device) or ``"cpu"``.

    Returns
    -------
    torch.device
    """
    from ..kernels import load

    device = torch.device(device)
    if device.type == "cuda":
        require_cuda()
    elif device.type != "cpu":
        raise ValueError(
            f'Expected device="cuda" (or device="cpu", the kernels under the Triton interpreter, for tests); '
            f'got device="{device}".'
        )
    load(device, "conv", "upconv", "head", "loss")
    return device


def synchronize(device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable, *, make_inputs: Callable | None = None, warmup: int = 5, reps: int = 25,
              device="cuda") -> float:
    """Median time of ``fn(*make_inputs())`` in milliseconds over ``reps`` repetitions.

    ``make_inputs`` is called before every repetition (warm-up included), outside the timed
    region, so each repetition sees fresh inputs (no cache-warm replays of identical data).
    On a CUDA ``device`` the time is that between two CUDA events recorded on its current
    stream around the call; on the CPU (tests only: there it times the Triton interpreter)
    it is ``time.perf_counter`` around the call, which is synchronous there.

    Parameters
    ----------
    fn : callable
        The timed call.
    make_inputs : callable, optional
        Returns the tuple of arguments of one call (default: no arguments).
    warmup, reps : int
        Untimed calls first, then timed ones.
    device : str or torch.device
        Where ``fn`` runs.

    Returns
    -------
    float
        The median in milliseconds.
    """
    make_inputs = make_inputs or (lambda: ())
    device = torch.device(device)
    if device.type != "cuda":
        for _ in range(warmup):
            fn(*make_inputs())
        times = []
        for _ in range(reps):
            args = make_inputs()
            start = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    with torch.cuda.device(device):
        for _ in range(warmup):
            fn(*make_inputs())
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            args = make_inputs()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def cuda_median_ms(fn: Callable, *, make_inputs: Callable | None = None, warmup: int = 5, reps: int = 25) -> float:
    """:func:`median_ms` on the current CUDA device.

    Parameters
    ----------
    fn, make_inputs, warmup, reps
        As for :func:`median_ms`.

    Returns
    -------
    float
        The median in milliseconds.
    """
    return median_ms(fn, make_inputs=make_inputs, warmup=warmup, reps=reps, device="cuda")


def measured_peak_tflops(n: int = 8192, *, device="cuda") -> float:
    """bf16 matmul throughput of this device, measured now (the FLOP bound of P2).

    Parameters
    ----------
    n : int
        The edge of the two square bf16 matrices multiplied.
    device : str or torch.device

    Returns
    -------
    float
        TFLOP/s (``2 n**3`` operations per product).
    """
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    ms = median_ms(lambda: torch.mm(a, b), warmup=5, reps=20, device=device)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def geometric_mean(values) -> float:
    """The geometric mean of positive numbers (the mean of speed-up ratios).

    Parameters
    ----------
    values : iterable of float
        At least one, all positive.

    Returns
    -------
    float
    """
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))
