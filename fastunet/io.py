"""Reading input volumes and writing segmentation outputs for ``fastunet segment``.

Inputs (:func:`open_volume`) are presented in *canonical axes*, a subsequence of ``"CZYX"``
(``YX``, ``ZYX``, ``CYX``, ``CZYX``), through a :class:`VolumeSource`: a small, picklable
description (path, array key, axes, shape, dtype, chunks) whose :meth:`VolumeSource.read`
opens the file lazily in each process, read-only, and returns a numpy box in canonical order.
Nothing is loaded whole and the input is never written.

How the axes are found
----------------------
* OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3): level 0 of the first multiscale image and
  the axes of its metadata (``type`` time -> T, channel -> C, space -> Z/Y/X by name, or by
  position when the names are not z/y/x).
* zarr arrays: ``dimension_names`` (zarr v3) or the xarray ``_ARRAY_DIMENSIONS`` attribute
  (zarr v2) when they are letters from ``TCZYXS``; otherwise a 2-D array is ``YX`` and any
  other needs ``axes`` (3-D could be ZYX or CYX).
* TIFF / OME-TIFF (tifffile): the axes of series 0 (ImageJ hyperstacks ``TZCYXS``, OME
  ``TCZYX``; tifffile drops axes of length 1). tifffile's generic letters ``I`` (a plain
  stack of pages) and ``Q`` (a shaped array without axes metadata) mean Z when there is
  exactly one of them and no Z; any other letter (``A``, ``E``, ``P``, ``R``, ...) of length
  > 1 needs ``axes``.
* ``axes`` (``--axes``) overrides zarr and TIFF metadata; for OME-Zarr it must agree with it.

Then ``T`` of length 1 is dropped (T > 1 is an error), RGB samples ``S`` become ``C``, and a
``C`` of length 1 is dropped (one channel either way).

Outputs (:func:`check_output`, :func:`create_output`, :func:`open_output`) are zarr groups
(v3 by default, v2 on request) holding ``labels`` (uint8) and/or ``probs`` (float16,
``(K, ...)``) with ``attrs["fastunet"]`` describing the run; for an OME-Zarr input the
labels follow the NGFF image-label layout (``labels/segmentation/0``). Finished blocks are
recorded by :meth:`SegmentationStore.mark_done` (one file per block, written atomically) so a
killed run can be resumed; ``attrs["fastunet"]["input_id"]`` (:func:`input_fingerprint`)
records which input it was made from, so a resume on another input is refused. :func:`write_tiff` writes results that fit in memory as TIFF.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import tifffile
import zarr

from .errors import UserError

__all__ = [
    "VolumeSource",
    "open_volume",
    "parse_axes",
    "check_output",
    "create_output",
    "discard_output",
    "input_fingerprint",
    "InputMovedWarning",
    "open_output",
    "SegmentationStore",
    "write_tiff",
    "SUPPORTED_DTYPES",
    "LABEL_NAME",
]

SUPPORTED_DTYPES = (
    "uint8", "uint16", "uint32", "int8", "int16", "int32", "int64", "float16", "float32", "float64",
)
AXES_LETTERS = "TCZYXS"
CANONICAL = "CZYX"
TIFF_SUFFIXES = (".tif", ".tiff")
LABEL_NAME = "segmentation"  # name of the label image under labels/ in OME-Zarr outputs
DONE_DIR = "_fastunet_done"
_DONE_SUFFIX = ".done"
_GENERIC_TIFF_AXES = "IQ"
_TIFF_AXIS_NAMES = {
    "A": "angle", "P": "phase", "R": "tile", "H": "lifetime histogram", "E": "wavelength",
    "L": "exposure", "V": "event", "M": "mosaic", "O": "other",
}
# Label colors for OME-Zarr outputs: background transparent, classes from a tab10-like palette.
_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
_OPEN_LOCK = threading.Lock()
_AXES_HINT = "e.g. --axes ZYX for a z-stack or --axes CYX for a multi-channel image (axes= in Python)"


# --------------------------------------------------------------------------------------- axes


def parse_axes(axes: str, ndim: int, *, what: str = "the input") -> str:
    """Validate user-given axes for an array of ``ndim`` dimensions; return them upper-case.

    Letters from ``"TCZYXS"``, no repeats, one per dimension, Y and X present.
    """
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a string such as 'ZYX'; got {type(axes).__name__}.")
    up = axes.strip().upper()
    bad = sorted({a for a in up if a not in AXES_LETTERS})
    if bad:
        raise UserError(
            f"Axes {axes!r} contain {', '.join(map(repr, bad))}; use letters from "
            f"{AXES_LETTERS} (T time, C channel, Z, Y, X, S RGB samples), e.g. --axes ZYX."
        )
    repeated = sorted({a for a in up if up.count(a) > 1})
    if repeated:
        raise UserError(
            f"Axes {axes!r} repeat {', '.join(map(repr, repeated))}; name each axis once, e.g. --axes CZYX."
        )
    if len(up) != ndim:
        raise UserError(
            f"Axes {axes!r} name {len(up)} axes but {what} has {ndim}; give one letter per axis, "
            f"e.g. --axes {_example_axes(ndim)}."
        )
    if "Y" not in up or "X" not in up:
        raise UserError(f"Axes {axes!r} lack Y and X; an image needs both, e.g. --axes {_example_axes(ndim)}.")
    return up


def _example_axes(ndim: int) -> str:
    return {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}.get(ndim, "ZYX")


def _plan_axes(letters: str, shape: tuple[int, ...], what: str) -> tuple[str, str]:
    """Map native per-dimension letters (``TCZYXS``, or ``1`` for a dropped length-1 axis) to
    canonical axes. Returns ``(native_axes, canonical_axes)`` where ``native_axes`` has one
    letter per stored dimension: the canonical letter it becomes, or ``1`` when dropped."""
    out = list(letters)
    size = dict(zip(letters, shape))
    if "T" in size:
        if size["T"] > 1:
            raise UserError(
                f"{what} is a time series (T={size['T']}); time series are not supported: select one "
                "time point first (e.g. `volume[t]` in Python, or save it as its own file) and pass "
                "it without the T axis."
            )
        out[letters.index("T")] = "1"
    if "S" in size:
        s = letters.index("S")
        if size["S"] == 1:
            out[s] = "1"
        elif size.get("C", 1) > 1:
            raise UserError(
                f"{what} has both channels (C={size['C']}) and RGB samples (S={size['S']}); "
                "fastunet takes one channel axis: save the channels you need as one axis first."
            )
        else:
            if "C" in size:
                out[letters.index("C")] = "1"
            out[s] = "C"
    if "C" in size and out[letters.index("C")] == "C" and size["C"] == 1:
        out[letters.index("C")] = "1"
    native = "".join(out)
    canonical = "".join(a for a in CANONICAL if a in native)
    return native, canonical


def _check_shape_dtype(shape: tuple[int, ...], dtype, what: str) -> str:
    if any(int(n) == 0 for n in shape):
        raise UserError(f"{what} is empty (shape {tuple(shape)}: an axis has length 0); pass a non-empty volume.")
    dt = np.dtype(dtype)
    if dt.name not in SUPPORTED_DTYPES:
        hint = " (for a mask, convert it to uint8)" if dt.kind == "b" else ""
        raise UserError(
            f"{what} has the unsupported data type {dt}{hint}; fastunet reads "
            f"{', '.join(SUPPORTED_DTYPES)}: convert it first, e.g. `.astype('float32')`."
        )
    return dt.name


def _letters_from_names(names) -> str | None:
    """Single-letter dimension names from TCZYXS (any case, no repeats) -> letters, else None."""
    if not names or any(not isinstance(n, str) or len(n) != 1 for n in names):
        return None
    up = "".join(n.upper() for n in names)
    if any(a not in AXES_LETTERS for a in up) or len(set(up)) != len(up):
        return None
    return up


# ----------------------------------------------------------------------------- VolumeSource


@dataclass(frozen=True)
class VolumeSource:
    """A read-only input volume, picklable: a dask worker reopens it from path + key.

    Attributes
    ----------
    kind : {"zarr", "ome-zarr", "tiff", "array"}
    path : str or None
        The zarr store (array or group folder) or TIFF file; None for in-memory arrays.
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
        reads as RGB samples, without ``--axes``): the ``--axes`` value that reads those
        planes as Z slices instead, for error messages; else empty.
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

    # The open handle lives in the instance __dict__ under "_handle" (never pickled).

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_handle"}

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
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def _stored(self):
        """The stored array (native axes), opened once per process, read-only."""
        if self.kind == "array":
            return self.array
        cached = self.__dict__.get("_handle")
        if cached is not None and cached[0] == os.getpid():  # a forked child reopens its own
            return cached[1]
        with _OPEN_LOCK:
            cached = self.__dict__.get("_handle")
            if cached is not None and cached[0] == os.getpid():
                return cached[1]
            if self.kind == "tiff":
                tif = tifffile.TiffFile(self.path)
                arr = zarr.open_array(tif.series[int(self.key or 0)].aszarr(level=0), mode="r")
                handle = (tif, arr)
                stored = arr
            elif self.key:
                stored = zarr.open_array(self.path, path=self.key, mode="r")
                handle = stored
            else:
                stored = zarr.open_array(self.path, mode="r")
                handle = stored
            object.__setattr__(self, "_handle", (os.getpid(), stored, handle))
            return stored

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
        index, kept = [], []
        for letter in native:
            if letter == "1":
                index.append(0)
            else:
                index.append(box[self.axes.index(letter)])
                kept.append(letter)
        try:
            data = self._stored()[tuple(index)]
            if hasattr(data, "compute"):  # dask
                data = data.compute()
            data = np.asarray(data)
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
        if self.kind == "tiff":
            series = f" (series {self.key})" if self.key not in (None, "0") else ""
            return f"the TIFF file {self.path!r}{series}"
        where = f"{self.path}/{self.key}" if self.key else self.path
        return f"the zarr array {where!r}"

    def _read_error(self, box, index, exc) -> UserError:
        region = ", ".join(f"{a} {s.start}:{s.stop}" for a, s in zip(self.axes, box))
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        if len(detail) > 200:
            detail = detail[:197] + "..."
        chunk = self._find_bad_chunk(index)
        where = f"; the damaged chunk is the file {chunk!r}" if chunk else ""
        return UserError(
            f"Cannot read {self.describe()} at {region} ({detail}){where}; the input is damaged or "
            "incomplete: restore it from a good copy, then run again (with --resume on a zarr output "
            "to keep the finished blocks)."
        )

    def _find_bad_chunk(self, index, limit: int = 64) -> str | None:
        """The file of the first zarr chunk inside ``index`` (native axes) that fails to
        read, trying at most ``limit`` chunks; None when not found or not a local zarr."""
        if self.kind not in ("zarr", "ome-zarr") or not self.path:
            return None
        try:
            arr = self._stored()
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
                    return str(Path(self.path, self.key or "", key))
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


def open_volume(source, *, axes: str | None = None) -> VolumeSource:
    """Describe an input volume for the engine, validating it; nothing is loaded.

    Parameters
    ----------
    source : str, path-like, numpy.ndarray, dask.array.Array, zarr.Array or VolumeSource
        A zarr v2/v3 array or group folder (OME-Zarr: level 0 of the first multiscale; a
        plain group with exactly one array: that array), a TIFF / OME-TIFF file, or an
        array object.
    axes : str, optional
        The stored axes, e.g. ``"ZYX"`` or ``"zcyx"`` (letters from ``TCZYXS``); required
        where the metadata do not say (3-D and higher plain arrays).

    Returns
    -------
    VolumeSource

    Raises
    ------
    UserError
        Missing path, not an array, wrong number of axes, bad axes, zero-size axes,
        unsupported dtype, time series.
    """
    if isinstance(source, VolumeSource):
        if axes is not None and parse_axes(axes, len(source.axes)) != source.axes:
            raise UserError(f"This volume has axes {source.axes}; --axes {axes} disagrees; leave it out.")
        return source
    if isinstance(source, (str, os.PathLike)):
        return _open_path(Path(source).expanduser().absolute(), axes)
    if isinstance(source, zarr.Array):
        local = _local_zarr_location(source)
        if local is not None:
            return _from_zarr_array(source, str(local), None, axes, kind="zarr")
        return _from_zarr_array(source, None, None, axes, kind="array", keep=True)
    if hasattr(source, "shape") and hasattr(source, "dtype") and hasattr(source, "__getitem__"):
        if not hasattr(source, "compute") and not isinstance(source, np.ndarray):
            source = np.asarray(source)
        return _from_array_object(source, axes)
    raise TypeError(
        "open_volume expects a path to a zarr store or TIFF file, a numpy/dask array or a "
        f"zarr.Array; got {type(source).__name__}."
    )


def _local_zarr_location(arr: zarr.Array) -> Path | None:
    store = arr.store
    root = getattr(store, "root", None)
    if isinstance(store, zarr.storage.LocalStore) and root is not None:
        return Path(root) / arr.path if arr.path else Path(root)
    return None


def _open_path(path: Path, axes: str | None) -> VolumeSource:
    if not path.exists():
        raise UserError(f"Input not found: {str(path)!r} does not exist; check the path.")
    if path.is_file():
        if _is_tiff_file(path):
            return _open_tiff(path, axes)
        raise UserError(
            f"{str(path)!r} is neither a TIFF file nor a zarr store; fastunet reads zarr v2/v3 "
            "arrays and OME-Zarr folders and .tif/.tiff files."
        )
    try:
        node = zarr.open(store=str(path), mode="r")
    except (zarr.errors.NodeNotFoundError, FileNotFoundError, NotADirectoryError):
        raise UserError(
            f"{str(path)!r} is a folder but not a zarr array or group (no zarr.json, .zarray or "
            ".zgroup inside); point at a zarr array, an OME-Zarr image or a TIFF file."
        ) from None
    if isinstance(node, zarr.Array):
        return _from_zarr_array(node, str(path), None, axes, kind="zarr")
    return _open_group(node, path, axes)


def _open_group(group: zarr.Group, path: Path, axes: str | None) -> VolumeSource:
    attrs = group.attrs.asdict()
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else None
    if "bioformats2raw.layout" in attrs or (ome and "bioformats2raw.layout" in ome):
        if "0" in group.group_keys():  # bioformats2raw: the first image lives in group "0"
            return _open_group(group["0"], path / "0", axes)
    multiscales = (ome or {}).get("multiscales") or attrs.get("multiscales")
    if multiscales:
        return _open_ome(group, path, multiscales, ome, axes)
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


def _ome_letters(axes_meta: list, what: str) -> str:
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
        raise UserError(f"{what}: cannot interpret the OME-Zarr axes {names}; pass --axes.")
    return "".join(letters)


def _open_ome(group, path: Path, multiscales, ome, axes: str | None) -> VolumeSource:
    what = repr(str(path))
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
    letters = _ome_letters(axes_meta, what)
    if axes is not None and parse_axes(axes, arr.ndim, what=what) != letters:
        raise UserError(
            f"{what} is OME-Zarr with axes {letters} in its metadata; --axes {axes} disagrees: leave "
            "--axes out."
        )
    version = (ome or {}).get("version") or ms.get("version") or ("0.5" if ome else "0.4")
    meta = {
        "version": str(version),
        "name": ms.get("name"),
        "axes": [a if isinstance(a, dict) else {"name": str(a)} for a in axes_meta],
        "coordinateTransformations": datasets[0].get("coordinateTransformations"),
        "multiscale_coordinateTransformations": ms.get("coordinateTransformations"),
    }
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
            letters = _letters_from_names(names) if names else None
            if letters is None:
                letters = _default_letters(arr.ndim, shape, what)
    chunks = tuple(int(c) for c in arr.chunks)
    return _make_source(kind, path, key, letters, shape, arr.dtype, chunks, what, ome=ome,
                        array=arr if keep else None)


def _default_letters(ndim: int, shape, what: str) -> str:
    if ndim == 2:
        return "YX"
    if ndim < 2 or ndim > 6:
        raise UserError(
            f"{what} has {ndim} axes (shape {tuple(shape)}); fastunet segments 2-D to 4-D images "
            "(YX, ZYX, CYX, CZYX, plus T of length 1): pass an image, not a "
            f"{'profile' if ndim < 2 else 'stack of volumes'}."
        )
    raise UserError(
        f"{what} has {ndim} axes (shape {tuple(shape)}) and no axes metadata; say what they are "
        f"with --axes, {_AXES_HINT}."
    )


def _make_source(kind, path, key, letters, shape, dtype, chunks, what, *, ome=None, array=None) -> VolumeSource:
    dtype_name = _check_shape_dtype(shape, dtype, what)
    native, canonical = _plan_axes(letters, shape, what)
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
    )


def _from_array_object(arr, axes: str | None) -> VolumeSource:
    what = f"the {type(arr).__module__.split('.')[0]} array"
    shape = tuple(int(n) for n in arr.shape)
    if axes is not None:
        letters = parse_axes(axes, arr.ndim, what=what)
    else:
        letters = _default_letters(arr.ndim, shape, what)
    chunks = tuple(int(c) for c in getattr(arr, "chunksize", shape))
    return _make_source("array", None, None, letters, shape, arr.dtype, chunks, what, array=arr)


# ---------------------------------------------------------------------------------------- TIFF


def _is_tiff_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _tiff_letters(axes: str, shape: tuple[int, ...], what: str) -> str:
    """tifffile series axes -> TCZYXS letters ('1' for a dropped length-1 axis)."""
    out = []
    generic = [i for i, a in enumerate(axes) if a in _GENERIC_TIFF_AXES and shape[i] > 1]
    for i, a in enumerate(axes):
        if a in AXES_LETTERS:
            out.append(a)
        elif shape[i] == 1:
            out.append("1")
        elif a in _GENERIC_TIFF_AXES and len(generic) == 1 and "Z" not in axes:
            out.append("Z")  # a plain stack of pages: a z-stack
        else:
            name = _TIFF_AXIS_NAMES.get(a, "generic")
            raise UserError(
                f"{what} has axes {axes} (shape {shape}); its axis {a!r} ({name}, length {shape[i]}) "
                f"has no meaning for fastunet: say what the axes are with --axes, e.g. "
                f"--axes {_example_axes(len(axes))}."
            )
    return "".join(out)


def _open_tiff(path: Path, axes: str | None) -> VolumeSource:
    what = repr(str(path))
    try:
        tif = tifffile.TiffFile(str(path))
    except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct errors...
        raise UserError(f"{what} is not a readable TIFF file ({exc}); check the file.") from None
    with tif:
        if not tif.series:
            raise UserError(f"{what} holds no image series; check the file.")
        series = tif.series[0]
        arr = zarr.open_array(series.aszarr(level=0), mode="r")
        shape = tuple(int(n) for n in arr.shape)
        if axes is not None:
            letters = parse_axes(axes, len(shape), what=f"{what} (tifffile axes {series.axes}, shape {shape})")
        else:
            letters = _tiff_letters(series.axes, shape, what)
        source = _make_source("tiff", str(path), "0", letters, shape, arr.dtype,
                              tuple(int(c) for c in arr.chunks), what)
        if axes is None and "S" in letters and "Z" not in letters and "C" in source.axes:
            # tifffile read the planes as RGB samples (its guess for 3 or 4 planes without
            # axes metadata): they may as well be z slices.
            alt = letters.replace("S", "Z")
            if "1" not in alt:
                source = dataclasses.replace(source, alt_axes=alt)
        try:  # decode one chunk now, so a codec that needs imagecodecs fails before any compute
            arr[tuple(slice(0, 1) for _ in shape)]
        except Exception as exc:
            fix = " (pip install imagecodecs)" if "imagecodecs" in str(exc) else ""
            raise UserError(f"{what} cannot be decoded: {exc}{fix}.") from None
    return source


# ---------------------------------------------------------------------------- fingerprint

FINGERPRINT_POINTS = 4  # sample positions per spatial axis


def input_fingerprint(source: VolumeSource) -> dict:
    """A cheap identity of an input, recorded in the output so that ``--resume`` can refuse
    another input (or one changed since). It is a check, not a proof: it catches another
    file, another shape or dtype, and edits that change what it samples.

    Always: the resolved path (None in memory), array key / TIFF series, kind, axes, shape
    and dtype. TIFF: the file's size. zarr: a digest of the array's metadata document
    (``zarr.json`` / ``.zarray``) and, in a local store, of its chunk files' names and sizes
    (an edited chunk usually compresses to another size). All: a digest of the values at a
    fixed lattice of at most ``FINGERPRINT_POINTS`` positions per spatial axis (every
    channel), which depends on the shape only; a zarr array decodes each chunk of it once.
    Modification times are left out: a copy of an unchanged file still matches.
    """
    fp = {
        "path": os.path.realpath(source.path) if source.path else None,
        "key": source.key,
        "kind": source.kind,
        "axes": source.axes,
        "native_axes": source.native_axes or source.axes,
        "shape": [int(n) for n in source.shape],
        "dtype": source.dtype,
    }
    stored = source._stored()
    if source.kind == "tiff":
        fp["size"] = int(os.stat(source.path).st_size)
    elif isinstance(stored, zarr.Array):
        doc = json.dumps(stored.metadata.to_dict(), sort_keys=True, default=str)
        fp["metadata"] = hashlib.sha256(doc.encode()).hexdigest()[:32]
        chunks = _chunk_files_digest(source)
        if chunks is not None:
            fp["chunk_files"] = chunks
    fp["sample"] = _sample_digest(source, stored)
    return fp


def _lattice(n: int) -> list[int]:
    k = min(FINGERPRINT_POINTS, n)
    return sorted({(2 * i + 1) * n // (2 * k) for i in range(k)})


def _sample_digest(source: VolumeSource, stored) -> str:
    digest = hashlib.sha256()

    def add(values: np.ndarray) -> None:  # little-endian bytes: the same digest on any machine
        digest.update(np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes())

    if isinstance(stored, zarr.Array):  # one orthogonal selection in native axes: each chunk decoded once
        native = source.native_axes or source.axes
        selection = tuple(slice(None) if a == "C" else _lattice(n) for a, n in zip(native, stored.shape))
        try:
            add(np.asarray(stored.get_orthogonal_selection(selection)))
        except Exception as exc:
            raise UserError(f"The input {source.path!r} cannot be read for its fingerprint: {exc}.") from None
        return digest.hexdigest()[:32]
    grids = [[None] if a == "C" else _lattice(n) for a, n in zip(source.axes, source.shape)]
    for point in itertools.product(*grids):
        add(source.read(tuple(slice(0, n) if p is None else slice(p, p + 1) for p, n in zip(point, source.shape))))
    return digest.hexdigest()[:32]


def _chunk_files_digest(source: VolumeSource) -> str | None:
    """Digest of the (relative name, size) of every chunk file of a zarr array in a local
    folder store; None when the array is not such a folder."""
    root = Path(source.path)
    if source.key:
        root = root / source.key
    if not root.is_dir():
        return None
    entries = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(folder, root)
        for name in files:
            if name in ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"):
                continue
            if name.startswith("."):  # hidden files (editor or OS droppings) are no chunks
                continue
            entries.append((os.path.join(rel, name), os.stat(os.path.join(folder, name)).st_size))
    entries.sort()
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:32]


def _input_mismatch(path: Path, old: dict, new: dict) -> str:
    """Why a resume's input is not the recorded one, in words."""
    def differs(*keys):
        return any(old.get(k) != new.get(k) for k in keys)

    if not isinstance(old, dict):
        reason = "its input record is unreadable"
    elif differs("path"):
        reason = f"it was started on the input {old.get('path')!r}, this run reads {new.get('path')!r}"
    elif differs("key", "kind"):
        reason = (f"it was started on the array {old.get('key')!r} ({old.get('kind')}) of the input, this run "
                  f"reads {new.get('key')!r} ({new.get('kind')})")
    elif differs("axes", "native_axes", "shape", "dtype"):
        reason = (f"it was started on an input with axes {old.get('native_axes')} -> {old.get('axes')}, shape "
                  f"{old.get('shape')}, dtype {old.get('dtype')}; this run's input has axes "
                  f"{new.get('native_axes')} -> {new.get('axes')}, shape {new.get('shape')}, dtype {new.get('dtype')}")
    elif differs("size"):
        reason = "the input file changed since it was started (its size differs)"
    elif differs("metadata"):
        reason = "the input array's metadata changed since it was started"
    elif differs("sample"):
        reason = "the input's values differ from those it was started on (a sample at fixed positions)"
    else:
        reason = "the input array's chunk files changed since it was started (names or sizes differ)"
    return (
        f"Cannot resume {str(path)!r}: {reason}; resuming would mix two inputs in one output. Resume with "
        "the same, unchanged input, or start over with --overwrite."
    )


# ------------------------------------------------------------------------------------- outputs


def _is_tiff_path(path: Path) -> bool:
    return path.suffix.lower() in TIFF_SUFFIXES


def _fastunet_attrs(path: Path) -> dict | None:
    """attrs["fastunet"] of a zarr group at ``path`` (or the fastunet TIFF marker), else None."""
    try:
        if path.is_file():
            if not _is_tiff_file(path):
                return None
            with tifffile.TiffFile(str(path)) as tif:
                for meta in tif.shaped_metadata or ():
                    if isinstance(meta.get("fastunet"), dict):
                        return meta["fastunet"]
            return None
        meta = zarr.open_group(str(path), mode="r").attrs.get("fastunet")
        return meta if isinstance(meta, dict) else None
    except Exception:
        return None


def _describe(path: Path) -> str:
    if path.is_file():
        return f"a file of {path.stat().st_size} bytes"
    names = sorted(os.listdir(path))
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"a folder with {len(names)} entries ({shown})"


def _check_removable(path: Path) -> None:
    """Raise unless ``path`` is a fastunet output or an empty folder (what --overwrite may remove)."""
    if path.is_dir() and not any(path.iterdir()):
        return
    if _fastunet_attrs(path) is not None:
        return
    raise UserError(
        f"Output {str(path)!r} exists and is not a fastunet output ({_describe(path)}); --overwrite "
        "only replaces fastunet outputs and empty folders, never other data: choose another output "
        "path or remove it yourself."
    )


def _remove_output(path: Path) -> None:
    _check_removable(path)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def _probe_writable(folder: Path) -> None:
    probe = folder / f".fastunet-probe-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"Cannot write to {str(folder)!r} ({exc.strerror or exc}); choose a writable output location."
        ) from None


def _inside(a: Path, b: Path) -> bool:
    """Is ``a`` equal to ``b`` or inside it?"""
    return a == b or b in a.parents


def _check_not_input(out: Path, source: VolumeSource | None) -> None:
    if source is None or not source.path:
        return
    inp = Path(source.path).expanduser().resolve()
    if _inside(out, inp):
        raise UserError(
            f"Output {str(out)!r} is {'the input' if out == inp else 'inside the input'} "
            f"{str(inp)!r}; the input is never written: choose an output path outside it."
        )
    if _inside(inp, out):
        raise UserError(
            f"Output {str(out)!r} contains the input {str(inp)!r}; writing (or --overwrite) there "
            "could destroy it: choose another output path."
        )


def check_output(
    output,
    *,
    source: VolumeSource | None,
    overwrite: bool,
    resume: bool,
    expect: dict | None = None,
    output_kind: str | None = None,
) -> Path:
    """Check an output location before anything is computed; return its resolved path.

    Parameters
    ----------
    output : str or path-like
        A zarr folder (e.g. ``out.zarr``) or a ``.tif``/``.tiff`` file.
    source : VolumeSource or None
        The input, so that the output is never the input, inside it, or around it.
    overwrite, resume : bool
        ``--overwrite`` (replace an existing fastunet output or empty folder) and ``--resume``
        (continue an existing fastunet output); at most one.
    expect : dict, optional
        With ``resume``: recorded parameters the existing output must match (see
        :func:`open_output`).
    output_kind : {"labels", "probs", "both"}, optional
        For a TIFF output, ``"both"`` also writes ``<stem>_probs.tif`` (see
        :func:`write_tiff`): that file is checked too.

    Raises
    ------
    UserError
        Output is or is inside the input; exists without --overwrite/--resume; would replace
        something that is not a fastunet output; parent folder missing, not a folder or not
        writable; resume of a non-fastunet or mismatching output. Never deletes anything.
    """
    if overwrite and resume:
        raise UserError("--overwrite and --resume contradict each other; pass one of them.")
    out = Path(output).expanduser().resolve()
    _check_not_input(out, source)
    tiff = _is_tiff_path(out)
    if tiff and resume:
        raise UserError("--resume needs a zarr output (e.g. -o out.zarr); TIFF outputs are written at once.")
    parent = out.parent
    if not parent.exists():
        raise UserError(
            f"The output's folder {str(parent)!r} does not exist; create it first or choose another path."
        )
    if not parent.is_dir():
        raise UserError(
            f"The output's parent {str(parent)!r} is not a folder ({_describe(parent)}); choose another path."
        )
    if out.exists() or out.is_symlink():
        if not (overwrite or resume):
            raise UserError(
                f"Output {str(out)!r} already exists; pass --overwrite to replace it or --resume to "
                "continue an interrupted run."
            )
        if overwrite:
            _check_removable(out)
            _probe_writable(parent)
        else:
            if not out.is_dir() or _fastunet_attrs(out) is None:
                raise UserError(
                    f"Cannot resume {str(out)!r}: it is not a fastunet output ({_describe(out)}); "
                    "choose the output of the interrupted run, or a new path without --resume."
                )
            if expect:
                _check_expected(out, _fastunet_attrs(out), expect)
            _probe_writable(out)
    else:
        _probe_writable(parent)
    if tiff and output_kind == "both":
        probs = _probs_path(out)
        _check_not_input(probs, source)
        if probs.exists() or probs.is_symlink():
            if not overwrite:
                raise UserError(
                    f"Output {str(probs)!r} (the probabilities of --output both) already exists; pass "
                    "--overwrite to replace it or choose another output name."
                )
            _check_removable(probs)
    return out


def _jsonable(value):
    """tuples -> lists, numpy scalars -> Python, Paths -> str (what JSON attrs can hold)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Cannot store {type(obj).__name__} in the output's attributes.")


class InputMovedWarning(UserWarning):
    """A resumed output was started on the same input at another path."""


def _check_expected(path: Path, meta: dict, expect: dict) -> None:
    for key, want in _jsonable(expect).items():
        if key == "input_id":
            _check_input(path, meta, want)
            continue
        if key not in meta:
            raise UserError(
                f"Cannot resume {str(path)!r}: it does not record {key!r}; start over with --overwrite."
            )
        if meta[key] != want:
            raise UserError(
                f"Cannot resume {str(path)!r}: it was created with {key}={meta[key]!r}, this run has "
                f"{key}={want!r}; rerun with the original settings, or start over with --overwrite."
            )


def _check_input(path: Path, meta: dict, want: dict) -> None:
    """The resumed output's recorded input against this run's (see :func:`input_fingerprint`)."""
    import warnings

    old = meta.get("input_id")
    if old is None:
        if meta.get("complete"):
            return  # finished by an older fastunet that kept no record: nothing will be written
        raise UserError(
            f"Cannot resume {str(path)!r}: it does not record which input it was made from (an "
            "output of an older fastunet), so resuming could mix two inputs; start over with --overwrite."
        )
    if old == want:
        return
    if isinstance(old, dict) and {k: v for k, v in old.items() if k != "path"} == {
        k: v for k, v in want.items() if k != "path"
    }:
        warnings.warn(
            f"Resuming {str(path)!r}, started on {old.get('path')!r}, with {want.get('path')!r}: the same "
            "array (shape, dtype, metadata and sampled values agree), so the input was moved or copied.",
            InputMovedWarning,
            stacklevel=3,
        )
        return
    raise UserError(_input_mismatch(path, old, want))


def _spatial_ome(source: VolumeSource) -> tuple[list, list, list | None]:
    """OME axes and level-0 transforms of the input, restricted to its spatial axes
    (canonical order). Returns ``(axes, transforms, multiscale_transforms)``."""
    ome = source.ome or {}
    native = source.native_axes or source.axes
    idx = [native.index(a) for a in source.spatial_axes]
    axes_in = ome.get("axes") or [{"name": a.lower(), "type": "space"} for a in native]
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
    return axes, transforms, ms_transforms


def _multiscale(name, axes, path, transforms, ms_transforms, version) -> dict:
    ms = {"name": name, "axes": axes, "datasets": [{"path": path, "coordinateTransformations": transforms}]}
    if ms_transforms:
        ms["coordinateTransformations"] = ms_transforms
    if version == "0.4":
        ms = {"version": "0.4", **ms}
    return ms


def _ome_attrs(version: str, **entries) -> dict:
    """NGFF group attributes: top level for 0.4 (zarr v2), under "ome" for 0.5 (zarr v3)."""
    if version == "0.4":
        return entries
    return {"ome": {"version": "0.5", **entries}}


def _label_colors(num_classes: int) -> list[dict]:
    colors = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    for k in range(1, num_classes):
        colors.append({"label-value": k, "rgba": [*_PALETTE[(k - 1) % len(_PALETTE)], 255]})
    return colors


def create_output(
    path,
    *,
    source: VolumeSource,
    num_classes: int,
    output: str,
    chunks: tuple[int, ...],
    zarr_format: int = 3,
    overwrite: bool = False,
    attrs: dict | None = None,
    label_name: str = LABEL_NAME,
) -> "SegmentationStore":
    """Create the output zarr group for a segmentation of ``source``.

    Parameters
    ----------
    path : str or path-like
        The zarr folder to create (checked with :func:`check_output` first).
    source : VolumeSource
        The input; its spatial shape is the labels' shape.
    num_classes : int
        Number of classes K of the model (2 to 256 with labels).
    output : {"labels", "probs", "both"}
        ``labels``: uint8, shape ``source.spatial_shape``, chunks ``chunks``;
        ``probs``: float16, shape ``(K, *spatial_shape)``, chunks ``(1, *chunks)``, NaN where
        nothing was written.
    chunks : tuple of int
        Spatial chunk shape ``((Z,) Y, X)``.
    zarr_format : {3, 2}
    overwrite : bool
        Remove an existing fastunet output (or empty folder) at ``path`` first; anything
        else there is refused.
    attrs : dict, optional
        Extra JSON entries for ``attrs["fastunet"]`` (e.g. model, tile, device).
    label_name : str
        Name of the label image under ``labels/`` for OME-Zarr inputs.

    ``attrs["fastunet"]["input_id"]`` records :func:`input_fingerprint` of ``source``.

    Returns
    -------
    SegmentationStore

    Notes
    -----
    Layout: ``labels`` and ``probs`` arrays at the root. When ``source.kind == "ome-zarr"``
    the output is an OME-Zarr image container (NGFF 0.4 on zarr v2, 0.5 on zarr v3): labels at
    ``labels/<label_name>/0`` with ``image-label`` (colors, ``source.image`` = relative path
    back to the input image) and ``multiscales`` metadata whose axes and level-0 scale are the
    input's spatial ones, the ``labels`` group listing it; probabilities, when written, are
    the root image (``probs``, a channel axis ``c`` of the K classes + the spatial axes).
    Open ``<out>/labels/<label_name>`` in napari (napari-ome-zarr) to see the labels over the
    input image.
    """
    if output not in ("labels", "probs", "both"):
        raise ValueError(f"output must be 'labels', 'probs' or 'both'; got {output!r}.")
    if zarr_format not in (2, 3):
        raise UserError(f"--zarr-format must be 2 or 3; got {zarr_format!r}.")
    num_classes = int(num_classes)
    if not 1 <= num_classes <= (256 if output != "probs" else 2**31):
        raise ValueError(f"num_classes must be 1..256 for uint8 labels; got {num_classes}.")
    spatial = source.spatial_shape
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != len(spatial) or any(c < 1 for c in chunks):
        raise ValueError(
            f"chunks must be {len(spatial)} positive ints for spatial shape {spatial}; got {chunks}."
        )
    out = Path(path).expanduser().resolve()
    _check_not_input(out, source)
    input_id = input_fingerprint(source)  # reads a few chunks: fails before anything is written
    if out.exists():
        if not overwrite:
            raise UserError(f"Output {str(out)!r} already exists; pass --overwrite to replace it.")
        _remove_output(out)

    ome = source.kind == "ome-zarr"
    version = "0.4" if zarr_format == 2 else "0.5"
    names = [a.lower() for a in source.spatial_axes]
    sp_transforms = ms_transforms = None
    if ome:
        sp_axes, sp_transforms, ms_transforms = _spatial_ome(source)
        names = [str(a.get("name", l)) for a, l in zip(sp_axes, names)]
    cname = "c" if "c" not in names else "class"
    labels_path = f"labels/{label_name}/0" if ome else "labels"
    arrays = {
        "labels": labels_path if output in ("labels", "both") else None,
        "probs": "probs" if output in ("probs", "both") else None,
    }
    from . import __version__

    meta = _jsonable(
        {
            **(attrs or {}),
            "version": __version__,
            "complete": False,
            "input": source.path,
            "input_kind": source.kind,
            "input_key": source.key,
            "input_id": input_id,
            "axes": source.axes,
            "shape": list(spatial),
            "output": output,
            "num_classes": num_classes,
            "chunks": list(chunks),
            "zarr_format": zarr_format,
            "arrays": arrays,
        }
    )
    root_attrs = {"fastunet": meta}
    if ome and arrays["probs"]:
        root_attrs.update(
            _ome_attrs(
                version,
                multiscales=[
                    _multiscale(
                        "probabilities",
                        [{"name": cname, "type": "channel"}, *sp_axes],
                        "probs",
                        [_prepend(t, 1.0 if t["type"] == "scale" else 0.0) for t in sp_transforms],
                        [_prepend(t, 1.0 if t["type"] == "scale" else 0.0) for t in ms_transforms]
                        if ms_transforms else None,
                        version,
                    )
                ],
            )
        )
    root = zarr.open_group(str(out), mode="w-", zarr_format=zarr_format, attributes=root_attrs)

    def make(where: zarr.Group, name, shape, chunk, dtype, fill, dims):
        kw = {"dimension_names": dims} if zarr_format == 3 else {"attributes": {"_ARRAY_DIMENSIONS": dims}}
        return where.create_array(name, shape=shape, chunks=chunk, dtype=dtype, fill_value=fill, **kw)

    if arrays["labels"]:
        where = root
        if ome:
            rel = os.path.relpath(Path(source.path).resolve(), out / "labels" / label_name)
            where = root.create_group("labels", attributes=_ome_attrs(version, labels=[label_name]))
            label_meta = {"colors": _label_colors(num_classes), "source": {"image": rel}}
            if version == "0.4":
                label_meta = {"version": "0.4", **label_meta}
            where = where.create_group(
                label_name,
                attributes=_ome_attrs(
                    version,
                    multiscales=[_multiscale(label_name, sp_axes, "0", sp_transforms, ms_transforms, version)],
                    **{"image-label": label_meta},
                ),
            )
        make(where, labels_path.rsplit("/", 1)[-1], spatial, chunks, "uint8", 0, names)
    if arrays["probs"]:
        make(root, "probs", (num_classes, *spatial), (1, *chunks), "float16", float("nan"), [cname, *names])
    root.create_group(DONE_DIR)
    return SegmentationStore(out)


def discard_output(path) -> None:
    """Remove an output that this run created and that holds no finished block (a run that
    failed before its first block); refuses anything that is not a fastunet output."""
    out = Path(path).expanduser().resolve()
    if out.exists():
        _remove_output(out)


def _prepend(transform: dict, value: float) -> dict:
    kind = transform["type"]
    return {"type": kind, kind: [value, *transform[kind]]}


def open_output(path, *, expect: dict) -> "SegmentationStore":
    """Reopen an existing fastunet output read-write, for ``--resume``.

    Parameters
    ----------
    path : str or path-like
    expect : dict
        Entries that must equal the recorded ones in ``attrs["fastunet"]``, e.g.
        ``{"shape": (64, 64), "output": "labels", "num_classes": 2, "chunks": (32, 32)}``.

    Raises
    ------
    UserError
        Missing, not a fastunet output, or created with other parameters.
    """
    out = Path(path).expanduser().resolve()
    if not out.is_dir():
        raise UserError(f"Cannot resume {str(out)!r}: it does not exist (or is not a zarr folder).")
    meta = _fastunet_attrs(out)
    if meta is None:
        raise UserError(
            f"Cannot resume {str(out)!r}: it is not a fastunet output ({_describe(out)}); choose the "
            "output of the interrupted run."
        )
    _check_expected(out, meta, expect or {})
    store = SegmentationStore(out)
    os.makedirs(store._done_dir, exist_ok=True)
    return store


class SegmentationStore:
    """A fastunet output: the zarr arrays plus the run's bookkeeping.

    Picklable: a worker process reopens it from its path.

    Attributes
    ----------
    path : Path
    labels : zarr.Array or None
        uint8 labels, shape ``(Z,) Y, X``.
    probs : zarr.Array or None
        float16 class probabilities, shape ``(K, (Z,) Y, X)``.
    """

    def __init__(self, path, *, mode: str = "r+"):
        self.path = Path(path)
        self._mode = mode
        try:
            root = zarr.open_group(str(self.path), mode=mode)
        except (zarr.errors.NodeNotFoundError, FileNotFoundError):
            raise UserError(f"{str(self.path)!r} is not a zarr group; not a fastunet output.") from None
        meta = root.attrs.get("fastunet")
        if not isinstance(meta, dict):
            raise UserError(f"{str(self.path)!r} is not a fastunet output (no attrs['fastunet']).")
        arrays = meta.get("arrays") or {}
        try:
            self.labels = root[arrays["labels"]] if arrays.get("labels") else None
            self.probs = root[arrays["probs"]] if arrays.get("probs") else None
        except KeyError as exc:  # a run that died while creating the output
            raise UserError(
                f"{str(self.path)!r} is an unfinished fastunet output without its array {exc}: its run "
                "stopped while creating it; start over with --overwrite."
            ) from None
        self._done_dir = self.path / DONE_DIR

    def __reduce__(self):
        return (_reopen_store, (str(self.path), self._mode))

    def __repr__(self) -> str:
        return f"SegmentationStore({str(self.path)!r}, complete={self.complete})"

    @property
    def attrs(self) -> dict:
        """``attrs["fastunet"]`` as stored now (read afresh)."""
        return dict(zarr.open_group(str(self.path), mode="r").attrs["fastunet"])

    @property
    def complete(self) -> bool:
        """True once :meth:`mark_complete` ran (read afresh from the store)."""
        return bool(self.attrs.get("complete"))

    def mark_done(self, block: str) -> None:
        """Record that ``block`` is finished; call AFTER its chunks are written.

        One small file per block, written under a temporary name and renamed (atomic), so
        any number of processes may record blocks at the same time.
        """
        name = quote(str(block), safe="") + _DONE_SUFFIX
        os.makedirs(self._done_dir, exist_ok=True)
        tmp = self._done_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
        tmp.write_bytes(b"")
        os.replace(tmp, self._done_dir / name)

    def done(self) -> set[str]:
        """Names of the blocks recorded by :meth:`mark_done`."""
        try:
            entries = os.listdir(self._done_dir)
        except FileNotFoundError:
            return set()
        return {unquote(e[: -len(_DONE_SUFFIX)]) for e in entries if e.endswith(_DONE_SUFFIX)}

    def mark_complete(self, summary: dict) -> None:
        """Mark the output complete (``attrs["fastunet"]["complete"] = True`` and ``summary``)
        and remove the per-block records."""
        root = zarr.open_group(str(self.path), mode="r+")
        meta = dict(root.attrs["fastunet"])
        meta.update(complete=True, summary=_jsonable(summary))
        root.attrs["fastunet"] = meta
        shutil.rmtree(self._done_dir, ignore_errors=True)


def _reopen_store(path: str, mode: str) -> SegmentationStore:
    return SegmentationStore(path, mode=mode)


# ---------------------------------------------------------------------------------- TIFF output


def _probs_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}_probs{path.suffix or '.tif'}")


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
        targets.append((_probs_path(path) if labels is not None else path, probs, "C" + axes, "probs"))
    for target, *_ in targets:
        if target.exists():
            if not overwrite:
                raise UserError(f"Output {str(target)!r} already exists; pass --overwrite to replace it.")
            _check_removable(target)
    from . import __version__

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
