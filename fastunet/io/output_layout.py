"""What a zarr output holds and where: the arrays of each kind, their resolution levels and
the OME-Zarr metadata (layout 2 of :func:`fastunet.io.create_output`).

Three layouts:

* **plain** (a zarr input, a TIFF or an array, to ``out.zarr``): arrays ``instances``
  (uint32), ``labels`` (uint8) and ``probs`` (float16, ``(K, ...)``) at the root.
* **OME-Zarr image** (an OME-Zarr input, or an output named ``*.ome.zarr``): an image group
  whose label images (``instances`` and ``labels`` kinds) are image-labels under
  ``labels/<name>`` with as many levels as the input image (nearest-neighbour downsampling,
  see :mod:`fastunet.io.pyramid`), ``image-label`` colors and ``source.image`` (the OME-Zarr
  input when there is one); the root image is the probabilities (``probs/<level>``, a
  channel axis ``c`` of the K classes + the spatial axes) when they are written, else the
  first label image itself (its arrays, no copy), so that the output is a valid OME-Zarr
  image that ome-zarr-py's Reader, napari-ome-zarr and ome-zarr-models open.
* **into the input** (``image.ome.zarr/labels/<name>``): one image-label group inside the
  input's own ``labels`` group (its list gains ``<name>``), in the input's zarr format and
  NGFF version; nothing else of the input is written.

NGFF 0.4 goes with zarr v2 (nested ``/`` chunk keys), 0.5 with zarr v3. A time series
(T > 1) gives every array a leading ``t`` axis (chunks of one time point; NGFF: the input's
time axis, or ``t`` with scale 1). Every level's transforms are level 0's sampled at its factor
(scale times the factor, level 0's translation), as its pixels are; plain outputs record the
input's pixel size in ``attrs["fastunet"]["pixel_size"]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import zarr

from ..errors import UserError
from .ome import (
    image_attrs,
    instance_colors,
    label_attrs,
    label_colors,
    list_label,
    ngff_version,
    spatial_metadata,
    time_axis,
    with_axis,
    with_channel,
)
from .physical import pixel_size
from .pyramid import Level, input_levels, level_chunks, sampled_transforms

__all__ = ["OutputPlan", "plan_output", "create_arrays", "retype_instances", "LAYOUT_VERSION", "is_ome_name"]

LAYOUT_VERSION = 2
_DTYPES = {"instances": "uint32", "labels": "uint8", "probs": "float16"}


def is_ome_name(path) -> bool:
    """Is ``path`` named as an OME-Zarr (``*.ome.zarr``)?"""
    return str(path).rstrip("/").lower().endswith(".ome.zarr")


@dataclass(frozen=True)
class OutputPlan:
    """What :func:`create_arrays` writes, decided before anything is written."""

    kinds: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    block: tuple[int, ...]
    num_classes: int
    zarr_format: int
    mode: str  # "plain", "ome" or "into"
    names: list  # dimension names of the spatial axes
    axes: list = field(default_factory=list)  # NGFF spatial axes
    levels: list = field(default_factory=list)  # [Level], level 0 first
    ms_transforms: list | None = None
    label_names: dict = field(default_factory=dict)  # kind -> label image name
    source_image: str = "../../"
    time: int = 1  # time points (a leading t axis when > 1)
    time_axis: tuple = ({"name": "t", "type": "time"}, 1.0, 0.0)  # NGFF entry, scale, translation

    def lead(self, transforms: list, axes: list, *, identity: bool = False) -> tuple[list, list]:
        """Transforms and NGFF axes with the time axis in front (a time series), else as given
        (``identity``: scale 1, for multiscale-level transforms)."""
        if self.time <= 1:
            return transforms, axes
        entry, scale, translation = self.time_axis
        return with_axis(transforms, *((1.0, 0.0) if identity else (scale, translation))), [entry, *axes]

    @property
    def version(self) -> str:
        return ngff_version(self.zarr_format)


def _ome_axes(source) -> tuple[list, list, list | None]:
    """NGFF spatial axes, level-0 transforms and multiscale transforms of the output."""
    if source.kind == "ome-zarr":
        meta = spatial_metadata(source.ome, source.native_axes or source.axes, source.spatial_axes)
        return meta.axes, meta.transforms, meta.multiscale_transforms
    px = pixel_size(source)
    axes = []
    for a, unit in zip(px.axes, px.unit):
        entry = {"name": a.lower(), "type": "space"}
        if unit:
            entry["unit"] = unit
        axes.append(entry)
    return axes, [{"type": "scale", "scale": [float(s) for s in px.size]}], None


def plan_output(source, *, kinds, num_classes: int, chunks, block, zarr_format: int, mode: str,
                label_name: str, output: Path) -> OutputPlan:
    """Decide the arrays, levels and metadata of an output (see the module's layouts)."""
    spatial = source.spatial_shape
    names = [a.lower() for a in source.spatial_axes]
    time = {"time": source.timepoints, "time_axis": time_axis(source.ome, source.native_axes or source.axes)}
    if mode == "plain":
        return OutputPlan(kinds=kinds, shape=spatial, chunks=chunks, block=block, num_classes=num_classes,
                          zarr_format=zarr_format, mode=mode, names=names, **time)
    axes, transforms, ms_transforms = _ome_axes(source)
    names = [str(a.get("name", n)) for a, n in zip(axes, names)]
    levels = input_levels(source) or [Level((1,) * len(spatial), spatial, transforms)]
    levels = [Level(level.factor, spatial if i == 0 else level.shape, sampled_transforms(transforms, level.factor))
              for i, level in enumerate(levels)]
    label_kinds = [k for k in kinds if k != "probs"]
    if mode == "into":
        if "probs" in kinds or len(label_kinds) != 1:
            raise UserError(
                f"Writing into the input's labels group writes one label image: output_kind=\"instances\" or "
                f"\"labels\"; got {','.join(kinds)} (probabilities are no label image: write them to a separate "
                "output)."
            )
    label_names = {k: label_name if i == 0 else f"{label_name}_classes" for i, k in enumerate(label_kinds)}
    source_image = "../../"
    if source.kind == "ome-zarr" and mode == "ome":
        source_image = os.path.relpath(Path(source.path).resolve(), output / "labels" / label_name)
    return OutputPlan(kinds=kinds, shape=spatial, chunks=chunks, block=block, num_classes=num_classes,
                      zarr_format=zarr_format, mode=mode, names=names, axes=axes, levels=levels,
                      ms_transforms=ms_transforms, label_names=label_names, source_image=source_image, **time)


def _array(plan: OutputPlan, where: zarr.Group, name: str, kind: str, level: Level) -> zarr.Array:
    """One array of ``kind`` at ``level``: dimension names (zarr v3) or ``_ARRAY_DIMENSIONS``
    (v2, with nested ``/`` chunk keys)."""
    chunks = level_chunks(plan.chunks, plan.block, level.factor) if any(f > 1 for f in level.factor) else plan.chunks
    shape, dims = level.shape, list(plan.names)
    if kind == "probs":
        shape, chunks, dims = (plan.num_classes, *shape), (1, *chunks), ["c" if "c" not in dims else "class", *dims]
    if plan.time > 1:
        shape, chunks, dims = (plan.time, *shape), (1, *chunks), ["t", *dims]
    if plan.zarr_format == 3:
        kw = {"dimension_names": dims}
    else:
        kw = {"attributes": {"_ARRAY_DIMENSIONS": dims}, "chunk_key_encoding": {"name": "v2", "separator": "/"}}
    fill = float("nan") if kind == "probs" else 0
    return where.create_array(name, shape=shape, chunks=chunks, dtype=_DTYPES[kind], fill_value=fill, **kw)


def create_arrays(plan: OutputPlan, root: zarr.Group) -> tuple[dict, dict]:
    """Create the arrays and OME metadata of ``plan`` in ``root`` (the output group, or the
    label group for ``mode="into"``); returns the ``arrays`` (kind -> level-0 path) and
    ``levels`` (kind -> ``[[path, factor], ...]`` of the levels above 0) records."""
    arrays, levels = {}, {}
    if plan.mode == "plain":
        for kind in plan.kinds:
            _array(plan, root, kind, kind, Level((1,) * len(plan.shape), plan.shape, []))
            arrays[kind] = kind
        return arrays, levels
    version = plan.version
    datasets = [(str(i), plan.lead(level.transforms, [])[0]) for i, level in enumerate(plan.levels)]
    axes = plan.lead([], plan.axes)[1]
    ms_transforms = plan.lead(plan.ms_transforms, [], identity=True)[0] if plan.ms_transforms else None
    for kind, name in plan.label_names.items():
        colors = instance_colors() if kind == "instances" else label_colors(plan.num_classes)
        attrs = label_attrs(version, name, axes, datasets, ms_transforms, colors, plan.source_image)
        if plan.mode == "into":
            group, prefix = root, ""
            group.attrs.update(attrs)
        else:
            labels = root.require_group("labels")
            list_label(labels, version, name)
            group, prefix = labels.create_group(name, attributes=attrs), f"labels/{name}/"
        for i, level in enumerate(plan.levels):
            _array(plan, group, str(i), kind, level)
        arrays[kind] = f"{prefix}0"
        levels[kind] = [[f"{prefix}{i}", list(level.factor)] for i, level in enumerate(plan.levels) if i]
    if plan.mode == "ome":
        if "probs" in plan.kinds:
            probs = root.create_group("probs")
            for i, level in enumerate(plan.levels):
                _array(plan, probs, str(i), "probs", level)
            channel = {"name": "c" if "c" not in plan.names else "class", "type": "channel"}
            root_datasets = [(f"probs/{i}", plan.lead(with_channel(level.transforms), [])[0])
                             for i, level in enumerate(plan.levels)]
            ms = plan.lead(with_channel(plan.ms_transforms), [], identity=True)[0] if plan.ms_transforms else None
            root.attrs.update(image_attrs(version, "probabilities", plan.lead([], [channel, *plan.axes])[1],
                                          root_datasets, ms))
            arrays["probs"] = "probs/0"
            levels["probs"] = [[f"probs/{i}", list(level.factor)] for i, level in enumerate(plan.levels) if i]
        else:  # the first label image is the root image too (the same arrays)
            name = next(iter(plan.label_names.values()))
            root_datasets = [(f"labels/{name}/{p}", t) for p, t in datasets]
            root.attrs.update(image_attrs(version, name, axes, root_datasets, ms_transforms))
    return arrays, levels


def retype_instances(root: zarr.Group, plan_record: dict, dtype: str) -> None:
    """Recreate the (still empty) instance arrays of an output with ``dtype`` (uint64 when a
    volume holds more objects than uint32 ids can number)."""
    paths = [plan_record["arrays"]["instances"], *[p for p, _ in plan_record.get("levels", {}).get("instances", [])]]
    for path in paths:
        old = root[path]
        parent, _, name = path.rpartition("/")
        where = root[parent] if parent else root
        kw = {"attributes": old.attrs.asdict()}
        if old.metadata.zarr_format == 3:
            kw = {"dimension_names": old.metadata.dimension_names}
        else:
            kw["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        where.create_array(name, shape=old.shape, chunks=old.chunks, dtype=dtype, fill_value=0, overwrite=True, **kw)
