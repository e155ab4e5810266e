"""Segmentation outputs: checking a location (:func:`check_output`), creating
(:func:`create_output`), reopening (:func:`open_output`) and removing (:func:`discard_output`)
a zarr output, and the run's records in it (:class:`SegmentationStore`).

An output is a zarr group (v3 by default, v2 on request) holding ``labels`` (uint8) and/or
``probs`` (float16, ``(K, ...)``) with ``attrs["fastunet"]`` describing the run; for an
OME-Zarr input the labels follow the NGFF image-label layout (``labels/segmentation/0``, see
:mod:`fastunet.io.ome`). Finished blocks are recorded by :meth:`SegmentationStore.mark_done`
(one file per block under ``_fastunet_done/``, written atomically) so a killed run can be
resumed; ``attrs["fastunet"]["input_id"]`` (:func:`~fastunet.io.fingerprint.input_fingerprint`)
records which input it was made from, so a resume on another input is refused.

Only fastunet outputs and empty folders are ever replaced or removed; the input is never
written.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import tifffile
import zarr

from ..errors import UserError
from .fingerprint import check_input, input_fingerprint
from .inputs import DONE_DIR, VolumeSource, is_tiff_file
from .ome import LABEL_NAME, list_label, ngff_version
from .output_layout import LAYOUT_VERSION, OutputPlan, create_arrays, is_ome_name, plan_output
from .pyramid import write_region

__all__ = [
    "check_output",
    "create_output",
    "discard_output",
    "open_output",
    "SegmentationStore",
    "TIFF_SUFFIXES",
]

TIFF_SUFFIXES = (".tif", ".tiff")
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


def labels_of_input(out: Path, source: VolumeSource | None) -> bool:
    """Is ``out`` a label image in the OME-Zarr input's own labels group (``<input>/labels/<name>``)?"""
    if source is None or source.kind != "ome-zarr" or not source.path:
        return False
    out = Path(out).expanduser().resolve()
    if out.suffix.lower() in TIFF_SUFFIXES or out.name.startswith("."):
        return False
    return out.parent == Path(source.path).expanduser().resolve() / "labels"


def _check_not_input(out: Path, source: VolumeSource | None, *, into_input: bool = False) -> None:
    """The input is never written; the one exception is ``into_input``: a label image at
    ``<OME-Zarr input>/labels/<name>``, and nothing else inside the input."""
    if source is None or not source.path:
        return
    inp = Path(source.path).expanduser().resolve()
    if into_input and labels_of_input(out, source):
        return
    if _inside(out, inp):
        hint = ""
        if source.kind == "ome-zarr" and out != inp:
            hint = f" (a label image may go into its labels group: {str(inp / 'labels' / 'NAME')!r})"
        raise UserError(
            f"Output {str(out)!r} is {'the input' if out == inp else 'inside the input'} "
            f"{str(inp)!r}; the input is never written{hint}: choose an output path outside it."
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
    into_input: bool = False,
) -> Path:
    """Check an output location before anything is computed; return its resolved path.

    Parameters
    ----------
    output : str or path-like
        A zarr folder (e.g. ``out.zarr``) or a ``.tif``/``.tiff`` file.
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

    Returns
    -------
    Path

    Raises
    ------
    UserError
        Output is or is inside the input; exists without overwrite/resume; would replace
        something that is not a fastunet output; parent folder missing, not a folder or not
        writable; resume of a non-fastunet or mismatching output. Never deletes anything.
    """
    if overwrite and resume:
        raise UserError("overwrite=True and resume=True contradict each other; pass one of them.")
    out = Path(output).expanduser().resolve()
    _check_not_input(out, source, into_input=into_input)
    tiff = out.suffix.lower() in TIFF_SUFFIXES
    if tiff and resume:
        raise UserError(
            'resume=True needs a zarr output (e.g. output="out.zarr"); TIFF outputs are written at once.'
        )
    parent = out.parent
    if into_input and not parent.exists():  # the input's labels group is created with the label image
        parent = parent.parent
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
    for kind, extra in (tiff_paths(out, output_kind) if tiff else {}).items():
        if extra == out:
            continue
        _check_not_input(extra, source)
        if extra.exists() or extra.is_symlink():
            if not overwrite:
                raise UserError(
                    f"Output {str(extra)!r} (the {kind} written beside {out.name}) already exists; pass "
                    "overwrite=True to replace it or choose another output name."
                )
            check_removable(extra)
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
    out = Path(path).expanduser().resolve()
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
        labels = zarr.open_group(str(out.parent), mode="a", zarr_format=zarr_format)
        list_label(labels, plan.version, out.name)
    root = zarr.open_group(str(out), mode="w-", zarr_format=zarr_format, attributes={"fastunet": record})
    arrays, levels = create_arrays(plan, root)
    root.attrs["fastunet"] = {**record, "arrays": arrays, "levels": levels}
    root.create_group(DONE_DIR)
    return SegmentationStore(out)


def _output_mode(out: Path, source: VolumeSource, ome, into_input: bool, zarr_format) -> tuple[str, int]:
    """The layout ("plain", "ome" or "into") and zarr format of an output."""
    native = None
    if source.kind == "ome-zarr" and source.path:
        native = zarr.open_group(source.path, mode="r").metadata.zarr_format
    if into_input:
        if source.kind != "ome-zarr" or not source.path or out.parent != Path(source.path).resolve() / "labels":
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
    """``attrs["fastunet"]`` of a new output: the caller's entries, then the run's."""
    from .. import __version__

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
            "arrays": {},
        }
    )


def discard_output(path) -> None:
    """Remove an output that this run created and that holds no finished block (a run that
    failed before its first block); refuses anything that is not a fastunet output."""
    out = Path(path).expanduser().resolve()
    if out.exists():
        meta = fastunet_attrs(out) or {}
        _remove_output(out)
        if meta.get("mode") == "into":  # a label image in the input's labels group: unlist it
            labels = zarr.open_group(str(out.parent), mode="r+")
            list_label(labels, ngff_version(labels.metadata.zarr_format), out.name, remove=True)


# ------------------------------------------------------------------------- resume and records


def open_output(path, *, expect: dict) -> "SegmentationStore":
    """Reopen an existing fastunet output read-write, for ``resume=True``.

    Parameters
    ----------
    path : str or path-like
    expect : dict
        Entries that must equal the recorded ones in ``attrs["fastunet"]``, e.g.
        ``{"shape": (64, 64), "output": "labels", "num_classes": 2, "chunks": (32, 32)}``.

    Returns
    -------
    SegmentationStore

    Raises
    ------
    UserError
        Missing, not a fastunet output, or created with other parameters.
    """
    out = Path(path).expanduser().resolve()
    if not out.is_dir():
        raise UserError(f"Cannot resume {str(out)!r}: it does not exist (or is not a zarr folder).")
    meta = fastunet_attrs(out)
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
    instances : zarr.Array or None
        uint32 (or uint64) object ids, shape ``(Z,) Y, X``.
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
        if int(meta.get("layout", 1)) > LAYOUT_VERSION:
            raise UserError(f"{str(self.path)!r} was written by a newer fastunet (output layout {meta['layout']}); "
                            "update fastunet to resume or read it.")
        try:
            if not arrays:
                raise KeyError("(none recorded)")
            self.instances = root[arrays["instances"]] if arrays.get("instances") else None
            self.labels = root[arrays["labels"]] if arrays.get("labels") else None
            self.probs = root[arrays["probs"]] if arrays.get("probs") else None
            self.levels = {kind: [(root[p], tuple(f)) for p, f in entries]
                           for kind, entries in (meta.get("levels") or {}).items()}
        except KeyError as exc:  # a run that died while creating the output
            raise UserError(
                f"{str(self.path)!r} is an unfinished fastunet output without its array {exc}: its run "
                "stopped while creating it; start over with overwrite=True."
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

    def write(self, kind: str, region: tuple[slice, ...], data) -> None:
        """Write a block of ``kind`` at the spatial ``region``, and its share of every
        resolution level (:func:`fastunet.io.pyramid.write_region`)."""
        level0 = {"instances": self.instances, "labels": self.labels, "probs": self.probs}[kind]
        write_region([(level0, (1,) * len(region)), *self.levels.get(kind, [])], region, data)

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
        meta.update(complete=True, summary=jsonable(summary))
        root.attrs["fastunet"] = meta
        shutil.rmtree(self._done_dir, ignore_errors=True)


def _reopen_store(path: str, mode: str) -> SegmentationStore:
    return SegmentationStore(path, mode=mode)
