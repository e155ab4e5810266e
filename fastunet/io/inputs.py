"""Input volumes for ``fastunet segment``: :func:`open_volume` and :class:`VolumeSource`.

Inputs are presented in *canonical axes*, a subsequence of ``"CZYX"`` (``YX``, ``ZYX``,
``CYX``, ``CZYX``), through a :class:`VolumeSource`: a small, picklable description (path,
array key, axes, shape, dtype, chunks) whose :meth:`VolumeSource.read` opens the file lazily
in each process, read-only, and returns a numpy box in canonical order. Nothing is loaded
whole and the input is never written.

How the axes are found
----------------------
* OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3): level 0 of the first multiscale image and
  the axes of its metadata (:mod:`fastunet.io.ome`).
* zarr arrays: ``dimension_names`` (zarr v3) or the xarray ``_ARRAY_DIMENSIONS`` attribute
  (zarr v2) when they are letters from ``TCZYXS``; otherwise a 2-D array is ``YX`` and any
  other needs ``axes`` (3-D could be ZYX or CYX).
* TIFF / OME-TIFF (tifffile): the axes of series 0 (ImageJ hyperstacks ``TZCYXS``, OME
  ``TCZYX``; tifffile drops axes of length 1), see :func:`fastunet.io.axes.tiff_letters`.
* ``axes`` overrides zarr and TIFF metadata; for OME-Zarr it must agree with it.

zarr inputs may be URLs (``s3://``, ``gs://``, ``https://``, ``memory://``, see
:mod:`fastunet.io.stores`), read through zarr's fsspec store; TIFF inputs are local files.
Every chunk read goes through a :class:`~fastunet.io.retry.RetryingStore` (transient errors
retried, bounded and logged).

Then the stored letters become canonical axes (:func:`fastunet.io.axes.plan_axes`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from ..errors import UserError
from ..paths import check_readable_input
from .axes import check_shape_dtype, default_letters, letters_from_names, parse_axes, plan_axes, tiff_letters
from .channels import RGB_NAMES, ChannelSpec, omero_names, pick_channels
from .chunk_cache import ChunkCache
from .images import image_info, is_image_file, read_image
from .ome import find_multiscales, is_bioformats2raw, ngff_section, ome_xml_image, read_level0
from .stores import is_remote, location, remote_error, zarr_store

__all__ = ["VolumeSource", "open_volume"]

# The folder of a fastunet output's per-block resume records (see outputs.SegmentationStore):
# no image, so a group listing of an output read back as input leaves it out.
DONE_DIR = "_fastunet_done"
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class VolumeSource:
    """A read-only input volume, picklable: a dask worker reopens it from path + key.

    Attributes
    ----------
    kind : {"zarr", "ome-zarr", "tiff", "array"}
    path : str or None
        The zarr store (array or group folder, or its URL) or TIFF file; None for in-memory
        arrays.
    key : str or None
        Array inside a zarr group (the OME level-0 path, e.g. ``"0"``), or the TIFF series
        index as a string; None for a zarr array opened directly.
    axes : str
        Canonical axes, e.g. ``"ZYX"``.
    shape, chunks : tuple of int
        Shape and native chunk shape in canonical order (TIFF: one page per Z, full YX, or
        the TIFF's tile/strip shape).
    dtype : str
        numpy dtype name of the stored data (``read`` returns native byte order).
    ome : dict or None
        OME-Zarr metadata of the input: ``version``, ``name``, ``axes`` (level-0 axes in
        stored order), ``coordinateTransformations`` (level 0) and
        ``multiscale_coordinateTransformations``; None for other inputs.
    array : object
        The in-memory array (numpy, dask, zarr.Array) when ``kind == "array"``.
    native_axes : str
        One letter per stored dimension: the canonical axis it becomes, or ``"1"`` for a
        dropped length-1 axis (T, a singleton C, S). Empty means "same as ``axes``".
    alt_axes : str
        When the channel axis is a guess of the file reader (a TIFF whose planes tifffile
        reads as RGB samples, without ``axes``): the ``axes`` value that reads those
        planes as Z slices instead, for error messages; else empty.
    storage_options : dict or None
        The file system's options of a URL ``path`` (see :func:`open_volume`).
    select : tuple
        Per stored dimension (empty: none): None (read by the box), an int (that index only:
        a time point, or the one channel picked; the dimension is dropped), or a tuple of
        ints (the channels picked, in order: the C axis holds them).
    timepoints : int
        Time points of a time series whose T axis is not picked yet (native letter ``T``);
        1 otherwise. :meth:`at_time` picks one; :meth:`read` refuses a series.
    time : int or None
        The time point this volume is, when picked from a series.
    channel_names : tuple of str
        Names of the stored channels (OME-Zarr ``omero``, OME-TIFF ``Channel``, xarray
        coordinates, RGB), for ``channels=`` and messages; empty when unknown.
    """

    kind: str
    path: str | None
    key: str | None
    axes: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    ome: dict | None = field(hash=False)
    array: object = field(default=None, compare=False, repr=False)
    native_axes: str = ""
    alt_axes: str = ""
    storage_options: dict | None = field(default=None, hash=False, compare=False, repr=False)
    select: tuple = ()
    timepoints: int = 1
    time: int | None = None
    channel_names: tuple[str, ...] = field(default=(), compare=False, repr=False)

    # The open handle lives in the instance __dict__ under "_handle" (never pickled).

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_handle", "_chunk_cache", "_mapped")}

    def __setstate__(self, state):
        self.__dict__.update(state)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The shape without C: ``(Z,) Y, X``."""
        return tuple(n for a, n in zip(self.axes, self.shape) if a != "C")

    @property
    def spatial_axes(self) -> str:
        """The axes without C: ``"ZYX"`` or ``"YX"``."""
        return self.axes.replace("C", "")

    @property
    def channels(self) -> int:
        """Number of channels (1 when there is no C axis)."""
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def nbytes(self) -> int:
        """Bytes of the whole volume in the stored dtype."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def at_time(self, t: int) -> "VolumeSource":
        """Time point ``t`` of a time series (``timepoints > 1``) as a volume of its own."""
        native = self.native_axes
        if self.timepoints <= 1 or "T" not in native:
            raise ValueError(f"{self.describe()} is not a time series.")
        if not 0 <= t < self.timepoints:
            raise ValueError(f"time point {t} is outside 0..{self.timepoints - 1}.")
        select = list(self.select or (None,) * len(native))
        select[native.index("T")] = int(t)
        return dataclasses.replace(self, select=tuple(select), timepoints=1, time=int(t))

    def stored(self):
        """The stored array in native axes (a zarr.Array, or the in-memory array), opened once
        per process, read-only; :meth:`read` reads boxes in canonical axes."""
        if self.kind == "array":
            return self.array
        cached = self.__dict__.get("_handle")
        if cached is not None and cached[0] == os.getpid():  # a forked child reopens its own
            return cached[1]
        with _OPEN_LOCK:
            cached = self.__dict__.get("_handle")
            if cached is not None and cached[0] == os.getpid():
                return cached[1]
            if self.kind == "image":
                stored = read_image(self.path)
                handle = stored
            elif self.kind == "tiff":
                from .retry import RetryingStore

                tif = tifffile.TiffFile(self.path)
                store = RetryingStore(tif.series[int(self.key or 0)].aszarr(level=0), where=self.path)
                stored = zarr.open_array(store, mode="r")
                handle = (tif, stored)
            else:
                store = zarr_store(self.location(), read_only=True)
                stored = zarr.open_array(store, path=self.key or "", mode="r")
                handle = stored
            object.__setattr__(self, "_handle", (os.getpid(), stored, handle))
            return stored

    def _chunks(self, index) -> ChunkCache | None:
        """The process's cache of this input's decoded chunks (:mod:`fastunet.io.chunk_cache`:
        the engine's reads overlap their neighbours' chunks), for a stored zarr array read
        with ints and slices; None otherwise (in-memory arrays, channel lists)."""
        if self.kind == "array" or not all(isinstance(i, (int, slice)) for i in index):
            return None
        cached = self.__dict__.get("_chunk_cache")
        if cached is not None and cached[0] == os.getpid():
            return cached[1]
        stored = self.stored()
        with _OPEN_LOCK:
            cached = self.__dict__.get("_chunk_cache")
            if cached is None or cached[0] != os.getpid():
                cache = ChunkCache(stored) if isinstance(stored, zarr.Array) else None
                cached = (os.getpid(), cache if cache is not None and cache.useful else None)
                object.__setattr__(self, "_chunk_cache", cached)
        return cached[1]

    def mapped(self) -> np.ndarray | None:
        """A TIFF whose image series is stored uncompressed in one contiguous run (what most
        microscopes, ImageJ and ``tifffile.imwrite`` write): its pixels as a read-only
        ``numpy.memmap`` in native axes (``tifffile.memmap``), opened once per process; None
        for every other input. Through it a box reads only its own bytes, where zarr over
        tifffile's store decodes each whole chunk the box touches — for such a TIFF a whole
        plane (a 6000 x 6000 image: 72 MB for each band of the statistics and each block)."""
        if self.kind != "tiff" or self.path is None:
            return None
        cached = self.__dict__.get("_mapped")
        if cached is not None and cached[0] == os.getpid():
            return cached[1]
        stored = self.stored()  # (takes the lock itself)
        with _OPEN_LOCK:
            cached = self.__dict__.get("_mapped")
            if cached is None or cached[0] != os.getpid():
                try:
                    mapped = tifffile.memmap(self.path, series=int(self.key or 0), mode="r")
                except (ValueError, OSError, IndexError):  # compressed, tiled, in pieces or short
                    mapped = None
                if mapped is not None and (mapped.shape != stored.shape or mapped.dtype != stored.dtype):
                    mapped = None
                cached = (os.getpid(), mapped)
                object.__setattr__(self, "_mapped", cached)
        return cached[1]

    def read_stored(self, index: tuple) -> np.ndarray:
        """The stored array (native axes, every axis it has) at ``index`` (per axis an int, a
        basic slice or, for a channel axis, a list), from the memory-mapped file of an
        uncompressed TIFF (:meth:`mapped`, ints and slices: a copy), else through the process's
        cache of decoded chunks where there is one (a zarr input read with ints and slices):
        what another reader of the same chunks (the statistics, the fingerprint, the blocks)
        decoded is not decoded again."""
        if all(isinstance(i, (int, slice)) for i in index):
            mapped = self.mapped()
            if mapped is not None:
                return np.array(mapped[tuple(index)])  # never a view of the file
        cache = self._chunks(index)
        data = cache.read(tuple(index)) if cache is not None else self.stored()[tuple(index)]
        if hasattr(data, "compute"):  # dask
            data = data.compute()
        return np.asarray(data)

    def location(self):
        """The input's :class:`~pathlib.Path` or URL (:class:`upath.UPath`); None in memory."""
        if self.path is None:
            return None
        return location(self.path, self.storage_options, what="source", resolve=False)

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """Read a box into a new numpy array in canonical order and the stored dtype.

        Parameters
        ----------
        region : tuple of slice
            One basic slice (step 1) per canonical axis, inside the volume.

        Opens the file lazily on first use (per process; the handle is not pickled) and
        never writes to it. A chunk or page that cannot be read or decoded (a damaged file)
        raises :class:`UserError` naming the input, the region and, for zarr, the chunk file.
        """
        box = self._check_region(region)
        native = self.native_axes or self.axes
        if self.timepoints > 1:
            raise UserError(f"{self.describe()} is a time series (T={self.timepoints}); pick a time point first "
                            "(VolumeSource.at_time): fastunet.segment segments each time point in turn.")
        index: list = []
        kept: list[str] = []
        for i, letter in enumerate(native):
            pick = self.select[i] if self.select else None
            if isinstance(pick, int):
                index.append(pick)
            elif letter == "1":
                index.append(0)
            elif isinstance(pick, tuple):  # the channels picked, in order
                index.append(list(pick[box[self.axes.index(letter)]]))
                kept.append(letter)
            else:
                index.append(box[self.axes.index(letter)])
                kept.append(letter)
        try:
            data = self.read_stored(tuple(index))
        except (UserError, MemoryError):
            raise
        except Exception as exc:  # codecs raise RuntimeError, ValueError, OSError, struct errors...
            raise self._read_error(box, tuple(index), exc) from exc
        data = np.transpose(data, [kept.index(a) for a in self.axes])
        if self.kind == "array":
            return np.array(data, dtype=np.dtype(self.dtype), order="C", copy=True)
        return np.ascontiguousarray(data, dtype=np.dtype(self.dtype))

    def describe(self) -> str:
        """The input in words, for messages: its path (and array key or TIFF series)."""
        if self.path is None:
            return "the in-memory input array"
        when = f" (time point {self.time})" if self.time is not None else ""
        if self.kind == "tiff":
            series = f" (series {self.key})" if self.key not in (None, "0") else ""
            return f"the TIFF file {self.path!r}{series}{when}"
        if self.kind == "image":
            return f"the image file {self.path!r}{when}"
        where = f"{self.path}/{self.key}" if self.key else self.path
        return f"the zarr array {where!r}{when}"

    def _read_error(self, box, index, exc) -> UserError:
        region = ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip(self.axes, box))
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        if len(detail) > 200:
            detail = detail[:197] + "..."
        chunk = self._find_bad_chunk(index)
        where = f"; the damaged chunk is the file {chunk!r}" if chunk else ""
        return UserError(
            f"Cannot read {self.describe()} at {region} ({detail}){where}; the input is damaged or "
            "incomplete: restore it from a good copy, then run again (with resume=True on a zarr output "
            "to keep the finished blocks)."
        )

    def _find_bad_chunk(self, index, limit: int = 64) -> str | None:
        """The file of the first zarr chunk inside ``index`` (native axes) that fails to
        read, trying at most ``limit`` chunks; None when not found or not a local zarr."""
        if self.kind not in ("zarr", "ome-zarr") or not self.path:
            return None
        try:
            arr = self.stored()
            ranges = []
            for i, c, n in zip(index, arr.chunks, arr.shape):
                start, stop = (i, i + 1) if isinstance(i, int) else (i.start or 0, n if i.stop is None else i.stop)
                ranges.append(range(start // c, -(-stop // c)))
            for k, coords in enumerate(itertools.product(*ranges)):
                if k >= limit:
                    return None
                sel = tuple(slice(j * c, min((j + 1) * c, n)) for j, c, n in zip(coords, arr.chunks, arr.shape))
                try:
                    arr[sel]
                except Exception:
                    key = arr.metadata.encode_chunk_key(coords)
                    return "/".join([self.path.rstrip("/")] + [p.strip("/") for p in (self.key, key) if p])
        except Exception:
            return None
        return None

    def _check_region(self, region) -> tuple[slice, ...]:
        if not isinstance(region, tuple) or len(region) != len(self.axes):
            raise ValueError(f"Expected a tuple of {len(self.axes)} slices ({self.axes}); got {region!r}.")
        out = []
        for s, n, a in zip(region, self.shape, self.axes):
            if not isinstance(s, slice) or s.step not in (None, 1):
                raise ValueError(f"Expected basic slices with step 1; got {s!r} for axis {a}.")
            start = 0 if s.start is None else int(s.start)
            stop = n if s.stop is None else int(s.stop)
            if not 0 <= start <= stop <= n:
                raise ValueError(f"Region {start}:{stop} is outside axis {a} of length {n}.")
            out.append(slice(start, stop))
        return tuple(out)


# ------------------------------------------------------------------------------- open_volume


def open_volume(source: Any, *, axes: str | None = None, storage_options: dict | None = None,
                channels: ChannelSpec = None, series: int | None = None, timepoints: bool = False) -> VolumeSource:
    """Describe an input volume for the engine, validating it; nothing is loaded.

    Parameters
    ----------
    source : str, path-like, numpy.ndarray, dask.array.Array, xarray.DataArray, zarr.Array or VolumeSource
        A zarr v2/v3 array or group folder (OME-Zarr: level 0 of the first multiscale; a
        plain group with exactly one array: that array), or its URL (``s3://``, ``gs://``,
        ``https://``, ``memory://``, ``file://``), a TIFF / OME-TIFF file, a PNG or JPEG
        file, or an array object (an xarray ``DataArray``'s dims are its axes).
    axes : str, optional
        The stored axes, e.g. ``"ZYX"`` or ``"zcyx"`` (letters from ``TCZYXS``); required
        where the metadata do not say (3-D and higher plain arrays).
    storage_options : dict, optional
        Options of a URL's file system (fsspec), e.g. ``{"anon": True}`` or
        ``{"endpoint_url": "http://127.0.0.1:9000"}``; credentials otherwise come from the
        usual environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...).
    channels : int, str or a sequence of them, optional
        The channels to read, by index or by name (:func:`fastunet.io.channels.pick_channels`).
    series : int, optional
        The image of a multi-series TIFF or a bioformats2raw OME-Zarr (default 0).
    timepoints : bool
        Accept a time series (T > 1): the volume's :attr:`~VolumeSource.timepoints` says how
        many, :meth:`VolumeSource.at_time` picks one. Default: refused.

    Returns
    -------
    VolumeSource

    Raises
    ------
    UserError
        Missing path, not an array, wrong number of axes, bad axes, zero-size axes,
        unsupported dtype, time series (unless ``timepoints``), an unknown channel or series.
    """
    if series is not None and (isinstance(series, bool) or not isinstance(series, int) or series < 0):
        raise UserError(f"series= expects the index of an image in the file (0 first); got {series!r}.")
    volume = _open_any(source, axes, storage_options, series)
    if volume.timepoints > 1 and not timepoints:
        raise UserError(
            f"{volume.describe()} is a time series (T={volume.timepoints}); fastunet.segment and `fastunet "
            "segment` segment each time point in turn, elsewhere select one time point first (e.g. `volume[t]`)."
        )
    return pick_channels(volume, channels)


def _open_any(source, axes: str | None, storage_options: dict | None, series: int | None) -> VolumeSource:
    if isinstance(source, VolumeSource):
        if axes is not None and parse_axes(axes, len(source.axes)) != source.axes:
            raise UserError(f'This volume has axes {source.axes}; axes="{axes}" disagrees; leave it out.')
        return source
    if isinstance(source, (str, os.PathLike)) and not isinstance(source, bytes):
        where = location(source, storage_options, what="source", resolve=False)
        if is_remote(where):
            return _open_url(where, axes, storage_options, series)
        return _open_path(where, axes, series)
    if series not in (None, 0):
        raise UserError(f"series={series} picks an image of a multi-series file; this input is an array.")
    if isinstance(source, zarr.Array):
        local = _local_zarr_location(source)
        if local is not None:
            return _from_zarr_array(source, str(local), None, axes, kind="zarr")
        return _from_zarr_array(source, None, None, axes, kind="array", keep=True)
    if is_xarray(source):
        return _from_xarray(source, axes)
    if hasattr(source, "shape") and hasattr(source, "dtype") and hasattr(source, "__getitem__"):
        if not hasattr(source, "compute") and not isinstance(source, np.ndarray):
            source = np.asarray(source)
        return _from_array_object(source, axes)
    raise TypeError(
        "open_volume expects a path to a zarr store, TIFF or PNG/JPEG file, a numpy/dask/xarray array or a "
        f"zarr.Array; got {type(source).__name__}."
    )


def is_xarray(obj) -> bool:
    """Is ``obj`` an xarray ``DataArray`` (checked without importing xarray)?"""
    return type(obj).__name__ == "DataArray" and type(obj).__module__.startswith("xarray")


def _from_xarray(arr, axes: str | None) -> VolumeSource:
    """An xarray ``DataArray``: its dims (``t``, ``c``, ``z``, ``y``, ``x``, any case) are its axes,
    the labels of its ``c`` coordinate its channel names; the data (numpy or dask) is read."""
    dims = [str(d) for d in arr.dims]
    if axes is None:
        axes = letters_from_names(dims)
        if axes is None:
            raise UserError(f"The xarray DataArray has dims {tuple(dims)}; fastunet reads dims named t, c, z, y, x "
                            "(any case): rename them (DataArray.rename) or pass axes=.")
    data = arr.data
    if not hasattr(data, "compute") and not isinstance(data, np.ndarray):
        data = np.asarray(data)
    source = _from_array_object(data, axes)
    c = [d for d, a in zip(dims, parse_axes(axes, len(dims))) if a == "C"]
    if c and c[0] in arr.coords:
        names = tuple(str(v) for v in np.asarray(arr.coords[c[0]].values).tolist())
        source = dataclasses.replace(source, channel_names=names)
    return source


def _local_zarr_location(arr: zarr.Array) -> Path | None:
    store = arr.store
    root = getattr(store, "root", None)
    if isinstance(store, zarr.storage.LocalStore) and root is not None:
        return Path(root) / arr.path if arr.path else Path(root)
    return None


def _open_path(path: Path, axes: str | None, series: int | None = None) -> VolumeSource:
    if not path.exists():
        raise UserError(f"Input not found: {str(path)!r} does not exist; check the path.")
    check_readable_input(path)  # a named pipe, a device, no permission: said as such
    if path.is_file():
        if is_tiff_file(path):
            return _open_tiff(path, axes, series)
        if is_image_file(path):
            return _open_image(path, axes, series)
        raise UserError(
            f"{str(path)!r} is neither a TIFF file nor a zarr store (nor a PNG/JPEG image); fastunet reads zarr v2/v3 "
            "arrays and OME-Zarr folders, .tif/.tiff files and .png/.jpg images."
        )
    node = _open_node(path, f"{str(path)!r} is a folder but not")
    if isinstance(node, zarr.Array):
        _no_series(series, path)
        return _from_zarr_array(node, str(path), None, axes, kind="zarr")
    return _open_group(node, path, axes, series)


def _no_series(series: int | None, path) -> None:
    if series not in (None, 0):
        raise UserError(f"{str(path)!r} holds one image; series={series} picks an image of a multi-series TIFF "
                        "or a bioformats2raw OME-Zarr.")


def _open_image(path: Path, axes: str | None, series: int | None) -> VolumeSource:
    """A PNG or JPEG file (decoded whole when first read, :mod:`fastunet.io.images`)."""
    _no_series(series, path)
    what = repr(str(path))
    letters, shape, dtype, names = image_info(path)
    if axes is not None:
        letters = parse_axes(axes, len(shape), what=f"{what} (shape {shape})")
    source = _make_source("image", str(path), None, letters, shape, dtype, shape, what)
    return dataclasses.replace(source, channel_names=names if source.channels == len(names) else ())


def _open_url(url, axes: str | None, storage_options: dict | None, series: int | None = None) -> VolumeSource:
    """A zarr array or group at a URL (read through zarr's fsspec store)."""
    import dataclasses as dc

    if url.suffix.lower() in (".tif", ".tiff"):
        raise UserError(
            f"{str(url)!r}: TIFF inputs are read from local files; copy it here, or convert it to zarr "
            "(which is read in chunks from object stores)."
        )
    node = _open_node(url, f"{str(url)!r} is not")
    if isinstance(node, zarr.Array):
        _no_series(series, url)
        source = _from_zarr_array(node, str(url), None, axes, kind="zarr")
    else:
        source = _open_group(node, url, axes, series)
    return dc.replace(source, storage_options=dict(storage_options or {}) or None)


def _open_node(path, not_zarr: str):
    """The zarr array or group at ``path``, or one line saying why it cannot be opened."""
    try:
        return zarr.open(store=zarr_store(path, read_only=True), mode="r")
    except (zarr.errors.NodeNotFoundError, FileNotFoundError, NotADirectoryError):
        raise UserError(
            f"{not_zarr} a zarr array or group (no zarr.json, .zarray or .zgroup inside); point at a zarr "
            "array, an OME-Zarr image or a TIFF file."
        ) from None
    except UserError:
        raise
    except ValueError as exc:  # JSONDecodeError, a data type or codec zarr does not know
        detail = " ".join(str(exc).split())[:200]
        if isinstance(exc, json.JSONDecodeError):
            raise UserError(
                f"{str(path)!r}: its zarr metadata (zarr.json / .zarray / .zgroup) is not valid JSON ({detail}); "
                "the store is damaged: restore it from a good copy."
            ) from None
        raise UserError(
            f"{str(path)!r} cannot be opened as zarr ({detail}); fastunet reads numeric arrays (object arrays "
            "and pickle codecs are refused: they could run code)."
        ) from None
    except Exception as exc:  # an unreachable server, refused credentials...
        named = remote_error(exc, path)
        if named is not None:
            raise named from None
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise UserError(f"Cannot open {str(path)!r} ({detail}); check the path or URL and the credentials.") from None


def _open_group(group: zarr.Group, path, axes: str | None, series: int | None = None) -> VolumeSource:
    attrs = group.attrs.asdict()
    section = ngff_section(attrs)
    if is_bioformats2raw(attrs, section):
        images = sorted((k for k in group.group_keys() if k.isdigit()), key=int)
        key = str(series or 0)
        image = group[key] if key in images else None
        if isinstance(image, zarr.Group):  # bioformats2raw: image N lives in group "N"
            return _open_group(image, path / key, axes)
        if series:
            raise UserError(f"{str(path)!r} holds {len(images)} image series (0..{len(images) - 1}); series={series} "
                            "is not one of them.")
    multiscales = find_multiscales(attrs, section)
    _no_series(series, path)
    if multiscales:
        source = _open_ome(group, path, multiscales, section, axes)
        names = omero_names(section or attrs)
        if names and len(names) == source.channels:
            source = dataclasses.replace(source, channel_names=names)
        return source
    _reject_plate(attrs, section, path)
    arrays = sorted(group.array_keys())
    if len(arrays) == 1:
        return _from_zarr_array(group[arrays[0]], str(path), arrays[0], axes, kind="zarr")
    groups = sorted(k for k in group.group_keys() if k != DONE_DIR)
    if not arrays:
        inside = f" (it holds the groups {', '.join(groups)})" if groups else ""
        raise UserError(
            f"{str(path)!r} is a zarr group without arrays{inside}; point at an array inside it, "
            "e.g. path/to/group/arrayname."
        )
    raise UserError(
        f"{str(path)!r} is a zarr group with several arrays ({', '.join(arrays)}); point at one, "
        f"e.g. {str(path / arrays[0])!r} (path/to/group/arrayname)."
    )


def _reject_plate(attrs: dict, section: dict | None, path) -> None:
    """An HCS plate or well is many images: say how fastunet segments them."""
    entries = section or attrs
    kind = "plate" if "plate" in entries else "well" if "well" in entries else None
    if kind is not None:
        raise UserError(f"{str(path)!r} is an OME-Zarr HCS {kind}: many images, each segmented on its own; "
                        "pass it to fastunet.segment / `fastunet segment`, which segment every field into its own "
                        "labels group, or point at one field image (e.g. path/A/1/0).")


def _open_ome(group, path, multiscales, section, axes: str | None) -> VolumeSource:
    what = repr(str(path))
    if not isinstance(multiscales, list) or not all(isinstance(m, dict) for m in multiscales):
        raise UserError(
            f"{what}: its OME-Zarr 'multiscales' metadata is a {type(multiscales).__name__}, not a list of "
            "images (NGFF); fix the metadata, or point at the level-0 array inside (e.g. path/0)."
        )
    try:
        key, arr, letters, meta = read_level0(group, multiscales, section, axes, what)
    except UserError:
        raise
    except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:
        raise UserError(
            f"{what}: its OME-Zarr metadata are malformed ({type(exc).__name__}: {exc}); fix them, or point at "
            "the level-0 array inside (e.g. path/0)."
        ) from None
    return _from_zarr_array(arr, str(path), key, None, kind="ome-zarr", letters=letters, ome=meta)


def _from_zarr_array(arr, path, key, axes, *, kind, letters=None, ome=None, keep=False) -> VolumeSource:
    what = repr(path if key is None else f"{path}/{key}") if path else "the zarr array"
    shape = tuple(int(n) for n in arr.shape)
    if letters is None:
        if axes is not None:
            letters = parse_axes(axes, arr.ndim, what=what)
        else:
            meta = arr.metadata
            names = getattr(meta, "dimension_names", None) or arr.attrs.get("_ARRAY_DIMENSIONS")
            letters = letters_from_names(names) if names else None
            if letters is None:
                letters = default_letters(arr.ndim, shape, what)
    chunks = tuple(int(c) for c in arr.chunks)
    return _make_source(kind, path, key, letters, shape, arr.dtype, chunks, what, ome=ome,
                        array=arr if keep else None)


def _make_source(kind, path, key, letters, shape, dtype, chunks, what, *, ome=None, array=None) -> VolumeSource:
    dtype_name = check_shape_dtype(shape, dtype, what)
    native, canonical = plan_axes(letters, shape, what)
    order = [native.index(a) for a in canonical]
    return VolumeSource(
        kind=kind,
        path=None if path is None else str(path),
        key=key,
        axes=canonical,
        shape=tuple(int(shape[i]) for i in order),
        dtype=dtype_name,
        chunks=tuple(int(chunks[i]) for i in order),
        ome=ome,
        array=array,
        native_axes=native,
        timepoints=int(shape[native.index("T")]) if "T" in native else 1,
    )


def _from_array_object(arr, axes: str | None) -> VolumeSource:
    what = f"the {type(arr).__module__.split('.')[0]} array"
    shape = tuple(int(n) for n in arr.shape)
    if axes is not None:
        letters = parse_axes(axes, arr.ndim, what=what)
    else:
        letters = default_letters(arr.ndim, shape, what)
    chunks = tuple(int(c) for c in getattr(arr, "chunksize", shape))
    return _make_source("array", None, None, letters, shape, arr.dtype, chunks, what, array=arr)


# ---------------------------------------------------------------------------------------- TIFF


def is_tiff_file(path: Path) -> bool:
    """Does the file at ``path`` start with a TIFF or BigTIFF header?"""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _open_tiff(path: Path, axes: str | None, series: int | None = None) -> VolumeSource:
    what = repr(str(path))
    try:
        tif = tifffile.TiffFile(str(path))
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct errors...
        raise UserError(f"{what} is not a readable TIFF file ({exc}); check the file.") from None
    with tif:
        if not tif.series:
            raise UserError(f"{what} holds no image series; check the file.")
        index = series or 0
        if index >= len(tif.series):
            listed = ", ".join(f"{i}: {s.axes} {tuple(s.shape)}" for i, s in enumerate(tif.series[:8]))
            raise UserError(f"{what} holds {len(tif.series)} image series ({listed}); series={index} is not one "
                            "of them (series=N, 0 first).")
        if len(tif.series) > 1:
            what = f"{what} (series {index} of {len(tif.series)})"
        tseries = tif.series[index]
        arr = zarr.open_array(tseries.aszarr(level=0), mode="r")
        shape = tuple(int(n) for n in arr.shape)
        if axes is not None:
            letters = parse_axes(axes, len(shape), what=f"{what} (tifffile axes {tseries.axes}, shape {shape})")
        else:
            letters = tiff_letters(tseries.axes, shape, what)
        source = _make_source("tiff", str(path), str(index), letters, shape, arr.dtype,
                              tuple(int(c) for c in arr.chunks), what)
        if axes is None and "S" in letters and "Z" not in letters and "C" in source.axes:
            # tifffile read the planes as RGB samples (its guess for 3 or 4 planes without
            # axes metadata): they may as well be z slices.
            alt = letters.replace("S", "Z")
            if "1" not in alt:
                source = dataclasses.replace(source, alt_axes=alt)
        names = _tiff_channel_names(tif, index, letters)
        if names and len(names) == source.channels:
            source = dataclasses.replace(source, channel_names=names)
        try:  # decode one chunk now, so a codec that needs imagecodecs fails before any compute
            arr[tuple(slice(0, 1) for _ in shape)]
        except Exception as exc:
            fix = " (pip install imagecodecs)" if "imagecodecs" in str(exc) else ""
            raise UserError(f"{what} cannot be decoded: {exc}{fix}.") from None
    return source


def _tiff_channel_names(tif, series: int, letters: str) -> tuple[str, ...]:
    """Channel names of a TIFF series: OME-XML ``Channel/@Name``, or the RGB samples' colours."""
    if "S" in letters and "C" not in letters:
        return RGB_NAMES[: tif.series[series].shape[letters.index("S")]]
    if tif.is_ome and tif.ome_metadata:
        image = ome_xml_image(tif.ome_metadata, series)
        if image is not None:
            names = tuple(el.get("Name", "") for el in image.iter() if el.tag.rpartition("}")[2] == "Channel")
            return names if all(names) else ()
    return ()
