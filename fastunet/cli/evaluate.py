"""``fastunet evaluate``: foreground IoU and instance F1 of a model against ground truth."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .common import (
    add_common_options,
    add_json_option,
    add_network_options,
    epilog,
    human_stream,
    model_argument,
    object_size_argument,
    tile_argument,
    write_json,
)
from .segment import add_cleanup_options, cleanup_options

__all__ = ["add_parser", "run"]

EXAMPLES = """\
fastunet evaluate images/ labels/ --model nuclei.safetensors    # your data
fastunet evaluate --synthetic 16                                 # 16 fresh images of every synthetic style
fastunet evaluate --synthetic 16 --style held-out --object-size auto
fastunet evaluate --synthetic 16 --no-cleanup                    # the network's objects, before the clean-up
fastunet evaluate --synthetic 4 --style classic --json - | jq .f1
"""


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="?", help="TIFF file, folder of TIFFs or zarr: 2D images or (Z, Y, X) stacks")
    p.add_argument("labels", nargs="?", help="their instance labels in the same form")
    p.add_argument("--synthetic", type=int, metavar="N", help="score on N fresh synthetic images per style instead")
    p.add_argument("--style", help="synthetic styles: all (default), held-out, train, or names separated by commas")
    p.add_argument("--object-size", metavar="PIXELS|auto|truth", help="typical object diameter of the images (see "
                   "segment); truth: each synthetic image's true one")
    p.add_argument("--seed", type=int, default=2026, help="first seed of the synthetic images (default 2026)")
    p.add_argument("--axes", help="axes of files whose metadata do not say, e.g. ZYX")
    add_cleanup_options(p.add_argument_group("the objects scored (as segment writes them)"))


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="score a model against ground truth: foreground IoU and instance F1 (IoU 0.5)",
        description="Segment images with the engine and score them against instance labels, 2D slice by "
        "slice: foreground IoU, and instance F1 at IoU 0.5 with the predicted objects taken as the "
        "connected components of the foreground. --synthetic N scores freshly generated images of each "
        "synthetic style (the training styles and held-out ones), one row per style.",
        epilog=epilog(EXAMPLES), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _data_options(p)
    add_network_options(p)
    add_json_option(p, "the scores")
    p.add_argument("--preview", help="PNG of the first image: prediction overlaid, truth outlines")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json / --preview files")
    add_common_options(p, quiet="(no effect: evaluate shows no progress bar)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..evaluate import evaluate, evaluate_styles, parse_styles, style_table

    model = model_argument(args.model)  # --json and --preview were checked before (fastunet.cli.files)
    common = dict(device=args.device, backend=args.backend, dtype=args.dtype, tile=tile_argument(args.tile),
                  batch_size=args.batch_size, preview=args.preview, overwrite=args.overwrite,
                  object_size=object_size_argument(args.object_size), **cleanup_options(args))
    results = None
    if args.synthetic is not None:
        if args.images or args.labels:
            raise UserError("Pass either IMAGES LABELS or --synthetic N, not both.")
        results = evaluate_styles(model, styles=parse_styles(args.style), n_images=args.synthetic,
                                  seed=args.seed, **common)
        what = f"{args.synthetic} synthetic images per style (seeds {args.seed}..{args.seed + args.synthetic - 1})"
        result = next(iter(results.values())) if len(results) == 1 else None
    else:
        if not (args.images and args.labels):
            raise UserError("Pass IMAGES and LABELS (TIFF files, folders of TIFFs or zarr), or --synthetic N.")
        result = evaluate(args.images, args.labels, model, axes=args.axes, **common)
        what = f"{args.images}"
    out = human_stream(args)
    size = f" at object size {args.object_size}" if args.object_size else ""
    print(f"model {args.model or 'default (bundled)'} on {what}{size}:", file=out)
    print(f"  {result}" if result is not None else style_table(results), file=out)
    if args.json:
        scores = result.to_dict() if result is not None else {"styles": {n: r.to_dict() for n, r in results.items()}}
        write_json(args.json, {"command": "evaluate", "version": __version__, **scores})
        if args.json != "-":
            print(f"wrote {args.json}", file=out)
    if args.preview:
        print(f"wrote {args.preview}", file=out)
    return 0
