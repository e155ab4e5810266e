"""One benchmark stage of ``benchmarks/device_check.sh``, its results written as they come.

    python benchmarks/device_stage.py STAGE [STAGE ...] --out DIR [--dry]

Stages (the benchmarks of :mod:`fastunet.bench` at the ``--quick`` sizes):

``p2bf16``  P2 in bf16 alone (tile 572, batch 2, no torch.compile baseline): forward Mpx/s vs
            eager and the fraction of the bf16 matmul peak measured in the same run
``p1``      P1 at tile 572, batch 2: each 3x3 conv shape timed and written on its own
            (``P1.<tile>.<layer>``), then the geometric mean of those measured (``P1``)
``p3``      P3: the fused weighted softmax-CE vs eager, and vs a device copy
``p2rest``  P2 in fp16 and tf32
``p45``     P4 and P5 at the quick size (8 x 2048^2)
``p3d``     the 3D U-Net (Cicek et al.'s, 116 x 132 x 132, batch 1): P2-3D in bf16, then P1-3D
            each 3x3x3 conv shape on its own (``P1-3D.<tile>.<layer>``) and their geometric mean

Each result JSON is written to ``DIR/results`` as soon as it is measured. ``--dry`` (no GPU
needed): the stage imports what it would run, resolves its arguments and writes
``DIR/dry-<stage>.json`` (the arguments, and the third-party modules it loaded beyond torch,
triton and numpy: each must be on the GPU machine or among its wheels), without timing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

QUICK_TILE, QUICK_BATCH = 572, 2


def _layers(config=None, tile=QUICK_TILE) -> list[str]:
    from fastunet import UNetConfig, geometry

    return [s.name for s in geometry.layer_shapes(config or UNetConfig(), tile, "conv3x3")]


def plan(stage: str) -> list[tuple[str, str, dict]]:
    """The benchmark calls of a stage: (result name, benchmark, keyword arguments)."""
    from fastunet import bench

    if stage == "p2bf16":
        return [("P2", "P2", dict(bench.QUICK["P2"], dtypes=("bf16",)))]
    if stage == "p2rest":
        return [("P2.fp16-tf32", "P2", dict(bench.QUICK["P2"], dtypes=("fp16", "tf32")))]
    if stage == "p1":
        return [(f"P1.{QUICK_TILE}.{name}", "P1", dict(bench.QUICK["P1"], layers=(name,))) for name in _layers()]
    if stage == "p3":
        return [("P3", "P3", {})]
    if stage == "p45":
        return [(name, name, dict(bench.QUICK[name])) for name in ("P4", "P5")]
    if stage == "p3d":
        tile = "x".join(map(str, bench.CICEK_3D_TILE))
        return [("P2-3D", "P2-3D", dict(bench.QUICK["P2-3D"], dtypes=("bf16",)))] + [
            (f"P1-3D.{tile}.{name}", "P1-3D", dict(layers=(name,)))
            for name in _layers(bench.CICEK_3D, bench.CICEK_3D_TILE)]
    raise SystemExit(f"unknown stage {stage!r}: expected p2bf16, p1, p3, p2rest, p45 or p3d")


def _third_party(before: set[str]) -> list[str]:
    """Top-level modules loaded since ``before`` that are neither the standard library nor fastunet."""
    names = {m.split(".")[0] for m in sys.modules} - before
    return sorted(n for n in names if n not in sys.stdlib_module_names and not n.startswith("_")
                  and n not in ("fastunet", "__main__"))


def dry_run(stage: str, out: Path) -> Path:
    """Import what the stage runs and resolve its arguments; write ``dry-<stage>.json``."""
    import numpy  # noqa: F401  (the GPU machine's base: torch, triton, numpy)
    import torch  # noqa: F401
    import triton  # noqa: F401

    before = {m.split(".")[0] for m in sys.modules}
    from fastunet import bench
    from fastunet.kernels import (  # noqa: F401  (the kernels the stages launch)
        conv,
        conv3d,
        conv_head,
        head,
        loss,
        upconv,
        upconv3d,
    )

    calls = plan(stage)
    needs = {"P4": ("dask", "zarr", "distributed"), "P5": ("dask", "zarr", "distributed", "monai")}
    missing = []
    for _, name, kwargs in calls:
        bench.BENCHMARKS[name]  # the benchmark exists
        for module in needs.get(name, ()):
            try:
                __import__(module)
            except ImportError:
                missing.append(module)
    path = out / f"dry-{stage}.json"
    path.write_text(json.dumps(dict(stage=stage, dry=True, calls=[dict(result=r, benchmark=b, kwargs=k)
                                                                   for r, b, k in calls],
                                    modules=_third_party(before), missing_here=sorted(set(missing))),
                               indent=1, default=list) + "\n")
    return path


def run(stage: str, out: Path) -> list[Path]:
    """Run the stage's benchmarks, each result written as soon as it is measured."""
    from fastunet import bench

    paths, speedups = [], []
    for result, name, kwargs in plan(stage):
        figures, ratios = bench.BENCHMARKS[name](**kwargs)
        paths.append(bench.write_result(result, figures, ratios, out_dir=out / "results",
                                        extra={"quick": True, "stage": stage, "arguments": kwargs}))
        print(f"wrote {paths[-1]}", flush=True)
        speedups += [v for k, v in ratios.items() if k.endswith(".speedup")]
    name = {"p1": "P1", "p3d": "P1-3D"}.get(stage)
    if name and speedups:
        geomean = bench.geometric_mean(speedups)
        paths.append(bench.write_result(name, {f"{name}.shapes_measured": len(speedups)},
                                        {f"{name}.geomean_speedup": geomean}, out_dir=out / "results",
                                        extra={"quick": True, "stage": stage}))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stages", nargs="*", help="p2bf16, p1, p3, p2rest, p45, p3d")
    parser.add_argument("--out", type=Path, required=True, help="the device check's output folder")
    parser.add_argument("--dry", action="store_true", help="resolve imports and arguments only (no GPU)")
    parser.add_argument("--collect", nargs="*", default=[], metavar="TEST_FILE",
                        help="with --dry: collect these test files' GPU tests too (in this process), the "
                             "output in OUT/dry-collect.log")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for stage in args.stages:
        if args.dry:
            print(f"wrote {dry_run(stage, args.out)}")
        else:
            run(stage, args.out)
    if args.dry and args.collect:
        collect(args.collect, args.out / "dry-collect.log")
    return 0


def collect(files: list[str], log: Path) -> int:
    """pytest's collection of the GPU tests of ``files`` (their imports resolved), into ``log``."""
    import contextlib

    import pytest

    with open(log, "w") as f, contextlib.redirect_stdout(f):
        return int(pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "-m", "gpu", *files]))


if __name__ == "__main__":
    sys.exit(main())
