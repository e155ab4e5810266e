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


def _cmd_segment(args: argparse.Namespace) -> int:
    import warnings

    from .modelfile import default_model_path
    from .segment import NonFiniteWarning, Segmenter, summary_line

    model = args.model if args.model is not None else default_model_path()
    block = None
    if args.block is not None:
        try:
            block = tuple(int(v) for v in args.block.split(","))
        except ValueError:
            raise UserError(f"--block expects pixel counts separated by commas, e.g. 1,512,512; got {args.block!r}.") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteWarning)
        with Segmenter(model, tile=args.tile, batch_size=args.batch_size, device=args.device,
                       backend=args.backend, dtype=args.dtype) as seg:
            seg.segment(
                args.input, args.out, axes=args.axes, output_kind=args.output_kind, zarr_format=args.zarr_format,
                resume=args.resume, overwrite=args.overwrite, scheduler=args.scheduler, workers=args.workers,
                gpus=args.gpus, progress=not args.quiet, block=block,
            )  # fmt: skip
    for w in caught:
        if issubclass(w.category, NonFiniteWarning):
            print(f"fastunet segment: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if not args.quiet:
        print(summary_line(seg.last_summary, args.out))
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

    p = sub.add_parser(
        "segment",
        help="segment a zarr / OME-Zarr / TIFF volume with overlap-tile inference (seamless, resumable)",
        description="Overlap-tile inference as in the paper: mirrored borders, tiles on the max-pool "
        "grid (identical to running the network once on the whole image), one dask task per output "
        "block; output zarr (default v3) or TIFF.",
    )
    p.add_argument("input", help="zarr array/group (OME-Zarr: level 0), TIFF or OME-TIFF file")
    p.add_argument("-o", dest="out", metavar="OUTPUT", required=True, help="output .zarr folder or .tif file")
    p.add_argument("--model", help="fastunet .safetensors model file (default: the bundled model)")
    p.add_argument("--axes", help="axes of a plain array, e.g. ZYX, CYX, CZYX (default: from metadata)")
    p.add_argument("--tile", type=int, help="network input tile edge, e.g. 572 (388-pixel output); default: "
                   "the largest that fits the device")
    p.add_argument("--batch-size", type=int, help="tiles per network call (default 4 on CUDA, 2 on the CPU)")
    p.add_argument("--device", help="cuda:N or cpu (default: cuda when available)")
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto",
                   help="auto: fused Triton kernels on CUDA, PyTorch elsewhere")
    p.add_argument("--dtype", choices=("bf16", "fp16", "tf32", "fp32"), help="default bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--output", dest="output_kind", choices=("labels", "probs", "both"), default="labels",
                   help="uint8 labels, float16 class probabilities, or both (default labels)")
    p.add_argument("--zarr-format", type=int, choices=(2, 3), default=3, help="zarr format of the output (default 3)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run into the same output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing fastunet output")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="run on this dask.distributed scheduler")
    where.add_argument("--workers", type=int, metavar="N", help="start N local dask worker processes")
    where.add_argument("--gpus", metavar="0,1,...", help="one dask worker process per GPU")
    p.add_argument("--block", metavar="[Z,]Y,X", help="output block shape in pixels, a multiple of the output "
                   "chunks (default: about 8 Mvoxels along the chunks)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    p.set_defaults(func=_cmd_segment)
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
