"""How good is a model: foreground IoU and instance F1 against ground-truth instance labels.

Predictions come from the inference engine (:func:`fastunet.segment`, overlap tiles with
mirrored borders), exactly as a user would get them; images and labels are read as training
reads them (:func:`fastunet.train.datasets.load_pairs`). Scores are aggregated over 2D slices
by :func:`fastunet.metrics.score`:

* **foreground IoU**: summed intersections over summed unions of the predicted foreground
  (any class but 0) and the true foreground (any instance);
* **instance F1** at IoU 0.5: predicted instances are the connected components of the
  predicted foreground (:func:`fastunet.metrics.instance_f1`); precision, recall and F1 from
  the summed matches.

``fastunet evaluate IMAGES LABELS`` scores a model on your data;
``fastunet evaluate --synthetic 16`` on freshly generated synthetic nuclei (seeds the default
model was never trained on).
"""

from __future__ import annotations

import os

import numpy as np

from .errors import UserError
from .metrics import Evaluation, score

__all__ = ["evaluate", "evaluate_synthetic", "SYNTHETIC_SEED"]

SYNTHETIC_SEED = 2026  # first seed of `evaluate --synthetic` (the default model trained on 10000..)


def _slices(a: np.ndarray) -> list[np.ndarray]:
    return list(a) if a.ndim == 3 else [a]


def evaluate(images, labels, model=None, *, axes: str | None = None, device=None, backend: str = "auto",
             dtype: str | None = None, tile: int | None = None, batch_size: int | None = None,
             preview: str | os.PathLike | None = None, overwrite: bool = False) -> Evaluation:
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
    overwrite : bool
        Replace an existing ``preview`` file.

    Returns
    -------
    Evaluation
        The scores over every 2D slice (:func:`fastunet.metrics.score`).
    """
    from .paths import check_output_file
    from .segmentation import Segmenter
    from .train.datasets import load_pairs

    if preview is not None:
        check_output_file(preview, what="preview=", suffixes=(".png",), inputs=(images, labels), overwrite=overwrite)

    pairs = load_pairs(images, labels, axes=axes)
    preds, truths = [], []
    with Segmenter(model, device=device, backend=backend, dtype=dtype, tile=tile, batch_size=batch_size) as seg:
        for pair in pairs:
            classes = np.asarray(seg.segment(pair.image, None, axes="ZYX" if pair.image.ndim == 3 else "YX",
                                             progress=False, output_kind="labels"))
            preds += _slices(classes)
            truths += _slices(pair.labels)
    if preview is not None:
        from .figures import overlay_figure

        overlay_figure(preview, _slices(pairs[0].image)[0], preds[0], truth=truths[0], title=pairs[0].name)
    return score(preds, truths)


def evaluate_synthetic(model=None, *, n_images: int = 16, seed: int = SYNTHETIC_SEED, shape=(512, 512),
                       device=None, backend: str = "auto", dtype: str | None = None, tile: int | None = None,
                       batch_size: int | None = None, preview: str | os.PathLike | None = None,
                       overwrite: bool = False) -> Evaluation:
    """Score a model on ``n_images`` freshly generated synthetic nuclei images.

    Parameters
    ----------
    model : path, ModelBundle or ReferenceUNet, optional
        The network (default: the bundled model).
    n_images : int
        How many images (:func:`fastunet.synthetic.synthetic_nuclei`, uint16).
    seed : int
        The images use seeds ``seed, seed + 1, ...``, which must not overlap the seeds the
        default model was trained on (:data:`fastunet.default_model.TRAIN_SEEDS`).
    shape : (H, W)
        Size of each image.
    device, backend, dtype, tile, batch_size, preview, overwrite
        As for :func:`evaluate`.

    Returns
    -------
    Evaluation
    """
    from .default_model import TRAIN_SEEDS
    from .synthetic import synthetic_nuclei

    if n_images < 1:
        raise UserError(f"Expected at least one synthetic image; got {n_images}.")
    seeds = range(seed, seed + n_images)
    overlap = sorted(set(seeds) & set(TRAIN_SEEDS))
    if overlap:
        raise UserError(
            f"Seeds {overlap[0]}..{overlap[-1]} were used to train the default model; pick a seed outside "
            f"{TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1} (e.g. seed={SYNTHETIC_SEED})."
        )
    pairs = [synthetic_nuclei(tuple(shape), seed=s, dtype="uint16") for s in seeds]
    return evaluate([p[0] for p in pairs], [p[1] for p in pairs], model, device=device, backend=backend,
                    dtype=dtype, tile=tile, batch_size=batch_size, preview=preview, overwrite=overwrite)
