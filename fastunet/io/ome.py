"""OME-Zarr (NGFF) metadata in one place: reading the axes and coordinate transforms of an
input image, and writing the ``multiscales`` / ``image-label`` metadata of an output.

NGFF 0.4 lives on zarr v2 with its entries at the top of a group's attributes; NGFF 0.5
lives on zarr v3 under ``attrs["ome"]``. An input's axes come from level 0 of its first
multiscale image (``type`` time -> T, channel -> C, space -> Z/Y/X by name, or by position
when the names are not z/y/x). The writing side (:func:`image_attrs`, :func:`label_attrs`,
:func:`list_label`) serves :mod:`fastunet.io.output_layout`, which decides what an output
holds. :func:`ome_xml_image` finds one image of an OME-TIFF's OME-XML.
"""

from __future__ import annotations

from typing import NamedTuple

import zarr

from ..errors import UserError
from .axes import parse_axes

__all__ = ["LABEL_NAME"]

LABEL_NAME = "segmentation"  # name of the label image under labels/ in OME-Zarr outputs
# Label colors for OME-Zarr outputs: background transparent, classes from a tab10-like palette.
_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


# ---------------------------------------------------------------------------- reading inputs


def ngff_section(attrs: dict) -> dict | None:
    """``attrs["ome"]`` of an NGFF 0.5 group, else None (NGFF 0.4 keeps its entries at the top)."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else None


def is_bioformats2raw(attrs: dict, section: dict | None) -> bool:
    """Is this the top group of a bioformats2raw layout (the first image in group ``"0"``)?"""
    return "bioformats2raw.layout" in attrs or bool(section and "bioformats2raw.layout" in section)


def find_multiscales(attrs: dict, section: dict | None) -> list | None:
    """The ``multiscales`` list of an OME-Zarr image group, or None for a plain group."""
    return (section or {}).get("multiscales") or attrs.get("multiscales")


def axis_letters(axes_meta: list, what: str) -> str:
    """OME-Zarr axes (dicts, or plain names in NGFF 0.3) -> TCZYX letters."""
    entries = [a if isinstance(a, dict) else {"name": str(a)} for a in axes_meta]
    types = []
    for a in entries:
        t = a.get("type")
        if t is None:  # NGFF 0.3: names only
            n = str(a.get("name", "")).lower()
            t = {"t": "time", "c": "channel"}.get(n, "space" if n in ("z", "y", "x") else None)
        types.append(t)
    space = [i for i, t in enumerate(types) if t == "space"]
    names = [str(entries[i].get("name", "")).lower() for i in space]
    if not 2 <= len(space) <= 3:
        raise UserError(f"{what}: the OME-Zarr metadata list {len(space)} space axes; expected 2 or 3.")
    if sorted(names) in (["x", "y"], ["x", "y", "z"]):
        space_letters = [n.upper() for n in names]
    else:
        space_letters = list("ZYX"[3 - len(space):])
    letters = []
    for i, t in enumerate(types):
        if t == "space":
            letters.append(space_letters[space.index(i)])
        elif t == "time":
            letters.append("T")
        else:  # channel, or a custom / null type: the spec puts it where the channel goes
            letters.append("C")
    if len(set(letters)) != len(letters):
        raise UserError(f'{what}: cannot interpret the OME-Zarr axes {names}; pass the axes (axes="...").')
    return "".join(letters)


def read_level0(group: zarr.Group, multiscales: list, section: dict | None, axes: str | None,
                what: str) -> tuple[str, zarr.Array, str, dict]:
    """Level 0 of the first multiscale image of an OME-Zarr group.

    Returns ``(key, array, letters, metadata)``: the array's path in the group, the array,
    its axis letters (``TCZYX``) and the metadata kept in :attr:`VolumeSource.ome`
    (``version``, ``name``, ``axes``, level-0 ``coordinateTransformations`` and
    ``multiscale_coordinateTransformations``). User-given ``axes`` must agree with the
    metadata.
    """
    ms = multiscales[0]
    datasets = ms.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        raise UserError(f"{what}: the OME-Zarr multiscales metadata list no datasets; the image cannot be found.")
    key = str(datasets[0]["path"])
    try:
        arr = group[key]
    except KeyError:
        raise UserError(f"{what}: OME-Zarr level 0 {key!r} is missing from the group.") from None
    if not isinstance(arr, zarr.Array):
        raise UserError(f"{what}: OME-Zarr level 0 {key!r} is not an array.")
    axes_meta = ms.get("axes") or [{"name": n} for n in "tczyx"[5 - arr.ndim:]]
    if len(axes_meta) != arr.ndim:
        raise UserError(
            f"{what}: the OME-Zarr metadata list {len(axes_meta)} axes but level 0 has {arr.ndim}."
        )
    letters = axis_letters(axes_meta, what)
    check_ngff_order(letters, arr.shape, what)
    check_transforms(ms, arr.ndim, what)
    if axes is not None and parse_axes(axes, arr.ndim, what=what) != letters:
        raise UserError(
            f'{what} is OME-Zarr with axes {letters} in its metadata; axes="{axes}" disagrees: leave it out.'
        )
    version = (section or {}).get("version") or ms.get("version") or ("0.5" if section else "0.4")
    meta = {
        "version": str(version),
        "name": ms.get("name"),
        "axes": [a if isinstance(a, dict) else {"name": str(a)} for a in axes_meta],
        "coordinateTransformations": datasets[0].get("coordinateTransformations"),
        "multiscale_coordinateTransformations": ms.get("coordinateTransformations"),
    }
    return key, arr, letters, meta


def check_ngff_order(letters: str, shape, what: str) -> None:
    """NGFF lists the axes as time, channel, then space with z before y before x; a list in
    another order describes another array (its sizes go to the wrong axes), so it is refused."""
    canonical = "".join(a for a in "TCZYX" if a in letters)
    if letters != canonical:
        raise UserError(
            f"{what}: the OME-Zarr metadata list the axes in the order {','.join(letters.lower())} for an array of "
            f"shape {tuple(shape)}; NGFF orders them {','.join(canonical.lower())} (time, channel, z, y, x), so "
            "the metadata do not describe this array: fix the axes list (ome-zarr-models validates it)."
        )


def check_transforms(ms: dict, ndim: int, what: str) -> None:
    """Every ``scale`` and ``translation`` of the multiscale image has one entry per axis, and
    every scale is a positive number."""
    entries = [("multiscale", t) for t in ms.get("coordinateTransformations") or []]
    for i, ds in enumerate(ms.get("datasets") or []):
        entries += [(f"level {ds.get('path', i)}", t) for t in (ds.get("coordinateTransformations") or [])]
    for where, t in entries:
        kind = t.get("type") if isinstance(t, dict) else None
        values = t.get(kind) if kind in ("scale", "translation") else None
        if kind not in ("scale", "translation") or "path" in t:
            continue
        if not isinstance(values, list) or len(values) != ndim:
            count = len(values) if isinstance(values, list) else type(values).__name__
            raise UserError(f"{what}: the OME-Zarr {kind} of {where} has {count} entries for {ndim} axes; give "
                            f"one per axis (fix the metadata).")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
                   for v in values) or (kind == "scale" and min(values) <= 0):
            raise UserError(f"{what}: the OME-Zarr {kind} of {where} is {values}; expected {ndim} "
                            f"{'positive ' if kind == 'scale' else ''}numbers (fix the metadata).")


# ---------------------------------------------------------------------------- writing outputs


class SpatialMetadata(NamedTuple):
    """An input's OME axes and transforms, restricted to its spatial axes (canonical order)."""

    axes: list
    transforms: list
    multiscale_transforms: list | None


def ngff_version(zarr_format: int) -> str:
    """The NGFF version an output of this zarr format is written in: 0.4 on v2, 0.5 on v3."""
    return "0.4" if zarr_format == 2 else "0.5"


def spatial_metadata(ome: dict | None, native_axes: str, spatial_axes: str) -> SpatialMetadata:
    """OME axes and level-0 transforms of an input (:attr:`VolumeSource.ome`, its native and
    spatial axes), restricted to its spatial axes; a scale of 1 when the input has none."""
    ome = ome or {}
    idx = [native_axes.index(a) for a in spatial_axes]
    axes_in = ome.get("axes") or [{"name": a.lower(), "type": "space"} for a in native_axes]
    axes = [dict(axes_in[i]) for i in idx]

    def subset(transforms, fallback):
        out = []
        for t in transforms or []:
            kind = t.get("type")
            if kind in ("scale", "translation") and isinstance(t.get(kind), list):
                out.append({"type": kind, kind: [float(t[kind][i]) for i in idx]})
        if not any(t["type"] == "scale" for t in out) and fallback:
            out.insert(0, {"type": "scale", "scale": [1.0] * len(idx)})
        return out

    transforms = subset(ome.get("coordinateTransformations"), True)
    ms_transforms = subset(ome.get("multiscale_coordinateTransformations"), False) or None
    return SpatialMetadata(axes, transforms, ms_transforms)


def multiscale(name, axes, datasets, ms_transforms, version) -> dict:
    """One ``multiscales`` entry; ``datasets`` lists ``(path, transforms)`` per level."""
    ms = {"name": name, "axes": axes,
          "datasets": [{"path": path, "coordinateTransformations": t} for path, t in datasets]}
    if ms_transforms:
        ms["coordinateTransformations"] = ms_transforms
    if version == "0.4":
        ms = {"version": "0.4", **ms}
    return ms


def group_attrs(version: str, **entries) -> dict:
    """NGFF group attributes: top level for 0.4 (zarr v2), under "ome" for 0.5 (zarr v3)."""
    if version == "0.4":
        return entries
    return {"ome": {"version": "0.5", **entries}}


def ngff_entries(attrs: dict) -> dict:
    """The NGFF entries of a group's attributes, whichever the version."""
    return ngff_section(attrs) or attrs


def label_colors(num_classes: int) -> list[dict]:
    """``image-label`` colors of a class map: class 0 transparent, the others from the palette."""
    colors = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    for k in range(1, num_classes):
        colors.append({"label-value": k, "rgba": [*_PALETTE[(k - 1) % len(_PALETTE)], 255]})
    return colors


def instance_colors() -> list[dict]:
    """``image-label`` colors of object ids: the background transparent (viewers color the objects)."""
    return [{"label-value": 0, "rgba": [0, 0, 0, 0]}]


def with_channel(transforms: list) -> list:
    """Transforms of the spatial axes with a channel axis (scale 1, translation 0) in front."""
    return with_axis(transforms)


def with_axis(transforms: list, scale: float = 1.0, translation: float = 0.0) -> list:
    """Transforms with one more axis in front (a channel axis, or the time axis: its ``scale``
    and ``translation``)."""
    return [{"type": t["type"], t["type"]: [scale if t["type"] == "scale" else translation, *t[t["type"]]]}
            for t in transforms]


def time_axis(ome: dict | None, native_axes: str) -> tuple[dict, float, float]:
    """The NGFF time axis of an input (its entry, level-0 scale and translation); an axis
    ``t`` with scale 1 when the input is not OME-Zarr."""
    ome = ome or {}
    axes = ome.get("axes") or []
    i = native_axes.index("T") if "T" in native_axes else -1
    if not 0 <= i < len(axes):
        return {"name": "t", "type": "time"}, 1.0, 0.0
    value = {"scale": 1.0, "translation": 0.0}
    for t in ome.get("coordinateTransformations") or []:
        if t.get("type") in value and isinstance(t.get(t["type"]), list):
            value[t["type"]] = float(t[t["type"]][i])
    return dict(axes[i]), value["scale"], value["translation"]


def image_attrs(version: str, name: str, axes: list, datasets: list, ms_transforms) -> dict:
    """Attributes of a multiscale image group (``datasets``: ``(path, transforms)`` per level)."""
    return group_attrs(version, multiscales=[multiscale(name, axes, datasets, ms_transforms, version)])


def label_attrs(version: str, name: str, axes: list, datasets: list, ms_transforms, colors: list,
                source_image: str) -> dict:
    """Attributes of an image-label group: its multiscales and ``image-label`` (colors, and
    ``source.image``, the relative path to the image it labels)."""
    label_meta = {"colors": colors, "source": {"image": source_image}}
    if version == "0.4":
        label_meta = {"version": "0.4", **label_meta}
    return group_attrs(version, multiscales=[multiscale(name, axes, datasets, ms_transforms, version)],
                       **{"image-label": label_meta})


def list_label(labels: zarr.Group, version: str, name: str, *, remove: bool = False) -> list:
    """Add ``name`` to (or remove it from) the ``labels`` list of a labels group; the new list."""
    attrs = labels.attrs.asdict()
    names = [n for n in ngff_entries(attrs).get("labels", []) if n != name]
    if not remove:
        names.append(name)
    if version == "0.4":
        labels.attrs["labels"] = names
    else:
        labels.attrs["ome"] = {**(ngff_section(attrs) or {"version": "0.5"}), "labels": names}
    return names


# ---------------------------------------------------------------------------- OME-TIFF (OME-XML)


def ome_xml_image(xml: str, series: int = 0):
    """The ``Image`` element of OME-XML for image ``series`` (0 first), or None."""
    import xml.etree.ElementTree as ET

    images = [el for el in ET.fromstring(xml).iter() if el.tag.rpartition("}")[2] == "Image"]
    return images[series] if series < len(images) else None
