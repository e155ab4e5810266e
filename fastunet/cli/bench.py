"""``fastunet bench``: the benchmarks (fastunet.bench), one JSON result each."""

from __future__ import annotations

import argparse

from .common import add_common_options, epilog

__all__ = ["add_parser", "run"]

EXAMPLES = """\
fastunet bench --out bench-results          # all benchmarks (needs CUDA)
fastunet bench --only P1,P2 --quick
fastunet bench --only P7 --out benchmarks/results   # the CPU path (no GPU needed)
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="GPU benchmarks vs cuDNN / PyTorch eager / torch.compile (needs CUDA)",
                       description="GPU benchmarks of the kernels and the engine; one JSON result per benchmark.",
                       epilog=epilog(EXAMPLES), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated subset, e.g. P1,P2 (default: P1-P6, which need CUDA); P7: the "
                   "CPU benchmark (vs MONAI, no GPU needed); S1: the scale benchmark (a local dask cluster, CPU too)")
    p.add_argument("--out", metavar="DIR", help="folder for the JSON results (default: ./fastunet-bench-results)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, no torch.compile baseline")
    p.add_argument("--cache", metavar="DIR", help="folder for the generated volume of P4/P5/P7 (a few GiB; default: "
                   "~/.cache/fastunet/bench), reused when present")
    p.add_argument("--note", help="a note recorded in every result file, e.g. 'shared machine: load 7 on 2 cores'")
    add_common_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import bench

    for path in bench.run(args.only, out_dir=args.out, quick=args.quick, cache_dir=args.cache, note=args.note):
        print(f"wrote {path}")
    print("to publish them: copy them to benchmarks/results/ and run python benchmarks/report.py")
    return 0
