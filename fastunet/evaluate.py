"""How good is a model: foreground IoU and instance F1 against ground-truth instance labels.

Predictions come from the inference engine (:func:`fastunet.segment`, overlap tiles with
mirrored borders), exactly as a user would get them; images and labels are read as training
reads them (:func:`fastunet.train.datasets.load_pairs`). Scores are aggregated over 2D slices
by :func:`fastunet.metrics.score`:

* **foreground IoU**: summed intersections over summed unions of the predicted foreground
  (any class but 0) and the true foreground (any instance);
* **instance F1** at IoU 0.5: predicted instances are the connected components of the
  predicted foreground (:func:`fastunet.metrics.instance_f1`); precision, recall and F1 from
  the summed matches;
* **specks**: predicted objects smaller than a quarter of the smallest true object of their
  slice (:attr:`fastunet.metrics.Evaluation.specks`).

The objects are cleaned up as ``segment`` cleans them by default (``min_size="auto"``,
``fill_holes=True``, ``min_confidence="auto"``; ``min_size=0, fill_holes=False,
min_confidence=0`` scores the network's raw class map).

``fastunet evaluate IMAGES LABELS`` scores a model on your data;
``fastunet evaluate --synthetic 16`` on 16 freshly generated synthetic images of every style of
:mod:`fastunet.synthetic_styles` (seeds the default model was never trained on), one row per
style: the training styles, and the held-out ones that no training recipe draws (other size
ranges, textures and noise). ``object_size`` segments at a given object size (see
:func:`fastunet.segment`); for synthetic images also ``"truth"``, each image's true typical
object diameter.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from .errors import UserError
from .metrics import Evaluation, score

__all__ = ["evaluate", "evaluate_synthetic", "evaluate_styles", "style_table", "parse_styles", "SYNTHETIC_SEED"]

SYNTHETIC_SEED = 2026  # first seed of `evaluate --synthetic` (the default model trained on 10000..)


def _slices(a: np.ndarray) -> list[np.ndarray]:
    return list(a) if a.ndim == 3 else [a]


def evaluate(images, labels, model=None, *, axes: str | None = None, device=None, backend: str = "auto",
             dtype: str | None = None, tile: int | None = None, batch_size: int | None = None,
             preview: str | os.PathLike | None = None, object_size=None, overwrite: bool = False,
             min_size: int | str = "auto", fill_holes: bool = True,
             min_confidence: float | str = "auto") -> Evaluation:
    """Segment ``images`` with ``model`` (default: the bundled one) and score against ``labels``.

    Parameters
    ----------
    images, labels
        What training takes (:func:`fastunet.train.datasets.load_pairs`: TIFF files, folders
        of TIFFs, zarr arrays, numpy arrays or lists of them; 2D images or ``(Z, Y, X)``
        stacks).
    model : path, ModelBundle or ReferenceUNet, optional
        The network (default: the bundled model).
    axes : str, optional
        Axes of files whose metadata do not say, e.g. ``"ZYX"``.
    device, backend, dtype, tile, batch_size
        How the network runs, as for :class:`fastunet.Segmenter`.
    preview : path-like, optional
        Write a PNG of the first image with its prediction and the truth
        (:func:`fastunet.figures.overlay_figure`); checked before any work
        (:func:`fastunet.paths.check_output_file`).
    object_size : float, "auto" or a list of them, optional
        The typical object diameter of the images (one for all, or one per image), as for
        :func:`fastunet.segment`; default: the images' own scale.
    overwrite : bool
        Replace an existing ``preview`` file.
    min_size, fill_holes, min_confidence
        The clean-up of the predicted objects, as for :func:`fastunet.segment` (default: on).

    Returns
    -------
    Evaluation
        The scores over every 2D slice (:func:`fastunet.metrics.score`).
    """
    from .paths import check_output_file
    from .train.datasets import load_pairs

    if preview is not None:
        check_output_file(preview, what="preview=", suffixes=(".png",), inputs=(images, labels), overwrite=overwrite)
    pairs = load_pairs(images, labels, axes=axes)
    sizes = object_size if isinstance(object_size, (list, tuple)) else [object_size] * len(pairs)
    if len(sizes) != len(pairs):
        raise UserError(f"Got {len(sizes)} object sizes for {len(pairs)} images; give one, or one per image.")
    return _score(pairs, sizes, model, dict(device=device, backend=backend, dtype=dtype, tile=tile,
                                            batch_size=batch_size), preview, dict(min_size=min_size, fill_holes=fill_holes,
                                                                       min_confidence=min_confidence))


def _score(pairs, sizes, model, network: dict, preview, cleanup: dict) -> Evaluation:
    """Scores of the cleaned-up objects; with a clean-up, ``raw`` holds those of the class map's
    own components (the same network pass: segment writes both from one prediction)."""
    from .segmentation import Segmenter

    cleaned, classes, truths = [], [], []
    with Segmenter(model, **network) as seg:
        confidence = cleanup.get("min_confidence", "auto")
        confidence = seg.model_min_confidence if confidence == "auto" else confidence
        raw = cleanup.get("min_size") != 0 or cleanup.get("fill_holes") or confidence != 0
        for pair, size in zip(pairs, sizes):
            # the objects as segment writes them (cleaned up), scored as connected components
            out = seg.segment(pair.image, None, axes="ZYX" if pair.image.ndim == 3 else "YX", progress=False,
                              output_kind="instances,labels" if raw else "instances", object_size=size,
                              lazy=False, **cleanup)
            ids, labels = out if raw else (out, None)
            cleaned += _slices(np.asarray(ids))
            classes += _slices(np.asarray(labels)) if raw else []
            truths += _slices(pair.labels)
    if preview is not None:
        from .figures import overlay_figure

        overlay_figure(preview, _slices(pairs[0].image)[0], cleaned[0], truth=truths[0], title=pairs[0].name)
    result = score(cleaned, truths)
    return dataclasses.replace(result, raw=score(classes, truths).to_dict()) if raw else result


def _check_seeds(n_images: int, seed: int) -> range:
    from .default_seeds import TRAIN_SEEDS

    if n_images < 1:
        raise UserError(f"Expected at least one synthetic image; got {n_images}.")
    seeds = range(seed, seed + n_images)
    overlap = sorted(set(seeds) & set(TRAIN_SEEDS))
    if overlap:
        raise UserError(
            f"Seeds {overlap[0]}..{overlap[-1]} were used to train the default model; pick a seed outside "
            f"{TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1} (e.g. seed={SYNTHETIC_SEED})."
        )
    return seeds


def evaluate_synthetic(model=None, *, n_images: int = 16, seed: int = SYNTHETIC_SEED, shape=(512, 512),
                       style: str = "classic", object_size=None, device=None, backend: str = "auto",
                       dtype: str | None = None, tile: int | None = None, batch_size: int | None = None,
                       preview: str | os.PathLike | None = None, overwrite: bool = False,
                       min_size: int | str = "auto", fill_holes: bool = True,
                       min_confidence: float | str = "auto") -> Evaluation:
    """Score a model on ``n_images`` freshly generated synthetic images of one style.

    Parameters
    ----------
    model : path, ModelBundle or ReferenceUNet, optional
        The network (default: the bundled model).
    n_images : int
        How many images (:func:`fastunet.synthetic_styles.style_image`).
    seed : int
        The images use seeds ``seed, seed + 1, ...``, which must not overlap the seeds the
        default model was trained on (:data:`fastunet.default_seeds.TRAIN_SEEDS`).
    shape : (H, W)
        Size of each image.
    style : str
        A style of :data:`fastunet.synthetic_styles.STYLES`; ``"classic"`` (the default) gives
        the images of earlier fastunet versions, ``synthetic_nuclei(shape, seed=s, dtype="uint16")``.
    object_size : float, "auto" or "truth", optional
        As for :func:`evaluate`; ``"truth"``: each image's true typical object diameter
        (:attr:`fastunet.synthetic_styles.StyleImage.object_size`).
    device, backend, dtype, tile, batch_size, preview, overwrite, min_size, fill_holes, min_confidence
        As for :func:`evaluate`.

    Returns
    -------
    Evaluation
    """
    from .paths import check_output_file
    from .synthetic_styles import get_style, style_image
    from .train.datasets import TrainingPair

    if preview is not None:
        check_output_file(preview, what="preview=", suffixes=(".png",), overwrite=overwrite)
    try:
        get_style(style)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    drawn = [style_image(style, tuple(shape), seed=s) for s in _check_seeds(n_images, seed)]
    pairs = [TrainingPair(f"{style}[seed={s}]", d.image, d.labels) for s, d in zip(range(seed, seed + n_images), drawn)]
    sizes = [d.object_size for d in drawn] if object_size == "truth" else [object_size] * len(drawn)
    return _score(pairs, sizes, model, dict(device=device, backend=backend, dtype=dtype, tile=tile,
                                            batch_size=batch_size), preview, dict(min_size=min_size, fill_holes=fill_holes,
                                                                       min_confidence=min_confidence))


def parse_styles(text: str | None) -> list[str]:
    """Style names from ``"all"`` (or None), ``"held-out"``, ``"train"`` or names separated by commas."""
    from .synthetic_styles import STYLES, style_names

    if text is None or text == "all":
        return list(STYLES)
    if text in ("held-out", "train"):
        return style_names(held_out=text == "held-out")
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STYLES]
    if unknown or not names:
        raise UserError(f"Unknown style {', '.join(unknown) or repr(text)}; expected all, held-out, train or names "
                        f"among {', '.join(STYLES)}.")
    return names


def evaluate_styles(model=None, *, styles=None, progress=None, **options) -> dict[str, Evaluation]:
    """:func:`evaluate_synthetic` for each of ``styles`` (names; default all), as a dict by name.

    ``progress(name, evaluation)`` is called after each style; the other options are those of
    :func:`evaluate_synthetic` (``preview`` is drawn from the first style).
    """
    results = {}
    for index, name in enumerate(styles or parse_styles(None)):
        extra = {} if index == 0 else {"preview": None}
        results[name] = evaluate_synthetic(model, style=name, **{**options, **extra})
        if progress is not None:
            progress(name, results[name])
    return results


def style_table(results: dict[str, Evaluation]) -> str:
    """A plain-text table of per-style scores (foreground IoU, instance F1, precision, recall,
    and the specks as a fraction of the predicted objects), and the instance F1 and specks of
    the network's objects before the clean-up ("raw")."""
    from .synthetic_styles import STYLES

    lines = [f"{'style':<15} {'held out':<8} {'images':>6} {'objects':>7} {'fg IoU':>7} {'inst F1':>7} "
             f"{'prec':>6} {'recall':>6} {'specks':>6} {'raw F1':>7} {'specks':>6}"]
    for name, r in results.items():
        raw = r.raw or {}
        raw_f1 = f"{raw['instance_f1']:>7.4f}" if raw else f"{'':>7}"
        raw_specks = f"{raw['specks'] / max(raw['tp'] + raw['fp'], 1):>6.1%}" if raw else f"{'':>6}"
        lines.append(f"{name:<15} {'yes' if STYLES[name].held_out else 'no':<8} {r.images:>6} {r.tp + r.fn:>7} "
                     f"{r.foreground_iou:>7.4f} {r.instance_f1:>7.4f} {r.precision:>6.3f} {r.recall:>6.3f} "
                     f"{r.specks / max(r.tp + r.fp, 1):>6.1%} {raw_f1} {raw_specks}")
    return "\n".join(lines)
