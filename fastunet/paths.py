"""The files a command writes, checked before its work starts.

Every file output of ``train`` (model, checkpoint, curve, weight figure), ``evaluate``
(``--json``, ``--preview``) and ``demo`` goes through :func:`check_output_file` before the
first image is read: the name has the right extension, it is not a folder, not one of the
inputs (nor inside one), not another output of the same command, its folder exists and takes
writes, and an existing file is replaced only with ``overwrite=True`` (or when the caller
knows the file is its own, e.g. the curve of the run being resumed). ``segment``'s zarr and
TIFF outputs have their own checks (:func:`fastunet.io.check_output`).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .errors import UserError

__all__ = ["check_output_file", "check_writable_folder", "input_paths"]


def input_paths(*inputs) -> list[Path]:
    """The local paths among ``inputs`` (paths, lists of paths, arrays...), resolved."""
    paths = []
    for item in inputs:
        if isinstance(item, (list, tuple)):
            paths += input_paths(*item)
        elif isinstance(item, (str, os.PathLike)) and "://" not in os.fspath(item):
            paths.append(Path(item).expanduser().resolve())
    return paths


def check_writable_folder(folder: Path, *, what: str) -> None:
    """Raise :class:`UserError` unless ``folder`` exists, is a folder and takes a new file."""
    if not folder.exists():
        raise UserError(f"The folder of the {what}, {str(folder)!r}, does not exist; create it first or choose "
                        "another path.")
    if not folder.is_dir():
        raise UserError(f"The {what}'s parent {str(folder)!r} is not a folder; choose another path.")
    probe = folder / f".fastunet-probe-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"Cannot write the {what} into {str(folder)!r} ({exc.strerror or exc}); choose a writable "
                        "place.") from None


def check_output_file(path, *, what: str, suffixes: tuple[str, ...], inputs=(), others: dict | None = None,
                      overwrite: bool = False, own: bool = False) -> Path:
    """Check a file a command will write; return its resolved path.

    Parameters
    ----------
    path : str or path-like
        The file.
    what : str
        Its name in messages, as the caller knows it (``"curve="``, ``"model file"``).
    suffixes : tuple of str
        Accepted extensions (lower case, e.g. ``(".png",)``).
    inputs : sequence
        The command's inputs (see :func:`input_paths`); the file must be none of them, nor
        inside one.
    others : dict, optional
        The command's other outputs, ``{name: path}``; the file must be none of them.
    overwrite : bool
        Replace an existing file.
    own : bool
        An existing file is the command's own (e.g. the curve of the run being resumed) and
        may be replaced without ``overwrite``.

    Raises
    ------
    TypeError
        ``path`` is not a path.
    UserError
        A wrong extension, a folder, an input, another output, a missing or unwritable
        folder, or an existing file without ``overwrite``.
    """
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"{what} expects a file path; got {type(path).__name__}.")
    out = Path(path).expanduser().resolve()
    if out.is_dir():
        raise UserError(f"The {what} {str(path)!r} is a folder; name a file in it, e.g. "
                        f"{str(out / ('output' + suffixes[0]))!r}.")
    if out.suffix.lower() not in suffixes:
        raise UserError(f"The {what} {str(path)!r} should end in {' or '.join(suffixes)}, e.g. "
                        f"{str(out.with_suffix(suffixes[0]))!r}.")
    for inp in input_paths(inputs):
        if out == inp or inp in out.parents:
            raise UserError(f"The {what} {str(path)!r} is {'an input' if out == inp else 'inside the input'} "
                            f"{str(inp)!r}; inputs are never written: choose another path.")
    for name, other in (others or {}).items():
        if other is not None and out == Path(other).expanduser().resolve():
            raise UserError(f"The {what} {str(path)!r} is also the {name}; give them different names.")
    check_writable_folder(out.parent, what=what)
    if (out.exists() or out.is_symlink()) and not (overwrite or own):
        raise UserError(f"The {what} {str(path)!r} already exists; pass overwrite=True to replace it, or choose "
                        "another name.")
    return out
