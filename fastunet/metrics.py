"""Segmentation scores: foreground IoU and instance F1 at an IoU threshold.

Instances of a prediction are the connected components of its foreground (the U-Net
predicts background/object per pixel; the weight map teaches it to leave background
between touching objects, which is what separates them). A predicted and a true object
match when their intersection over union exceeds the threshold; above 0.5 a match is
unique by construction (two objects of one image cannot both overlap a third by more than
half its union), and below 0.5 the matching that maximises the summed IoU is used.

:func:`score` aggregates over 2D slices into an :class:`Evaluation`:

* **foreground IoU**: summed intersections over summed unions of the predicted foreground
  (any class but 0) and the true foreground (any instance);
* **instance F1** at IoU 0.5: precision, recall and F1 from the summed matches of
  :func:`instance_f1`;
* **specks**: predicted objects smaller than a quarter of the smallest true object of their
  slice (what no annotator would call an object).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from .instances import relabel_sequential

__all__ = ["foreground_iou", "instance_f1", "InstanceScores", "iou_matrix", "as_instances", "Evaluation", "score"]

_DENSE_LIMIT = 1 << 24  # contingency tables up to this many cells are counted densely


def _ratio(num: float, den: float) -> float:
    """``num / den`` with ``0 / 0 = 1`` (nothing to find and nothing found is perfect)."""
    return float(num) / float(den) if den else 1.0


def foreground_iou(pred_fg: np.ndarray, true_fg: np.ndarray) -> float:
    """Intersection over union of two foreground masks (non-zero = foreground).

    Returns 1.0 when both masks are empty.
    """
    pred = np.asarray(pred_fg) != 0
    true = np.asarray(true_fg) != 0
    if pred.shape != true.shape:
        raise ValueError(f"Expected masks of the same shape; got {pred.shape} and {true.shape}.")
    return _ratio(np.count_nonzero(pred & true), np.count_nonzero(pred | true))


def as_instances(labels: np.ndarray) -> np.ndarray:
    """Instance ids ``1..n`` (0 = background) from a foreground mask or an instance image.

    A boolean array, or one whose values are only 0 and 1, is a foreground mask: its
    connected components (4-connected in 2D, face-connected in 3D) become the instances.
    Anything else is an instance image; its ids are renumbered to ``1..n`` in order.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool or labels.size == 0 or labels.max() <= 1:
        if labels.size and labels.min() < 0:
            raise ValueError("Instance labels must be >= 0 (0 = background).")
        out, _ = ndi.label(labels != 0)
        return out.astype(np.int64, copy=False)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"Expected integer instance labels or a boolean mask; got {labels.dtype}.")
    if labels.min() < 0:
        raise ValueError("Instance labels must be >= 0 (0 = background).")
    return relabel_sequential(labels)


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every true object (rows) with every predicted object (columns).

    ``true`` and ``pred`` hold consecutive ids ``1..n`` (see :func:`as_instances`). The
    intersections come from one contingency table counted with ``np.bincount``.
    """
    true = np.asarray(true, np.int64).ravel()
    pred = np.asarray(pred, np.int64).ravel()
    n_true, n_pred = int(true.max(initial=0)), int(pred.max(initial=0))
    cells = (n_true + 1) * (n_pred + 1)
    codes = true * (n_pred + 1) + pred
    if cells <= _DENSE_LIMIT:
        table = np.bincount(codes, minlength=cells).reshape(n_true + 1, n_pred + 1)
    else:  # many objects: count only the pairs that occur
        pairs, counts = np.unique(codes, return_counts=True)
        table = np.zeros((n_true + 1, n_pred + 1), np.int64)
        table[pairs // (n_pred + 1), pairs % (n_pred + 1)] = counts
    area_true = table.sum(axis=1)[1:, None]
    area_pred = table.sum(axis=0)[None, 1:]
    inter = table[1:, 1:]
    union = area_true + area_pred - inter
    return inter / np.maximum(union, 1)


@dataclass(frozen=True)
class InstanceScores:
    """Object-level scores: ``tp`` matched pairs, ``fp`` unmatched predictions, ``fn``
    unmatched true objects; ``mean_iou`` is the mean IoU of the matched pairs."""

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    mean_iou: float
    iou_threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


def instance_f1(pred_instances_or_fg: np.ndarray, true_instances: np.ndarray, *, iou_threshold: float = 0.5) -> InstanceScores:
    """Precision, recall and F1 of object detection at an IoU threshold.

    Parameters
    ----------
    pred_instances_or_fg : ndarray
        A predicted foreground mask (boolean or 0/1; its connected components are the
        objects) or a predicted instance image.
    true_instances : ndarray
        The true instance image (or a mask, whose components are then the objects).
    iou_threshold : float
        A pair matches when its IoU is strictly greater than this (0.5: the usual score).

    Returns
    -------
    InstanceScores
        ``precision = tp / n_pred``, ``recall = tp / n_true``,
        ``f1 = 2 tp / (n_pred + n_true)``; each is 1.0 when its denominator is 0.
    """
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must lie in [0, 1); got {iou_threshold}.")
    pred = as_instances(pred_instances_or_fg)
    true = as_instances(true_instances)
    if pred.shape != true.shape:
        raise ValueError(f"Expected prediction and truth of the same shape; got {pred.shape} and {true.shape}.")
    iou = iou_matrix(true, pred)
    n_true, n_pred = iou.shape
    if iou_threshold >= 0.5:
        matched = iou[iou > iou_threshold]  # each row and column holds at most one such value
    else:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(np.where(iou > iou_threshold, iou, 0.0), maximize=True)
        matched = iou[rows, cols]
        matched = matched[matched > iou_threshold]
    tp = int(matched.size)
    return InstanceScores(
        precision=_ratio(tp, n_pred),
        recall=_ratio(tp, n_true),
        f1=_ratio(2 * tp, n_pred + n_true),
        tp=tp,
        fp=n_pred - tp,
        fn=n_true - tp,
        n_true=n_true,
        n_pred=n_pred,
        mean_iou=float(matched.mean()) if tp else 0.0,
        iou_threshold=float(iou_threshold),
    )


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
    specks: int = 0
    raw: dict | None = None  # evaluate: the scores before the clean-up of the objects

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"foreground IoU {self.foreground_iou:.4f}  instance F1 {self.instance_f1:.4f} "
            f"(precision {self.precision:.4f}, recall {self.recall:.4f}; TP {self.tp}, FP {self.fp}, "
            f"FN {self.fn}; {self.specks} specks) over {self.images} image(s), {self.pixels / 1e6:.2f} Mpx"
        )


def score(predictions: Iterable[np.ndarray], truths: Iterable[np.ndarray], *, iou_threshold: float = 0.5) -> Evaluation:
    """Scores of predicted foreground masks against true instance labels, 2D slice by slice
    (or volume by volume: a 3D array is scored with 3D objects).

    Parameters
    ----------
    predictions : iterable of 2D (or 3D) arrays
        Predicted foreground (bool) or class maps (anything but 0 is foreground).
    truths : iterable of 2D int arrays
        True instance labels (0 = background).
    iou_threshold : float
        A predicted and a true object match when their IoU exceeds this.

    Returns
    -------
    Evaluation
        Foreground IoU of the summed intersections and unions; precision, recall and F1 of
        the summed matches (each 1.0 when its denominator is 0); the specks.
    """
    inter = union = tp = n_pred = n_true = images = pixels = specks = 0
    for pred, truth in zip(predictions, truths, strict=True):
        pred = np.asarray(pred) != 0
        truth = np.asarray(truth)
        if pred.shape != truth.shape or pred.ndim not in (2, 3):
            raise ValueError(f"Expected 2D prediction and truth (or 3D volumes) of one shape; got {pred.shape} "
                             f"and {truth.shape}.")
        true_fg = truth != 0
        inter += int(np.count_nonzero(pred & true_fg))
        union += int(np.count_nonzero(pred | true_fg))
        s = instance_f1(pred, truth, iou_threshold=iou_threshold)
        tp, n_pred, n_true = tp + s.tp, n_pred + s.n_pred, n_true + s.n_true
        specks += _specks(pred, truth)
        images += 1
        pixels += pred.size
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_true if n_true else 1.0
    f1 = 2 * tp / (n_pred + n_true) if n_pred + n_true else 1.0
    return Evaluation(
        foreground_iou=inter / union if union else 1.0, instance_f1=f1, precision=precision, recall=recall,
        tp=tp, fp=n_pred - tp, fn=n_true - tp, images=images, pixels=pixels, specks=specks,
    )


def _specks(pred_fg: np.ndarray, truth: np.ndarray) -> int:
    """Predicted objects (components of ``pred_fg``) under a quarter of the smallest true object."""
    true_sizes = np.bincount(as_instances(truth).ravel())[1:]
    if not true_sizes.size:
        return 0
    pred_sizes = np.bincount(ndi.label(pred_fg)[0].ravel())[1:]
    return int((pred_sizes < 0.25 * true_sizes.min()).sum())
