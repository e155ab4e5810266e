"""Result files of the benchmarks: one JSON file per run of one benchmark, with the device,
driver and library versions and the date beside its figures and ratios.

They go to the folder the caller names (``out_dir=``, ``fastunet bench --out DIR``), by
default to ``./fastunet-bench-results`` in the current directory (:func:`default_out_dir`),
never into the installed package. The repository's published results live in
``benchmarks/results/`` (``fastunet bench --out benchmarks/results``), which
``benchmarks/report.py`` reads.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

__all__ = ["RESULTS_FOLDER", "default_out_dir", "environment", "write_result", "print_result"]

RESULTS_FOLDER = "fastunet-bench-results"


def default_out_dir() -> Path:
    """The folder of result files when none is given: ``fastunet-bench-results`` in the
    current working directory (looked up at each call, not at import).

    Returns
    -------
    pathlib.Path
    """
    return Path.cwd() / RESULTS_FOLDER


def environment() -> dict:
    """Device, driver and library versions, and the date, for a result file.

    Returns
    -------
    dict
        ``date`` (UTC, ISO 8601), ``python``, ``torch``, ``triton``, ``openvino``, ``monai``
        (None when not installed), ``cuda``, ``device`` (the GPU's name, or ``"cpu"``), ``cpu``
        (its model name) and ``cores``, and ``driver`` (from ``nvidia-smi``; None when it
        cannot tell).
    """
    from importlib.metadata import PackageNotFoundError, version

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": installed("triton"),
        "openvino": installed("openvino"),
        "monai": installed("monai"),
        "cuda": torch.version.cuda,
        "device": "cpu",
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "driver": None,
    }
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            )
            env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            env["driver"] = None
    return env


def _cpu_name() -> str:
    """The CPU's model name, as torch reports it (else the platform's processor string)."""
    get = getattr(torch.cpu, "get_capabilities", None)
    name = get().get("cpu_name") if get is not None else None
    return str(name or platform.processor() or platform.machine())


def write_result(benchmark: str, figures: dict, ratios: dict, *, out_dir: Path | None = None,
                 extra: dict | None = None) -> Path:
    """Write one benchmark run as ``<out_dir>/<date>-<benchmark>.json`` and return its path.

    Parameters
    ----------
    benchmark : str
        Its name (``"P1"`` ... ``"P6"``).
    figures, ratios : dict
        The measured figures and the ratios derived from them.
    out_dir : path-like, optional
        The folder, made when missing; default :func:`default_out_dir`.
    extra : dict, optional
        More top-level entries of the record (e.g. ``{"quick": True}``).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    out_dir = Path(out_dir) if out_dir else default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment()
    record = {"benchmark": benchmark, **env, "figures": figures, "ratios": ratios, **(extra or {})}
    stamp = env["date"].replace(":", "").replace("+0000", "Z")
    path = out_dir / f"{stamp}-{benchmark}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path


def print_result(figures: dict, ratios: dict, path: Path) -> None:
    """A benchmark script's figures and ratios, one per line, and where they were written."""
    for key, value in {**figures, **ratios}.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    print(f"wrote {path}")
