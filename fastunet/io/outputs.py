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

import re
from pathlib import Path

import tifffile
import zarr

from ..errors import UserError
from ..paths import check_output_file, check_writable_folder, special_kind
from .fingerprint import check_input, input_fingerprint, write_files_record
from .inputs import DONE_DIR, VolumeSource, is_tiff_file
from .ome import LABEL_NAME, list_label, ngff_version
from .output_layout import LAYOUT_VERSION, OutputPlan, create_arrays, is_ome_name, plan_output
from .retry import wait_for_writes
from .store import SegmentationStore, jsonable
from .stores import is_remote, listdir, location, remote_errors, remove_tree, zarr_store

__all__ = [
    "check_label_name",
    "check_output",
    "create_output",
    "discard_output",
    "open_output",
    "TIFF_SUFFIXES",
]

TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIXES = ("", ".zarr")  # a zarr folder: out.zarr, out.ome.zarr, or a name without extension
_DONE_SUFFIX = ".done"
# Recorded entries that a caller passes under another name (segment's output_kind).
_PARAMETER_NAMES = {"output": "output_kind"}


# ------------------------------------------------------------------------- probing and removal


def kind_path(path: Path, kind: str) -> Path:
    """Where a TIFF output writes a kind other than its first: ``<stem>_<kind>.tif``
    (``<stem>_probs.ome.tif`` beside ``<stem>.ome.tif``)."""
    name = path.name
    suffix = next((s for s in (".ome.tiff", ".ome.tif") if name.lower().endswith(s)), path.suffix or ".tif")
    return path.with_name(f"{name[: len(name) - len(suffix)] if name.lower().endswith(suffix) else path.stem}"
                          f"_{kind}{suffix}")


def probs_path(path: Path) -> Path:
    """Where a TIFF output writes the probabilities when it writes labels too: ``<stem>_probs.tif``."""
    return kind_path(path, "probs")


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
                software = str(tif.pages.first.software or "")
                if software.startswith("fastunet "):  # ImageJ and OME-TIFF outputs: the Software tag
                    return {"software": software}
            return None
        meta = zarr.open_group(zarr_store(path, read_only=True, retry=False), mode="r").attrs.get("fastunet")
        return meta if isinstance(meta, dict) else None
    except Exception:
        return None


def _describe(path: Path) -> str:
    if path.is_file():
        return f"a file of {path.stat().st_size} bytes"
    if not is_remote(path) and not path.is_dir():
        return special_kind(path) or "a special file"
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
    try:
        remove_tree(path)
    except OSError as exc:  # a file inside it we may not delete: say so, nothing else is touched
        raise UserError(f"Cannot replace the output {str(path)!r} ({exc.strerror or exc}: "
                        f"{getattr(exc, 'filename', None) or path}); make it writable, or choose another output "
                        "path.") from None


def labels_of_input(out: Path, source: VolumeSource | None) -> bool:
    """Is ``out`` a label image in the OME-Zarr input's own labels group (``<input>/labels/<name>``)?"""
    if source is None or source.kind != "ome-zarr" or not source.path:
        return False
    out = Path(out).expanduser().resolve()
    if out.suffix.lower() in TIFF_SUFFIXES or out.name.startswith("."):
        return False
    return out.parent == Path(source.path).expanduser().resolve() / "labels"


_LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_label_name(name) -> str:
    """A label image's name under ``labels/``: a plain name (letters, digits, ``.``, ``_``, ``-``)."""
    if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name) or name == "labels" or ".." in name:
        raise UserError(f'label_name= expects a plain name such as "nuclei" (letters, digits, ".", "_", "-"); '
                        f"got {name!r}.")
    return name


def _input_location(source: VolumeSource | None):
    if source is None or not source.path:
        return None
    return location(source.path, source.storage_options, what="source")


def _check_not_input(out: Path, source: VolumeSource | None, *, into_input: bool = False, protected=()) -> None:
    """The input is never written (:func:`fastunet.paths.check_output_file`'s first rule); the
    one exception is ``into_input``: a label image at ``<OME-Zarr input>/labels/<name>``."""
    inp = _input_location(source)
    check_output_file(out, what="output", folder=True, inputs=[inp, *protected], own=True,
                      exempt=out if into_input and labels_of_input(out, source) else None,
                      input_hint=_input_hint(source, inp), make_parents=True)


def _input_hint(source: VolumeSource | None, inp) -> str:
    """How to write into an OME-Zarr input after all: its labels group."""
    if inp is None or source.kind != "ome-zarr":
        return ""
    return f" (a label image may go into its labels group: {str(inp / 'labels' / 'NAME')!r})"


# ------------------------------------------------------------------------------- check_output


def check_output(
    output,
    *,
    source: VolumeSource | None,
    overwrite: bool,
    resume: bool,
    expect: dict | None = None,
    output_kind: str | None = None,
    into_input: bool = False,
    storage_options: dict | None = None,
    label_name: str | None = None,
    protected=(),
) -> Path:
    """Check an output location before anything is computed; return its resolved path.

    The checks are :func:`fastunet.paths.check_output_file`'s, the rule of every file a
    command writes; this adds what only segmentation outputs need (their formats, resume).

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
    output_kind : str, optional
        For a TIFF output, a label kind with ``probs`` also writes ``<stem>_probs.tif`` (see
        :func:`~fastunet.io.tiff.write_tiff`): that file is checked too.
    into_input : bool
        ``output`` is a label image in the OME-Zarr input's own labels group
        (``<input>/labels/<name>``), the one place inside an input that may be written.
    storage_options : dict, optional
        Options of a URL's file system (see :func:`fastunet.io.stores.location`).
    label_name : str, optional
        The label image's name in an OME-Zarr output: a plain name.
    protected : sequence, optional
        Other files the run must never write (the model file, the other inputs of a batch).

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
    if label_name is not None:
        check_label_name(label_name)
    if into_input and labels_of_input(out, source):
        check_label_name(out.name)
    _check_suffix(out)
    tiff = out.suffix.lower() in TIFF_SUFFIXES
    if tiff and resume:
        raise UserError(
            'resume=True needs a zarr output (e.g. output="out.zarr"); TIFF outputs are written at once.'
        )
    if is_remote(out):
        _check_remote(out, tiff=tiff)
    with remote_errors(out, writing=True):
        if is_remote(out):
            out.fs.invalidate_cache()
        own = resume and out.exists()
        if own and (not out.is_dir() or fastunet_attrs(out) is None):
            raise UserError(
                f"Cannot resume {str(out)!r}: it is not a fastunet output ({_describe(out)}); "
                "choose the output of the interrupted run, or a new path without resume=True."
            )
        inp = _input_location(source)
        check_output_file(out, what="output", folder=not tiff, inputs=[inp, *protected], overwrite=overwrite,
                          own=own, replaceable=check_removable, resumable=not tiff, make_parents=into_input,
                          exempt=out if into_input and labels_of_input(out, source) else None,
                          input_hint=_input_hint(source, inp))
        if own:
            if expect:
                _check_expected(out, fastunet_attrs(out), expect, source=source)
            check_writable_folder(out, what="output")
    for kind, extra in (tiff_paths(out, output_kind) if tiff else {}).items():
        if extra != out:
            check_output_file(extra, what=f"output {extra.name!r} (the {kind} written beside {out.name})",
                              inputs=[inp, *protected], overwrite=overwrite, replaceable=check_removable)
    return out


def tiff_paths(path: Path, output_kind) -> dict:
    """The files of a TIFF output: the first kind (instances, labels, probs) at ``path``, each
    further one at ``<stem>_<kind>.tif`` beside it."""
    if output_kind is None:
        return {}
    if isinstance(output_kind, str):
        kinds = ["labels", "probs"] if output_kind == "both" else [k.strip() for k in output_kind.split(",")]
    else:
        kinds = list(output_kind)
    ordered = [k for k in ("instances", "labels", "probs") if k in kinds]
    return {k: path if i == 0 else kind_path(path, k) for i, k in enumerate(ordered)}


def _check_suffix(out) -> None:
    suffix = out.suffix.lower()
    if suffix not in ZARR_SUFFIXES + TIFF_SUFFIXES:
        raise UserError(
            f"Output {str(out)!r} has the extension {out.suffix!r}, which fastunet does not write; write a zarr "
            f"folder ({str(out.with_suffix('.zarr'))!r}) or a TIFF file ({str(out.with_suffix('.tif'))!r})."
        )


def _check_remote(out, *, tiff: bool) -> None:
    """An output URL: zarr only, never an http(s) URL."""
    from .stores import READ_ONLY_PROTOCOLS

    if tiff:
        raise UserError(f"Output {str(out)!r}: TIFF outputs are written to local files; write a zarr output to "
                        f"{str(out.with_suffix('.zarr'))!r} instead.")
    if out.protocol in READ_ONLY_PROTOCOLS:
        raise UserError(f"Output {str(out)!r} is an {out.protocol}:// URL, which is read-only; write to a local "
                        "path or an object store (s3://, gs://).")


def _check_expected(path: Path, meta: dict, expect: dict, source: VolumeSource | None = None) -> None:
    for key, want in jsonable(expect).items():
        if key == "input_id":
            check_input(path, meta, want, source=source)
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


def create_output(
    path,
    *,
    source: VolumeSource,
    num_classes: int,
    output,
    chunks: tuple[int, ...],
    zarr_format: int | None = None,
    overwrite: bool = False,
    attrs: dict | None = None,
    label_name: str = LABEL_NAME,
    block: tuple[int, ...] | None = None,
    ome: bool | None = None,
    into_input: bool = False,
    storage_options: dict | None = None,
) -> "SegmentationStore":
    """Create the output zarr group for a segmentation of ``source``.

    Parameters
    ----------
    path : str or path-like
        The zarr folder to create (checked with :func:`check_output` first); with
        ``into_input``, ``<OME-Zarr input>/labels/<name>``.
    source : VolumeSource
        The input; its spatial shape is the outputs' shape.
    num_classes : int
        Number of classes K of the model (2 to 256 with labels).
    output : str or tuple of str
        The kinds (see :mod:`fastunet.kinds`): ``instances`` (uint32 object ids), ``labels``
        (uint8), ``probs`` (float16, ``(K, ...)``, chunks ``(1, *chunks)``, NaN where nothing
        was written), ``"both"`` (labels and probs) or several.
    chunks : tuple of int
        Spatial chunk shape ``((Z,) Y, X)``.
    zarr_format : {3, 2}, optional
        Default: the OME-Zarr input's format, else 3.
    overwrite : bool
        Remove an existing fastunet output (or empty folder) at ``path`` first; anything
        else there is refused.
    attrs : dict, optional
        Extra JSON entries for ``attrs["fastunet"]`` (e.g. model, tile, device).
    label_name : str
        Name of the label image under ``labels/`` of OME-Zarr outputs.
    block : tuple of int, optional
        The engine's block shape (a multiple of the chunks and of the pyramid's factors);
        the chunks of the downsampled levels divide it (default: ``chunks``).
    ome : bool, optional
        Write an OME-Zarr image (default: for OME-Zarr inputs and ``*.ome.zarr`` outputs).
    into_input : bool
        Write one label image into the OME-Zarr input's own ``labels`` group (``path`` is
        ``<input>/labels/<name>``); nothing else of the input is written.
    storage_options : dict, optional
        Options of a URL's file system (see :func:`fastunet.io.stores.location`).

    ``attrs["fastunet"]["input_id"]`` records :func:`input_fingerprint` of ``source``.

    Returns
    -------
    SegmentationStore

    Notes
    -----
    The layouts (plain, OME-Zarr image, into the input) are described in
    :mod:`fastunet.io.output_layout`; ``attrs["fastunet"]`` records ``layout`` (2), the
    arrays of each kind (``arrays``: level 0, ``levels``: the others with their factors) so
    that a resumed run finds them. Open ``<out>/labels/<label_name>`` in napari
    (napari-ome-zarr) to see the labels over the input image.
    """
    from ..kinds import kinds_record, parse_kinds

    kinds = parse_kinds(output, int(num_classes))
    out = location(path, storage_options)
    mode, zarr_format = _output_mode(out, source, ome, into_input, zarr_format)
    _check_plan_args(source, num_classes, kinds, chunks, zarr_format)
    chunks = tuple(int(c) for c in chunks)
    block = tuple(int(b) for b in (block or chunks))
    plan = plan_output(source, kinds=kinds, num_classes=int(num_classes), chunks=chunks, block=block,
                       zarr_format=zarr_format, mode=mode, label_name=out.name if mode == "into" else label_name,
                       output=out)
    _check_not_input(out, source, into_input=mode == "into")
    input_id = input_fingerprint(source)  # reads a few chunks: fails before anything is written
    if out.exists():
        if not overwrite:
            raise UserError(f"Output {str(out)!r} already exists; pass overwrite=True to replace it.")
        _remove_output(out)
    record = _run_record(plan, source, kinds_record(kinds), input_id, attrs)
    if mode == "into":
        labels = zarr.open_group(zarr_store(out.parent, read_only=False), mode="a", zarr_format=zarr_format)
        list_label(labels, plan.version, out.name)
    try:  # a failure part-way (a full disk) removes the part written: never a stub no run accepts
        root = zarr.open_group(zarr_store(out, read_only=False), mode="w-", zarr_format=zarr_format,
                               attributes={"fastunet": record})
        arrays, levels = create_arrays(plan, root)
        root.attrs["fastunet"] = {**record, "arrays": arrays, "levels": levels}
        root.create_group(DONE_DIR)
        write_files_record(out, source)  # so that a refused resume names the chunks that changed
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


def _output_mode(out, source: VolumeSource, ome, into_input: bool, zarr_format) -> tuple[str, int]:
    """The layout ("plain", "ome" or "into") and zarr format of an output."""
    native = None
    if source.kind == "ome-zarr" and source.path:
        native = zarr.open_group(zarr_store(location(source.path, source.storage_options), read_only=True),
                                 mode="r").metadata.zarr_format
    if into_input:
        if not labels_of_input(out, source):
            raise UserError(
                f"into_input=True writes a label image into an OME-Zarr input's labels group, at "
                f"<input>/labels/<name>; {str(out)!r} is not such a place: choose a separate output instead."
            )
        if zarr_format is not None and zarr_format != native:
            raise UserError(
                f"The input is zarr v{native}; its labels must be too: leave zarr_format out (got zarr_format="
                f"{zarr_format})."
            )
        return "into", native
    mode = "ome" if (ome if ome is not None else (native is not None or is_ome_name(out))) else "plain"
    return mode, zarr_format if zarr_format is not None else (native or 3)


def _check_plan_args(source: VolumeSource, num_classes, kinds, chunks, zarr_format) -> None:
    """Check the parameters of :func:`create_output`."""
    if zarr_format not in (2, 3):
        raise UserError(f"Expected zarr_format=2 or zarr_format=3; got zarr_format={zarr_format!r}.")
    num_classes = int(num_classes)
    if not 1 <= num_classes <= (256 if "labels" in kinds else 2**31):
        raise ValueError(f"num_classes must be 1..256 for uint8 labels; got {num_classes}.")
    spatial = source.spatial_shape
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != len(spatial) or any(c < 1 for c in chunks):
        raise ValueError(
            f"chunks must be {len(spatial)} positive ints for spatial shape {spatial}; got {chunks}."
        )


def _run_record(plan: OutputPlan, source: VolumeSource, output: str, input_id: dict, attrs: dict | None) -> dict:
    """``attrs["fastunet"]`` of a new output: the caller's entries, then the run's (with the
    input's pixel size, and a time series' number of time points)."""
    from .. import __version__
    from .physical import pixel_size

    px = pixel_size(source)
    extra = {"timepoints": source.timepoints, "time_points": {}} if source.timepoints > 1 else {}
    return jsonable(
        {
            **(attrs or {}),
            "version": __version__,
            "layout": LAYOUT_VERSION,
            "mode": plan.mode,
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
            "pixel_size": {"axes": px.axes, "size": list(px.size), "unit": list(px.unit)},
            "arrays": {},
            **extra,
        }
    )


def discard_output(path, *, storage_options: dict | None = None) -> None:
    """Remove an output that this run created and that holds no finished block (a run that
    failed before its first block); refuses anything that is not a fastunet output.

    Waits first until no write of this process to a store is in flight (zarr writes a
    block's chunks concurrently and one failing chunk raises while others still write), so a
    late write cannot recreate part of the removed output."""
    out = location(path, storage_options)
    wait_for_writes()
    if out.exists():
        meta = fastunet_attrs(out) or {}
        _remove_output(out)
        if meta.get("mode") == "into":  # a label image in the input's labels group: unlist it
            labels = zarr.open_group(str(out.parent), mode="r+")
            list_label(labels, ngff_version(labels.metadata.zarr_format), out.name, remove=True)


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
