"""PNG previews of a segmentation, for a person to look at.

:func:`overlay_figure` draws the image, the image with the predicted objects overlaid in
colour (objects = connected components of the predicted foreground), and, when the truth is
known, the truth's outlines over the prediction. matplotlib's object API is used directly
(no pyplot, no global figure state, the Agg canvas).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = ["overlay_figure", "instance_colors"]


def instance_colors(labels: np.ndarray, *, alpha: float = 0.45, seed: int = 0) -> np.ndarray:
    """RGBA image of instance labels in random bright colours, background transparent."""
    labels = np.asarray(labels)
    n = int(labels.max()) if labels.size else 0
    palette = np.random.default_rng(seed).uniform(0.3, 1.0, (n + 1, 4))
    palette[:, 3] = alpha
    palette[0] = 0.0
    return palette[labels]


def _outlines(instances: np.ndarray) -> np.ndarray:
    """Pixels of an object whose 4-neighbour belongs to another label (object borders)."""
    inst = np.asarray(instances)
    cross = ndi.generate_binary_structure(2, 1)
    low = ndi.grey_erosion(inst, footprint=cross, mode="nearest")
    high = ndi.grey_dilation(inst, footprint=cross, mode="nearest")
    return (inst != 0) & ((low != inst) | (high != inst))


def overlay_figure(path: str | os.PathLike, image: np.ndarray, prediction: np.ndarray, *,
                   truth: np.ndarray | None = None, title: str | None = None) -> Path:
    """Write a PNG: image | prediction overlaid | (with ``truth``) truth outlines on the prediction.

    Parameters
    ----------
    image : 2D array
        The raw image (contrast-stretched to its 1st-99.8th percentiles for display).
    prediction : 2D array
        Predicted classes or labels; anything but 0 is foreground, whose connected
        components are drawn as objects.
    truth : 2D int array, optional
        True instance labels.
    """
    from matplotlib.figure import Figure

    image = np.asarray(image, np.float32)
    prediction = np.asarray(prediction)
    if image.ndim != 2 or image.shape != prediction.shape:
        raise ValueError(f"Expected a 2D image and prediction of one shape; got {image.shape} and {prediction.shape}.")
    lo, hi = np.percentile(image, [1, 99.8])
    objects, count = ndi.label(prediction != 0)
    panels = 3 if truth is not None else 2
    fig = Figure(figsize=(5.2 * panels, 5.5), layout="constrained")
    axes = fig.subplots(1, panels)
    for ax in axes:
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_axis_off()
    axes[0].set_title("image")
    axes[1].imshow(instance_colors(objects), interpolation="nearest")
    axes[1].set_title(f"prediction ({count} objects)")
    if truth is not None:
        truth = np.asarray(truth)
        axes[2].imshow(instance_colors(objects, alpha=0.35), interpolation="nearest")
        edge = np.zeros((*truth.shape, 4), np.float32)
        edge[_outlines(truth)] = (1.0, 0.15, 0.15, 1.0)
        axes[2].imshow(edge, interpolation="nearest")
        axes[2].set_title(f"truth outlines ({len(np.unique(truth)) - (0 in truth)} objects) on prediction")
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path
