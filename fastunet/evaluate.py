"""How good is a model: foreground IoU and instance F1 against ground-truth instance labels.

Predictions come from the inference engine (:func:`fastunet.segment`, overlap tiles with
mirrored borders), exactly as a user would get them. Scores are aggregated over 2D slices:

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
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from .errors import UserError
from .metrics import instance_f1

__all__ = ["Evaluation", "score", "evaluate", "evaluate_synthetic", "SYNTHETIC_SEED"]

SYNTHETIC_SEED = 2026  # first seed of `evaluate --synthetic` (the default model trained on 10000..)


@dataclass(frozen=True)
class Evaluation:
    """Scores over ``images`` 2D slices (``pixels`` in all)."""

    foreground_iou: float
    instance_f1: float
    precision: float
    recall: float
    tp: int
    fp: int
    fn: int
    images: int
    pixels: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"foreground IoU {self.foreground_iou:.4f}  instance F1 {self.instance_f1:.4f} "
            f"(precision {self.precision:.4f}, recall {self.recall:.4f}; TP {self.tp}, FP {self.fp}, "
            f"FN {self.fn}) over {self.images} image(s), {self.pixels / 1e6:.2f} Mpx"
        )


def score(predictions: Iterable[np.ndarray], truths: Iterable[np.ndarray], *, iou_threshold: float = 0.5) -> Evaluation:
    """Scores of predicted foreground masks against true instance labels, 2D slice by slice.

    Parameters
    ----------
    predictions : iterable of 2D arrays
        Predicted foreground (bool) or class maps (anything but 0 is foreground).
    truths : iterable of 2D int arrays
        True instance labels (0 = background).
    """
    inter = union = tp = n_pred = n_true = images = pixels = 0
    for pred, truth in zip(predictions, truths, strict=True):
        pred = np.asarray(pred) != 0
        truth = np.asarray(truth)
        if pred.shape != truth.shape or pred.ndim != 2:
            raise ValueError(f"Expected 2D prediction and truth of one shape; got {pred.shape} and {truth.shape}.")
        true_fg = truth != 0
        inter += int(np.count_nonzero(pred & true_fg))
        union += int(np.count_nonzero(pred | true_fg))
        s = instance_f1(pred, truth, iou_threshold=iou_threshold)
        tp, n_pred, n_true = tp + s.tp, n_pred + s.n_pred, n_true + s.n_true
        images += 1
        pixels += pred.size
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_true if n_true else 1.0
    f1 = 2 * tp / (n_pred + n_true) if n_pred + n_true else 1.0
    return Evaluation(
        foreground_iou=inter / union if union else 1.0, instance_f1=f1, precision=precision, recall=recall,
        tp=tp, fp=n_pred - tp, fn=n_true - tp, images=images, pixels=pixels,
    )


def _slices(a: np.ndarray) -> list[np.ndarray]:
    return list(a) if a.ndim == 3 else [a]


def evaluate(images, labels, model=None, *, axes: str | None = None, device=None, backend: str = "auto",
             dtype: str | None = None, tile: int | None = None, batch_size: int | None = None,
             preview: str | os.PathLike | None = None) -> Evaluation:
    """Segment ``images`` with ``model`` (default: the bundled one) and score against ``labels``.

    ``images`` and ``labels`` take what ``fastunet train`` takes (TIFF files, folders of TIFFs,
    zarr arrays, numpy arrays or lists of them; 2D images or ``(Z, Y, X)`` stacks). With
    ``preview``, a PNG of the first image with its prediction and the truth is written.
    """
    from .segmentation import Segmenter
    from .training import load_pairs

    pairs = load_pairs(images, labels, axes=axes)
    preds, truths = [], []
    with Segmenter(model, device=device, backend=backend, dtype=dtype, tile=tile, batch_size=batch_size) as seg:
        for pair in pairs:
            classes = np.asarray(seg.segment(pair.image, None, axes="ZYX" if pair.image.ndim == 3 else "YX",
                                             progress=False))
            preds += _slices(classes)
            truths += _slices(pair.labels)
    if preview is not None:
        from .preview import overlay_figure

        overlay_figure(preview, _slices(pairs[0].image)[0], preds[0], truth=truths[0], title=pairs[0].name)
    return score(preds, truths)


def evaluate_synthetic(model=None, *, n_images: int = 16, seed: int = SYNTHETIC_SEED, shape=(512, 512),
                       device=None, backend: str = "auto", dtype: str | None = None, tile: int | None = None,
                       batch_size: int | None = None, preview: str | os.PathLike | None = None) -> Evaluation:
    """Score a model on ``n_images`` freshly generated synthetic nuclei images.

    The images use seeds ``seed, seed + 1, ...``, which must not overlap the seeds the
    default model was trained on (:data:`fastunet.default_model.TRAIN_SEEDS`).
    """
    from .data import synthetic_nuclei
    from .default_model import TRAIN_SEEDS

    if n_images < 1:
        raise UserError(f"Expected at least one synthetic image; got {n_images}.")
    seeds = range(seed, seed + n_images)
    overlap = sorted(set(seeds) & set(TRAIN_SEEDS))
    if overlap:
        raise UserError(
            f"Seeds {overlap[0]}..{overlap[-1]} were used to train the default model; pick a seed outside "
            f"{TRAIN_SEEDS.start}..{TRAIN_SEEDS.stop - 1} (e.g. --seed {SYNTHETIC_SEED})."
        )
    pairs = [synthetic_nuclei(tuple(shape), seed=s, dtype="uint16") for s in seeds]
    return evaluate([p[0] for p in pairs], [p[1] for p in pairs], model, device=device, backend=backend,
                    dtype=dtype, tile=tile, batch_size=batch_size, preview=preview)
