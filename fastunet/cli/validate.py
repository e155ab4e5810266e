"""Every flag checked before any work: :func:`validate_flags`, the one flag validator, and
:func:`foreign_flag`, the flags users bring from cellpose, StarDist and nnU-Net answered with
fastunet's own.

Each check in :data:`CHECKS` takes the flag's value (and the other arguments) and raises
:class:`~fastunet.errors.UserError` with one line naming the flag, what it expects and what
came; a value the library would refuse only after minutes of work (a seed numpy rejects, a
scheduler address without a port, a name template with an unknown format code, a label name
with ``..``, a demo too large for this machine, labels that are the images) is refused here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

__all__ = ["validate_flags", "foreign_flag", "FOREIGN_FLAGS", "CHECKS"]

_SEED_MAX = 2**32 - 1

# Flags of cellpose, StarDist and nnU-Net's command lines, and what fastunet takes instead.
FOREIGN_FLAGS = {
    "--use_gpu": "fastunet uses a CUDA GPU when there is one; pick it with --device cuda:0 (or --device cpu)",
    "--gpu_device": "use --device cuda:N",
    "-device": "use --device cuda:N or --device cpu",
    "--diameter": "use --object-size (the objects' diameter in pixels, or auto)",
    "--savedir": "use --output-dir (outputs named by --output-name, default {stem}_seg.zarr)",
    "--outdir": "use --output-dir",
    "--dir": "pass the folder itself as an input: fastunet segment FOLDER --output-dir OUT",
    "-i": "pass the inputs as arguments: fastunet segment IMAGE [IMAGE ...] (files, folders or quoted patterns)",
    "--input": "pass the inputs as arguments: fastunet segment IMAGE [IMAGE ...]",
    "--img_filter": "pass a quoted pattern as the input, e.g. 'images/*_dapi.tif'",
    "--chan": "use --channel (an index or an OME channel name, e.g. --channel DAPI)",
    "--chan2": "use --channel with several channels (e.g. --channel 0,1) for a model trained on more than one",
    "--pretrained_model": "use --model PATH (a fastunet .safetensors file or a bioimage.io package)",
    "--model_type": "use --model PATH; without it the bundled nuclei model is used",
    "--add_model": "models are files: pass --model PATH",
    "--save_tif": "name the output .tif: -o out.tif, or --output-name '{stem}_seg.tif'",
    "--save_png": "fastunet writes zarr or TIFF (-o out.tif); evaluate --preview writes a PNG",
    "--no_npy": "fastunet writes no .npy files: nothing to switch off",
    "--flow_threshold": "fastunet's U-Net has no flows: nothing to set",
    "--cellprob_threshold": "objects are the connected foreground of the class map; --min-size drops small ones",
    "--do_3D": "stacks are segmented slice by slice; --connect-z joins objects across slices",
    "--stitch_threshold": "use --connect-z to join objects across slices",
    "--min_size": "use --min-size",
    "--batch_size": "use --batch-size",
    "--n_epochs": "use --epochs (or --iterations)",
    "--learning_rate": "use --lr",
    "--train": "training is its own command: fastunet train IMAGES LABELS -o model.safetensors",
    "--mask_filter": "train takes the labels as their own argument: fastunet train IMAGES LABELS -o ...",
    "--norm_percentile": "the normalization is stored in the model file; fastunet info MODEL shows it",
    "--prob_thresh": "use --min-confidence P: objects of a lower mean object probability are dropped",
    "--nms_thresh": "fastunet does no non-maximum suppression: nothing to set",
    "--n_tiles": "fastunet tiles by itself; --tile sets the network's input edge",
    "--outname": "use --output-name TEMPLATE, e.g. '{stem}_seg.tif'",
    "--model_name": "use --model PATH",
    "--model_folder": "use --model PATH",
    "--pnorm": "the normalization is stored in the model file; fastunet info MODEL shows it",
    "-d": "nnU-Net's dataset: fastunet takes a model file, --model PATH",
    "-c": "nnU-Net's configuration: 2D slices are the only configuration; pass --axes ZYX for a stack",
    "-f": "nnU-Net's fold: fastunet takes one model file, --model PATH",
    "-tr": "nnU-Net's trainer: train with fastunet train IMAGES LABELS -o model.safetensors",
    "-p": "nnU-Net's plans: the model file holds everything, --model PATH",
    "-chk": "use --model PATH",
    "-m": "use --model PATH",
    "-npp": "fastunet reads with threads by itself; --workers N starts dask worker processes",
    "-nps": "fastunet reads with threads by itself; --workers N starts dask worker processes",
    "--disable_tta": "fastunet does no test-time augmentation: nothing to switch off",
    "--save_probabilities": "use --kind instances,probs",
    "--verbose_level": "use -v or -vv",
}


def foreign_flag(argv: list[str]) -> str | None:
    """The first flag of another tool in ``argv`` (before ``--``), as a line naming fastunet's
    equivalent; None when there is none."""
    for token in argv:
        if token == "--":
            return None
        flag = token.split("=", 1)[0]
        if flag in FOREIGN_FLAGS:
            return f"{flag} is not a fastunet option: {FOREIGN_FLAGS[flag]}."
    return None


# ----------------------------------------------------------------------------- the checks
def _seed(value, args) -> None:
    if not 0 <= value <= _SEED_MAX:
        raise UserError(f"--seed expects a whole number from 0 to {_SEED_MAX}; got {value}.")


def _count(minimum: int):
    def check(value, args, *, _min=minimum) -> None:
        if isinstance(value, int) and value < _min:  # words (--min-size auto) are checked by their parser
            raise UserError(f"{{flag}} expects a whole number >= {_min}; got {value}.")
    return check


def _scheduler(value: str, args) -> None:
    from ..engine.scheduling import check_scheduler_address

    try:
        check_scheduler_address(value)
    except ValueError as exc:
        raise UserError(str(exc).replace("scheduler=", "--scheduler", 1)) from None


def _template(value: str, args) -> None:
    from .batch import check_template

    flag = "--output-name" if value == args.output_name else "-o"
    check_template(value, flag)


def _label_name(value: str, args) -> None:
    from ..io.outputs import check_label_name

    check_label_name(value)


def _shape(value: str, args) -> None:
    from ..demo import check_demo_size
    from .common import parse_sizes

    check_demo_size(parse_sizes(value, "--shape", "8,1024,1024"), device=args.device)


def _labels(value, args) -> None:
    images = getattr(args, "images", None)
    if images is None or value is None or "://" in str(images) or "://" in str(value):
        return
    if Path(images).expanduser().resolve() == Path(value).expanduser().resolve():
        raise UserError(f"The labels {value!r} are the images {images!r}; pass the label images (instance ids, or "
                        "0/1 masks) as the second argument.")


CHECKS = {
    "seed": _seed,
    "scheduler": _scheduler,
    "output": _template,
    "output_name": _template,
    "label_name": _label_name,
    "shape": _shape,
    "labels": _labels,
    "batch_size": _count(1),
    "workers": _count(1),
    "min_size": _count(0),
    "synthetic": _count(1),
    "iterations": _count(1),
    "val_every": _count(1),
    "checkpoint_every": _count(1),
    "lr_period": _count(1),
}


def validate_flags(args: argparse.Namespace) -> None:
    """Check every flag of a parsed command line before any work; raises
    :class:`~fastunet.errors.UserError` (one line naming the flag) for the first bad one."""
    for dest, check in CHECKS.items():
        value = getattr(args, dest, None)
        if value is None or (dest == "output" and args.command != "segment"):
            continue
        try:
            check(value, args)
        except UserError as exc:
            raise UserError(str(exc).replace("{flag}", "--" + dest.replace("_", "-"))) from None
