"""Sample inputs shared by the tests of fastunet.io."""

import zarr


def ome_input(path, data, zarr_format, *, scale=(1.0, 1.0, 0.5, 0.25, 0.25)):
    """A small OME-Zarr image (tczyx) with two levels, NGFF 0.4 on v2 / 0.5 on v3."""
    axes = [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    datasets = [
        {"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": list(scale)}, {"type": "translation", "translation": [0, 0, 1, 2, 3]}]},
        {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1.0, 0.5, 0.5]}]},
    ]
    ms = {"name": "img", "axes": axes, "datasets": datasets}
    attrs = {"multiscales": [{"version": "0.4", **ms}]} if zarr_format == 2 else {
        "ome": {"version": "0.5", "multiscales": [ms]}}
    g = zarr.open_group(str(path), mode="w", zarr_format=zarr_format, attributes=attrs)
    kw = {"dimension_names": list("tczyx")} if zarr_format == 3 else {}
    g.create_array("0", data=data, chunks=(1, 1, 2, 8, 8), **kw)
    g.create_array("1", data=data[..., ::2, ::2], chunks=(1, 1, 2, 8, 8), **kw)
    return g
