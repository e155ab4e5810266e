"""The cover image of a bioimage.io package: the test image beside what the model sees in it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["cover_figure"]


def cover_figure(path: str | os.PathLike, image: np.ndarray, probs: np.ndarray) -> Path:
    """A 2:1 PNG (bioimage.io's cover ratio): the image | its foreground probability.

    ``image`` (Y, X) is shown contrast-stretched to its 1st-99.8th percentiles; ``probs``
    (K, Y, X) as 1 - the background's probability.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    low, high = np.percentile(image, [1.0, 99.8])
    shown = np.clip((image - low) / max(high - low, 1e-12), 0.0, 1.0)
    fig = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (data, title, cmap) in enumerate(((shown, "input", "gray"),
                                            (1.0 - probs[0], "foreground probability", "magma"))):
        ax = fig.add_axes((i * 0.5, 0.0, 0.5, 0.92))
        ax.imshow(data, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
        ax.set_title(title, fontsize=11)
        ax.set_axis_off()
    fig.savefig(path, facecolor="white")
    return Path(path)
