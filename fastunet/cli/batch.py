"""Many inputs per call: expanding files, folders and globs, and naming their outputs.

* :func:`expand_inputs` turns the command line's inputs into a list of images: a zarr store
  (array, group or OME-Zarr) is one image; any other folder stands for the TIFF files and
  zarr stores in it (not those fastunet wrote); a pattern (``dir/*.tif``, quoted so that the shell leaves it) for what
  it matches; URLs pass through untouched.
* :func:`output_paths` names one output per input from ``-o PATH`` (one input), a template
  (``-o 'out/{stem}.zarr'``) or ``--output-dir DIR`` with ``--output-name TEMPLATE``; by
  default (:func:`default_output_name`) the output follows the input: ``{stem}_seg.tif``
  beside a TIFF, PNG or JPEG (``{stem}_seg.ome.tif`` for an OME-TIFF; a zarr output for a TIFF
  too large to assemble in memory), ``{stem}_seg.ome.zarr`` for an OME-Zarr,
  ``{stem}_seg.zarr`` for other zarr stores. It makes no folder: :func:`make_folders` makes an
  output's missing folders once the run is accepted (and :func:`remove_made` removes them
  again, empty, when that input then fails).
"""

from __future__ import annotations

import glob
import logging
import os
import string
from pathlib import Path

from ..errors import UserError

__all__ = ["expand_inputs", "output_paths", "image_stem", "check_template", "make_folders", "makes_folders",
           "remove_made", "TEMPLATE_FIELDS", "DEFAULT_OUTPUT_NAME", "IMAGE_SUFFIXES", "default_output_name"]

IMAGE_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".png", ".jpg", ".jpeg")
TIFF_SUFFIXES = (".tif", ".tiff")
FILE_SUFFIXES = (*TIFF_SUFFIXES, ".png", ".jpg", ".jpeg")  # image files a folder stands for
DEFAULT_OUTPUT_NAME = "{stem}_seg.zarr"  # a zarr input's; see default_output_name
TIFF_OUTPUT_LIMIT = 512 * 1024**2  # TIFF inputs larger than this get a zarr output by default
TEMPLATE_FIELDS = {
    "name": "the input's file or folder name (cells.ome.tif)",
    "stem": "the name without its image suffix (.ome.tif, .tif, .tiff, .ome.zarr, .zarr): cells",
    "parent": "the name of the input's folder",
    "index": "the input's position on the command line, from 1",
}
KIND_WORDS = ("labels", "probs", "both", "instances")

log = logging.getLogger(__name__)


def _is_url(text: str) -> bool:
    return "://" in text


def _is_zarr_store(path: Path) -> bool:
    return any((path / marker).is_file() for marker in ("zarr.json", ".zarray", ".zgroup"))


def _folder_images(folder: Path) -> list[str]:
    """The TIFF files and zarr stores directly in ``folder``, sorted by name, less fastunet's
    own outputs (a folder segmented into itself is not segmented again on the next call)."""
    from ..io.outputs import fastunet_attrs

    found = []
    for child in sorted(folder.iterdir(), key=lambda p: p.name):
        if child.name.startswith("."):
            continue
        image = (child.is_file() and child.name.lower().endswith(FILE_SUFFIXES)) or (
            child.is_dir() and _is_zarr_store(child))
        if image and fastunet_attrs(child) is not None:
            log.info("%s: skipped, a fastunet output", child)
        elif image:
            found.append(str(child))
    return found


def expand_inputs(items: list[str]) -> list[str]:
    """The images named by ``items`` (paths, folders, glob patterns, URLs), in order, each once.

    Raises :class:`UserError` for a pattern that matches nothing or a folder that is neither a
    zarr store nor holds any image. A path that does not exist is passed on as it is (the
    reader says so in its own words).
    """
    images: list[str] = []
    for item in items:
        item = str(item)
        path = Path(item).expanduser()
        if _is_url(item):
            found = [item]
        elif not path.exists() and glob.has_magic(item):
            found = sorted(glob.glob(str(path)))
            if not found:
                raise UserError(f"The pattern {item!r} matches no file; check it (and quote it, so that the "
                                "shell passes it on as it is).")
            found = [f for p in found for f in (_folder_images(Path(p)) if _plain_folder(Path(p)) else [p])]
        elif _plain_folder(path):
            found = _folder_images(path)
            if not found:
                raise UserError(f"The folder {item!r} is not a zarr array or group and holds no TIFF files or "
                                "zarr stores; pass a zarr store, a TIFF file, or a folder of them.")
        else:
            found = [item]
        for f in found:
            if f not in images:
                images.append(f)
    return images


def _plain_folder(path: Path) -> bool:
    """A folder that is no zarr store (nor a directory ending in .zarr: an empty one is an error
    of its own, said by the reader)."""
    return path.is_dir() and not _is_zarr_store(path) and not path.name.lower().endswith(".zarr")


def image_stem(name: str) -> str:
    """``cells.ome.tif`` -> ``cells``: the name without its image suffix."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def default_output_name(source: str) -> str:
    """The output name of an input when none is given: the input's own kind of file.

    A TIFF gives an ImageJ TIFF (an OME-TIFF an OME-TIFF), with the input's pixel size, unless
    the file is over 512 MiB (its results are assembled in memory: then a zarr output); a PNG or
    JPEG gives a TIFF (object ids need more than 8 bits); an OME-Zarr an OME-Zarr with label
    images; anything else a zarr output.
    """
    name = source.rstrip("/").rsplit("/", 1)[-1].lower()
    if name.endswith((".ome.tif", ".ome.tiff")) and not _too_large(source):
        return "{stem}_seg.ome.tif"
    if name.endswith(FILE_SUFFIXES) and not (name.endswith(TIFF_SUFFIXES) and _too_large(source)):
        return "{stem}_seg.tif"
    if name.endswith(".ome.zarr"):
        return "{stem}_seg.ome.zarr"
    return DEFAULT_OUTPUT_NAME


def _too_large(source: str) -> bool:
    try:
        return os.path.getsize(source) > TIFF_OUTPUT_LIMIT
    except OSError:
        return False


def _fields(template: str) -> list[str]:
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise UserError(f"Cannot read the output name template {template!r} ({exc}); write fields as "
                        "{stem}, {name}, {parent} or {index}.") from None


def _fill(template: str, source: str, index: int) -> str:
    unknown = sorted({f for f in _fields(template) if f not in TEMPLATE_FIELDS})
    if unknown:
        raise UserError(f"Unknown field {{{unknown[0]}}} in the output name template {template!r}; the fields are "
                        + ", ".join("{" + k + "}" for k in TEMPLATE_FIELDS) + ".")
    if _is_url(source):
        path = Path(source.split("://", 1)[1].rstrip("/"))
        parent = path.parent.name
    else:
        path = Path(source.rstrip("/"))
        parent = path.expanduser().resolve().parent.name  # "../x.tif": the folder's real name, never ".."
    try:
        return template.format(name=path.name, stem=image_stem(path.name), parent=parent, index=index)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise UserError(f"Cannot fill the output name template {template!r} ({exc}); write fields as {{stem}}, "
                        "{name}, {parent} or {index}, e.g. {index:03d} for 001.") from None


def makes_folders(output: str | None, output_dir: str | None) -> bool:
    """Whether the outputs' missing folders are made: for ``--output-dir`` and ``-o`` templates
    (a plain ``-o PATH`` needs its folder to exist: a mistyped path is not created)."""
    return output_dir is not None or (output is not None and bool(_fields(output)))


def check_template(template: str, flag: str = "-o") -> None:
    """Refuse a name template that cannot be filled (an unknown field, a bad format code),
    before any work: filled once with example values."""
    try:
        _fill(template, "folder/example.ome.tif", 1)
    except UserError as exc:
        raise UserError(f"{flag}: {exc}") from None


def make_folders(output: str) -> list[Path]:
    """Make the missing folders of a local output (a template's or --output-dir's); returns
    those made, outermost first."""
    if _is_url(output):
        return []
    made = []
    folder = Path(output).expanduser().absolute().parent
    while not folder.exists():
        made.insert(0, folder)
        folder = folder.parent
    for f in made:
        f.mkdir()
    return made


def remove_made(made: list[Path]) -> None:
    """Remove folders :func:`make_folders` made, innermost first, as long as they are empty."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            return


def output_paths(inputs: list[str], *, output: str | None, output_dir: str | None,
                 output_name: str | None) -> list[str]:
    """One output path per input; raises :class:`UserError` when they cannot be told apart.

    ``output``: a path (one input only) or a template with ``{...}`` fields; ``output_dir``:
    a folder (made by :func:`make_folders` when the run starts) for ``output_name`` (default:
    :func:`default_output_name`); that the outputs stay inside it is checked with the other
    rules of written files (:func:`fastunet.cli.files.check_files`).
    """
    if output is not None and output_dir is not None:
        raise UserError("Pass either -o OUTPUT or --output-dir DIR, not both.")
    if output is None and output_dir is None:
        raise UserError("Pass -o OUTPUT (one input: a .zarr folder or a .tif file), or --output-dir DIR for "
                        "outputs named {stem}_seg in the input's format there (.tif for a TIFF, .zarr for zarr; "
                        "--output-name TEMPLATE to change it).")
    if output_name is not None and output_dir is None:
        raise UserError("--output-name names outputs inside --output-dir DIR; pass --output-dir too "
                        "(or give the template to -o, e.g. -o 'out/{stem}.zarr').")
    if output is not None:
        if output in KIND_WORDS:
            raise UserError(f"-o/--output is the output path; the kind of output moved to --kind "
                            f"(e.g. --kind {output}). Pass -o OUTPUT.zarr --kind {output}.")
        template = output
        if not _fields(output):
            if len(inputs) > 1:
                raise UserError(f"-o {output} names one output but {len(inputs)} inputs were given; pass "
                                "--output-dir DIR, or a template such as -o 'out/{stem}_seg.zarr'.")
            return [output]
    else:
        template = os.path.join(output_dir, output_name) if output_name else None
        if output_name and not _fields(output_name) and len(inputs) > 1:
            raise UserError(f"--output-name {output_name!r} has no field, so {len(inputs)} inputs would share "
                            "one output; use {stem} (or {name}, {parent}, {index}) in it.")
        folder = Path(output_dir)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--output-dir {output_dir!r} is a file; pass a folder.")
    outputs = [_fill(template or os.path.join(output_dir, default_output_name(src)), src, i + 1)
               for i, src in enumerate(inputs)]
    seen: dict[str, str] = {}
    for src, out in zip(inputs, outputs):
        key = os.path.normpath(out)
        if key in seen:
            raise UserError(f"{seen[key]!r} and {src!r} would both be written to {out!r}; add {{parent}} or "
                            "{index} to the output name template.")
        seen[key] = src
    return outputs
