"""The default model shipped with fastunet: how it was built, so anyone can rebuild it.

``fastunet segment`` uses ``fastunet/models/default.safetensors`` when no ``--model`` is
given. It is a compact U-Net (base 16 channels, depth 3, 0.48 M parameters, 1.9 MB)
trained on synthetic fluorescence nuclei only (:mod:`fastunet.synthetic_styles`: the twelve
training styles, :data:`TRAIN_STYLES`) with the paper's weighted loss and augmentation.
Rebuild it with::

    python -m fastunet.default_model build --workdir /tmp/fastunet-default

which writes the training images (seeds :data:`TRAIN_SEEDS`) as TIFF files, trains with
:func:`fastunet.train.train` exactly as ``fastunet train`` with :data:`TRAIN_ARGS` does (that
command line is stored in the model file's metadata), then chooses the decision threshold
(:func:`calibrate`: a shift of the foreground logit, picked by the mean instance F1 of the
training styles on validation images of seeds :data:`CALIBRATION_SEEDS`). The shipped file
is the output of that recipe's training (``fastunet train`` with :data:`TRAIN_ARGS` on the
images ``build`` writes; 24,000 steps under bf16 autocast, 37 min on a shared 2-core CPU with
AVX512-BF16; the weights of step 23,000 kept), calibrated afterwards with ``python -m
fastunet.default_model calibrate`` (foreground logit +0.4: a pixel is foreground from a
probability of 0.40; objects of a mean probability under 0.70 removed).
Measure it on images it never saw (other seeds), per style, training and held-out, with::

    fastunet evaluate --synthetic 16
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from .default_seeds import CALIBRATION_SEEDS, TRAIN_SEEDS
from .errors import UserError
from .modelfile import DEFAULT_MODEL

if typing.TYPE_CHECKING:
    from .train import TrainConfig

__all__ = ["TRAIN_STYLES", "TRAIN_SEEDS", "style_of", "IMAGE_SHAPE", "TRAIN_ARGS", "write_training_data", "recipe_config",
           "recipe_command", "build", "INTENDED_USE", "NOT_FOR", "model_card", "write_card", "CALIBRATION_SEEDS",
           "CALIBRATION_SHIFTS", "CALIBRATION_CONFIDENCES", "shifted", "calibrate"]

TRAIN_STYLES = ("classic", "small", "textured", "clumped", "mitotic", "widefield", "large", "debris", "autofluorescent",
                "saturated", "dividing", "dim")
IMAGE_SHAPE = (512, 512)
CALIBRATION_SHIFTS = (0.0, 0.2, 0.4, 0.6)  # foreground logit shifts tried (decision thresholds 0.5 .. 0.35)
CALIBRATION_CONFIDENCES = (0.0, 0.6, 0.65, 0.7, 0.75, 0.8)  # min_confidence values tried (0: keep every object)
TRAIN_ARGS = (
    "--base-channels", "16",
    "--depth", "3",
    "--tile", "316",
    "--batch-size", "1",
    "--optimizer", "adam",
    "--lr", "1e-3",
    "--lr-schedule", "cosine",
    "--lr-period", "24000",
    "--iterations", "24000",
    "--val-fraction", "0.1",
    "--val-every", "1000",
    "--checkpoint-every", "500",
    "--seed", "0",
    "--device", "cpu",
    "--amp", "bf16",  # bf16 autocast: a CPU with bf16 units (AVX512-BF16, AMX), else --amp none (slower)
    "--zoom", "0.6,1.6",
)


INTENDED_USE = ("2D fluorescence images of stained nuclei (DAPI, Hoechst and the like), about 8 to 60 px across, "
                "from widefield or confocal microscopes, 8- to 16-bit or float; stacks slice by slice. Objects are "
                "cleaned up by default: specks under 1/16 of the typical object's area removed, holes filled.")
NOT_FOR = (
    "cytoplasm, whole cells, membranes or tissue outlines (it finds nuclei only)",
    "brightfield, phase contrast, DIC or H&E images (it saw fluorescence only)",
    "nuclei under about 8 px or over about 60 px across without object_size= (rescale them to ~19 px)",
    "dense tissue where nuclei overlap in depth, or 3-D objects (it works slice by slice)",
    "measurements that need a validated model: it was trained and tuned on synthetic images only; check it with "
    "fastunet evaluate on a few of your own annotated images, and train your own with fastunet train",
)


def model_card(results: dict) -> dict:
    """The card a model file keeps (``extra["card"]``) from a ``benchmarks/model_card.py scores``
    result: intended use, what it is not for, its training styles and the scores per style
    with the clean-up on and off."""
    from .synthetic_styles import STYLES

    def brief(r: dict) -> dict:
        return {k: round(r[k], 4) for k in ("foreground_iou", "instance_f1", "precision", "recall")} | {
            "specks": round(r["specks"] / max(r["tp"] + r["fp"], 1), 4)}

    scores = {name: {"held_out": row["held_out"], "nuclei": row["nuclei"], "on": brief(row["new"]["on"]),
                     "off": brief(row["new"]["off"])} for name, row in results["styles"].items()}
    return {"intended_use": INTENDED_USE, "not_for": list(NOT_FOR),
            "training_styles": {name: STYLES[name].description for name in TRAIN_STYLES},
            "scores": scores, "scored_on": f"{results['images']} fresh 512 x 512 images per style, seeds "
                                           f"{results['seed']}..{results['seed'] + results['images'] - 1}",
            "results_file": results.get("file", ""), "date": results["date"]}


def write_card(results_file: str | Path, model: str | Path = DEFAULT_MODEL) -> Path:
    """Record the card of ``results_file`` (``benchmarks/model_card.py scores``) in ``model``'s
    metadata (``extra["card"]``); the weights are written back as they were."""
    import json

    from .modelfile import read_model, save_model

    results = json.loads(Path(results_file).read_text())
    results["file"] = Path(results_file).name
    bundle = read_model(model)
    return save_model(model, bundle, extra={**bundle.extra, "card": model_card(results)})


def style_of(seed: int) -> str:
    """The training style of the image drawn from ``seed`` (the styles take turns)."""
    return TRAIN_STYLES[(seed - TRAIN_SEEDS.start) % len(TRAIN_STYLES)]


def write_training_data(workdir: str | Path) -> tuple[Path, Path]:
    """Write the training images and instance labels as TIFF files; returns both folders."""
    from .synthetic_styles import write_style_images

    return write_style_images(workdir, TRAIN_SEEDS, style_of, IMAGE_SHAPE)


def recipe_config() -> TrainConfig:
    """The :class:`~fastunet.train.TrainConfig` of :data:`TRAIN_ARGS`.

    Each ``--name value`` of the recipe sets the field ``name`` (dashes as underscores), the
    value read as the field's type, as ``fastunet train`` reads it.
    """
    from .train import TrainConfig

    return TrainConfig(**_recipe_options())


def _recipe_options() -> dict:
    from .train import TrainConfig
    from .train.config import default_augment, parse_zoom

    hints = typing.get_type_hints(TrainConfig)
    options = {}
    for flag, text in zip(TRAIN_ARGS[::2], TRAIN_ARGS[1::2]):
        name = flag[2:].replace("-", "_")
        if name == "zoom":  # the one augmentation option of fastunet train
            options["augment"] = default_augment(parse_zoom(text))
            continue
        kind = next(t for t in typing.get_args(hints[name]) or (hints[name],) if t is not type(None))
        options[name] = kind(text)
    return options


def recipe_command(images: str | Path, labels: str | Path, output: str | Path, *, weight_figure: str | Path,
                   quiet: bool = False) -> str:
    """The ``fastunet train`` command line equivalent to :func:`build`'s run (stored in the model file).

    The words are those ``fastunet train`` records for ``IMAGES LABELS -o OUTPUT`` with
    :data:`TRAIN_ARGS`, ``--overwrite``, ``--weight-figure`` (and ``--quiet``): options sorted
    by name, values as parsed.
    """
    import shlex

    options = {**_recipe_options(), "overwrite": True, "weight_figure": str(weight_figure)}
    if "augment" in options:  # recorded as given on the command line, like fastunet train's --zoom
        del options["augment"]
        options["zoom"] = TRAIN_ARGS[TRAIN_ARGS.index("--zoom") + 1]
    if quiet:
        options["quiet"] = True
    words = ["fastunet", "train", str(images), str(labels), "-o", str(output)]
    for key, value in sorted(options.items()):
        words += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return shlex.join(words)


def build(workdir: str | Path, output: str | Path = DEFAULT_MODEL, *, quiet: bool = False) -> int:
    """Regenerate the training data in ``workdir`` and train the default model into ``output``.

    Parameters
    ----------
    workdir : path-like
        Folder for the training images and labels, the trained model with its checkpoint and
        curve, and the weight-map figure.
    output : path-like
        Where the trained model is copied (default: the packaged model file).
    quiet : bool
        No progress bar; the notes are printed at the end.

    Returns
    -------
    int
        0 (errors raise :class:`~fastunet.errors.UserError`).
    """
    import shutil

    from .train import train

    workdir = Path(workdir)
    images, labels = write_training_data(workdir)
    trained = workdir / "default.safetensors"  # its checkpoint and curve land beside it
    figure = workdir / "weights.png"
    command = recipe_command(images, labels, trained, weight_figure=figure, quiet=quiet)
    result = train(images, labels, trained, config=recipe_config(), progress=not quiet, weight_figure=figure,
                   command=command)
    if quiet:
        for message in result.notes:
            print(f"note: {message}", file=sys.stderr)
    scores = ", ".join(f"{k} {v:.4f}" for k, v in (result.val or {}).items()) or "no validation images"
    print(f"trained {result.steps} steps ({result.tiles_per_second:.2f} tiles/s): {scores}")
    print(f"wrote {result.output} (checkpoint {result.checkpoint}, curve {result.curve}) and {figure}")
    shutil.copyfile(trained, output)
    chosen = calibrate(output)
    print(f"copied {trained} to {output}, calibrated: foreground logit shift {chosen['shift']:+.2f}")
    return 0


def shifted(bundle, shift: float):
    """A copy of a model ``bundle`` whose foreground classes' logits are ``shift`` higher (the
    1x1 head's bias): for two classes, the argmax then calls a pixel foreground where the
    original's foreground probability is at least ``1 / (1 + exp(shift))``."""
    import copy

    import torch

    out = copy.deepcopy(bundle)
    with torch.no_grad():
        out.module.head.bias[1:] += float(shift)
    return out


def calibrate(model: str | Path = DEFAULT_MODEL, output: str | Path | None = None, *, shifts=CALIBRATION_SHIFTS,
              confidences=CALIBRATION_CONFIDENCES, seeds=CALIBRATION_SEEDS, styles=TRAIN_STYLES,
              keep_shift: bool = False) -> dict:
    """Choose the model's decision threshold and its objects' minimum confidence on validation
    images and write them into ``output`` (default: ``model`` itself).

    First each of ``shifts`` of the foreground logit (:func:`shifted`) is scored on
    ``len(seeds)`` images of each training style (instance F1 at IoU 0.5, the objects as
    ``segment`` writes them without ``min_confidence``); the shift with the best mean F1 over
    the styles is kept (ties: the smallest). Then, with that shift, each of ``confidences`` as
    ``min_confidence`` (objects of a lower mean object probability removed) is scored on the
    same images; the best mean F1 is kept (ties: the smallest). ``keep_shift``: the shift (and
    its table) the file records already, only the confidence chosen. The file records both
    tables (``extra["calibration"]``). Only training styles and seeds outside the training set
    and the card's (:data:`CALIBRATION_SEEDS`) are looked at. Calibrating a calibrated file
    starts from the weights as trained.
    """
    import tempfile

    from .evaluate import evaluate_synthetic
    from .modelfile import read_model, save_model

    bundle = read_model(model)
    extra = dict(bundle.extra)
    extra.pop("card", None)  # its scores were of other weights: score the calibrated model again
    recorded = dict(extra.get("calibration") or {})
    base = shifted(bundle, -float(recorded.get("shift", 0.0)))  # the weights as trained

    def mean_f1(path, **options) -> dict:
        return {name: round(evaluate_synthetic(path, style=name, n_images=len(seeds), seed=seeds.start,
                                               **options).instance_f1, 4) for name in styles}

    def averages(table: dict) -> dict:  # per tried value, the mean F1 over the styles
        return {k: sum(v.values()) / len(v) for k, v in table.items()}

    def best(table: dict) -> str:
        mean = averages(table)
        return max(mean, key=lambda k: (round(mean[k], 6), -float(k)))

    def means(table: dict) -> dict:  # as recorded
        return {k: round(v, 4) for k, v in averages(table).items()}

    with tempfile.TemporaryDirectory() as tmp:
        if keep_shift and "shift" in recorded:
            shift_table, shift = recorded.get("f1", {}), float(recorded["shift"])
        else:
            shift_table = {}
            for value in shifts:
                path = save_model(Path(tmp) / f"shift{value}.safetensors", shifted(base, value))
                shift_table[str(value)] = mean_f1(path, min_confidence=0.0)
                print(f"shift {value:+.2f}: mean F1 {means(shift_table)[str(value)]:.4f}", file=sys.stderr, flush=True)
            shift = float(best(shift_table))
        path = save_model(Path(tmp) / "chosen.safetensors", shifted(base, shift))
        confidence_table = {}
        for value in confidences:
            confidence_table[str(value)] = mean_f1(path, min_confidence=float(value))
            print(f"min_confidence {value:.2f}: mean F1 {means(confidence_table)[str(value)]:.4f}", file=sys.stderr,
                  flush=True)
    extra["calibration"] = {"shift": shift, "seeds": [seeds.start, seeds.stop - 1], "f1": shift_table,
                            "mean_f1": means(shift_table), "min_confidence": float(best(confidence_table)),
                            "min_confidence_f1": confidence_table,
                            "min_confidence_mean_f1": means(confidence_table)}
    save_model(output or model, shifted(base, shift), extra=extra)
    return extra["calibration"]


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastunet.default_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="regenerate the training data and train the default model")
    p.add_argument("--workdir", required=True, help="folder for the training images, checkpoint and curves")
    p.add_argument("-o", "--output", default=str(DEFAULT_MODEL), help="model file (default: the packaged one)")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("calibrate", help="choose the foreground threshold on validation images (in the model file)")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model file (default: the packaged one)")
    p.add_argument("-o", "--output", help="where the calibrated model goes (default: --model itself)")
    p.add_argument("--keep-shift", action="store_true", help="keep the recorded foreground shift; choose the "
                   "objects' minimum confidence only")
    p = sub.add_parser("card", help="record the scores of a benchmarks/model_card.py result in the model file")
    p.add_argument("results", help="a model-card-*.json of benchmarks/model_card.py scores")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model file (default: the packaged one)")
    args = parser.parse_args(argv)
    try:
        if args.command == "calibrate":
            chosen = calibrate(args.model, args.output, keep_shift=args.keep_shift)
            print(f"foreground logit shift {chosen['shift']:+.2f} (mean F1 of the training styles: {chosen['mean_f1']}), "
                  f"min_confidence {chosen['min_confidence']:.2f} ({chosen['min_confidence_mean_f1']})")
            return 0
        if args.command == "card":
            print(f"wrote the card of {args.results} into {write_card(args.results, args.model)}")
            return 0
        return build(args.workdir, args.output, quiet=args.quiet)
    except UserError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
