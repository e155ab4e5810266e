"""TIFF outputs: :func:`write_tiff` writes results that fit in memory as TIFF files that
ImageJ/Fiji and OME-TIFF readers open with their pixel size, marked as fastunet's (the
Software tag) so that ``overwrite=True`` may replace them and nothing else.

=============  ======================  ===============================================
kind           data type               file
=============  ======================  ===============================================
instances      uint16 (ids <= 65535),  ImageJ hyperstack (uint16); uint32 as a plain
               else uint32             TIFF with resolution tags (ImageJ opens it as
                                       32-bit)
labels         uint8                   ImageJ hyperstack
probs          float32 (ImageJ opens   ImageJ hyperstack, the classes as its channels
               no float16)             (``(T)ZCYX``)
=============  ======================  ===============================================

``*.ome.tif`` outputs are OME-TIFF (any data type) with ``PhysicalSizeX/Y/Z``. ImageJ
files carry the pixel size as ``XResolution``/``YResolution``, ``spacing`` (Z) and
``unit``; plain TIFFs as ``XResolution``/``YResolution`` in pixels per centimeter. Files
over 4 GiB are BigTIFF (plain TIFF: ImageJ hyperstacks cannot be); a stack of one slice is
a plain TIFF too (ImageJ's format would drop its Z axis). A time series has a leading ``T``
axis (ImageJ frames, OME ``T``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from ..errors import UserError
from ..paths import atomic_path
from .outputs import check_removable, kind_path
from .physical import PixelSize, tiff_unit

__all__ = ["write_tiff", "is_ome_tiff_name"]

_BIG = 2**32 - 2**25  # bytes beyond which a TIFF must be BigTIFF
_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.float32)


def is_ome_tiff_name(path) -> bool:
    """Is ``path`` named as an OME-TIFF (``*.ome.tif`` / ``*.ome.tiff``)?"""
    name = str(path).lower()
    return name.endswith(".ome.tif") or name.endswith(".ome.tiff")


def _instances_dtype(ids: np.ndarray) -> np.ndarray:
    top = int(ids.max()) if ids.size else 0
    return ids.astype(np.uint16 if top <= 0xFFFF else (np.uint32 if top <= 0xFFFFFFFF else np.uint64), copy=False)


def _checked(kind: str, data, axes: str) -> tuple[np.ndarray, str]:
    """The array of a kind as written, and its axes (probabilities: ``C`` then ``axes``)."""
    data = np.asarray(data)
    nd = len(axes)
    if kind == "labels":
        if data.dtype != np.uint8 or data.ndim != nd:
            raise ValueError(f"labels must be uint8 with axes {axes}; got {data.dtype} {data.shape}.")
        return data, axes
    if kind == "instances":
        if not np.issubdtype(data.dtype, np.unsignedinteger) or data.ndim != nd:
            raise ValueError(f"instances must be unsigned integers with axes {axes}; got {data.dtype} {data.shape}.")
        return _instances_dtype(data), axes
    if data.dtype not in (np.float16, np.float32) or data.ndim != nd + 1:
        raise ValueError(f"probs must be float16/float32 with axes C{axes}; got {data.dtype} {data.shape}.")
    return data.astype(np.float32, copy=False), "C" + axes


def _ordered(data: np.ndarray, axes: str, order: str) -> tuple[np.ndarray, str]:
    """``data`` transposed from ``axes`` into ``order`` (less the axes it lacks)."""
    want = "".join(a for a in order if a in axes)
    return np.transpose(data, [axes.index(a) for a in want]), want


def _options(data: np.ndarray, axes: str, kind: str, ome: bool, pixel: PixelSize | None) -> tuple[np.ndarray, dict]:
    """The data in the order written and tifffile's options for it."""
    from .. import __version__

    software = f"fastunet {__version__} {kind}"
    size = {a: (pixel.of(a) if pixel is not None and a in pixel.axes else (1.0, None)) for a in "ZYX"}
    known = pixel is not None and pixel.known
    big = data.nbytes > _BIG
    if ome:
        data, axes = _ordered(data, axes, "TCZYX")
        meta = {"axes": axes}
        for a in axes.replace("C", "").replace("T", ""):
            value, unit = size[a]
            meta[f"PhysicalSize{a}"] = value
            if unit:
                meta[f"PhysicalSize{a}Unit"] = tiff_unit(unit)
        return data, {"ome": True, "metadata": meta, "software": software, "bigtiff": big}
    resolution = (1.0 / size["X"][0], 1.0 / size["Y"][0]) if known else None
    if data.dtype.type in _IMAGEJ_DTYPES and not big and min(data.shape) > 1:
        data, axes = _ordered(data, axes, "TZCYX")  # ImageJ's hyperstack order
        meta = {"axes": axes}
        unit = size["X"][1]
        if unit:
            meta["unit"] = "um" if unit == "micrometer" else tiff_unit(unit)
        if "Z" in axes:
            meta["spacing"] = size["Z"][0]
        return data, {"imagej": True, "metadata": meta, "resolution": resolution, "software": software}
    unit = size["X"][1]
    options = {"metadata": {"axes": axes, "fastunet": {"version": __version__, "kind": kind}},
               "photometric": "minisblack", "software": software, "bigtiff": big, "compression": "zlib"}
    if resolution and unit in ("micrometer", "nanometer", "millimeter", "centimeter"):
        per_cm = {"micrometer": 1e4, "nanometer": 1e7, "millimeter": 10.0, "centimeter": 1.0}[unit]
        options.update(resolution=(per_cm / size["X"][0], per_cm / size["Y"][0]), resolutionunit="CENTIMETER")
    return data, options


def write_tiff(
    path,
    *,
    labels: np.ndarray | None = None,
    probs: np.ndarray | None = None,
    axes: str,
    overwrite: bool = False,
    instances: np.ndarray | None = None,
    pixel: PixelSize | None = None,
) -> list[Path]:
    """Write results that fit in memory as TIFF files (see the module for the formats).

    Parameters
    ----------
    path : str or path-like
        ``.tif``/``.tiff`` destination (``.ome.tif``: OME-TIFF). The first of instances,
        labels, probs goes to ``path``, each further one to ``<stem>_<kind>.tif`` beside it.
    labels : numpy.ndarray or None
        uint8, spatial axes ``axes``.
    probs : numpy.ndarray or None
        float16 or float32, ``(K, *axes)``; written as float32.
    axes : str
        Axes of the result, ``"YX"`` or ``"ZYX"``, with ``T`` in front for a time series.
    overwrite : bool
        Replace existing fastunet TIFFs (anything else is refused).
    instances : numpy.ndarray or None
        Unsigned object ids, spatial axes ``axes``.
    pixel : PixelSize, optional
        The physical pixel size to record (:func:`fastunet.io.physical.pixel_size` of the input).

    Returns
    -------
    list of Path
        The files written. Each is written to a temporary name and renamed.
    """
    given = {k: v for k, v in (("instances", instances), ("labels", labels), ("probs", probs)) if v is not None}
    if not given:
        raise ValueError("write_tiff needs instances, labels, probs or some of them.")
    axes = axes.upper()
    if axes not in ("YX", "ZYX", "TYX", "TZYX"):
        raise ValueError(f"axes must be 'YX' or 'ZYX' (a time series: 'TYX', 'TZYX'); got {axes!r}.")
    path = Path(path).expanduser()
    targets = []
    for i, (kind, data) in enumerate(given.items()):
        data, ax = _checked(kind, data, axes)
        if targets and data.shape[-len(axes):] != targets[0][1].shape[-len(axes):]:
            raise ValueError(f"{kind} {data.shape} and {targets[0][3]} {targets[0][1].shape} disagree.")
        targets.append((path if i == 0 else kind_path(path, kind), data, ax, kind))
    for target, *_ in targets:
        if target.exists():
            if not overwrite:
                raise UserError(f"Output {str(target)!r} already exists; pass overwrite=True to replace it.")
            check_removable(target)
    written = []
    for target, data, ax, kind in targets:
        data, options = _options(data, ax, kind, is_ome_tiff_name(target), pixel)
        try:  # a temporary name renamed into place: an interrupted or failed write leaves nothing
            with atomic_path(target) as tmp:
                tifffile.imwrite(str(tmp), data, **options)
        except OSError as exc:  # a full disk, a quota: one line; a TIFF is written whole, so nothing is kept
            raise UserError(f"Cannot write {str(target)!r} ({exc.strerror or exc}); nothing of it was kept (a TIFF "
                            "is written whole, at the end): free some space, or write a zarr output (written "
                            "block by block, resumable), and run the command again.") from None
        written.append(target)
    return written
