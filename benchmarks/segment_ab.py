"""Whole ``fastunet segment`` processes of two or more variants of fastunet, interleaved.

A variant is a git revision of this repository (checked out once into a temporary worktree
and run with ``PYTHONPATH`` pointing at it) or the working tree (``.``), with optional
environment settings after it: ``NAME=REV[,VAR=VALUE...]``. Each round runs every variant
once, in turn (the order alternating from round to round, so that a busy spell of the
machine hits all of them alike), after one warm-up round that is not counted (bytecode
compiled, OpenVINO's caches filled). Each run is ``fastunet segment VOLUME -o OUT --axes ZYX
--overwrite -q`` with its defaults on P7's volume (a 2 x 2048 x 2048 uint16 zarr of
synthetic nuclei, the bundled model; :func:`fastunet.bench.volume.bench_volume`; ``--shape``
another such volume, e.g. ``1,1024,1024`` for one image; ``--tiff``: the same volume as an
uncompressed TIFF, one image when Z is 1, as a microscope or ImageJ exports it), a process
of its own from start to exit, with Python's bytecode cache as an installation has it; its
wall time and its CPU time (user + system) are recorded. The variants' object counts are
compared too (a variant that changes the result says so).

    python benchmarks/segment_ab.py --variant before=49c8a22 --variant now=. --rounds 10
    python benchmarks/segment_ab.py --variant telemetry=. --variant no-telemetry=.,CI=true
    python benchmarks/segment_ab.py --variant before=3714c53 --variant now=. --shape 1,2300,2300 --tiff
    python benchmarks/segment_ab.py --variant before=97202d9 --variant now=. --shape 1,2300,2300 --tiff \
        --args="--object-size 30"

The result is a JSON file in ``--out`` (medians, every round, the ratios of each variant's
median to the first's) to copy to ``benchmarks/results/``. A CPU measurement on whatever else
the machine is doing: only the ratios of one run compare. (The worktree of a revision brings
its ``fastunet`` package; ``fastunet.kernels`` stays the installed one, which a CPU
``segment`` does not use.)
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tifffile
import zarr

REPO = Path(__file__).resolve().parent.parent


def parse_variant(text: str) -> tuple[str, str, dict]:
    """``NAME=REV[,VAR=VALUE...]`` -> ``(name, rev, env)``."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"--variant expects NAME=REV[,VAR=VALUE...] (REV: a git revision or .); got {text!r}.")
    rev, *settings = rest.split(",")
    env = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--variant {text!r}: {item!r} is not VAR=VALUE.")
        env[key] = value
    return name, rev, env


def worktree(rev: str, into: Path) -> tuple[Path, str]:
    """A checkout of ``rev`` in ``into`` (``.``: the working tree itself), and its commit."""
    if rev == ".":
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "fastunet"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return REPO, commit + ("+changes" if dirty else "")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(into), rev], check=True,
                   capture_output=True)
    commit = subprocess.run(["git", "-C", str(into), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    return into, commit


def run_once(root: Path, env: dict, volume: Path, out: Path, extra: tuple = ()) -> tuple[float, float, int]:
    """(wall s, CPU s, objects) of one ``fastunet segment`` process of the code in ``root``."""
    full = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    full.update(env)
    full["PYTHONPATH"] = str(root) + (os.pathsep + full["PYTHONPATH"] if full.get("PYTHONPATH") else "")
    axes = ["--axes", "ZYX"] if volume.suffix == ".zarr" or _tiff_ndim(volume) == 3 else []
    argv = [sys.executable, "-m", "fastunet", "segment", str(volume), "-o", str(out), *axes, "--overwrite", "-q",
            *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=full, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"segment failed ({root}):\n{done.stderr[-2000:]}")
    group = zarr.open_group(str(out), mode="r")
    objects = int(group.attrs["fastunet"]["summary"]["objects"])
    return seconds, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, objects


def _tiff_ndim(path: Path) -> int:
    with tifffile.TiffFile(path) as tif:
        return len(tif.series[0].shape)


def tiff_copy(volume: Path) -> Path:
    """The zarr ``volume`` as an uncompressed TIFF beside it (written once; a 2D image when it
    has one plane)."""
    path = volume.with_suffix(".tif")
    if not path.exists():
        data = zarr.open_array(str(volume), mode="r")[...]
        tmp = path.with_name(f".{path.name}.tmp")
        tifffile.imwrite(tmp, data[0] if data.shape[0] == 1 else data)
        os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, help="NAME=REV[,VAR=VALUE...] (two or more)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", default="segment-ab", help="folder of the result JSON")
    parser.add_argument("--note", default="")
    parser.add_argument("--shape", default="2,2048,2048", help="Z,Y,X of the synthetic volume (default: P7's)")
    parser.add_argument("--tiff", action="store_true", help="the volume as an uncompressed TIFF (Z 1: one 2D image)")
    parser.add_argument("--args", default="", help='more arguments of every segment, e.g. --args="--object-size 30"')
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    if len(variants) < 2 or len({n for n, _, _ in variants}) != len(variants):
        raise SystemExit("Give two or more --variant, each with a name of its own.")
    from fastunet.bench.results import write_result
    from fastunet.bench.volume import bench_volume, cache_volume_path, default_cache_dir

    shape = tuple(int(n) for n in args.shape.split(","))
    if len(shape) != 3 or min(shape) < 1:
        raise SystemExit(f"--shape expects Z,Y,X; got {args.shape!r}.")
    volume = cache_volume_path(default_cache_dir(), shape)
    bench_volume(volume, shape)
    if args.tiff:
        volume = tiff_copy(volume)
    with tempfile.TemporaryDirectory() as tmp:
        roots, commits = {}, {}
        for name, rev, _ in variants:
            roots[name], commits[name] = worktree(rev, Path(tmp) / f"tree-{name}")
        try:
            times = {n: [] for n, _, _ in variants}
            cpu = {n: [] for n, _, _ in variants}
            objects = {n: set() for n, _, _ in variants}
            extra_args = tuple(shlex.split(args.args))
            for r in range(args.rounds + 1):
                order = variants if r % 2 == 0 else variants[::-1]
                for name, _, env in order:
                    wall, cpu_s, count = run_once(roots[name], env, volume, Path(tmp) / f"{name}.zarr", extra_args)
                    objects[name].add(count)
                    if r:  # round 0 warms up
                        times[name].append(round(wall, 4))
                        cpu[name].append(round(cpu_s, 4))
                print(f"round {r}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n, _, _ in variants
                                                               if times[n]), flush=True)
        finally:
            for name, rev, _ in variants:
                if rev != ".":
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(roots[name])],
                                   capture_output=True)
    first = variants[0][0]
    figures, ratios = {}, {}
    for name, rev, env in variants:
        figures[f"{name}.seconds"] = statistics.median(times[name])
        figures[f"{name}.seconds_all"] = times[name]
        figures[f"{name}.cpu_s"] = statistics.median(cpu[name])
        figures[f"{name}.objects"] = sorted(objects[name])
        if name != first:
            ratios[f"{name}_vs_{first}"] = statistics.median(times[first]) / statistics.median(times[name])
            ratios[f"{name}_vs_{first}_cpu_s"] = statistics.median(cpu[first]) / statistics.median(cpu[name])
    extra = {"variants": {n: {"rev": rev, "commit": commits[n], "env": env} for n, rev, env in variants},
             "rounds": args.rounds, "volume_shape": "x".join(map(str, shape)), "note": args.note,
             "input": "tiff" if args.tiff else "zarr", "args": args.args,
             "loadavg_after": list(os.getloadavg())}
    path = write_result("segment-ab", figures, ratios, out_dir=Path(args.out), extra=extra)
    for name, _, _ in variants:
        print(f"{name:>16}: median {figures[f'{name}.seconds']:.3f} s, CPU {figures[f'{name}.cpu_s']:.2f} s, "
              f"objects {figures[f'{name}.objects']}")
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
