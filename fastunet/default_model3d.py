"""The default 3D model shipped with fastunet (``--model 3d``): how it was built.

``fastunet segment stack.zarr --model 3d`` uses ``fastunet/models/default3d.safetensors``: a
3D U-Net (Cicek et al. 2016; 3x3x3 valid convolutions, base 16 channels, depth 2, pools
1x2x2 then 2x2x2: voxels of about 2 x 1 x 1 pixels) trained on synthetic 3D stacks of nuclei
only (:mod:`fastunet.synthetic3d`: the styles :data:`TRAIN_STYLES_3D`; ``deep`` is held out)
with the paper's weighted loss (border weights in physical units) and 3D augmentation.
Rebuild it with::

    python -m fastunet.default_model3d build --workdir /tmp/fastunet-3d

which writes the training stacks (seeds :data:`TRAIN_SEEDS_3D`) as TIFF files and trains
with :func:`fastunet.train.train` exactly as ``fastunet train`` with :data:`TRAIN_ARGS_3D`
does (that command line is stored in the model file). Its card, with scores per style on
stacks it never saw, is ``fastunet/models/default3d.md``
(:mod:`fastunet.evaluate3d`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .errors import UserError
from .modelfile import DEFAULT_MODEL_3D

__all__ = ["TRAIN_STYLES_3D", "TRAIN_SEEDS_3D", "VOLUME_SHAPE", "TRAIN_ARGS_3D", "style_of_3d",
           "write_training_volumes", "build"]

TRAIN_STYLES_3D = ("confocal", "lightsheet", "widefield")
TRAIN_SEEDS_3D = range(20_000, 20_012)  # 12 stacks, 4 per style: 10 for training, 2 for validation
VOLUME_SHAPE = (32, 128, 128)
TRAIN_ARGS_3D = (
    "--dims", "3",
    "--voxel-size", "2,1,1",
    "--base-channels", "16",
    "--depth", "2",
    "--tile", "76",
    "--tile-z", "42",
    "--batch-size", "1",
    "--optimizer", "adam",
    "--lr", "1e-3",
    "--lr-schedule", "cosine",
    "--lr-period", "1500",
    "--iterations", "1500",
    "--val-fraction", "0.17",
    "--val-every", "250",
    "--checkpoint-every", "250",
    "--seed", "0",
    "--device", "cpu",
)


def style_of_3d(seed: int) -> str:
    """The training style of the stack drawn from ``seed`` (the styles take turns)."""
    return TRAIN_STYLES_3D[(seed - TRAIN_SEEDS_3D.start) % len(TRAIN_STYLES_3D)]


def write_training_volumes(workdir: str | Path, seeds=TRAIN_SEEDS_3D, style=style_of_3d,
                           shape=VOLUME_SHAPE) -> tuple[Path, Path]:
    """Write synthetic stacks and their instance labels as ImageJ TIFFs (with their Z step):
    ``workdir/images/vol_SEED.tif`` and ``workdir/labels/vol_SEED.tif``; returns both folders."""
    import tifffile

    from .synthetic3d import style_volume

    workdir = Path(workdir)
    images, labels = workdir / "images", workdir / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        image, truth, z_step = style_volume(style(seed), shape, seed=seed)
        meta = {"axes": "ZYX", "spacing": z_step}
        tifffile.imwrite(images / f"vol_{seed}.tif", image, imagej=True, metadata=meta)
        tifffile.imwrite(labels / f"vol_{seed}.tif", truth.astype("uint16"), imagej=True, metadata=meta)
    return images, labels


def build(workdir: str | Path, output: str | Path = DEFAULT_MODEL_3D, *, quiet: bool = False) -> int:
    """Regenerate the training stacks in ``workdir`` and train the default 3D model into
    ``output`` through the ``fastunet train`` command (its line is stored in the model)."""
    import shutil

    from .cli.main import main

    workdir = Path(workdir)
    images, labels = write_training_volumes(workdir)
    trained = workdir / "default3d.safetensors"
    args = ["train", str(images), str(labels), "-o", str(trained), *TRAIN_ARGS_3D, "--overwrite",
            "--weight-figure", str(workdir / "weights3d.png")] + (["--quiet"] if quiet else [])
    print("fastunet " + shlex.join(args), flush=True)
    code = main(args)
    if code:
        return code
    shutil.copyfile(trained, output)
    print(f"copied {trained} to {output}")
    return 0


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastunet.default_model3d", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="regenerate the training stacks and train the default 3D model")
    p.add_argument("--workdir", required=True, help="folder for the training stacks, checkpoint and curves")
    p.add_argument("-o", "--output", default=str(DEFAULT_MODEL_3D), help="model file (default: the packaged one)")
    p.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        return build(args.workdir, args.output, quiet=args.quiet)
    except UserError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
