"""P7: the CPU path, in one run: ``fastunet segment`` against MONAI as whole processes, the engine
against its raw network, the network's backends and the convolutions against the CPU's
measured matmul peak.

P7  on the CPU (no GPU needed), on a uint16 zarr volume of synthetic nuclei
    (:func:`~fastunet.bench.volume.bench_volume`, chunks ``(1, 1024, 1024)``, default
    ``2 x 2048 x 2048``) with the bundled default model:

    * **whole processes**, in ``repeats`` interleaved rounds (each round runs every side once, in
      turn, so that a busy spell of the machine hits all sides alike): ``fastunet segment VOLUME
      -o OUT.zarr --axes ZYX`` with its defaults (object ids; backend and dtype ``auto``), the
      same with ``--backend torch`` and with ``--dtype int8`` (when NNCF is installed), and
      MONAI's ``sliding_window_inference`` (roi 512, overlap 0.25, gaussian blending, the same
      weights in :class:`~fastunet.bench.monai_baseline.SamePaddedUNet`,
      channels-last) in fp32 and under bf16 autocast (``python -m fastunet.bench.monai_baseline``,
      zarr to zarr uint8 labels). Each time is the process's wall clock, start to exit (Python,
      imports, model load, reading, writing: what a user waits for), and its CPU time (user +
      system: the work done, which a busy machine moves far less); medians per side.
      ``P7.segment_vs_monai`` is MONAI's best median over fastunet's (the goal is >= 4),
      ``P7.segment_vs_monai_cpu_s`` the same in CPU time.
    * **the start**: processes that only start and leave (:func:`_startup_seconds`): the
      command line (``fastunet --version``), the libraries a CPU ``segment`` imports
      (:data:`SEGMENT_IMPORTS`), and ``import torch`` (which such a run does without).
    * **engine vs raw network** in one process of its own (:func:`engine_vs_raw_apart`),
      at least 5 rounds: ``Segmenter.segment`` (warm) against the same predictor on as many
      tiles of the same shape, interleaved; ``P7.engine_vs_raw`` is the median of the
      per-round ratios (the goal is >= 0.9), in wall time, and ``P7.engine_vs_raw_cpu_s`` in
      the process's CPU time.
    * **backends**: the raw network per tile (median ms; each backend on the tile the engine
      picks for it, ``P7.torch_tile`` and ``P7.openvino_tile``) under PyTorch eager (fp32 and
      bf16, channels-last, as the engine runs it), OpenVINO (fp32, bf16 and int8), and, for the record,
      ``torch.compile`` (inductor, freezing) and frozen TorchScript in bf16 with their
      preparation times (:func:`backend_times`).
    * **the CPU's limit**: each 3x3 convolution of the network alone, on PyTorch's tile (``F.conv2d``,
      channels-last) in fp32 and bf16, and an fp32 and a bf16 matrix product (``torch.mm``), all
      measured in this run: the convolutions' GFLOP/s as a fraction of the matmul peak.
    * **threads**: ``segment`` in one process with 1, 2, 3 and 4 block threads x 1 and all
      intra-op threads (:func:`thread_grid`).
    * **the dtypes' accuracy**: bf16 (per backend) and int8 (OpenVINO) against fp32 on
      synthetic images of every style (:func:`fastunet.bench.dtypes.style_agreement`): the
      largest and mean probability difference, the identical labels, the instance F1
      difference; the worst style of each.

On a CPU without bf16 matrix units (no AMX, no AVX512-BF16) bf16 is emulated, many times slower
than fp32, and ``dtype="auto"`` picks fp32: there P7 measures fp32 (and int8) only and says so
(``P7.not_measured``; :func:`float_dtypes`).

MONAI (``pip install 'fastunet[bench]'``) runs in its own processes; OpenVINO is measured when
it is installed. Timings on a shared machine vary: the result records the machine's load
average before and after.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .. import geometry
from ..model import forward_flops
from . import timing
from .volume import bench_volume, cache_volume_path, default_cache_dir

__all__ = ["bench_cpu", "matmul_gflops", "conv_layer_gflops", "engine_vs_raw", "engine_vs_raw_apart", "backend_times",
           "thread_grid", "whole_process_times", "segment_command", "monai_command"]

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the float dtypes' torch types


# ------------------------------------------------------------------------- the CPU's limit
def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of one ``n x n`` by ``n x n`` ``torch.mm`` on the CPU in ``dtype`` (median of ``reps``)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    ms = timing.median_ms(lambda: torch.mm(a, b), warmup=2, reps=reps, device="cpu")
    return 2 * n**3 / (ms * 1e-3) / 1e9


def conv_layer_gflops(config, tile, dtype: torch.dtype, reps: int = 5) -> list[dict]:
    """Each 3x3 convolution of the network at input ``tile`` (an edge, or ``(H, W)``) alone: ``F.conv2d`` on a
    channels-last input of the layer's shape in ``dtype`` (oneDNN, as the engine runs it),
    median of ``reps``; one row per layer with its GFLOP/s."""
    rows = []
    for layer in geometry.layer_shapes(config, tile, "conv3x3"):
        x = torch.randn(1, layer.c_in, *layer.in_size, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(layer.c_out, layer.c_in, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last)
        bias = torch.randn(layer.c_out, dtype=dtype)
        with torch.no_grad():
            ms = timing.median_ms(lambda: torch.nn.functional.conv2d(x, w, bias), warmup=1, reps=reps, device="cpu")
        rows.append({"layer": layer.name, "c_in": layer.c_in, "c_out": layer.c_out, "size": list(layer.in_size),
                     "ms": ms, "gflop_s": layer.flops / (ms * 1e-3) / 1e9})
    return rows


# ------------------------------------------------------------------------------ backends
def _tile_time(predictor, tile, batch: int, reps: int) -> float:
    x = torch.randn(batch, predictor.config.in_channels, *geometry.tile_edges(predictor.config, tile))
    return timing.median_ms(lambda: predictor.predict(x, "labels"), warmup=1, reps=reps, device="cpu") / batch


def _compiled_time(model, tile, how: str, reps: int, dtype: str = "bf16") -> tuple[float, float]:
    """(preparation seconds, ms per tile) of the channels-last network in ``dtype`` under
    ``torch.compile`` (inductor, freezing) or frozen TorchScript."""
    kind = _TORCH_DTYPES[dtype]
    net = copy.deepcopy(model).eval().to(kind, memory_format=torch.channels_last)
    x = torch.randn(1, model.config.in_channels, *geometry.tile_edges(model.config, tile), dtype=kind)
    x = x.contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    with torch.no_grad():
        if how == "compile":
            fn = torch.compile(net, options={"freezing": True})  # weights as constants, prepacked for oneDNN
            fn(x)
        else:
            with warnings.catch_warnings():  # the input checks, traced as constants; jit.trace's deprecation
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(net, x, check_trace=False)
            fn = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            fn(x)
        prep = time.perf_counter() - start
        ms = timing.median_ms(lambda: fn(x), warmup=1, reps=reps, device="cpu")
    return prep, ms


def float_dtypes() -> tuple[str, ...]:
    """The float dtypes P7 measures: fp32, and bf16 where the CPU has bf16 matrix units (elsewhere
    bf16 is emulated, many times slower than fp32, and no run picks it: ``dtype="auto"`` is fp32)."""
    from ..devices import cpu_bf16_units

    return ("fp32", "bf16") if cpu_bf16_units() else ("fp32",)


def openvino_dtypes() -> tuple[str, ...]:
    """The dtypes P7 runs OpenVINO in: :func:`float_dtypes` when it is installed, and int8 when
    NNCF (which quantizes it) is too."""
    from importlib.util import find_spec

    from ..engine import openvino_backend

    if not openvino_backend.available():
        return ()
    return float_dtypes() + (("int8",) if find_spec("nncf") is not None else ())


def backend_times(model, tile, *, openvino_tile=None, reps: int = 5, compiled: bool = True) -> dict:
    """The raw network per tile (an edge, or ``(H, W)``; median ms, labels) on the CPU: PyTorch eager in
    :func:`float_dtypes` (one tile a call, on all the cores), OpenVINO in :func:`openvino_dtypes` on
    ``openvino_tile`` (default ``tile``; a batch of one tile per stream, as the engine runs it;
    with its conversion, quantization and compile time), and, with ``compiled``,
    ``torch.compile`` and frozen TorchScript in the fastest of the float dtypes (bf16 where the
    CPU has bf16 units; with their preparation time)."""
    from ..engine import openvino_backend
    from ..engine.predictor import TorchPredictor

    out = {}
    for dtype in float_dtypes():
        out[f"torch_{dtype}_ms"] = _tile_time(TorchPredictor(model, "cpu", dtype), tile, 1, reps)
    if compiled:
        dtype = float_dtypes()[-1]
        for how in ("compile", "torchscript"):
            out[f"{how}_{dtype}_prep_s"], out[f"{how}_{dtype}_ms"] = _compiled_time(model, tile, how, reps, dtype)
    tile = tile if openvino_tile is None else openvino_tile
    for dtype in openvino_dtypes():  # last: its threads stay
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            predictor = openvino_backend.OpenVINOPredictor(model, "cpu", dtype, cache=cache)
            predictor.predict(torch.zeros(1, model.config.in_channels, *geometry.tile_edges(model.config, tile)),
                              "labels")
            # convert (int8: and quantize) + compile, no cache
            out[f"openvino_{dtype}_first_s"] = time.perf_counter() - start
            # a batch of one tile per stream, as the engine feeds it (one tile alone runs on one
            # stream's share of the cores); PyTorch above runs one tile on all the cores
            out[f"openvino_{dtype}_ms"] = _tile_time(predictor, tile, predictor.streams, reps)
    return out


# ------------------------------------------------------------------------ engine vs raw
def engine_vs_raw(volume, *, backend: str = "auto", rounds: int = 3, threads: int | None = None) -> dict:
    """``Segmenter.segment`` of the zarr ``volume`` (default model, defaults: object ids, warm)
    against its own predictor on as many tiles of the same shape (batches of the batch
    size, one call at a time, fresh random tiles), in ``rounds`` interleaved pairs."""
    from ..engine.tiling import Layout
    from ..segmentation import Segmenter
    from .pipeline import engine_tile_count

    with tempfile.TemporaryDirectory() as tmp, Segmenter(device="cpu", backend=backend) as seg:
        out = Path(tmp) / "out.zarr"

        def run():
            start, cpu = time.perf_counter(), time.process_time()
            seg.segment(str(volume), str(out), axes="ZYX", overwrite=True, progress=False, threads=threads)
            return time.perf_counter() - start, time.process_time() - cpu

        run()  # warm-up: loads and prepares the network, plans the layout
        s = seg.last_summary
        import zarr

        shape = tuple(zarr.open_array(str(volume), mode="r").shape)
        layout = Layout(shape=shape, depth=seg.config.depth, tile=tuple(s["tile"]), chunks=tuple(s["block"]),
                        block=tuple(s["block"]))  # the tiles depend on the blocks, not on the chunks
        tiles, predictor, batch = engine_tile_count(layout), seg.network.predictor, seg.batch_size
        x = torch.randn(batch, seg.config.in_channels, *layout.tile)
        if getattr(predictor, "takes_numpy", False):  # what the engine gives it (OpenVINO)
            x = x.numpy()

        def raw():
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(0, tiles, batch):
                predictor.predict(x[:min(batch, tiles - i)], "labels")
            return time.perf_counter() - start, time.process_time() - cpu

        seg_s, raw_s = [], []
        for _ in range(rounds):
            raw_s.append(raw())
            seg_s.append(run())
    return {"segment_s": [s for s, _ in seg_s], "raw_s": [r for r, _ in raw_s],
            "segment_cpu_s": [c for _, c in seg_s], "raw_cpu_s": [c for _, c in raw_s],
            "ratios": [r[0] / s[0] for r, s in zip(raw_s, seg_s)],
            "cpu_ratios": [r[1] / s[1] for r, s in zip(raw_s, seg_s)], "tiles": tiles,
            "tile": list(layout.tile), "block": list(layout.block), "blocks": layout.num_blocks,
            "backend": s["backend"], "dtype": s["dtype"], "batch": batch,
            "flops": forward_flops(seg.config, *layout.tile) * tiles}


def engine_vs_raw_apart(volume, *, rounds: int) -> dict:
    """:func:`engine_vs_raw` in a Python process of its own, as a user's ``segment`` runs: the
    benchmark's own process has run PyTorch's and OpenVINO's other configurations by then, whose
    thread pools stay (measured here: 0.886 after them against 0.926 alone, medians of 5 rounds)."""
    code = ("import json, sys; from fastunet.bench.cpu import engine_vs_raw; "
            "print(json.dumps(engine_vs_raw(sys.argv[1], rounds=int(sys.argv[2]))))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # see whole_process_times
    done = subprocess.run([sys.executable, "-c", code, str(volume), str(rounds)], capture_output=True, text=True,
                          env=env)
    if done.returncode:
        raise RuntimeError(f"P7: engine vs raw failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def thread_grid(volume, *, block_threads=(1, 2, 3, 4), intra_op=(1, None), rounds: int = 2) -> list[dict]:
    """``segment`` (in this process, warm, default backend and dtype) with each number of block
    threads x intra-op threads (None: all cores), interleaved over ``rounds``; median seconds each."""
    from ..segmentation import Segmenter

    cores = os.cpu_count() or 1
    saved = torch.get_num_threads()
    times: dict = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(rounds + 1):  # round 0 warms each setting up, untimed
                for t in intra_op:
                    torch.set_num_threads(t or cores)
                    with Segmenter(device="cpu") as seg:  # the network takes its threads when it is made
                        for b in block_threads:
                            start = time.perf_counter()
                            seg.segment(str(volume), str(Path(tmp) / "out.zarr"), axes="ZYX", overwrite=True,
                                        progress=False, threads=b)
                            if r:
                                times.setdefault((b, t or cores), []).append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved)
    return [{"block_threads": b, "intra_op_threads": t, "seconds": statistics.median(v)} for (b, t), v in times.items()]


# ---------------------------------------------------------------------- whole processes
def segment_command(volume, out, *extra: str) -> list[str]:
    """``fastunet segment VOLUME -o OUT --axes ZYX --overwrite -q`` (plus ``extra``) as a process."""
    return [sys.executable, "-m", "fastunet", "segment", str(volume), "-o", str(out), "--axes", "ZYX",
            "--overwrite", "-q", *extra]


def monai_command(volume, out, dtype: str, *, roi: int = 512, overlap: float = 0.25, sw_batch: int = 4) -> list[str]:
    """MONAI's side of P7 as a process (:func:`fastunet.bench.monai_baseline.main`)."""
    return [sys.executable, "-c", "import sys; from fastunet.bench.monai_baseline import main; sys.exit(main())",
            str(volume), str(out), "--dtype", dtype, "--roi", str(roi), "--overlap", str(overlap),
            "--sw-batch", str(sw_batch)]


def whole_process_times(commands: dict, *, rounds: int) -> tuple[dict, dict]:
    """Wall-clock seconds and CPU seconds (user + system, the process and its threads) of each
    command (``name -> argv``), run ``rounds`` times in turn (round-robin), with Python's
    default bytecode caching (``PYTHONDONTWRITEBYTECODE`` left out of their environment); a
    failing command raises with its standard error. CPU seconds are the work done: on a busy
    machine they move far less than the wall clock."""
    import resource

    # Python's default bytecode caching, as in a user's installation (pip compiles a package's
    # modules at install): a PYTHONDONTWRITEBYTECODE of this shell would make every process
    # compile the source tree's modules again (0.1-0.15 CPU-s for fastunet's, measured here)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times, cpu = {name: [] for name in commands}, {name: [] for name in commands}
    for _ in range(rounds):
        for name, argv in commands.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode:
                raise RuntimeError(f"P7: {name} failed ({' '.join(argv)}):\n{done.stderr[-2000:]}")
            times[name].append(seconds)
            cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return times, cpu


# What a ``fastunet segment`` process on the CPU imports before it can work (OpenVINO's
# backend, with its converted model cached, needs no PyTorch); torch for comparison.
# (the packages such a run had in sys.modules at its end, measured here; no dask: the local
# threaded scheduler does without it)
SEGMENT_IMPORTS = ("fastunet.cli.main", "fastunet.segmentation.segmenter", "fastunet.engine.openvino_backend",
                   "fastunet.engine.instances", "fastunet.io.outputs", "openvino", "zarr", "tifffile", "imagecodecs",
                   "fsspec", "safetensors", "psutil", "filelock")


def _startup_seconds(rounds: int) -> dict:
    """Median seconds of processes that start and leave (interleaved, ``rounds`` each): the
    command line alone (``fastunet --version``), the libraries a CPU ``segment`` imports
    (:data:`SEGMENT_IMPORTS`), and ``import torch``."""
    def imports(*names: str) -> list[str]:
        return [sys.executable, "-c", "import " + ", ".join(names)]

    commands = {"startup": [sys.executable, "-m", "fastunet", "--version"],
                "segment_imports": imports(*SEGMENT_IMPORTS), "torch_import": imports("torch")}
    times, _ = whole_process_times(commands, rounds=rounds)
    return {f"P7.{name}_s": statistics.median(v) for name, v in times.items()}


# ----------------------------------------------------------------------------------- P7
def bench_cpu(*, shape=(2, 2048, 2048), repeats: int = 3, cache_dir=None, threads: bool = True,
              compiled: bool = True, agreement: int = 2) -> tuple[dict, dict]:
    """P7 (see the module's docstring): figures and ratios.

    Parameters
    ----------
    shape : (Z, Y, X)
        The volume (at least 2 x 1024 x 1024 for a published result).
    repeats : int
        Rounds of the whole-process runs and of engine vs raw.
    cache_dir : path-like, optional
        The folder of the volume (default :func:`~fastunet.bench.volume.default_cache_dir`).
    threads, compiled : bool
        Measure the thread grid, and ``torch.compile`` / TorchScript (both slow to prepare).
    agreement : int
        Synthetic images per style of the bf16-vs-fp32 check (0: none).

    Returns
    -------
    figures, ratios : dict
    """
    from ..devices import cpu_bf16_units, default_dtype
    from ..engine import openvino_backend
    from ..modelfile import default_model_path, read_model
    from .monai_baseline import import_monai

    import_monai()  # refuse before minutes of other work
    load_before = os.getloadavg()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    volume = cache_volume_path(cache, shape)
    bench_volume(volume, shape)
    voxels = math.prod(shape)
    bundle = read_model(default_model_path())
    figures = {"P7.volume_shape": "x".join(map(str, shape)), "P7.volume_voxels": voxels, "P7.repeats": repeats,
               "P7.cores": os.cpu_count(), "P7.bf16_units": cpu_bf16_units(), "P7.auto_dtype": default_dtype("cpu"),
               "P7.openvino_installed": openvino_backend.available(),
               "P7.model": f"default (base {bundle.config.base_channels}, depth {bundle.config.depth})"}
    int8 = "int8" in openvino_dtypes()
    monai_dtypes = float_dtypes()
    if monai_dtypes == ("fp32",):
        figures["P7.not_measured"] = ("bf16 (MONAI under bf16 autocast, PyTorch's and OpenVINO's bf16, the bf16 matrix "
                                      "product): this CPU has no bf16 matrix units, where bf16 is emulated")
    with tempfile.TemporaryDirectory() as tmp:
        commands = {"segment": segment_command(volume, Path(tmp) / "a.zarr"),
                    "segment_torch": segment_command(volume, Path(tmp) / "b.zarr", "--backend", "torch"),
                    **({"segment_int8": segment_command(volume, Path(tmp) / "c.zarr", "--dtype", "int8")} if int8 else {}),
                    **{f"monai_{dtype}": monai_command(volume, Path(tmp) / "m.zarr", dtype) for dtype in monai_dtypes}}
        whole_process_times(commands, rounds=1)  # warm-up: OS file cache, OpenVINO's converted-model cache
        times, cpu = whole_process_times(commands, rounds=repeats)
    medians = {name: statistics.median(v) for name, v in times.items()}
    cpu_medians = {name: statistics.median(v) for name, v in cpu.items()}
    for name, v in times.items():
        figures[f"P7.{name}_process_s"] = medians[name]
        figures[f"P7.{name}_process_s_all"] = [round(t, 3) for t in v]
        figures[f"P7.{name}_process_cpu_s"] = cpu_medians[name]
    figures.update(_startup_seconds(repeats))
    figures["P7.monai_best_dtype"] = min(monai_dtypes, key=lambda dtype: medians[f"monai_{dtype}"])
    monai_best = medians[f"monai_{figures['P7.monai_best_dtype']}"]
    monai_best_cpu = cpu_medians[f"monai_{figures['P7.monai_best_dtype']}"]
    ratios = {}
    for name in ("segment", "segment_torch", "segment_int8"):
        if name in medians:
            ratios[f"P7.{name}_vs_monai"] = monai_best / medians[name]
            ratios[f"P7.{name}_vs_monai_cpu_s"] = monai_best_cpu / cpu_medians[name]

    # PyTorch alone first (the conv layers, the matmul peaks, the backends: OpenVINO last), then
    # the engine: OpenVINO's threads, once started, stay in the process beside torch's.
    tiles = {backend: _engine_tile(volume, backend) for backend in ("torch", "openvino")}
    figures.update({f"P7.{backend}_tile": "x".join(map(str, t)) for backend, t in tiles.items()})
    ratios.update(_limits(bundle, tiles, figures, compiled=compiled))
    engine = engine_vs_raw_apart(volume, rounds=max(5, repeats))
    figures.update({f"P7.engine_{k}": v for k, v in engine.items() if k not in ("ratios", "cpu_ratios")})
    figures["P7.engine_tile"] = "x".join(map(str, engine["tile"]))  # e.g. "604x1116" (the table shows words)
    figures["P7.engine_raw_gflop_s"] = engine["flops"] / statistics.median(engine["raw_s"]) / 1e9
    ratios["P7.engine_vs_raw"] = statistics.median(engine["ratios"])
    ratios["P7.engine_vs_raw_cpu_s"] = statistics.median(engine["cpu_ratios"])
    if threads:
        figures["P7.thread_grid"] = thread_grid(volume)
    if agreement:
        figures.update(_agreement(agreement, openvino_backend.available(), int8))
    figures["P7.loadavg_before"], figures["P7.loadavg_after"] = list(load_before), list(os.getloadavg())
    return figures, ratios


def _engine_tile(volume, backend: str) -> tuple[int, int]:
    """The tile ``(H, W)`` the engine picks with ``backend`` for ``volume`` on the CPU (planned,
    nothing run)."""
    import zarr

    from ..engine.tiling import plan_layout
    from ..modelfile import default_model_path, read_model_metadata
    from ..segmentation.memory import default_max_step

    config = read_model_metadata(default_model_path())[0]
    source = zarr.open_array(str(volume), mode="r")
    step = default_max_step(config, torch.device("cpu"), dtype=float_dtypes()[-1], batch_size=2, backend=backend)
    layout = plan_layout(tuple(source.shape), config.depth, source_chunks=tuple(source.chunks), max_step=step)
    return layout.tile


def _agreement(images: int, openvino: bool, int8: bool) -> dict:
    """bf16 (and, with ``int8``, OpenVINO's int8) against fp32 on ``images`` synthetic images of
    every style (the dtypes' check, :func:`fastunet.bench.dtypes.style_agreement`): per backend
    and style, and the worst of the styles."""
    from .dtypes import style_agreement, worst_of

    runs = [("bf16", ("torch", "openvino") if openvino else ("torch",))] if "bf16" in float_dtypes() else []
    runs += [("int8", ("openvino",))] if int8 else []
    out = {"P7.bf16_agreement_images_per_style": images}
    for dtype, backends in runs:
        for backend, styles in style_agreement(images=images, backends=backends, dtype=dtype).items():
            out[f"P7.{dtype}_agreement_{backend}"] = {name: {k: round(v, 5) for k, v in r.items()}
                                                      for name, r in styles.items()}
            out.update({f"P7.{dtype}_{backend}_worst_{key}": value for key, value in worst_of(styles.values()).items()})
    return out


def _limits(bundle, tiles: dict, figures: dict, *, compiled: bool) -> dict:
    """The backends' raw times (each on its engine tile, ``tiles[backend]``: PyTorch's for
    PyTorch, ``torch.compile``, TorchScript and the conv layers), the conv layers and the
    matmul peaks: figures (in place) and ratios."""
    ratios = {}
    tile = tiles["torch"]
    raw = backend_times(bundle.module, tile, openvino_tile=tiles["openvino"], compiled=compiled)
    for key, value in raw.items():
        figures[f"P7.raw_{key}"] = value
        if key.endswith("_ms"):
            flops = forward_flops(bundle.config, *tiles["openvino" if key.startswith("openvino") else "torch"])
            figures[f"P7.raw_{key[:-3]}_gflop_s"] = flops / (value * 1e-3) / 1e9
    for name in float_dtypes():
        dtype = _TORCH_DTYPES[name]
        peak = matmul_gflops(dtype)
        layers = conv_layer_gflops(bundle.config, tile, dtype)
        total = sum(r["ms"] for r in layers) * 1e-3
        conv = sum(r["gflop_s"] * r["ms"] * 1e-3 for r in layers) / total
        figures[f"P7.matmul_{name}_gflop_s"] = peak
        figures[f"P7.conv3x3_{name}_gflop_s"] = conv
        figures[f"P7.conv3x3_{name}_layers"] = [{k: (round(v, 3) if isinstance(v, float) else v)
                                                 for k, v in r.items()} for r in layers]
        ratios[f"P7.conv3x3_{name}_vs_matmul_peak"] = conv / peak
        if f"P7.raw_openvino_{name}_gflop_s" in figures:
            ratios[f"P7.openvino_{name}_network_vs_matmul_peak"] = figures[f"P7.raw_openvino_{name}_gflop_s"] / peak
        ratios[f"P7.torch_{name}_network_vs_matmul_peak"] = figures[f"P7.raw_torch_{name}_gflop_s"] / peak
    if "P7.raw_openvino_int8_ms" in figures:  # the quantized network's speed-up over the fastest float's
        best = float_dtypes()[-1]
        ratios[f"P7.openvino_int8_vs_{best}"] = figures[f"P7.raw_openvino_{best}_ms"] / figures["P7.raw_openvino_int8_ms"]
    return ratios

