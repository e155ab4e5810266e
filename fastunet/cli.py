"""The ``fastunet`` command line: one file, one sub-command per function."""

from __future__ import annotations

import argparse
import sys

from .errors import UserError

__all__ = ["main", "build_parser"]


def _cmd_info(args: argparse.Namespace) -> int:
    from . import geometry
    from .model import count_parameters
    from .modelfile import load_model

    model = load_model(args.model)
    cfg = model.config
    ctx = geometry.context(cfg.depth)
    sizes = geometry.valid_input_sizes(cfg.depth, max_size=1100, min_size=300)
    picks = [s for s in sizes if s in (572, 1052)] or []
    shown = sorted(set(sizes[:: max(1, len(sizes) // 6)] + picks))
    print(f"model          {args.model}")
    for key, value in cfg.to_dict().items():
        print(f"{key:<14} {value}")
    print(f"widths         {', '.join(str(w) for w in cfg.widths)}")
    print(f"conv layers    {cfg.num_conv_layers}")
    print(f"parameters     {count_parameters(model):,}")
    print(f"context        {ctx} px per side")
    print(f"normalization  {model.normalization.to_dict()}")
    print("valid tiles    " + ", ".join(f"{s}->{geometry.output_size(s, cfg.depth)}" for s in shown))
    if model.extra:
        for key, value in model.extra.items():
            print(f"{key:<14} {value}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    only = [name.strip().upper() for name in args.only.split(",")] if args.only else None
    for path in bench.run(only, out_dir=args.out, quick=args.quick):
        print(f"wrote {path}")
    print("regenerate the table with: python benchmarks/report.py")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastunet",
        description="U-Net segmentation of huge biomedical images (Ronneberger et al. 2015).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="print a model file's config, size and valid tile sizes")
    p.add_argument("model", help="a fastunet .safetensors model file")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("bench", help="GPU benchmarks vs cuDNN / PyTorch eager / torch.compile (needs CUDA)")
    p.add_argument("--only", help="comma-separated subset, e.g. P1,P2 (default: all)")
    p.add_argument("--out", help="folder for the JSON results (default: benchmarks/results)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, no torch.compile baseline")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastunet`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"fastunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastunet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
