"""OME-Zarr HCS plates and wells (NGFF ``plate`` / ``well`` metadata): their field images.

A plate lists its wells (``plate.wells[].path``, e.g. ``A/1``), a well its fields
(``well.images[].path``, e.g. ``0``); each field is an OME-Zarr image with its own
``labels`` group. :func:`plate_fields` lists the fields of a plate or a well, so that each is
segmented on its own, into its own labels group.
"""

from __future__ import annotations

import os

import zarr

from ..errors import UserError
from .ome import ngff_entries
from .stores import is_remote, location, zarr_store

__all__ = ["plate_fields"]


def _group(where):
    try:
        node = zarr.open(store=zarr_store(where, read_only=True), mode="r")
    except Exception:  # not zarr: the reader says what it is
        return None
    return node if isinstance(node, zarr.Group) else None


def plate_fields(source: object, storage_options: dict | None = None) -> list[str] | None:
    """The field images (paths or URLs, in the metadata's order) of an HCS plate or well at
    ``source``; None when ``source`` is not one (another path, or an array object)."""
    if not isinstance(source, (str, os.PathLike)) or isinstance(source, bytes):
        return None
    where = location(source, storage_options, what="source", resolve=False)
    if not is_remote(where) and not where.is_dir():
        return None
    group = _group(where)
    if group is None:
        return None
    entries = ngff_entries(group.attrs.asdict())
    if "plate" in entries:
        wells = [str(w.get("path", "")) for w in entries["plate"].get("wells") or []]
    elif "well" in entries:
        wells = [""]
    else:
        return None
    fields = []
    for well_path in wells:
        well = group[well_path] if well_path else group
        images = ngff_entries(well.attrs.asdict()).get("well", {}).get("images") or []
        fields += ["/".join(p for p in (str(where).rstrip("/"), well_path, str(im["path"])) if p) for im in images]
    if not fields:
        raise UserError(f"{str(where)!r} is an OME-Zarr HCS plate or well that lists no field images; nothing to "
                        "segment.")
    return fields
