"""TIFF outputs: :func:`write_tiff` writes results that fit in memory as TIFF files, marked
as fastunet's (so that ``overwrite=True`` may replace them and nothing else)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import tifffile

from ..errors import UserError
from .outputs import check_removable, probs_path

__all__ = ["write_tiff"]


def write_tiff(
    path,
    *,
    labels: np.ndarray | None,
    probs: np.ndarray | None,
    axes: str,
    overwrite: bool = False,
) -> list[Path]:
    """Write results that fit in memory as TIFF files.

    Parameters
    ----------
    path : str or path-like
        ``.tif``/``.tiff`` destination. Labels (uint8) go to ``path``; probabilities go to
        ``<stem>_probs.tif`` beside it when both are written, else to ``path``.
    labels : numpy.ndarray or None
        uint8, spatial axes ``axes``.
    probs : numpy.ndarray or None
        float16 or float32, ``(K, *spatial)``; stored with axes ``"C" + axes``.
    axes : str
        Spatial axes of the result, ``"YX"`` or ``"ZYX"``.
    overwrite : bool
        Replace existing fastunet TIFFs (anything else is refused).

    Returns
    -------
    list of Path
        The files written. Each is written to a temporary name and renamed.
    """
    if labels is None and probs is None:
        raise ValueError("write_tiff needs labels, probs or both.")
    axes = axes.upper()
    if axes not in ("YX", "ZYX"):
        raise ValueError(f"axes must be the spatial axes 'YX' or 'ZYX'; got {axes!r}.")
    path = Path(path).expanduser()
    targets = []
    if labels is not None:
        labels = np.asarray(labels)
        if labels.dtype != np.uint8 or labels.ndim != len(axes):
            raise ValueError(f"labels must be uint8 with axes {axes}; got {labels.dtype} {labels.shape}.")
        targets.append((path, labels, axes, "labels"))
    if probs is not None:
        probs = np.asarray(probs)
        if probs.dtype not in (np.float16, np.float32) or probs.ndim != len(axes) + 1:
            raise ValueError(f"probs must be float16/float32 with axes C{axes}; got {probs.dtype} {probs.shape}.")
        if labels is not None and probs.shape[1:] != labels.shape:
            raise ValueError(f"probs {probs.shape} and labels {labels.shape} disagree.")
        targets.append((probs_path(path) if labels is not None else path, probs, "C" + axes, "probs"))
    for target, *_ in targets:
        if target.exists():
            if not overwrite:
                raise UserError(f"Output {str(target)!r} already exists; pass overwrite=True to replace it.")
            check_removable(target)
    from .. import __version__

    written = []
    for target, data, ax, kind in targets:
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
        try:
            tifffile.imwrite(
                str(tmp), data, compression="zlib", photometric="minisblack",
                metadata={"axes": ax, "fastunet": {"version": __version__, "kind": kind}},
            )
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        written.append(target)
    return written
