"""``fastunet demo``: a synthetic nuclei volume segmented end to end, with a preview PNG."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .common import add_common_options, add_network_options, epilog, model_argument

__all__ = ["add_parser", "run"]

EXAMPLES = """\
fastunet demo                              # 8 x 1024 x 1024, into ./fastunet-demo
fastunet demo -o /tmp/demo --shape 2,256,256 --overwrite
"""


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "demo",
        help="segment a synthetic nuclei volume end to end and write a preview PNG",
        description="Writes a synthetic nuclei stack (volume.zarr) and its truth (truth.zarr), segments it "
        "with fastunet segment (labels.zarr), prints the scores against the truth and writes preview.png.",
        epilog=epilog(EXAMPLES), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-o", "--output", default="fastunet-demo", help="folder for the demo files (default fastunet-demo)")
    p.add_argument("--shape", default="8,1024,1024", help="Z,Y,X of the synthetic volume (default 8,1024,1024)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic volume (default 0)")
    add_network_options(p, tile=False)
    p.add_argument("--overwrite", action="store_true", help="replace a previous demo in the folder")
    add_common_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        raise UserError(f"--shape expects Z,Y,X sizes separated by commas, e.g. 8,1024,1024; got {args.shape!r}.") from None
    run_demo(args.output, shape=shape, seed=args.seed, model=model_argument(args.model), device=args.device,
             backend=args.backend, dtype=args.dtype, overwrite=args.overwrite, progress=not args.quiet)
    return 0
