"""The physical pixel size of an input, carried to its outputs.

:func:`pixel_size` reads, for the spatial axes of a :class:`~fastunet.io.inputs.VolumeSource`:

* OME-Zarr: the level-0 ``scale`` and the axes' ``unit``;
* OME-TIFF: ``PhysicalSizeX/Y/Z`` and their units from the OME-XML;
* ImageJ TIFF: ``XResolution``/``YResolution`` (pixels per unit), ``spacing`` (Z) and
  ``unit`` from the ImageJ description;
* other TIFFs: ``XResolution``/``YResolution`` with a centimeter or inch ``ResolutionUnit``.

Units are NGFF names (UDUNITS-2: ``"micrometer"``, ``"nanometer"``, ...); :func:`tiff_unit`
gives the short form ImageJ and OME-TIFF write (``"µm"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .ome import ome_xml_image

if TYPE_CHECKING:
    from .inputs import VolumeSource

__all__ = ["PixelSize", "pixel_size", "ngff_unit", "tiff_unit"]

_UNITS = {
    "micrometer": ("µm", "um", "micron", "microns", "\\u00B5m", "micrometer", "micrometers", "μm"),
    "nanometer": ("nm", "nanometer", "nanometers"),
    "millimeter": ("mm", "millimeter", "millimeters"),
    "centimeter": ("cm", "centimeter", "centimeters"),
    "meter": ("m", "meter", "meters"),
    "angstrom": ("Å", "angstrom", "angstroms"),
    "inch": ("in", "inch", "inches"),
}
_SHORT = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m",
          "angstrom": "Å", "inch": "in"}


def ngff_unit(unit) -> str | None:
    """An ImageJ / OME-TIFF / NGFF unit name as NGFF writes it; None when unknown (pixels)."""
    if not unit:
        return None
    text = str(unit).strip()
    for name, spellings in _UNITS.items():
        if text in spellings or text.lower() in spellings:
            return name
    return None


def tiff_unit(unit: str | None) -> str | None:
    """An NGFF unit in the short form of ImageJ and OME-TIFF (``"µm"``)."""
    return _SHORT.get(unit) if unit else None


@dataclass(frozen=True)
class PixelSize:
    """Physical size of a pixel along the spatial axes ``axes`` (e.g. ``"ZYX"``), one
    ``unit`` per axis (None: unknown)."""

    axes: str
    size: tuple[float, ...]
    unit: tuple[str | None, ...]

    @classmethod
    def unknown(cls, axes: str) -> "PixelSize":
        return cls(axes, (1.0,) * len(axes), (None,) * len(axes))

    def of(self, axis: str) -> tuple[float, str | None]:
        i = self.axes.index(axis)
        return self.size[i], self.unit[i]

    @property
    def known(self) -> bool:
        return any(u is not None for u in self.unit) or any(s != 1.0 for s in self.size)


def pixel_size(source: VolumeSource) -> PixelSize:
    """The physical pixel size of ``source``'s spatial axes (1 and no unit where unknown)."""
    axes = source.spatial_axes
    try:
        if source.kind == "ome-zarr":
            return _from_ome_zarr(source, axes)
        if source.kind == "tiff":
            return _from_tiff(source.path, axes, int(source.key or 0))
    except (KeyError, ValueError, TypeError, IndexError, OSError, AttributeError):
        pass  # unreadable metadata: no pixel size rather than no output
    return PixelSize.unknown(axes)


def _from_ome_zarr(source, axes: str) -> PixelSize:
    ome = source.ome or {}
    native = source.native_axes or source.axes
    entries = ome.get("axes") or []
    scale = next((t["scale"] for t in ome.get("coordinateTransformations") or [] if t.get("type") == "scale"), None)
    size, unit = [], []
    for a in axes:
        i = native.index(a)
        size.append(float(scale[i]) if scale else 1.0)
        unit.append(ngff_unit(entries[i].get("unit")) if i < len(entries) and isinstance(entries[i], dict) else None)
    return PixelSize(axes, tuple(size), tuple(unit))


def _from_tiff(path, axes: str, series: int = 0) -> PixelSize:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.is_ome and tif.ome_metadata:
            found = _from_ome_xml(tif.ome_metadata, axes, series)
            if found is not None:
                return found
        page = tif.series[series].keyframe if series < len(tif.series) else tif.pages.first
        tags = page.tags
        xy = {}
        for a, tag in (("X", "XResolution"), ("Y", "YResolution")):
            if tag in tags:
                num, den = tags[tag].value
                xy[a] = den / num if num else 1.0
        if tif.is_imagej:
            meta = tif.imagej_metadata or {}
            unit = ngff_unit(meta.get("unit"))
            z = float(meta.get("spacing", 1.0))
            known = {"X": (xy.get("X", 1.0), unit), "Y": (xy.get("Y", 1.0), unit), "Z": (z, unit)}
        else:
            res_unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 1
            factor, unit = {2: (25400.0, "micrometer"), 3: (10000.0, "micrometer")}.get(res_unit, (1.0, None))
            known = {a: (v * factor, unit) for a, v in xy.items()}
        size = tuple(float(known.get(a, (1.0, None))[0]) for a in axes)
        unit = tuple(known.get(a, (1.0, None))[1] for a in axes)
        return PixelSize(axes, size, unit)


def _from_ome_xml(xml: str, axes: str, series: int = 0) -> PixelSize | None:
    image = ome_xml_image(xml, series)
    pixels = None if image is None else next((el for el in image.iter() if el.tag.rpartition("}")[2] == "Pixels"),
                                             None)
    if pixels is None:
        return None
    size, unit = [], []
    for a in axes:
        value = pixels.get(f"PhysicalSize{a}")
        size.append(float(value) if value is not None else 1.0)
        unit.append(ngff_unit(pixels.get(f"PhysicalSize{a}Unit", "µm")) if value is not None else None)
    return PixelSize(axes, tuple(size), tuple(unit))
