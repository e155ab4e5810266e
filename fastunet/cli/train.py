"""``fastunet train``: train a U-Net as in the paper, resumable, with its curve PNG."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UserError
from .common import add_common_options, add_json_option, epilog, human_stream, write_json

__all__ = ["add_parser", "run", "train_command"]

log = logging.getLogger("fastunet.cli")

EXAMPLES = """\
fastunet train images/ labels/ -o nuclei.safetensors --iterations 4000
fastunet train images/ labels/ -o nuclei.safetensors --resume     # after an interruption
fastunet train im.tif lb.tif -o m.safetensors --weight-figure weights.png --json train.json
fastunet train stacks/ labels/ -o nuclei3d.safetensors --dims 3 --voxel-size 2,1,1 --tile 92 --tile-z 50
fastunet train mine/ mine_labels/ -o mine.safetensors --init 2d --lr 3e-4 --iterations 1000   # fine-tune the default
"""

# Options that change what is said, not what is trained: left out of the recorded command.
_NOT_RECORDED = ("images", "labels", "output", "func", "command", "verbose", "log_file", "log_mode", "json")


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", help="a TIFF file, a folder of TIFFs or a zarr array/group: 2D images or (Z, Y, X) stacks")
    p.add_argument("labels", help="the labels in the same form (instance ids, or 0/1 whose components become objects)")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument("--axes", help="axes of files whose metadata do not say, e.g. ZYX (3D arrays default to ZYX)")


def _training_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("training")
    length = group.add_mutually_exclusive_group()
    length.add_argument("--iterations", type=int, help="optimizer steps (default 2000)")
    length.add_argument("--epochs", type=float, help="training length in passes over the training pixels")
    group.add_argument("--tile", type=int, help="input tile edge, a valid size for --depth (default 316)")
    group.add_argument("--batch-size", type=int, help="tiles per step (default 1, as in the paper)")
    group.add_argument("--optimizer", choices=("sgd", "adam"),
                       help="adam (default: converges faster) or sgd (momentum 0.99, the paper)")
    group.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    group.add_argument("--lr-schedule", choices=("cosine", "constant"),
                       help="cosine (default): from --lr down to 1%% of it over --lr-period steps, then again; "
                       "or constant")
    group.add_argument("--lr-period", type=int, help="steps of one cosine cycle (default 2000)")
    group.add_argument("--base-channels", type=int, help="feature channels of the first level (default 16)")
    group.add_argument("--depth", type=int, help="number of 2x2 max-pools (default 3)")
    group.add_argument("--dims", "--spatial-dims", type=int, choices=(2, 3), dest="spatial_dims",
                       help="2 (default): the 2D network, stacks trained slice by slice; 3: the 3D U-Net on (Z, Y, X) "
                       "stacks (objects that span slices)")
    group.add_argument("--tile-z", type=int, help="--dims 3: the tile's Z edge (default: about --tile's physical "
                       "extent)")
    group.add_argument("--voxel-size", metavar="Z,Y,X", help="--dims 3: the stacks' voxel size in any one unit, "
                       "e.g. 2,1,1 (pools keep Z where it is coarse; default: the first image's metadata, else "
                       "isotropic)")
    group.add_argument("--val-fraction", type=float, help="fraction of the images held out for validation (default 0.2)")
    group.add_argument("--val-every", type=int, help="steps between validations (default 100)")
    group.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    group.add_argument("--w0", type=float, help="border weight amplitude (default 10)")
    group.add_argument("--sigma", type=float, help="border weight width in pixels (default 5)")
    group.add_argument("--zoom", metavar="LO,HI", help="random rescale of the training tiles: objects appear LO to "
                       "HI times their size (log-uniform; default 0.8,1.25)")
    group.add_argument("--no-augment", action="store_true", help="plain random crops, no deformations or gray-value "
                       "changes")
    group.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    group.add_argument("--amp", choices=("none", "bf16"), help="bf16 autocast: on CUDA, or on a CPU with bf16 units (AMX/AVX512-BF16) (default none)")
    group.add_argument("--seed", type=int, help="seed of the split, the weights, the tiles and dropout (default 0)")
    group.add_argument("--init", metavar="MODEL", help="fine-tune: start from this model file's weights (2d: the "
                       "default model) with its network and normalization; a lower --lr (e.g. 3e-4) keeps more of "
                       "what it learned")


def _output_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("output")
    group.add_argument("--resume", action="store_true", help="continue from the checkpoint beside the output")
    group.add_argument("--overwrite", action="store_true", help="replace an existing output")
    group.add_argument("--curve", help="training-curve PNG (default: <output>.curve.png)")
    group.add_argument("--weight-figure", help="PNG of the first training image, its target and weight map")
    add_json_option(group, "the result (steps, tiles/s, validation scores, files)")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a U-Net on images with instance (or 0/1) labels",
        description="Train as in the paper: weighted cross-entropy with border weights, elastic "
        "deformations; Adam (or the paper's SGD with momentum 0.99) on a cosine learning-rate schedule, "
        "the best validation's weights kept; resumable checkpoints beside the output.",
        epilog=epilog(EXAMPLES), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_options(p)
    _training_options(p)
    _output_options(p)
    add_common_options(p)
    p.set_defaults(func=run)
    return p


def train_command(args: argparse.Namespace) -> str:
    """The command line of a training run, rebuilt from its arguments (stored in the model)."""
    import shlex

    words = ["fastunet", "train", args.images, args.labels, "-o", args.output]
    for key, value in sorted(vars(args).items()):
        if key in _NOT_RECORDED or value is None or value is False:
            continue
        words += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return shlex.join(words)


_OPTIONS = ("tile", "batch_size", "optimizer", "lr", "lr_schedule", "lr_period", "base_channels", "depth", "device", "amp", "seed",
            "val_fraction", "iterations", "epochs", "val_every", "checkpoint_every", "w0", "sigma", "spatial_dims",
            "tile_z")


def _config(args: argparse.Namespace):
    from ..train import AugmentConfig, TrainConfig
    from ..train.config import default_augment, parse_zoom

    options = {k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None}
    if args.no_augment and args.zoom is not None:
        raise UserError("--zoom and --no-augment contradict each other; give one of them.")
    if args.no_augment:
        options["augment"] = AugmentConfig.none()
    elif args.zoom is not None:
        try:
            options["augment"] = default_augment(parse_zoom(args.zoom))
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if args.voxel_size is not None:
        try:
            options["spacing"] = tuple(float(v) for v in args.voxel_size.split(","))
        except ValueError:
            raise UserError(f"--voxel-size expects three numbers Z,Y,X, e.g. 2,1,1; got {args.voxel_size!r}.") from None
    elif args.spatial_dims == 3 or _init_dims(args.init) == 3:
        from ..train.datasets import voxel_size

        found = voxel_size(args.images, args.axes)  # the pools follow the data's own voxel size
        if found is not None:
            options["spacing"] = found
            log.info("voxel size %s (z, y, x) read from %s's metadata", ",".join(f"{v:g}" for v in found), args.images)
    if args.init is not None:  # the network and normalization are the init model's
        from ..train import fine_tune_config

        return fine_tune_config(args.init, **options)
    try:
        return TrainConfig(**options)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


def _init_dims(init: str | None) -> int | None:
    """The spatial dimensions of ``--init``'s network (None without ``--init``): a 3D model's
    pools follow the voxel size, which is then read from the data as with ``--dims 3``."""
    if init is None:
        return None
    from ..modelfile import read_model_metadata
    from ..train.finetune import init_file

    return read_model_metadata(init_file(init))[0].spatial_dims


def run(args: argparse.Namespace) -> int:
    import contextlib
    import time

    from ..train import check_model_name, checkpoint_path, train
    from .common import plain_progress
    from .signals import set_kept

    output = check_model_name(args.output)  # before the other checks: a .pt name is wrong whatever exists
    if args.resume and not checkpoint_path(output).is_file():
        raise UserError(f"No checkpoint {str(checkpoint_path(output))!r} to resume; run without --resume.")
    started = time.time()
    set_kept(lambda: _kept(checkpoint_path(output), started))
    lines = plain_progress() if not args.quiet and not sys.stderr.isatty() else contextlib.nullcontext()
    with lines:  # a log or a pipe gets a plain line every 30 s, not a bar redrawn with carriage returns
        result = train(
            args.images, args.labels, output, config=_config(args), resume=args.resume, progress=not args.quiet,
            curve=args.curve, weight_figure=args.weight_figure, axes=args.axes, command=train_command(args),
            overwrite=args.overwrite, init=args.init,
        )  # fmt: skip
    if args.quiet:
        for message in result.notes:
            print(f"note: {message}", file=sys.stderr)
    out = human_stream(args)
    val = result.val or {}
    scores = ", ".join(f"{k} {v:.4f}" for k, v in val.items()) or "no validation images"
    if result.tiles_per_second > 0:
        print(f"trained {result.steps} steps ({result.tiles_per_second:.2f} tiles/s): {scores}", file=out)
    else:  # a finished run resumed: no step left to take
        print(f"already trained {result.steps} steps (nothing left to do): {scores}", file=out)
    print(f"wrote {result.output} (checkpoint {result.checkpoint}, curve {result.curve})", file=out)
    if args.weight_figure:
        print(f"wrote {args.weight_figure}", file=out)
    if args.json:
        from .. import __version__

        write_json(args.json, {"command": "train", "version": __version__, "steps": result.steps,
                               "seconds": result.seconds, "tiles_per_second": result.tiles_per_second,
                               "val": result.val, "output": str(result.output),
                               "checkpoint": str(result.checkpoint), "curve": result.curve and str(result.curve),
                               "notes": result.notes})
    return 0


def _kept(checkpoint, started: float) -> str:
    """What an interrupted training kept: the checkpoint this run wrote (it writes one when
    interrupted after a step), or nothing."""
    if checkpoint.is_file() and checkpoint.stat().st_mtime >= started - 1:
        return f"the checkpoint {checkpoint} is kept: run the same command with --resume to continue"
    if checkpoint.is_file():
        return (f"this run wrote no checkpoint; {checkpoint} is the earlier run's: --resume continues from it, "
                "--overwrite starts over")
    return "nothing was kept (no training step was finished): run the command again"
