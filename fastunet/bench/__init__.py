"""The GPU benchmark suite behind ``fastunet bench``.

Each benchmark measures fastunet against the PyTorch op or pipeline it replaces, in one
run on one device, with warm-up, CUDA-event timing, medians and fresh inputs per
repetition, and writes one JSON file (device, driver, torch/triton versions, date, every
figure and ratio) to the folder given as ``out_dir=`` (``fastunet bench --out DIR``), by
default ``./fastunet-bench-results`` in the current directory. The repository's published
results are those in ``benchmarks/results/`` (``fastunet bench --out benchmarks/results``).

=====  ==========================  =============================================================
P1     :mod:`.operators`           each 3x3 conv layer of the paper network, fused vs cuDNN eager
P2     :mod:`.network`             the whole forward (bf16, fp16, tf32) vs eager, torch.compile
                                   and the FLOP bound
P3     :mod:`.operators`           the weighted softmax-CE forward+backward vs eager, and its
                                   bandwidth vs a device copy
P4     :mod:`.pipeline`            ``segment`` zarr to zarr vs the raw fused forward
P5     :mod:`.monai_baseline`      ``segment`` vs MONAI ``sliding_window_inference``
P6     :mod:`.network`             a training step vs eager with bf16 autocast
P1-3D  :mod:`.operators`           each 3x3x3 conv layer of a 3D U-Net (Cicek et al.'s), fused vs
                                   cuDNN eager
P2-3D  :mod:`.network`             the whole 3D forward (bf16, fp16, tf32) vs eager,
                                   torch.compile and the FLOP bound
S1     :mod:`.scale`               ``segment`` on a local dask cluster of 1, 2 and 4 worker
                                   processes with a memory limit each, over a volume 16x that
                                   limit: throughput and peak memory per worker (CPU or GPU)
=====  ==========================  =============================================================

:mod:`.timing` holds the timer and the device check, :mod:`.results` the result files,
:mod:`.volume` the generated volume and random model of P4/P5.

``fastunet bench`` and :func:`run` refuse the P benchmarks without a CUDA device: a benchmark
on the CPU would only time the Triton interpreter. S1 (:data:`SCALE`, run by name only:
``fastunet bench --only S1``) measures the engine's scaling and memory and runs on the CPU too. P1, P2, P3, P6, P1-3D and P2-3D take ``device="cpu"`` (kernels
under the interpreter, :func:`median_ms` then times with ``time.perf_counter``) and small
sizes so that the tests can run them end to end on the CPU; those figures mean nothing.
The non-timing parts (FLOPs, tile counts, result files, the volume) are plain functions,
tested on the CPU. Importing this package imports neither triton nor MONAI, zarr or dask.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .monai_baseline import SamePaddedUNet, bench_vs_monai, import_monai, same_padded_flops
from .network import bench_forward, bench_forward_3d, bench_train_step
from .operators import CICEK_3D, CICEK_3D_TILE, bench_conv_layers, bench_conv_layers_3d, bench_loss
from .pipeline import bench_segment, engine_tile_count, grid_tile_count
from .results import RESULTS_FOLDER, default_out_dir, environment, write_result
from .scale import bench_scale
from .timing import cuda_median_ms, geometric_mean, measured_peak_tflops, median_ms, require_cuda
from .volume import VOLUME_ATTR, bench_volume, default_cache_dir, random_model_file

__all__ = [
    "BENCHMARKS",
    "CICEK_3D",
    "CICEK_3D_TILE",
    "QUICK",
    "RESULTS_FOLDER",
    "SamePaddedUNet",
    "VOLUME_ATTR",
    "bench_conv_layers",
    "bench_conv_layers_3d",
    "bench_forward",
    "bench_forward_3d",
    "bench_loss",
    "bench_scale",
    "bench_segment",
    "bench_train_step",
    "bench_volume",
    "bench_vs_monai",
    "cuda_median_ms",
    "default_cache_dir",
    "default_out_dir",
    "engine_tile_count",
    "environment",
    "geometric_mean",
    "grid_tile_count",
    "measured_peak_tflops",
    "median_ms",
    "random_model_file",
    "run",
    "same_padded_flops",
    "write_result",
]

BENCHMARKS = {
    "P1": bench_conv_layers,
    "P2": bench_forward,
    "P3": bench_loss,
    "P4": bench_segment,
    "P5": bench_vs_monai,
    "P6": bench_train_step,
    "P1-3D": bench_conv_layers_3d,
    "P2-3D": bench_forward_3d,
}

# Smaller sizes for ``quick=True`` / ``--quick`` (the benchmarks not listed run at their full size).
QUICK = {
    "P1": dict(tiles=(572,), batches=(2,)),
    "P2": dict(batch=2, compile_baseline=False),
    "P4": dict(shape=(8, 2048, 2048), repeats=1),
    "P5": dict(shape=(8, 2048, 2048)),
    "P2-3D": dict(compile_baseline=False),
}

# Benchmarks that also run without a GPU, by name only (not part of the default suite).
SCALE = {"S1": bench_scale}
# Smaller sizes of SCALE for quick=True: a volume of a quarter of one worker's 1 GiB (the size of the
# CPU run in benchmarks/NOTES.md, which used a random base-8, depth-3 model).
SCALE_QUICK = {"S1": dict(memory_limit="1GiB", factor=0.25, chunk=256)}

# Benchmarks that keep a generated volume in a cache folder.
_CACHED = ("P4", "P5", "S1")


def _benchmark_names(only) -> list[str]:
    """The chosen benchmarks in the order given: all by default; ``only`` is a list of
    names or one comma-separated string (``"P1,P3"``), case-insensitive."""
    if not only:
        return list(BENCHMARKS)
    items = only.split(",") if isinstance(only, str) else list(only)
    names = [str(name).strip().upper() for name in items]
    unknown = [name for name in names if name not in BENCHMARKS and name not in SCALE]
    if unknown:
        raise UserError(
            f'Unknown benchmark(s) {", ".join(unknown)} in only="{",".join(names)}"; '
            f'choose among {", ".join([*BENCHMARKS, *SCALE])}.'
        )
    return names


def run(only: list[str] | str | None = None, *, out_dir: Path | None = None, quick: bool = False,
        cache_dir: Path | None = None) -> list[Path]:
    """Run the chosen benchmarks (all by default) and write one JSON result per benchmark.

    Parameters
    ----------
    only : list of str or str, optional
        Benchmark names (``["P1", "P3"]`` or ``"P1,P3"``); default all of :data:`BENCHMARKS`.
    out_dir : path-like, optional
        The folder of the result files; default ``./fastunet-bench-results`` in the current
        directory (:func:`default_out_dir`).
    quick : bool
        The smaller sizes of :data:`QUICK` (no ``torch.compile`` baseline).
    cache_dir : path-like, optional
        The folder of P4/P5's generated volume (default :func:`default_cache_dir`).

    Returns
    -------
    list of pathlib.Path
        The result files written, one per benchmark, in the order run.
    """
    names = _benchmark_names(only)
    if any(name in BENCHMARKS for name in names):
        require_cuda()
    if "P5" in names:
        import_monai()  # refuse before hours of other benchmarks, not after
    paths = []
    for name in names:
        kwargs = dict({**QUICK, **SCALE_QUICK}.get(name, {})) if quick else {}
        if name in _CACHED and cache_dir is not None:
            kwargs["cache_dir"] = cache_dir
        figures, ratios = {**BENCHMARKS, **SCALE}[name](**kwargs)
        paths.append(write_result(name, figures, ratios, out_dir=out_dir, extra={"quick": quick}))
    return paths
