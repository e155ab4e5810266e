"""Every file a command reads and writes, checked with :func:`fastunet.paths.check_output_file`
(the one rule) before the log file is opened and before any work starts.

:func:`command_files` lists, for the parsed arguments of any sub-command, what it reads (the
inputs, the labels, the model file) and what it writes (outputs, ``--json`` reports,
``--log-file``, figures, the demo's and the benchmarks' folders); :func:`check_files` checks
each written one against the rule: never one of the files read, never another written one,
a writable folder, and an existing file only with ``--overwrite`` or when it is the command's
own (a fastunet log, which is appended to; the report of the run being resumed).

Files the library checks again when it writes them (segment's outputs, train's model,
checkpoint and figures, evaluate's preview) are checked here for what only the command line
knows (the other inputs of a batch, the reports and the log); their existence is judged by
the library, with the same rule, once it knows whether the run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Write", "command_files", "check_files", "is_fastunet_log", "is_fastunet_report"]

_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) fastunet")


@dataclass(frozen=True)
class Write:
    """One place a command writes: its flag (for messages), the path, the accepted extensions,
    and what kind of file it is: ``file`` (the library checks its existence), ``report``
    (``--json``), ``log`` (``--log-file``, appended), ``folder`` (files are added to it)."""

    flag: str
    path: str
    suffixes: tuple[str, ...] | None = None
    kind: str = "file"
    folder: bool = False
    exempt: bool = False  # a label image in its OME-Zarr input's own labels group (the library checks it)
    make: bool = False  # its missing folders are made once the run is accepted


def is_fastunet_log(path) -> bool:
    """Is ``path`` empty or a log that ``--log-file`` wrote (its first line in fastunet's format)?"""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline(200)
    except OSError:
        return False
    return first == "" or _LOG_LINE.match(first) is not None


def is_fastunet_report(path, command: str) -> bool:
    """Is ``path`` a ``--json`` report of ``fastunet <command>``?"""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("command") == command and "version" in data


def _model_path(args) -> str | None:
    model = getattr(args, "model", None)
    return model if isinstance(model, str) and "://" not in model else None


def command_files(args: argparse.Namespace) -> tuple[list, list[Write]]:
    """``(reads, writes)`` of a parsed command line: the paths it reads (never written) and
    the places it writes."""
    command = args.command
    reads: list = []
    writes: list[Write] = []
    if command == "segment":
        from .batch import expand_inputs, makes_folders, output_paths

        reads = expand_inputs(args.inputs)
        outputs = output_paths(reads, output=args.output, output_dir=args.output_dir, output_name=args.output_name)
        from ..io.outputs import TIFF_SUFFIXES, tiff_paths

        make = makes_folders(args.output, args.output_dir)
        for source, out in zip(reads, outputs):
            tiff = out.lower().endswith(TIFF_SUFFIXES)
            into = "://" not in source + out and Path(out).resolve().parent == Path(source).resolve() / "labels"
            writes.append(Write("output", out, folder=not tiff, exempt=into, make=make))
            if tiff and "://" not in out:
                for kind, extra in tiff_paths(Path(out), args.kind or "instances").items():
                    if str(extra) != out:
                        writes.append(Write(f"{kind} output", str(extra), make=make))
    elif command in ("train", "evaluate"):
        reads = [args.images, args.labels]
        if command == "train":
            from ..train import checkpoint_path

            reads.append(args.init)  # --init's model file is read, never written

            writes += [Write("model file", args.output), Write("checkpoint", str(checkpoint_path(args.output)))]
            curve = args.curve or str(Path(args.output).with_name(Path(args.output).name.removesuffix(".safetensors")
                                                                   + ".curve.png"))
            writes += [Write("--curve", curve, (".png",)), Write("--weight-figure", args.weight_figure, (".png",))]
        else:
            writes.append(Write("--preview", args.preview, (".png",)))
    elif command == "demo":
        writes.append(Write("demo folder", args.output, kind="demo", folder=True))
    elif command == "bench":
        writes += [Write("--out", args.out, kind="folder", folder=True),
                   Write("--cache", args.cache, kind="folder", folder=True)]
    elif command == "export":
        writes.append(Write("package", args.output))
    if getattr(args, "json", None) not in (None, "-"):
        writes.append(Write("--json file", args.json, (".json",), kind="report"))
    if getattr(args, "log_file", None):
        writes.append(Write("--log-file", args.log_file, kind="log"))
    return [r for r in reads if r], [w for w in writes if w.path]


def check_files(args: argparse.Namespace) -> None:
    """Check every place ``args``'s command writes with :func:`fastunet.paths.check_output_file`
    (before any work); raises :class:`~fastunet.errors.UserError` naming the first refused one.

    Sets ``args.log_mode`` (``"a"``: append to a new file or a fastunet log; ``"w"``: replace
    another file, with ``--overwrite``)."""
    from ..paths import check_output_file

    reads, writes = command_files(args)
    model = _model_path(args)
    overwrite = bool(getattr(args, "overwrite", False))
    resume = bool(getattr(args, "resume", False))
    args.log_mode = "a"
    for w in writes:
        if "://" in w.path:
            continue  # an object store: the library checks it (it needs the store's credentials)
        others = [(o.flag, o.path) for o in writes
                  if o is not w and (o.kind in ("report", "log") or w.kind in ("report", "log"))]
        common = dict(what=w.flag, suffixes=w.suffixes, inputs=reads, model=model, others=others, folder=w.folder,
                      exempt=Path(w.path).resolve() if w.exempt else None)
        if w.flag == "output" and getattr(args, "output_dir", None):
            common["within"] = ("--output-dir", args.output_dir)
        if w.kind == "report":
            check_output_file(w.path, overwrite=overwrite, own=resume and is_fastunet_report(w.path, args.command),
                              **common)
        elif w.kind == "log":
            own = is_fastunet_log(w.path)
            check_output_file(w.path, overwrite=overwrite, own=own, **common)
            args.log_mode = "a" if own or not os.path.exists(w.path) else "w"
        elif w.kind == "demo":  # new, empty, or a previous demo's files only (fastunet.demo)
            from ..demo import check_demo_folder

            check_demo_folder(w.path, overwrite=overwrite, model=model)
        elif w.kind == "folder":
            check_output_file(w.path, own=True, make_parents=True, **common)
        else:  # its existence is the library's to judge (resume, overwrite), with the same rule
            check_output_file(w.path, own=True, make_parents=w.make or w.exempt, **common)
