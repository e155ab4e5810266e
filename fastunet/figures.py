"""Every PNG fastunet writes, for a person to look at.

* :func:`overlay_figure`: a segmentation over its image, with the truth's outlines when known
  (``fastunet evaluate --preview``, ``fastunet demo``); :func:`instance_colors` colours objects;
* :func:`save_preview`: a synthetic image beside its instance labels;
* :func:`weight_map_figure`: image, target and weight map of a training image (the paper's
  figure 3);
* :func:`write_curve`: the training loss and the validation scores vs step.

matplotlib's object API is used directly and imported only when a figure is drawn (no pyplot,
no global figure state, the Agg canvas).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = ["overlay_figure", "instance_colors", "save_preview", "weight_map_figure", "write_curve"]


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
    path : path-like
        Where to write the PNG.
    image : 2D array
        The raw image (contrast-stretched to its 1st-99.8th percentiles for display).
    prediction : 2D array
        Predicted classes or labels; anything but 0 is foreground, whose connected
        components are drawn as objects.
    truth : 2D int array, optional
        True instance labels.
    title : str, optional
        Title above the panels.

    Returns
    -------
    Path
        ``path``.
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


def save_preview(path: str | os.PathLike, image: np.ndarray, instances: np.ndarray, *,
                      title: str | None = None) -> None:
    """Write a PNG: the image (contrast-stretched) beside its instances in random colors.

    Parameters
    ----------
    path : path-like
        Where to write the PNG.
    image, instances : 2D arrays of one shape
        An image (e.g. :func:`fastunet.synthetic.synthetic_nuclei`) and its instance labels.
    title : str, optional
        Title above the panels.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # no pyplot: no global figure state, Agg canvas

    image = np.asarray(image, np.float32)
    instances = np.asarray(instances)
    if image.shape != instances.shape or image.ndim != 2:
        raise ValueError(f"Expected a 2D image and labels of the same shape; got {image.shape} and {instances.shape}.")
    lo, hi = np.percentile(image, [1, 99.8])
    colors = np.random.default_rng(0).uniform(0.25, 1.0, (int(instances.max()) + 1, 3))
    colors[0] = 0.0
    fig = Figure(figsize=(10, 5.3), layout="constrained")
    axes = fig.subplots(1, 2)
    axes[0].imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    axes[0].set_title("image")
    axes[1].imshow(instances, cmap=ListedColormap(colors), vmin=0, vmax=len(colors) - 1, interpolation="nearest")
    axes[1].set_title(f"instances ({len(np.unique(instances)) - 1})")
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)


def _display_image(image: np.ndarray) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB in [0, 1] from (H, W), (C, H, W) or (H, W, C)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)  # (C, H, W) -> (H, W, C)
    if image.ndim == 3 and image.shape[-1] != 3:
        image = image[..., 0]
    if image.ndim not in (2, 3):
        raise ValueError(f"Expected an image (H, W), (C, H, W) or (H, W, C); got shape {image.shape}.")
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def weight_map_figure(
    path: str | Path,
    image: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray,
    *,
    instances: np.ndarray | None = None,
) -> Path:
    """Save image, target and weight map side by side as a PNG, like the paper's figure 3.

    Parameters
    ----------
    path : str or Path
        Where to write the PNG.
    image : ndarray (H, W), (C, H, W) or (H, W, C)
        The raw image (the first channel is shown unless it has 3 channels).
    target : ndarray (H, W)
        Two-class target from :func:`fastunet.train.weightmap.semantic_target`.
    weight : ndarray (H, W)
        Weight map from :func:`fastunet.train.weightmap.weight_map`.
    instances : ndarray (H, W), optional
        When given, the middle panel shows the instances in colour with their touching
        borders in white instead of the binary target.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure state, Agg canvas

    path = Path(path)
    target = np.asarray(target)
    weight = np.asarray(weight)
    if target.shape != weight.shape:
        raise ValueError(f"target {target.shape} and weight {weight.shape} must have the same shape.")

    fig = Figure(figsize=(15, 5), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3)
    shown = _display_image(image)
    axes[0].imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes[0].set_title("image")
    if instances is not None:
        from .train.weightmap import compact_instances, touching_borders

        instances = compact_instances(instances)
        # Shuffle label colours so neighbouring objects differ, background black, borders white.
        count = int(instances.max()) + 1
        colours = np.random.default_rng(0).uniform(0.2, 0.9, size=(count, 3))
        colours[0] = 0.0
        rgb = colours[instances]
        rgb[touching_borders(instances)] = 1.0
        axes[1].imshow(rgb, interpolation="nearest")
        axes[1].set_title("instances, touching borders white")
    else:
        axes[1].imshow(target, cmap="gray", interpolation="nearest")
        axes[1].set_title("target")
    shown_weight = axes[2].imshow(weight, cmap="jet", interpolation="nearest")
    axes[2].set_title("weight map")
    fig.colorbar(shown_weight, ax=axes[2], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(path, format="png")
    return path


def write_curve(path: str | os.PathLike, history: dict, *, title: str | None = None) -> Path:
    """A PNG of the training loss (per step, and its running mean over ``len // 20`` steps,
    at most 100, from 40 steps on) and the validation scores vs step.

    Parameters
    ----------
    path : path-like
        Where to write the PNG.
    history : dict
        ``{"loss": [per step], "val": [{"step", "foreground_iou", "instance_f1"}, ...]}``
        (:attr:`fastunet.train.TrainResult.history`).
    title : str, optional
        Title of the plot.

    Returns
    -------
    Path
        ``path``.
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure state, Agg canvas

    path = Path(path)
    loss = np.asarray(history["loss"], np.float64)
    steps = np.arange(1, len(loss) + 1)
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    if len(loss):
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="loss")
        k = min(len(loss) // 20, 100)
        if k > 1:  # a mean of one step would redraw the loss line
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, color="tab:blue", lw=1.8, label=f"loss (mean of {k})")
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("weighted cross-entropy")
    val = history.get("val") or []
    if val:
        ax2 = ax.twinx()
        vs = [v["step"] for v in val]
        ax2.plot(vs, [v["foreground_iou"] for v in val], "o-", color="tab:red", label="val foreground IoU")
        ax2.plot(vs, [v["instance_f1"] for v in val], "s--", color="tab:green", label="val instance F1")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("validation score")
        ax2.legend(loc="lower right")
    ax.legend(loc="lower left")
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=100)
    return path
