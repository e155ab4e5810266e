"""Picking the channels a model reads: ``channels=`` (``--channel``) by index or by name.

A multi-channel input (``C`` axis) is segmented on the channels its model expects: one
(the nuclear stain of a two-channel image, cellpose's ``--chan``) or several, in the order
given. A channel is named by its index (0 first) or by its name in the input's metadata:
OME-Zarr ``omero.channels[].label``, OME-TIFF ``Channel/@Name``, an xarray ``c``
coordinate, or ``red``/``green``/``blue`` for RGB images. :func:`pick_channels` returns the
volume with only those channels (one channel: no C axis); nothing is read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Union

from ..errors import UserError

__all__ = ["ChannelSpec", "pick_channels", "parse_channels", "omero_names", "RGB_NAMES"]

ChannelSpec = Union[int, str, Sequence[Union[int, str]], None]
RGB_NAMES = ("red", "green", "blue", "alpha")


def parse_channels(text: str | None) -> list[int | str] | None:
    """``--channel`` as given on a command line: ``"1"``, ``"DAPI"`` or ``"0,2"`` -> a list
    (digits become indices)."""
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",")]
    if not all(items):
        raise UserError(f"--channel expects indices or names separated by commas, e.g. --channel 1 or "
                        f"--channel DAPI,GFP; got {text!r}.")
    return [int(t) if t.lstrip("-").isdigit() else t for t in items]


def omero_names(entries: dict) -> tuple[str, ...]:
    """Channel labels of an OME-Zarr image's ``omero`` metadata (NGFF entries), else ()."""
    omero = entries.get("omero") if isinstance(entries, dict) else None
    channels = omero.get("channels") if isinstance(omero, dict) else None
    if not isinstance(channels, list):
        return ()
    names = tuple(str(c.get("label", "")) if isinstance(c, dict) else "" for c in channels)
    return names if all(names) else ()


def _listing(count: int, names: tuple[str, ...]) -> str:
    if names:
        return ", ".join(f"{i} {n}" for i, n in enumerate(names))
    return f"0..{count - 1} (no channel names in its metadata)"


def _index(item, count: int, names: tuple[str, ...], what: str) -> int:
    if isinstance(item, bool) or not isinstance(item, (int, str)) and not hasattr(item, "__index__"):
        raise TypeError(f"channels= expects channel indices or names; got {type(item).__name__}.")
    if isinstance(item, str):
        lower = [n.lower() for n in names]
        if item.lower() in lower:
            return lower.index(item.lower())
        if item.strip().lstrip("-").isdigit():
            item = int(item)
        else:
            raise UserError(f"{what} has no channel named {item!r}; its channels are {_listing(count, names)}: "
                            "pass an index or one of these names.")
    i = int(item)
    if not -count <= i < count:
        raise UserError(f"{what} has {count} channel(s) ({_listing(count, names)}); channel {i} is not one of them.")
    return i % count


def pick_channels(source, channels: ChannelSpec):
    """``source`` (a :class:`~fastunet.io.inputs.VolumeSource`) with only ``channels``.

    Parameters
    ----------
    source : VolumeSource
    channels : int, str, sequence of them, or None
        Indices (0 first; negative from the end) or channel names; None keeps every channel.

    Returns
    -------
    VolumeSource
        One channel: no C axis (``CZYX`` -> ``ZYX``); several: a C axis of those channels.

    Raises
    ------
    UserError
        An unknown name, an index out of range, a channel named twice.
    """
    if channels is None:
        return source
    items = [channels] if isinstance(channels, (int, str)) else list(channels)
    if not items:
        raise UserError("channels= is empty; name at least one channel, e.g. channels=0.")
    what = source.describe()
    native = source.native_axes or source.axes
    if "C" not in source.axes:  # one channel: channels=0 (or its name) is harmless
        for item in items:
            _index(item, 1, source.channel_names[:1], what)
        if len(items) > 1:
            raise UserError(f"{what} has one channel; channels= names {len(items)}.")
        return source
    count = source.channels
    picked = [_index(item, count, source.channel_names, what) for item in items]
    if len(set(picked)) != len(picked):
        raise UserError(f"channels= names a channel twice ({channels!r}); name each channel once.")
    names = tuple(source.channel_names[i] for i in picked) if len(source.channel_names) == count else ()
    dim = native.index("C")
    select = list(source.select or (None,) * len(native))
    if isinstance(select[dim], tuple):  # picking again from picked channels
        picked = [select[dim][i] for i in picked]
    c = source.axes.index("C")
    if len(picked) == 1:
        select[dim] = picked[0]
        keep = [i for i in range(len(source.axes)) if i != c]
        return dataclasses.replace(source, select=tuple(select), axes=source.axes.replace("C", ""),
                                   shape=tuple(source.shape[i] for i in keep),
                                   chunks=tuple(source.chunks[i] for i in keep), alt_axes="", channel_names=names)
    select[dim] = tuple(picked)
    shape, chunks = list(source.shape), list(source.chunks)
    shape[c], chunks[c] = len(picked), min(chunks[c], len(picked))
    return dataclasses.replace(source, select=tuple(select), shape=tuple(shape), chunks=tuple(chunks), alt_axes="",
                               channel_names=names)
