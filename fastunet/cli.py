"""The ``fastunet`` command line: one file, one sub-command per function."""

from __future__ import annotations

import argparse
import re
import sys

from .errors import UserError

__all__ = ["main", "build_parser"]


def _cmd_info(args: argparse.Namespace) -> int:
    from . import geometry
    from .model import count_parameters
    from .modelfile import read_model

    bundle = read_model(args.model)
    model, cfg = bundle.module, bundle.config
    ctx = geometry.context(cfg.depth)
    # A few sizes from the smallest valid one up to ~1100 px (more than one GPU tile's worth
    # of output), plus the paper's 572 and 1052 when this depth can take them.
    smallest = geometry.min_input_size(cfg.depth)
    sizes = geometry.valid_input_sizes(cfg.depth, max_size=max(1100, smallest + 6 * 2**cfg.depth))
    picks = [s for s in sizes if s in (572, 1052)]
    shown = sorted(set(sizes[:: max(1, len(sizes) // 6)] + picks))
    print(f"model          {args.model}")
    for key, value in cfg.to_dict().items():
        print(f"{key:<14} {value}")
    print(f"widths         {', '.join(str(w) for w in cfg.widths)}")
    print(f"conv layers    {cfg.num_conv_layers}")
    print(f"parameters     {count_parameters(model):,}")
    print(f"context        {ctx} px per side")
    print(f"normalization  {bundle.normalization.to_dict()}")
    print("valid tiles    " + ", ".join(f"{s}->{geometry.output_size(s, cfg.depth)}" for s in shown))
    if bundle.extra:
        for key, value in bundle.extra.items():
            print(f"{key:<14} {value}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    for path in bench.run(args.only, out_dir=args.out, quick=args.quick, cache_dir=args.cache):
        print(f"wrote {path}")
    print("to publish them: copy them to benchmarks/results/ and run python benchmarks/report.py")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    import warnings

    from .io import InputMovedWarning
    from .modelfile import default_model_path
    from .segmentation import NonFiniteWarning, Segmenter, summary_line

    model = args.model if args.model is not None else default_model_path()
    block = None
    if args.block is not None:
        try:
            block = tuple(int(v) for v in args.block.split(","))
        except ValueError:
            raise UserError(f"--block expects pixel counts separated by commas, e.g. 1,512,512; got {args.block!r}.") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteWarning)
        warnings.simplefilter("always", InputMovedWarning)
        with Segmenter(model, tile=args.tile, batch_size=args.batch_size, device=args.device,
                       backend=args.backend, dtype=args.dtype) as seg:
            seg.segment(
                args.input, args.out, axes=args.axes, output_kind=args.output_kind, zarr_format=args.zarr_format,
                resume=args.resume, overwrite=args.overwrite, scheduler=args.scheduler, workers=args.workers,
                gpus=args.gpus, progress=not args.quiet, block=block, object_size=_object_size(args.object_size),
            )  # fmt: skip
    for w in caught:
        if issubclass(w.category, (NonFiniteWarning, InputMovedWarning)):
            print(f"fastunet segment: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if not args.quiet:
        print(summary_line(seg.last_summary, args.out))
    return 0


def _train_command(args: argparse.Namespace) -> str:
    """The command line of a training run, rebuilt from its arguments (stored in the model)."""
    import shlex

    words = ["fastunet", "train", args.images, args.labels, "-o", args.output]
    for key, value in sorted(vars(args).items()):
        if key in ("images", "labels", "output", "func", "command") or value is None or value is False:
            continue
        words += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return shlex.join(words)


def _cmd_train(args: argparse.Namespace) -> int:

    from .train import AugmentConfig, TrainConfig, check_model_name, checkpoint_path, train

    output = check_model_name(args.output)  # before the other checks: a .pt name is wrong whatever exists
    if output.exists() and not (args.overwrite or args.resume):
        raise UserError(f"{str(output)!r} already exists; pass --overwrite to replace it (or --resume to continue).")
    if not output.parent.is_dir():
        raise UserError(f"The folder of {str(output)!r} does not exist; create it first.")
    if args.resume and not checkpoint_path(output).is_file():
        raise UserError(f"No checkpoint {str(checkpoint_path(output))!r} to resume; run without --resume.")
    options = {
        "tile": args.tile,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "lr_schedule": args.lr_schedule,
        "lr_period": args.lr_period,
        "base_channels": args.base_channels,
        "depth": args.depth,
        "device": args.device,
        "amp": args.amp,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "iterations": args.iterations,
        "epochs": args.epochs,
        "val_every": args.val_every,
        "checkpoint_every": args.checkpoint_every,
        "w0": args.w0,
        "sigma": args.sigma,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if args.no_augment:
        options["augment"] = AugmentConfig.none()
    try:
        config = TrainConfig(**options)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    result = train(
        args.images, args.labels, output, config=config, resume=args.resume, progress=not args.quiet,
        curve=args.curve, weight_figure=args.weight_figure, axes=args.axes, command=_train_command(args),
    )  # fmt: skip
    if args.quiet:
        for message in result.notes:
            print(f"note: {message}", file=sys.stderr)
    val = result.val or {}
    scores = ", ".join(f"{k} {v:.4f}" for k, v in val.items()) or "no validation images"
    print(f"trained {result.steps} steps ({result.tiles_per_second:.2f} tiles/s): {scores}")
    print(f"wrote {result.output} (checkpoint {result.checkpoint}, curve {result.curve})")
    if args.weight_figure:
        print(f"wrote {args.weight_figure}")
    return 0


def _object_size(text: str | None):
    """--object-size: a number of pixels, or a word (auto, truth) the library checks."""
    try:
        return None if text is None else float(text)
    except ValueError:
        return text


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from .evaluate import evaluate, evaluate_styles, parse_styles, style_table

    common = dict(device=args.device, backend=args.backend, dtype=args.dtype, tile=args.tile,
                  batch_size=args.batch_size, preview=args.preview, object_size=_object_size(args.object_size))
    if args.synthetic is not None:
        if args.images or args.labels:
            raise UserError("Pass either IMAGES LABELS or --synthetic N, not both.")
        results = evaluate_styles(args.model, styles=parse_styles(args.style), n_images=args.synthetic,
                                  seed=args.seed, **common)
        what = f"{args.synthetic} synthetic images per style (seeds {args.seed}..{args.seed + args.synthetic - 1})"
        result = next(iter(results.values())) if len(results) == 1 else None
    else:
        if not (args.images and args.labels):
            raise UserError("Pass IMAGES and LABELS (TIFF files, folders of TIFFs or zarr), or --synthetic N.")
        result = evaluate(args.images, args.labels, args.model, axes=args.axes, **common)
        what = f"{args.images}"
    size = f" at object size {args.object_size}" if args.object_size else ""
    print(f"model {args.model or 'default (bundled)'} on {what}{size}:")
    print(f"  {result}" if result is not None else style_table(results))
    if args.json:
        with open(args.json, "w") as f:
            data = result.to_dict() if result is not None else {"styles": {k: v.to_dict() for k, v in results.items()}}
            json.dump(data, f, indent=2)
        print(f"wrote {args.json}")
    if args.preview:
        print(f"wrote {args.preview}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        raise UserError(f"--shape expects Z,Y,X sizes separated by commas, e.g. 8,1024,1024; got {args.shape!r}.") from None
    run_demo(args.output, shape=shape, seed=args.seed, model=args.model, device=args.device, backend=args.backend,
             dtype=args.dtype, overwrite=args.overwrite, progress=not args.quiet)
    return 0


def _add_network_options(p: argparse.ArgumentParser, *, tile: bool = True) -> None:
    """--model, --tile, --batch-size, --device, --backend, --dtype: how the network runs."""
    p.add_argument("--model", help="fastunet .safetensors model file (default: the bundled model)")
    if tile:
        p.add_argument("--tile", type=int, help="network input tile edge, e.g. 572 (388-pixel output); default: "
                       "the largest that fits the device")
        p.add_argument("--batch-size", type=int, help="tiles per network call (default 4 on CUDA, 2 on the CPU)")
    p.add_argument("--device", help="cuda:N or cpu (default: cuda when available)")
    p.add_argument("--backend", choices=("auto", "triton", "torch"), default="auto",
                   help="auto: fused Triton kernels on CUDA, PyTorch elsewhere; triton on the CPU runs the "
                        "kernels under the Triton interpreter (about 1000x slower: for checking them)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "tf32", "fp32"), help="default bf16 on CUDA, fp32 on the CPU")


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
    p.add_argument("--out", metavar="DIR", help="folder for the JSON results (default: ./fastunet-bench-results)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, no torch.compile baseline")
    p.add_argument("--cache", metavar="DIR", help="folder for the generated volume of P4/P5 (a few GiB; default: "
                   "~/.cache/fastunet/bench), reused when present")
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
    p.add_argument("--axes", help="axes of a plain array, e.g. ZYX, CYX, CZYX (default: from metadata)")
    _add_network_options(p)
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
                   "chunks (default: about 8 Mvoxels on CUDA, 2 on the CPU, along the chunks)")
    p.add_argument("--object-size", metavar="PIXELS|auto", help="typical object diameter in the input: rescale "
                   "it to the model's training object size (auto: estimate it; default: the input's own scale)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary line")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser(
        "train",
        help="train a U-Net on images with instance (or 0/1) labels",
        description="Train as in the paper: weighted cross-entropy with border weights, elastic "
        "deformations; Adam (or the paper's SGD with momentum 0.99) on a cosine learning-rate schedule, "
        "the best validation's weights kept; resumable checkpoints beside the output.",
    )
    p.add_argument("images", help="a TIFF file, a folder of TIFFs or a zarr array/group: 2D images or (Z, Y, X) stacks")
    p.add_argument("labels", help="the labels in the same form (instance ids, or 0/1 whose components become objects)")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iterations", type=int, help="optimizer steps (default 2000)")
    length.add_argument("--epochs", type=float, help="training length in passes over the training pixels")
    p.add_argument("--tile", type=int, help="input tile edge, a valid size for --depth (default 316)")
    p.add_argument("--batch-size", type=int, help="tiles per step (default 1, as in the paper)")
    p.add_argument(
        "--optimizer", choices=("sgd", "adam"), help="adam (default: converges faster) or sgd (momentum 0.99, the paper)"
    )
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"),
                   help="cosine (default): from --lr down to 1%% of it over --lr-period steps, then again; or constant")
    p.add_argument("--lr-period", type=int, help="steps of one cosine cycle (default 2000)")
    p.add_argument("--base-channels", type=int, help="feature channels of the first level (default 16)")
    p.add_argument("--depth", type=int, help="number of 2x2 max-pools (default 3)")
    p.add_argument("--val-fraction", type=float, help="fraction of the images held out for validation (default 0.2)")
    p.add_argument("--val-every", type=int, help="steps between validations (default 100)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    p.add_argument("--w0", type=float, help="border weight amplitude (default 10)")
    p.add_argument("--sigma", type=float, help="border weight width in pixels (default 5)")
    p.add_argument("--no-augment", action="store_true", help="plain random crops, no deformations or gray-value changes")
    p.add_argument("--axes", help="axes of files whose metadata do not say, e.g. ZYX (3D arrays default to ZYX)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=("none", "bf16"), help="bf16 autocast on CUDA (default none)")
    p.add_argument("--seed", type=int, help="seed of the split, the weights, the tiles and dropout (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint beside the output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--curve", help="training-curve PNG (default: <output>.curve.png)")
    p.add_argument("--weight-figure", help="PNG of the first training image, its target and weight map")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="score a model against ground truth: foreground IoU and instance F1 (IoU 0.5)",
        description="Segment images with the engine and score them against instance labels, 2D slice by "
        "slice: foreground IoU, and instance F1 at IoU 0.5 with the predicted objects taken as the "
        "connected components of the foreground. --synthetic N scores freshly generated nuclei images.",
    )
    p.add_argument("images", nargs="?", help="TIFF file, folder of TIFFs or zarr: 2D images or (Z, Y, X) stacks")
    p.add_argument("labels", nargs="?", help="their instance labels in the same form")
    p.add_argument("--synthetic", type=int, metavar="N", help="score on N fresh synthetic images per style instead")
    p.add_argument("--style", help="synthetic styles: all (default), held-out, train, or names separated by commas")
    p.add_argument("--object-size", metavar="PIXELS|auto|truth", help="typical object diameter of the images (see "
                   "segment); truth: each synthetic image's true one")
    p.add_argument("--seed", type=int, default=2026, help="first seed of the synthetic images (default 2026)")
    p.add_argument("--axes", help="axes of files whose metadata do not say, e.g. ZYX")
    _add_network_options(p)
    p.add_argument("--json", help="also write the scores to this JSON file")
    p.add_argument("--preview", help="PNG of the first image: prediction overlaid, truth outlines")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "demo",
        help="segment a synthetic nuclei volume end to end and write a preview PNG",
        description="Writes a synthetic nuclei stack (volume.zarr) and its truth (truth.zarr), segments it "
        "with fastunet segment (labels.zarr), prints the scores against the truth and writes preview.png.",
    )
    p.add_argument("-o", "--output", default="fastunet-demo", help="folder for the demo files (default fastunet-demo)")
    p.add_argument("--shape", default="8,1024,1024", help="Z,Y,X of the synthetic volume (default 8,1024,1024)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic volume (default 0)")
    _add_network_options(p, tile=False)
    p.add_argument("--overwrite", action="store_true", help="replace a previous demo in the folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_demo)
    return parser


# Library parameters whose command-line flag is not ``--`` + the name with dashes.
_PARAMETER_FLAGS = {
    "segment": {"output": "-o", "output_kind": "--output"},
    "bench": {"out_dir": "--out", "cache_dir": "--cache"},
}


def to_flags(message: str, args: argparse.Namespace) -> str:
    """A library error in the words of the command line: ``name=True`` and a bare ``name=``
    become ``--name``, ``name="value"`` and ``name=<number>`` become ``--name value``, for the options of
    ``args.command`` (library errors speak of parameters, which Python callers see). Other
    forms (``name='value'``, ``name=[...]``: recorded values quoted by ``repr``) stay."""
    flags = {dest: "--" + dest.replace("_", "-") for dest in vars(args) if dest not in ("func", "command")}
    flags.update(_PARAMETER_FLAGS.get(args.command, {}))
    if not flags:
        return message
    names = "|".join(re.escape(n) for n in sorted(flags, key=len, reverse=True))

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if match.group("number") is not None:
            return f"{flags[name]} "
        if value.startswith('"'):
            return f"{flags[name]} {value[1:-1]}"
        return flags[name]  # name=True, or the parameter named on its own (name=)

    pattern = rf"(?<![\w.-])({names})=(True\b|\"[^\"]*\"|(?P<number>(?=[0-9]))|(?=[\s,.;:)]|$))"
    return re.sub(pattern, flag, message)


def configure_process(args: argparse.Namespace) -> None:
    """The process-wide settings a command's options imply, made here, by the program that
    owns the process (the library never changes them):

    * ``--backend triton`` on a machine without CUDA runs the kernels under the Triton
      interpreter, which must be switched on before triton is first imported;
    * ``--dtype fp32`` / ``tf32`` set PyTorch's TF32 switches for its CUDA convolutions and
      matmuls (the torch backend checks that they match the dtype).
    """
    import os

    import torch

    if getattr(args, "backend", None) == "triton" and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if getattr(args, "dtype", None) in ("fp32", "tf32") and torch.cuda.is_available():
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.dtype == "tf32"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastunet`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure_process(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"fastunet {args.command}: error: {to_flags(str(exc), args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = {
            "segment": "; the finished blocks are kept: run the same command with --resume to continue",
            "train": "; run the same command with --resume to continue from the checkpoint",
        }.get(args.command, "")
        print(f"fastunet {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
