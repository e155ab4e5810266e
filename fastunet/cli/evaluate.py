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
    write_json,
)

__all__ = ["add_parser", "run"]

EXAMPLES = """\
fastunet evaluate images/ labels/ --model nuclei.safetensors    # your data
fastunet evaluate --synthetic 16                                 # fresh synthetic nuclei
fastunet evaluate --synthetic 4 --json - | jq .f1
"""


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="?", help="TIFF file, folder of TIFFs or zarr: 2D images or (Z, Y, X) stacks")
    p.add_argument("labels", nargs="?", help="their instance labels in the same form")
    p.add_argument("--synthetic", type=int, metavar="N", help="score on N fresh synthetic nuclei images instead")
    p.add_argument("--seed", type=int, default=2026, help="first seed of the synthetic images (default 2026)")
    p.add_argument("--axes", help="axes of files whose metadata do not say, e.g. ZYX")


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate",
        help="score a model against ground truth: foreground IoU and instance F1 (IoU 0.5)",
        description="Segment images with the engine and score them against instance labels, 2D slice by "
        "slice: foreground IoU, and instance F1 at IoU 0.5 with the predicted objects taken as the "
        "connected components of the foreground. --synthetic N scores freshly generated nuclei images.",
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
    from ..evaluate import evaluate, evaluate_synthetic
    from ..paths import check_output_file

    model = model_argument(args.model)
    if args.json and args.json != "-":  # before the scores are computed (the library checks the preview)
        check_output_file(args.json, what="--json file", suffixes=(".json",), inputs=(args.images, args.labels),
                          others={"--preview": args.preview}, overwrite=args.overwrite)
    common = dict(device=args.device, backend=args.backend, dtype=args.dtype, tile=args.tile,
                  batch_size=args.batch_size, preview=args.preview, overwrite=args.overwrite)
    if args.synthetic is not None:
        if args.images or args.labels:
            raise UserError("Pass either IMAGES LABELS or --synthetic N, not both.")
        result = evaluate_synthetic(model, n_images=args.synthetic, seed=args.seed, **common)
        what = f"{args.synthetic} synthetic images (seeds {args.seed}..{args.seed + args.synthetic - 1})"
    else:
        if not (args.images and args.labels):
            raise UserError("Pass IMAGES and LABELS (TIFF files, folders of TIFFs or zarr), or --synthetic N.")
        result = evaluate(args.images, args.labels, model, axes=args.axes, **common)
        what = f"{args.images}"
    out = human_stream(args)
    print(f"model {args.model or 'default (bundled)'} on {what}:", file=out)
    print(f"  {result}", file=out)
    if args.json:
        write_json(args.json, result.to_dict())
        if args.json != "-":
            print(f"wrote {args.json}", file=out)
    if args.preview:
        print(f"wrote {args.preview}", file=out)
    return 0
