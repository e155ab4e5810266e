"""napari reader: a fastunet output opened as a biologist expects to see it.

The image it was made from (the input a zarr output records, read lazily, when it is still
there; TIFF outputs record none) at the bottom, the objects as a Labels layer on top of it,
the probabilities as hidden images; all with the input's pixel size (or the output's own). Other readers (napari-ome-zarr) show an OME-Zarr output's uint32
ids as a grayscale image and hide its labels, without the raw image.

Only fastunet outputs are claimed (a zarr group, OME-Zarr or TIFF whose metadata says fastunet
wrote it); :func:`get_reader` returns None for anything else, and napari asks its other readers.
Nothing is written and napari is not imported here: the layer data are plain tuples.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["get_reader", "read_output", "input_layer", "pixel_scale"]

_LABEL_KINDS = ("instances", "labels")


def get_reader(path):
    """npe2 reader hook: :func:`read_output` for a fastunet output, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    from ..io.outputs import fastunet_attrs

    try:
        attrs = fastunet_attrs(Path(os.fspath(path)))
    except (TypeError, ValueError, OSError):
        return None
    return read_output if attrs is not None else None


def read_output(path) -> list[tuple]:
    """The layers of a fastunet output at ``path``: ``[(data, kwargs, layer_type), ...]``,
    the input image first (when its file is still there), then the labels, then the
    probabilities of each class but the background (hidden)."""
    import zarr

    from ..io.outputs import fastunet_attrs
    from ..io.stores import zarr_store

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(os.fspath(path))
    attrs = fastunet_attrs(path) or {}
    image = input_layer(attrs)
    scale, units = (image[1].get("scale"), image[1].get("units")) if image else pixel_scale(path, attrs)
    name = path.name.removesuffix(".zarr").removesuffix(".ome") if path.is_dir() else path.stem
    if path.is_file():
        return [*([image] if image else []), _tiff_labels(path, name, scale, units)]
    group = zarr.open_group(zarr_store(path, read_only=True), mode="r")
    layers = [image] if image else []
    arrays, levels = attrs.get("arrays") or {}, attrs.get("levels") or {}
    for kind in (*_LABEL_KINDS, "probs"):
        if kind not in arrays:
            continue
        data = [group[arrays[kind]], *(group[p] for p, _ in levels.get(kind) or [])]
        data = data if len(data) > 1 else data[0]
        meta = _placement(scale, units, ndim=group[arrays[kind]].ndim - (kind == "probs"))
        if kind == "probs":
            layers += _probability_layers(data, name, meta)
        else:
            layers.append((data, {"name": f"{name} {kind}", **meta}, "labels"))
    return layers


def input_layer(attrs: dict) -> tuple | None:
    """The recorded input as an Image layer (lazy, read through fastunet's own input reader),
    or None when it is gone, remote or unreadable: the labels are shown without it."""
    from ..errors import UserError
    from ..io.inputs import open_volume
    from ..io.physical import pixel_size

    where, axes = attrs.get("input"), (attrs.get("input_id") or {}).get("axes")
    if not isinstance(where, str) or "://" in where or not Path(where).exists():
        return None
    try:
        source = open_volume(where, axes=axes)
    except (UserError, OSError, ValueError):
        return None
    import dask.array as da

    data = da.from_array(_Canonical(source), chunks=_dask_chunks(source), asarray=False, fancy=False)
    size = pixel_size(source)
    meta = _placement(size.size, size.unit if all(size.unit) else None, ndim=len(size.size))
    if "C" in source.axes:
        meta["channel_axis"] = source.axes.index("C")
    return data, {"name": Path(where).name, **meta}, "image"


def pixel_scale(path: Path, attrs: dict) -> tuple[tuple[float, ...] | None, tuple | None]:
    """Scale and units from the output's own metadata (an OME-Zarr output's multiscales)
    when the input is gone; (None, None) when it has none."""
    from ..errors import UserError
    from ..io.inputs import open_volume
    from ..io.physical import pixel_size

    try:
        size = pixel_size(open_volume(str(path)))
    except (UserError, OSError, ValueError, KeyError):
        return None, None
    return (size.size if size.known else None), (size.unit if all(size.unit) else None)


class _Canonical:
    """A :class:`~fastunet.io.inputs.VolumeSource` as an array (canonical axes) for dask."""

    def __init__(self, source) -> None:
        self.source = source
        self.shape, self.dtype, self.ndim = tuple(source.shape), np.dtype(source.dtype), len(source.shape)

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        return self.source.read(tuple(index) + (slice(None),) * (self.ndim - len(index)))


def _dask_chunks(source) -> tuple[int, ...]:
    """The input's chunks, grown to at least 256 along Y and X (TIFF strips are a few rows)."""
    return tuple(c if a not in "YX" else min(n, max(c, 256)) for a, c, n in zip(source.axes, source.chunks,
                                                                                 source.shape))


def _placement(scale, units, *, ndim: int) -> dict:
    """scale (and units) for a layer of ``ndim`` spatial axes: the last axes of the pixel size."""
    if scale is None:
        return {}
    scale = tuple(float(s) for s in scale)[-ndim:]
    meta = {"scale": (1.0,) * (ndim - len(scale)) + scale}
    if units:
        units = tuple(units)[-ndim:]
        meta["units"] = ("pixel",) * (ndim - len(units)) + units
    return meta


def _probability_layers(data, name: str, meta: dict) -> list[tuple]:
    """Class probabilities ``(K, ...)``: one hidden image per class but the background (0)."""
    import dask.array as da

    levels = [da.from_array(d, chunks=d.chunks) for d in (data if isinstance(data, list) else [data])]
    layers = []
    for k in range(1, levels[0].shape[0]):
        data_k = [d[k] for d in levels] if len(levels) > 1 else levels[0][k]  # lazy: one class at a time
        layers.append((data_k, {"name": f"{name} probability {k}", **meta, "visible": False, "colormap": "magma",
                                "contrast_limits": (0.0, 1.0)}, "image"))
    return layers


def _tiff_labels(path: Path, name: str, scale, units) -> tuple:
    import tifffile

    data = tifffile.imread(path)
    return data, {"name": f"{name} labels", **_placement(scale, units, ndim=data.ndim)}, "labels"
