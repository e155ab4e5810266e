"""The one rule for every file and folder a command writes, checked before its work starts.

:func:`check_output_file` is that rule. Every output of every command goes through it before
the first image is read: ``segment``'s zarr and TIFF outputs (:func:`fastunet.io.check_output`
adds what only they need: resume records, the OME-Zarr labels group), the ``--json`` reports
and ``--log-file`` logs of every command (:mod:`fastunet.cli.files`), ``train``'s model,
checkpoint, curve and weight figure, ``evaluate``'s preview, ``demo``'s folder and ``bench``'s
results folder. It says, in one line naming the path and the fix, that a file is refused when

* it is an input or the model, inside one, or holds one (inputs are never written);
* it is a device file, a named pipe or a socket;
* it is a folder where a file goes, or has the wrong extension;
* it is another output of the same command (a report onto the segmentation);
* its folder is missing (or, for ``make_parents``, no folder on its way can be made), not a
  folder, or refuses writes;
* it exists and the command did not make it: an existing file or folder is replaced only with
  ``overwrite=True`` (and then only what ``replaceable`` accepts: a fastunet output, an empty
  folder, a regular file), or continued when the caller knows it is its own (``own``: the
  output of the run being resumed, a fastunet log appended to).

:func:`atomic_path` writes a file under a temporary name renamed into place, so that an
interrupted write leaves no half file; :func:`remove_partial_files` removes the temporary
files of an immediate exit (a second Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import uuid
from pathlib import Path

from .errors import UserError

__all__ = ["check_output_file", "check_writable_folder", "input_paths", "special_kind", "inside",
           "check_readable_input", "atomic_path", "remove_partial_files"]


def input_paths(*inputs) -> list[Path]:
    """The local paths among ``inputs`` (paths, lists of paths, arrays...), resolved."""
    paths = []
    for item in inputs:
        if isinstance(item, (list, tuple)):
            paths += input_paths(*item)
        elif isinstance(item, (str, os.PathLike)) and "://" not in os.fspath(item):
            paths.append(Path(item).expanduser().resolve())
    return paths


def _is_local(path) -> bool:
    return isinstance(path, Path)


def inside(a, b) -> bool:
    """Is the location ``a`` equal to ``b`` or inside it? (local paths, or URLs as strings)"""
    if not (_is_local(a) and _is_local(b)):
        a, b = str(a).rstrip("/"), str(b).rstrip("/")
        return a == b or a.startswith(b + "/")
    return a == b or b in a.parents


def special_kind(path) -> str | None:
    """What a local path that exists is, when it is neither a regular file nor a folder: "a
    device file", "a named pipe", "a socket", "a link to nothing"; None otherwise."""
    if not _is_local(path):
        return None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a link to nothing" if os.path.islink(path) else None
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file"
    return "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a special file"


def check_readable_input(path: Path, what: str = "input") -> None:
    """Raise :class:`UserError` for a local input that is a device file, a named pipe or a
    socket, or that this process may not read (named as such, not as a wrong format)."""
    kind = special_kind(path)
    if kind is not None:
        raise UserError(f"The {what} {str(path)!r} is {kind}, not an image; pass a zarr store or a TIFF file.")
    if not os.access(path, os.R_OK) or (path.is_dir() and not os.access(path, os.X_OK)):
        raise UserError(f"The {what} {str(path)!r} cannot be read (permission denied); make it readable "
                        f"(chmod u+r{'x' if path.is_dir() else ''}) or run as its owner.")


def _probe(folder) -> None:
    """Create and remove an empty file in ``folder``; OSError when it refuses writes."""
    probe = folder / f".fastunet-probe-{os.getpid()}-{uuid.uuid4().hex}"
    if _is_local(folder):
        probe.write_bytes(b"")
        probe.unlink()
    else:
        probe.fs.pipe_file(probe.path, b"")
        probe.fs.rm_file(probe.path)


def check_writable_folder(folder, *, what: str, make: bool = False) -> None:
    """Raise :class:`UserError` unless ``folder`` exists, is a folder and takes a new file.

    With ``make``, a missing folder is fine when the nearest folder on its way exists and
    takes writes (it is made later, once the run is accepted)."""
    if make and _is_local(folder):
        while not folder.exists() and folder.parent != folder:
            if folder.is_symlink():
                break
            folder = folder.parent
    if _is_local(folder) and not folder.exists():
        raise UserError(f"The folder of the {what}, {str(folder)!r}, does not exist; create it first or choose "
                        "another path.")
    if _is_local(folder) and not folder.is_dir():
        raise UserError(f"The {what}'s parent {str(folder)!r} is not a folder; choose another path.")
    try:
        _probe(folder)
    except OSError as exc:
        raise UserError(f"Cannot write to {str(folder)!r} ({exc.strerror or exc}); choose a writable place for the "
                        f"{what}.") from None


def _location(path):
    if _is_local(path):
        return path.expanduser().resolve()
    if type(path).__module__.startswith("upath"):
        return path
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"{path!r} is no file path")
    return Path(path).expanduser().resolve()


def _check_protected(out, protected: list[tuple[str, object]], what: str, shown: str, exempt, hint: str) -> None:
    for label, p in protected:
        if exempt is not None and out == exempt:
            continue
        if inside(out, p):
            relation = "is" if out == p else "is inside"
            extra = hint if out != p else ""
            raise UserError(f"The {what} {shown!r} {relation} the {label} {str(p)!r}; the {label} is never "
                            f"written{extra}: choose another path.")
        if inside(p, out):
            raise UserError(f"The {what} {shown!r} contains the {label} {str(p)!r}; writing there (or overwrite=True) "
                            "could destroy it: choose another path.")


def _default_replaceable(out) -> None:
    """What ``overwrite=True`` replaces by default: a file, or an empty folder."""
    if _is_local(out) and out.is_dir() and any(out.iterdir()):
        raise UserError(f"{str(out)!r} is a folder that is not empty; overwrite=True never removes other data: "
                        "choose another path or empty it yourself.")


def check_output_file(path, *, what: str, suffixes: tuple[str, ...] | None = None, inputs=(), model=None,
                      others: dict | None = None, overwrite: bool = False, own: bool = False, folder: bool = False,
                      replaceable=None, make_parents: bool = False, resumable: bool = False, exempt=None,
                      input_hint: str = "", within=None) -> Path:
    """Check a file (or folder) a command will write, before its work starts; return its
    resolved location (a :class:`~pathlib.Path`, or the :class:`upath.UPath` given).

    Parameters
    ----------
    path : str, path-like or upath.UPath
        The file or folder.
    what : str
        Its name in messages, as the caller knows it (``"curve="``, ``"model file"``, ``"--json file"``).
    suffixes : tuple of str, optional
        Accepted extensions (lower case, e.g. ``(".png",)``); None: any.
    inputs : sequence
        The command's inputs (paths, locations, lists of them; arrays are ignored): the file
        is none of them, not inside one and holds none.
    model : path-like, optional
        The model file the command reads: protected as the inputs are.
    others : dict, optional
        The command's other outputs, ``{name: path}``: the file is none of them and neither
        holds the other.
    overwrite : bool
        Replace an existing file (what ``replaceable`` accepts).
    own : bool
        The existing file or folder is the command's own (the output of the run being
        resumed, a fastunet log): continued or replaced without ``overwrite``.
    folder : bool
        The output is a folder (a zarr output, the demo's folder), not a file.
    replaceable : callable, optional
        ``replaceable(location)`` raises :class:`UserError` when an existing one may not be
        replaced even with ``overwrite`` (default: a regular file, or an empty folder).
    make_parents : bool
        Missing folders on the way are fine when the nearest existing one takes writes (the
        caller makes them once the run is accepted).
    resumable : bool
        An existing one could also be continued (``resume=True``): the message says so.
    exempt : location, optional
        The one place inside an input that may be written (an OME-Zarr input's own label image).
    input_hint : str
        Added to the refusal of a place inside an input.
    within : tuple, optional
        ``(name, folder)``: the file must lie inside that folder (``("--output-dir", "seg/")``).

    Raises
    ------
    TypeError
        ``path`` is not a path.
    UserError
        Any of the refusals listed in the module's description.
    """
    try:
        out = _location(path)
    except TypeError:
        raise TypeError(f"{what} expects a file path; got {type(path).__name__}.") from None
    shown = str(path) if isinstance(path, (str, os.PathLike)) else str(out)
    protected = [("input", p) for p in _protected_inputs(inputs)]
    if model is not None and isinstance(model, (str, os.PathLike)):
        protected.append(("model file", Path(model).expanduser().resolve()))
    _check_protected(out, protected, what, shown, exempt, input_hint)
    if within is not None and (out == _location(within[1]) or not inside(out, _location(within[1]))):
        raise UserError(f"The {what} {shown!r} lies outside {within[0]} {str(within[1])!r}; name a file inside it "
                        "(no '..', no absolute path).")
    _check_others(out, others, what, shown)
    kind = special_kind(out)
    if kind is not None:
        raise UserError(f"The {what} {shown!r} is {kind}, not a file fastunet writes; choose another path.")
    if folder and own and _is_local(out) and out.is_file():
        raise UserError(f"The {what} {shown!r} is a file, and a folder goes there; choose another path.")
    if not folder and _is_local(out) and out.is_dir():
        example = out / ("output" + (suffixes[0] if suffixes else ""))
        raise UserError(f"The {what} {shown!r} is a folder; name a file in it, e.g. {str(example)!r}.")
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise UserError(f"The {what} {shown!r} should end in {' or '.join(suffixes)}, e.g. "
                        f"{str(out.with_suffix(suffixes[0]))!r}.")
    exists = out.exists() or (_is_local(out) and out.is_symlink())
    if exists and not own:
        if not overwrite:
            also = ", or resume=True to continue an interrupted run" if resumable else ""
            raise UserError(f"The {what} {shown!r} already exists; pass overwrite=True to replace it{also}, or "
                            "choose another path.")
        (replaceable or _default_replaceable)(out)
        if _is_local(out) and not os.access(out, os.W_OK):
            raise UserError(f"Cannot replace the {what} {shown!r} (permission denied); make it writable or choose "
                            "another path.")
    check_writable_folder(out.parent, what=what, make=make_parents)
    return out


def _check_others(out, others, what: str, shown: str) -> None:
    """``out`` is none of the command's other outputs (``{name: path}`` or ``(name, path)`` pairs)."""
    for name, other in others.items() if isinstance(others, dict) else others or ():
        if other is None:
            continue
        other = other if not isinstance(other, (str, os.PathLike)) or "://" in str(other) else _location(other)
        if out == other or str(out) == str(other):
            raise UserError(f"The {what} {shown!r} is also the {name}; give them different names.")
        if inside(out, other) or inside(other, out):
            raise UserError(f"The {what} {shown!r} and the {name} {str(other)!r} lie inside one another; give them "
                            "separate places.")


def _protected_inputs(inputs) -> list:
    """The inputs as locations: local paths resolved, URL locations as they are."""
    found = []
    for item in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
        if isinstance(item, (list, tuple)):
            found += _protected_inputs(item)
        elif item is None:
            continue
        elif not _is_local(item) and type(item).__module__.startswith("upath"):
            found.append(item)
        else:
            found += input_paths(item)
    return found


# ------------------------------------------------------------------------- atomic writes
_partial: set[Path] = set()
_partial_lock = threading.Lock()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on any
    failure (an interrupt included) removed, so that no half-written file is ever left under
    the real name. While the block runs the temporary file is listed for
    :func:`remove_partial_files` (an immediate exit)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")
    with _partial_lock:
        _partial.add(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with _partial_lock:
            _partial.discard(tmp)
        with contextlib.suppress(OSError):
            tmp.unlink()


def remove_partial_files() -> None:
    """Remove the temporary files of writes still in progress (before an immediate exit)."""
    with _partial_lock:
        pending = list(_partial)
    for tmp in pending:
        with contextlib.suppress(OSError):
            tmp.unlink()
