"""The default model shipped with fastunet: how it was built, so anyone can rebuild it.

``fastunet segment`` uses ``fastunet/models/default.safetensors`` when no ``--model`` is
given. It is a compact U-Net (base 16 channels, depth 3, 0.48 M parameters, 1.9 MB)
trained on synthetic fluorescence nuclei (:mod:`fastunet.data`) with the paper's weighted
loss and augmentation. Rebuild it with::

    python -m fastunet.default_model build --workdir /tmp/fastunet-default

which writes the training images (seeds :data:`TRAIN_SEEDS`) as TIFF files and runs exactly
``fastunet train`` with :data:`TRAIN_ARGS` (the command is also stored in the model file's
metadata); the shipped file is the output of that build at commit 92bc208. Measure it on
images it never saw (other seeds) with::

    fastunet evaluate --synthetic 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .modelfile import DEFAULT_MODEL

__all__ = ["TRAIN_SEEDS", "IMAGE_SHAPE", "TRAIN_ARGS", "write_training_data", "build"]

TRAIN_SEEDS = range(10_000, 10_036)  # 36 synthetic images: 32 for training, 4 held out
IMAGE_SHAPE = (512, 512)
TRAIN_ARGS = (
    "--base-channels", "16",
    "--depth", "3",
    "--tile", "316",
    "--batch-size", "1",
    "--optimizer", "adam",
    "--lr", "1e-3",
    "--iterations", "8000",
    "--val-fraction", "0.11",
    "--val-every", "500",
    "--checkpoint-every", "500",
    "--seed", "0",
    "--device", "cpu",
)


def write_training_data(workdir: str | Path) -> tuple[Path, Path]:
    """Write the training images and instance labels as TIFF files; returns both folders."""
    import tifffile

    from .data import synthetic_nuclei

    workdir = Path(workdir)
    images, labels = workdir / "images", workdir / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for seed in TRAIN_SEEDS:
        image, instances = synthetic_nuclei(IMAGE_SHAPE, seed=seed, dtype="uint16")
        tifffile.imwrite(images / f"nuclei_{seed}.tif", image)
        tifffile.imwrite(labels / f"nuclei_{seed}.tif", instances)
    return images, labels


def build(workdir: str | Path, output: str | Path = DEFAULT_MODEL, *, quiet: bool = False) -> int:
    """Regenerate the training data in ``workdir`` and train the default model into ``output``."""
    import shutil

    from .cli import main

    workdir = Path(workdir)
    images, labels = write_training_data(workdir)
    trained = workdir / "default.safetensors"  # its checkpoint and curve land beside it
    argv = ["train", str(images), str(labels), "-o", str(trained), *TRAIN_ARGS, "--overwrite",
            "--weight-figure", str(workdir / "weights.png")]
    if quiet:
        argv.append("--quiet")
    status = main(argv)
    if status == 0:
        shutil.copyfile(trained, output)
        print(f"copied {trained} to {output}")
    return status


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastunet.default_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="regenerate the training data and train the default model")
    p.add_argument("--workdir", required=True, help="folder for the training images, checkpoint and curves")
    p.add_argument("-o", "--output", default=str(DEFAULT_MODEL), help="model file (default: the packaged one)")
    p.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    return build(args.workdir, args.output, quiet=args.quiet)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
