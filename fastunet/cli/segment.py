"""``fastunet segment``: overlap-tile inference on one or many images, one model load."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from ..errors import UserError
from .batch import DEFAULT_OUTPUT_NAME, TEMPLATE_FIELDS, expand_inputs, output_paths
from .common import (
    EXIT_OK,
    EXIT_USER,
    add_common_options,
    add_json_option,
    add_network_options,
    epilog,
    human_stream,
    model_argument,
    object_size_argument,
    parse_sizes,
    tile_argument,
    to_flags,
    write_json,
)

__all__ = ["add_parser", "run"]

log = logging.getLogger("fastunet.cli.segment")

EXAMPLES = """\
fastunet segment stack.zarr -o labels.zarr                      # default model, zarr v3 output
fastunet segment stack.zarr -o seg.zarr --kind labels,probs     # class map and probabilities
fastunet segment images/ --output-dir seg/                      # every TIFF / zarr in images/
fastunet segment 'plates/*.tif' --output-dir seg/ --output-name '{stem}.tif'
fastunet segment stack.zarr -o labels.zarr --resume             # after a kill: skips finished blocks
fastunet segment big.zarr -o labels.zarr --scheduler tcp://host:8786 --json run.json
"""


# ---------------------------------------------------------------------------------- options
def _input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="zarr array/group (OME-Zarr: level 0), TIFF or OME-TIFF file, a folder of them, or a "
                        "quoted pattern such as 'dir/*.tif'; several inputs share one model load")
    p.add_argument("--axes", help="axes of a plain array, e.g. ZYX, CYX, CZYX, TYX (default: from metadata)")
    p.add_argument("--channel", metavar="CH[,CH]", help="the channel(s) the model reads: an index (0 first) or a "
                   "name from the metadata (OME channel names, red/green/blue of RGB), e.g. --channel 1 or "
                   "--channel DAPI; several for multi-channel models (default: every channel)")
    p.add_argument("--series", type=int, metavar="N", help="the image of a multi-series TIFF or bioformats2raw "
                   "OME-Zarr (0 first; default 0)")


def _output_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("output")
    where = group.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="PATH", help="output .zarr folder or .tif file (one input), or a "
                       "template such as 'seg/{stem}.zarr' (many)")
    where.add_argument("--output-dir", metavar="DIR", help="folder for the outputs of many inputs (made when "
                       "missing), named by --output-name")
    fields = ", ".join("{" + k + "}" for k in TEMPLATE_FIELDS)
    group.add_argument("--output-name", metavar="TEMPLATE", help=f"output name in --output-dir, with the fields "
                       f"{fields} (default: {{stem}}_seg in the input's format: .tif beside a TIFF/PNG, .ome.zarr "
                       f"for an OME-Zarr, {DEFAULT_OUTPUT_NAME} for zarr); the suffix picks the format (.zarr, .tif)")
    group.add_argument("--zarr-format", type=int, choices=(2, 3), help="zarr format of the output (default: the "
                       "OME-Zarr input's, else 3)")
    group.add_argument("--resume", action="store_true", help="continue interrupted runs into the same outputs; "
                       "complete ones are skipped")
    group.add_argument("--overwrite", action="store_true", help="replace existing fastunet outputs")
    group.add_argument("--break-lock", action="store_true", help="take over an output's lock from a run that is "
                       "gone (one run at a time writes an output)")
    group.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help="an option of the file "
                       "system of s3:// gs:// ... URLs, e.g. endpoint_url=http://host:9000 or anon=true (repeatable; "
                       "credentials come from the usual environment variables, e.g. AWS_ACCESS_KEY_ID)")
    add_json_option(group, "one record per input (output, status, blocks, Mpx/s, error)")


def _kind_options(p: argparse.ArgumentParser) -> None:
    """What is written: the kinds, and (issue 13) how objects are made from the class map."""
    group = p.add_argument_group("what to write")
    group.add_argument("--kind", metavar="KIND[,KIND]", help="one or several of instances (object ids), labels "
                       "(uint8 class map), probs (class probabilities), comma-separated; both = labels,probs "
                       "(default: instances for two-class models, else labels)")
    add_cleanup_options(group)
    group.add_argument("--split", choices=("watershed",), help="instances: split merged objects by a seeded "
                       "watershed (needs scikit-image; default: none, as the network separates them)")
    group.add_argument("--connect-z", action="store_true", help="instances of a ZYX stack: connect objects "
                       "across slices (default: ids per slice)")
    group.add_argument("--label-name", metavar="NAME", help="OME-Zarr: the label image's name under labels/ "
                       "(-o image.ome.zarr/labels/NAME writes into the input image's own labels group)")


def _auto_or(convert, valid, expected: str):
    """An argparse type: ``"auto"``, or ``convert(text)`` where ``valid`` of it, else one line
    saying what was ``expected``."""
    def parse(text: str):
        if text == "auto":
            return text
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
        return value

    return parse


_min_size = _auto_or(int, lambda v: v >= 0, "auto or a number of voxels >= 0 (0 keeps every object)")
_min_confidence = _auto_or(float, lambda v: 0 <= v < 1, "auto or a mean probability in [0, 1) (0 keeps every object)")


def add_cleanup_options(group) -> None:
    """``--min-size``, ``--min-confidence``, ``--keep-holes``, ``--no-cleanup``: the clean-up of
    the objects (segment, evaluate)."""
    group.add_argument("--min-size", type=_min_size, default="auto", metavar="VOXELS|auto", help="instances: remove "
                       "objects smaller than this; auto (default): under 1/16 of the typical object's area, a quarter "
                       "of its diameter (specks); 0 keeps all")
    group.add_argument("--min-confidence", type=_min_confidence, default="auto", metavar="P|auto",
                       help="instances: remove objects whose mean object probability is lower (what the network is "
                       "unsure of, e.g. shapes in noise); auto (default): the model file's value; 0 keeps all")
    group.add_argument("--keep-holes", action="store_true", help="instances: leave holes in objects (default: the "
                       "background one object encloses is filled)")
    group.add_argument("--no-cleanup", action="store_true", help="instances: the class map's connected components "
                       "as they are (--min-size 0 --min-confidence 0 --keep-holes)")


def cleanup_options(args: argparse.Namespace) -> dict:
    """``min_size``, ``min_confidence`` and ``fill_holes`` of the clean-up flags."""
    if args.no_cleanup:
        return {"min_size": 0, "fill_holes": False, "min_confidence": 0.0}
    return {"min_size": args.min_size, "fill_holes": not args.keep_holes, "min_confidence": args.min_confidence}


def _run_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("where it runs")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="run on this dask.distributed scheduler")
    where.add_argument("--workers", type=int, metavar="N", help="start N local dask worker processes")
    where.add_argument("--gpus", metavar="0,1,...", help="one dask worker process per GPU")
    group.add_argument("--block", metavar="[Z,]Y,X", help="output block shape in pixels, a multiple of the output "
                       "chunks (default: about 8 Mvoxels on CUDA, 1 on the CPU, along the chunks)")
    group.add_argument("--object-size", metavar="PIXELS|auto", help="typical object diameter in the input: rescale "
                       "it to the model's training object size (auto: estimate it; default: the input's own scale)")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "segment",
        help="segment zarr / OME-Zarr / TIFF images with overlap-tile inference (seamless, resumable)",
        description="Overlap-tile inference as in the paper: mirrored borders, tiles on the max-pool "
        "grid (identical to running the network once on the whole image), one dask task per output "
        "block; output zarr (default v3) or TIFF. Many inputs share one model load; each gets its own "
        "output, summary line and resume.",
        epilog=epilog(EXAMPLES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _input_options(p)
    _output_options(p)
    _kind_options(p)
    add_network_options(p)
    _run_options(p)
    add_common_options(p, quiet="no progress bar and no summary lines")
    p.set_defaults(func=run)
    return p


# -------------------------------------------------------------------------------------- run
def _options(args: argparse.Namespace) -> dict:
    """The keyword arguments of :meth:`Segmenter.segment` that every input shares."""
    from ..io.channels import parse_channels

    options = dict(axes=args.axes, channels=parse_channels(args.channel), series=args.series,
                   zarr_format=args.zarr_format, resume=args.resume, overwrite=args.overwrite,
                   scheduler=args.scheduler, workers=args.workers, gpus=args.gpus, progress=not args.quiet,
                   block=parse_sizes(args.block, "--block", "1,512,512"))
    options.update(output_kind=args.kind, **cleanup_options(args), split=args.split, connect_z=args.connect_z,
                   label_name=args.label_name, break_lock=args.break_lock,
                   storage_options=_storage_options(args.storage_option),
                   object_size=object_size_argument(args.object_size))
    return options


def _storage_options(items) -> dict | None:
    """``--storage-option key=value`` (repeated) as a dict; values are JSON when they parse
    (``anon=true`` -> True, ``default_cache_type=none`` stays a string)."""
    import json

    options = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--storage-option expects KEY=VALUE, e.g. --storage-option anon=true; got {item!r}.")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options or None


def _segment_one(seg, source: str, output: str, options: dict, args, many: bool) -> dict:
    """Segment one input; returns its record (status done / complete / failed). A user error
    is said in one line and recorded; anything else (a bug, Ctrl-C) stops the run."""
    import warnings

    from ..io import InputMovedWarning
    from ..segmentation import NonFiniteWarning

    record = {"input": source, "output": output, "status": "failed", "error": None, "summary": None}
    t0 = time.perf_counter()
    seg.last_summary = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NonFiniteWarning)
            warnings.simplefilter("always", InputMovedWarning)
            try:
                seg.segment(source, output, **options)
            finally:
                _report_warnings(caught, source if many else None)
    except UserError as exc:
        message = to_flags(str(exc), args)
        log.error(f"{source}: {message}" if many else message)
        record["error"] = message
        return record
    summary = seg.last_summary or {}
    record["summary"] = summary
    record["status"] = "complete" if summary.get("computed") == 0 and summary.get("skipped") else "done"
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return record


def _report_warnings(caught, source: str | None) -> None:
    import warnings

    from ..io import InputMovedWarning
    from ..segmentation import NonFiniteWarning

    for w in caught:
        if issubclass(w.category, (NonFiniteWarning, InputMovedWarning)):
            log.warning(f"{source}: {w.message}" if source else str(w.message))
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def run(args: argparse.Namespace) -> int:
    """``fastunet segment``: every input in turn with one :class:`~fastunet.Segmenter`.

    The outputs' missing folders (of ``--output-dir`` or a template) are made only once the
    run is accepted, each just before its input, and removed again (empty) when that input
    fails."""
    from ..segmentation import Segmenter, summary_line
    from .batch import make_folders, makes_folders, remove_made
    from .signals import set_kept

    inputs = expand_inputs(args.inputs)
    outputs = output_paths(inputs, output=args.output, output_dir=args.output_dir, output_name=args.output_name)
    many = len(inputs) > 1
    options = _options(args)
    out = human_stream(args)
    records: list[dict] = []
    set_kept(lambda: _kept(outputs, records))
    make = makes_folders(args.output, args.output_dir)
    t0 = time.perf_counter()
    log.info("%d input(s); model %s", len(inputs), args.model or "default (bundled)")
    try:
        with Segmenter(model_argument(args.model), tile=tile_argument(args.tile), batch_size=args.batch_size, device=args.device,
                       backend=args.backend, dtype=args.dtype) as seg:
            log.info("network on %s: %s backend, %s", seg.device, seg.backend, seg.dtype_choice)
            for i, (source, output) in enumerate(zip(inputs, outputs)):
                log.info("[%d/%d] %s -> %s", i + 1, len(inputs), source, output)
                made = make_folders(output) if make else []
                record = _segment_one(seg, source, output, options, args, many)
                if record["status"] == "failed":
                    remove_made(made)
                records.append(record)
                if record["summary"] is not None and not args.quiet:
                    prefix = f"[{i + 1}/{len(inputs)}] " if many else ""
                    print(prefix + summary_line(record["summary"], output), file=out, flush=True)
    finally:
        if args.json:
            write_json(args.json, _report(records, inputs, outputs, time.perf_counter() - t0))
    failed = [r for r in records if r["status"] == "failed"]
    if many and not args.quiet:
        print(_total_line(records, time.perf_counter() - t0), file=out)
    return EXIT_USER if failed else EXIT_OK


def _kept(outputs: list[str], records: list[dict]) -> str:
    """What an interrupted run kept: the finished outputs, and of the one being written its
    recorded blocks (a zarr output, resumable) or nothing (a TIFF, written whole at the end)."""
    from ..io.outputs import TIFF_SUFFIXES, fastunet_attrs
    from ..io.stores import location

    parts = []
    finished = sum(r["status"] in ("done", "complete") for r in records)
    if finished:
        parts.append(f"{finished} of {len(outputs)} outputs are complete" if len(outputs) > 1
                     else "the output is complete")
    if len(records) < len(outputs):
        current = outputs[len(records)]
        if current.lower().endswith(TIFF_SUFFIXES):
            parts.append(f"nothing of {current} was kept (a TIFF is written whole, at the end): run the command "
                         "again for it")
        else:
            meta = fastunet_attrs(location(current)) if "://" not in current else None
            if meta is not None and not meta.get("complete"):
                from ..engine.instance_tasks import RELABEL_PREFIX
                from ..io import SegmentationStore

                done = sum(not n.startswith(RELABEL_PREFIX) for n in SegmentationStore(location(current)).done())
                parts.append(f"{current} is kept with {done} finished block{'s' if done != 1 else ''}: run the same "
                             "command with --resume to continue")
            elif "://" in current:
                parts.append(f"the finished blocks of {current}, if any, are kept: run the same command with "
                             "--resume to continue")
            else:
                parts.append(f"nothing of {current} was written yet")
    return "; ".join(parts) or "nothing was written"


def _report(records: list[dict], inputs: list[str], outputs: list[str], seconds: float) -> dict:
    """The ``--json`` summary: one record per input, those not reached as ``not run``."""
    from .. import __version__

    done = {r["input"] for r in records}
    rest = [{"input": s, "output": o, "status": "not run", "error": None, "summary": None}
            for s, o in zip(inputs, outputs) if s not in done]
    files = records + rest
    counts = {status: sum(r["status"] == status for r in files) for status in ("done", "complete", "failed",
                                                                               "not run")}
    return {"command": "segment", "version": __version__, "argv": sys.argv[1:], "seconds": round(seconds, 3),
            **counts, "files": files}


def _total_line(records: list[dict], seconds: float) -> str:
    n = {s: sum(r["status"] == s for r in records) for s in ("done", "complete", "failed")}
    mpx = sum((r["summary"] or {}).get("megapixels", 0.0) for r in records if r["status"] == "done")
    return (f"{len(records)} inputs: {n['done']} segmented, {n['complete']} already complete, {n['failed']} failed; "
            f"{mpx:.2f} Mpx in {seconds:.1f} s")
