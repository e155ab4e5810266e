"""Segmentation outputs: checking a location (:func:`check_output`), creating
(:func:`create_output`), reopening (:func:`open_output`) and removing (:func:`discard_output`)
a zarr output, and the run's records in it (:class:`SegmentationStore`).

An output is a zarr group (v3 by default, v2 on request) holding ``labels`` (uint8) and/or
``probs`` (float16, ``(K, ...)``) with ``attrs["fastunet"]`` describing the run; for an
OME-Zarr input the labels follow the NGFF image-label layout (``labels/segmentation/0``, see
:mod:`fastunet.io.ome`). Finished blocks are recorded by :meth:`SegmentationStore.mark_done`
(one empty key per block under ``_fastunet_done/``, written through the store's file system)
so a killed run can be resumed; ``attrs["fastunet"]["input_id"]``
(:func:`~fastunet.io.fingerprint.input_fingerprint`) records which input it was made from, so
a resume on another input is refused. Outputs may be URLs (``s3://``, ``gs://``,
``memory://``; :mod:`fastunet.io.stores`); one run at a time writes an output
(:mod:`fastunet.io.lock`).

Only fastunet outputs and empty folders are ever replaced or removed; the input is never
written.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import tifffile
import zarr

from ..errors import UserError
from .fingerprint import check_input, input_fingerprint
from .inputs import DONE_DIR, VolumeSource, is_tiff_file
from .ome import (
    LABEL_NAME,
    SpatialMetadata,
    create_label_groups,
    label_path,
    ngff_version,
    probs_image_attrs,
    spatial_metadata,
)
from .retry import is_permanent, retry_call, storage_error, wait_for_writes
from .stores import filesystem, is_remote, listdir, location, remove_tree, zarr_store

__all__ = [
    "check_output",
    "create_output",
    "discard_output",
    "open_output",
    "SegmentationStore",
    "TIFF_SUFFIXES",
]

TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIXES = ("", ".zarr")  # a zarr folder: out.zarr, out.ome.zarr, or a name without extension
_DONE_SUFFIX = ".done"
# Recorded entries that a caller passes under another name (segment's output_kind).
_PARAMETER_NAMES = {"output": "output_kind"}


# ------------------------------------------------------------------------- probing and removal


def probs_path(path: Path) -> Path:
    """Where a TIFF output writes the probabilities when it writes labels too: ``<stem>_probs.tif``."""
    return path.with_name(f"{path.stem}_probs{path.suffix or '.tif'}")


def fastunet_attrs(path: Path) -> dict | None:
    """attrs["fastunet"] of a zarr group at ``path`` (or the fastunet TIFF marker), else None."""
    try:
        if path.is_file():
            if not is_tiff_file(path):
                return None
            with tifffile.TiffFile(str(path)) as tif:
                for meta in tif.shaped_metadata or ():
                    if isinstance(meta.get("fastunet"), dict):
                        return meta["fastunet"]
            return None
        meta = zarr.open_group(zarr_store(path, read_only=True, retry=False), mode="r").attrs.get("fastunet")
        return meta if isinstance(meta, dict) else None
    except Exception:
        return None


def _describe(path: Path) -> str:
    if path.is_file():
        return f"a file of {path.stat().st_size} bytes"
    if not is_remote(path) and not path.is_dir():
        mode = path.lstat().st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            return "a device file"
        return "a named pipe" if stat.S_ISFIFO(mode) else "a link to nothing" if stat.S_ISLNK(mode) else "a special file"
    names = listdir(path)
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"a folder with {len(names)} entries ({shown})"


def check_removable(path: Path) -> None:
    """Raise unless ``path`` is a fastunet output or an empty folder (what overwrite=True may remove)."""
    if path.is_dir() and not any(path.iterdir()):
        return
    if fastunet_attrs(path) is not None:
        return
    raise UserError(
        f"Output {str(path)!r} exists and is not a fastunet output ({_describe(path)}); overwrite=True "
        "only replaces fastunet outputs and empty folders, never other data: choose another output "
        "path or remove it yourself."
    )


def _remove_output(path: Path) -> None:
    check_removable(path)
    remove_tree(path)


def _probe_writable(folder: Path) -> None:
    probe = folder / f".fastunet-probe-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        if is_remote(folder):
            probe.fs.pipe_file(probe.path, b"")
            probe.fs.rm_file(probe.path)
        else:
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as exc:
        raise UserError(
            f"Cannot write to {str(folder)!r} ({exc.strerror or exc}); choose a writable output location."
        ) from None


def _inside(a: Path, b: Path) -> bool:
    """Is ``a`` equal to ``b`` or inside it?"""
    if is_remote(a) or is_remote(b):
        a, b = str(a).rstrip("/"), str(b).rstrip("/")
        return a == b or a.startswith(b + "/")
    return a == b or b in a.parents


def _check_not_input(out: Path, source: VolumeSource | None) -> None:
    if source is None or not source.path:
        return
    inp = location(source.path, source.storage_options, what="source")
    if _inside(out, inp):
        raise UserError(
            f"Output {str(out)!r} is {'the input' if out == inp else 'inside the input'} "
            f"{str(inp)!r}; the input is never written: choose an output path outside it."
        )
    if _inside(inp, out):
        raise UserError(
            f"Output {str(out)!r} contains the input {str(inp)!r}; writing (or overwrite=True) there "
            "could destroy it: choose another output path."
        )


# ------------------------------------------------------------------------------- check_output


def check_output(
    output,
    *,
    source: VolumeSource | None,
    overwrite: bool,
    resume: bool,
    expect: dict | None = None,
    output_kind: str | None = None,
    storage_options: dict | None = None,
) -> Path:
    """Check an output location before anything is computed; return its resolved path.

    Parameters
    ----------
    output : str or path-like
        A zarr folder (e.g. ``out.zarr``, or a URL: ``s3://bucket/out.zarr``) or a
        ``.tif``/``.tiff`` file (local).
    source : VolumeSource or None
        The input, so that the output is never the input, inside it, or around it.
    overwrite, resume : bool
        Replace an existing fastunet output or empty folder, or continue an existing
        fastunet output; at most one.
    expect : dict, optional
        With ``resume``: recorded parameters the existing output must match (see
        :func:`open_output`).
    output_kind : {"labels", "probs", "both"}, optional
        For a TIFF output, ``"both"`` also writes ``<stem>_probs.tif`` (see
        :func:`~fastunet.io.tiff.write_tiff`): that file is checked too.
    storage_options : dict, optional
        Options of a URL's file system (see :func:`fastunet.io.stores.location`).

    Returns
    -------
    Path or upath.UPath

    Raises
    ------
    UserError
        Output is or is inside the input; exists without overwrite/resume; would replace
        something that is not a fastunet output; parent folder missing, not a folder or not
        writable; resume of a non-fastunet or mismatching output. Never deletes anything.
    """
    if overwrite and resume:
        raise UserError("overwrite=True and resume=True contradict each other; pass one of them.")
    out = location(output, storage_options)
    _check_not_input(out, source)
    _check_suffix(out)
    tiff = out.suffix.lower() in TIFF_SUFFIXES
    if tiff and resume:
        raise UserError(
            'resume=True needs a zarr output (e.g. output="out.zarr"); TIFF outputs are written at once.'
        )
    if is_remote(out):
        _check_remote(out, tiff=tiff, overwrite=overwrite, resume=resume, expect=expect)
        return out
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
        _check_existing(out, overwrite=overwrite, resume=resume, expect=expect)
    else:
        _probe_writable(parent)
    if tiff and output_kind == "both":
        probs = probs_path(out)
        _check_not_input(probs, source)
        if probs.exists() or probs.is_symlink():
            if not overwrite:
                raise UserError(
                    f'Output {str(probs)!r} (the probabilities of output_kind="both") already exists; pass '
                    "overwrite=True to replace it or choose another output name."
                )
            check_removable(probs)
    return out


def _check_suffix(out) -> None:
    suffix = out.suffix.lower()
    if suffix not in ZARR_SUFFIXES + TIFF_SUFFIXES:
        raise UserError(
            f"Output {str(out)!r} has the extension {out.suffix!r}, which fastunet does not write; write a zarr "
            f"folder ({str(out.with_suffix('.zarr'))!r}) or a TIFF file ({str(out.with_suffix('.tif'))!r})."
        )


def _check_remote(out, *, tiff: bool, overwrite: bool, resume: bool, expect: dict | None) -> None:
    """An output URL: zarr only, never an http(s) URL; an existing one as for local outputs."""
    from .stores import READ_ONLY_PROTOCOLS

    if tiff:
        raise UserError(f"Output {str(out)!r}: TIFF outputs are written to local files; write a zarr output to "
                        f"{str(out.with_suffix('.zarr'))!r} instead.")
    if out.protocol in READ_ONLY_PROTOCOLS:
        raise UserError(f"Output {str(out)!r} is an {out.protocol}:// URL, which is read-only; write to a local "
                        "path or an object store (s3://, gs://).")
    out.fs.invalidate_cache()
    if out.exists():
        _check_existing(out, overwrite=overwrite, resume=resume, expect=expect)
    else:
        _probe_writable(out.parent)


def _check_existing(out: Path, *, overwrite: bool, resume: bool, expect: dict | None) -> None:
    """An output that exists: replaceable (overwrite) or the one to continue (resume)."""
    if not (overwrite or resume):
        raise UserError(
            f"Output {str(out)!r} already exists; pass overwrite=True to replace it or resume=True to "
            "continue an interrupted run."
        )
    if overwrite:
        check_removable(out)
        _probe_writable(out.parent)
        return
    if not out.is_dir() or fastunet_attrs(out) is None:
        raise UserError(
            f"Cannot resume {str(out)!r}: it is not a fastunet output ({_describe(out)}); "
            "choose the output of the interrupted run, or a new path without resume=True."
        )
    if expect:
        _check_expected(out, fastunet_attrs(out), expect)
    _probe_writable(out)


def _check_expected(path: Path, meta: dict, expect: dict) -> None:
    for key, want in jsonable(expect).items():
        if key == "input_id":
            check_input(path, meta, want)
            continue
        if key not in meta:
            raise UserError(
                f"Cannot resume {str(path)!r}: it does not record {key!r}; start over with overwrite=True."
            )
        if meta[key] != want:
            if key == "model":  # a digest of the weights: no parameter to show
                was, now = f"the weights {str(meta[key])[:12]}...", f"the weights {str(want)[:12]}..."
            else:
                name = _PARAMETER_NAMES.get(key, key)
                was, now = f"{name}={_shown(meta[key])}", f"{name}={_shown(want)}"
            raise UserError(
                f"Cannot resume {str(path)!r}: it was created with {was}, this run has {now}; rerun with "
                "the original settings, or start over with overwrite=True."
            )


def _shown(value) -> str:
    """A recorded value as a parameter would be written: strings double-quoted."""
    return f'"{value}"' if isinstance(value, str) else repr(value)


def jsonable(value):
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


# ------------------------------------------------------------------------------ create_output


@dataclass(frozen=True)
class _Plan:
    """What :func:`create_output` writes, decided before anything is written."""

    shape: tuple[int, ...]  # spatial shape of the labels
    chunks: tuple[int, ...]  # spatial chunk shape
    num_classes: int
    zarr_format: int
    arrays: dict  # "labels" / "probs" -> path of the array in the group, or None
    names: list  # dimension names of the spatial axes
    class_name: str  # dimension name of the class axis of probs
    ngff: SpatialMetadata | None  # the input's NGFF axes and transforms (OME-Zarr inputs)
    label_name: str


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
    storage_options: dict | None = None,
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
    storage_options : dict, optional
        Options of a URL's file system (see :func:`fastunet.io.stores.location`).

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
    plan = _plan(source, num_classes, output, chunks, zarr_format, label_name)
    out = location(path, storage_options)
    _check_not_input(out, source)
    input_id = input_fingerprint(source)  # reads a few chunks: fails before anything is written
    if out.exists():
        if not overwrite:
            raise UserError(f"Output {str(out)!r} already exists; pass overwrite=True to replace it.")
        _remove_output(out)
    root_attrs = {"fastunet": _run_record(plan, source, output, input_id, attrs)}
    if plan.ngff and plan.arrays["probs"]:
        root_attrs.update(probs_image_attrs(ngff_version(zarr_format), plan.class_name, plan.ngff))
    try:  # a failure part-way (a full disk) removes the part written: never a stub no run accepts
        root = zarr.open_group(zarr_store(out, read_only=False), mode="w-", zarr_format=zarr_format,
                               attributes=root_attrs)
        if plan.arrays["labels"]:
            where = root
            if plan.ngff:
                where = create_label_groups(root, ngff_version(zarr_format), plan.label_name, plan.ngff,
                                            plan.num_classes, out, source.path)
            _create_array(plan, where, plan.arrays["labels"].rsplit("/", 1)[-1], plan.shape, plan.chunks, "uint8",
                          0, plan.names)
        if plan.arrays["probs"]:
            _create_array(plan, root, "probs", (plan.num_classes, *plan.shape), (1, *plan.chunks), "float16",
                          float("nan"), [plan.class_name, *plan.names])
        root.create_group(DONE_DIR)
    except BaseException:
        _remove_partial(out)
        raise
    return SegmentationStore(out)


def _remove_partial(out) -> None:
    """Remove what a failed :func:`create_output` wrote (it did not exist before)."""
    wait_for_writes()
    try:
        if out.exists():
            remove_tree(out)
    except OSError:
        pass


def _plan(source: VolumeSource, num_classes, output: str, chunks, zarr_format, label_name: str) -> _Plan:
    """Check the parameters of :func:`create_output` and decide its arrays and names."""
    if output not in ("labels", "probs", "both"):
        raise ValueError(f"output must be 'labels', 'probs' or 'both'; got {output!r}.")
    if zarr_format not in (2, 3):
        raise UserError(f"Expected zarr_format=2 or zarr_format=3; got zarr_format={zarr_format!r}.")
    num_classes = int(num_classes)
    if not 1 <= num_classes <= (256 if output != "probs" else 2**31):
        raise ValueError(f"num_classes must be 1..256 for uint8 labels; got {num_classes}.")
    spatial = source.spatial_shape
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != len(spatial) or any(c < 1 for c in chunks):
        raise ValueError(
            f"chunks must be {len(spatial)} positive ints for spatial shape {spatial}; got {chunks}."
        )
    names = [a.lower() for a in source.spatial_axes]
    ngff = None
    if source.kind == "ome-zarr":
        ngff = spatial_metadata(source.ome, source.native_axes or source.axes, source.spatial_axes)
        names = [str(a.get("name", n)) for a, n in zip(ngff.axes, names)]
    arrays = {
        "labels": (label_path(label_name) if ngff else "labels") if output in ("labels", "both") else None,
        "probs": "probs" if output in ("probs", "both") else None,
    }
    return _Plan(shape=spatial, chunks=chunks, num_classes=num_classes, zarr_format=zarr_format, arrays=arrays,
                 names=names, class_name="c" if "c" not in names else "class", ngff=ngff, label_name=label_name)


def _run_record(plan: _Plan, source: VolumeSource, output: str, input_id: dict, attrs: dict | None) -> dict:
    """``attrs["fastunet"]`` of a new output: the caller's entries, then the run's."""
    from .. import __version__

    return jsonable(
        {
            **(attrs or {}),
            "version": __version__,
            "complete": False,
            "input": source.path,
            "input_kind": source.kind,
            "input_key": source.key,
            "input_id": input_id,
            "axes": source.axes,
            "shape": list(plan.shape),
            "output": output,
            "num_classes": plan.num_classes,
            "chunks": list(plan.chunks),
            "zarr_format": plan.zarr_format,
            "arrays": plan.arrays,
        }
    )


def _create_array(plan: _Plan, where: zarr.Group, name: str, shape, chunks, dtype, fill, dims) -> zarr.Array:
    """An array with dimension names: ``dimension_names`` on zarr v3, xarray's
    ``_ARRAY_DIMENSIONS`` attribute on v2."""
    kw = {"dimension_names": dims} if plan.zarr_format == 3 else {"attributes": {"_ARRAY_DIMENSIONS": dims}}
    return where.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, **kw)


def discard_output(path, *, storage_options: dict | None = None) -> None:
    """Remove an output that this run created and that holds no finished block (a run that
    failed before its first block); refuses anything that is not a fastunet output.

    Waits first until no write of this process to a store is in flight (zarr writes a
    block's chunks concurrently and one failing chunk raises while others still write), so a
    late write cannot recreate part of the removed output."""
    out = location(path, storage_options)
    wait_for_writes()
    if out.exists():
        _remove_output(out)


# ------------------------------------------------------------------------- resume and records


def open_output(path, *, expect: dict, storage_options: dict | None = None) -> "SegmentationStore":
    """Reopen an existing fastunet output read-write, for ``resume=True``.

    Parameters
    ----------
    path : str or path-like
    expect : dict
        Entries that must equal the recorded ones in ``attrs["fastunet"]``, e.g.
        ``{"shape": (64, 64), "output": "labels", "num_classes": 2, "chunks": (32, 32)}``.
    storage_options : dict, optional
        Options of a URL's file system (see :func:`fastunet.io.stores.location`).

    Returns
    -------
    SegmentationStore

    Raises
    ------
    UserError
        Missing, not a fastunet output, or created with other parameters.
    """
    out = location(path, storage_options)
    if not out.is_dir():
        raise UserError(f"Cannot resume {str(out)!r}: it does not exist (or is not a zarr folder).")
    meta = fastunet_attrs(out)
    if meta is None:
        raise UserError(
            f"Cannot resume {str(out)!r}: it is not a fastunet output ({_describe(out)}); choose the "
            "output of the interrupted run."
        )
    _check_expected(out, meta, expect or {})
    return SegmentationStore(out)


class SegmentationStore:
    """A fastunet output: the zarr arrays plus the run's bookkeeping.

    Picklable: a worker process reopens it from its path (or URL, with its storage options).
    The block records are empty keys ``_fastunet_done/<block>.done`` written through the
    store's file system (fsspec): no rename, no listing of the arrays.

    Attributes
    ----------
    path : Path or upath.UPath
    labels : zarr.Array or None
        uint8 labels, shape ``(Z,) Y, X``.
    probs : zarr.Array or None
        float16 class probabilities, shape ``(K, (Z,) Y, X)``.
    """

    def __init__(self, path, *, mode: str = "r+"):
        self.path = location(path, resolve=False)
        self._mode = mode
        try:
            root = zarr.open_group(zarr_store(self.path, read_only=mode == "r"), mode=mode)
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
                "stopped while creating it; start over with overwrite=True."
            ) from None
        self._done_dir = self.path / DONE_DIR

    def __reduce__(self):
        return (_reopen_store, (self.path, self._mode))

    def __repr__(self) -> str:
        return f"SegmentationStore({str(self.path)!r}, complete={self.complete})"

    @property
    def attrs(self) -> dict:
        """``attrs["fastunet"]`` as stored now (read afresh)."""
        return dict(zarr.open_group(zarr_store(self.path, read_only=True), mode="r").attrs["fastunet"])

    @property
    def complete(self) -> bool:
        """True once :meth:`mark_complete` ran (read afresh from the store)."""
        return bool(self.attrs.get("complete"))

    def mark_done(self, block: str) -> None:
        """Record that ``block`` is finished; call AFTER its chunks are written.

        One empty key per block (an object-store PUT, or an empty file), so any number of
        processes may record blocks at the same time; transient errors are retried, a full
        disk or a refused write is one :class:`UserError` line.
        """
        fs, root = filesystem(self._done_dir)
        key = f"{root}/{quote(str(block), safe='')}{_DONE_SUFFIX}"
        try:
            retry_call(lambda: fs.pipe_file(key, b""), what=f"recording block {block} in {self.path}")
        except OSError as exc:
            if is_permanent(exc):
                raise storage_error(exc, writing=True, where=str(self.path), key=f"{DONE_DIR}/{block}") from exc
            raise

    def done(self) -> set[str]:
        """Names of the blocks recorded by :meth:`mark_done` (one listing of the records)."""
        fs, root = filesystem(self._done_dir)
        fs.invalidate_cache(root)
        try:
            entries = retry_call(lambda: fs.ls(root, detail=False), what=f"listing the records of {self.path}")
        except FileNotFoundError:
            return set()
        names = (str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return {unquote(e[: -len(_DONE_SUFFIX)]) for e in names if e.endswith(_DONE_SUFFIX)}

    def mark_complete(self, summary: dict) -> None:
        """Mark the output complete (``attrs["fastunet"]["complete"] = True`` and ``summary``)
        and remove the per-block records."""
        root = zarr.open_group(zarr_store(self.path, read_only=False), mode="r+")
        meta = dict(root.attrs["fastunet"])
        meta.update(complete=True, summary=jsonable(summary))
        root.attrs["fastunet"] = meta
        fs, done = filesystem(self._done_dir)
        try:
            fs.rm(done, recursive=True)
        except OSError:
            pass


def _reopen_store(path, mode: str) -> SegmentationStore:
    return SegmentationStore(path, mode=mode)
